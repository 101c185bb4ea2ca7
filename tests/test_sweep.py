"""consistcam sweep: grid expansion, shard split, resume of an interrupted sweep, verdict, table."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.run.status import write_status
from consistcam.sweep import grid as g
from consistcam.sweep.runner import Collected, check_same_config, collect, member_config, train_member
from consistcam.sweep.stats import paired, summarize, t_quantile
from consistcam.sweep.table import build_rows, markdown, write_outputs

METHODS = ("erm", "ecl", "cgc")
TINY = ["--set", "data=demo:n=16,n_test=8,size=16", "--set", "epochs=2", "--set", "batch_size=8",
        "--set", "eval_batch_size=16"]
EVAL = ["--evaluate-args", "--protocols", "localization", "--no-background", "--no-report"]


# -- grid ---------------------------------------------------------------------------------------------
def test_grid_items_parse_yaml_values_and_lists_with_commas():
    assert g.parse_grid_item("ecl.consistency.steps=1,3,5") == ("ecl.consistency.steps", [1, 3, 5])
    assert g.parse_grid_item("attack=pgd, none ,null") == ("attack", ["pgd", "none", None])
    assert g.parse_grid_item('data=["demo:n=96,size=16", "demo:n=96,size=32"]') == (
        "data", ["demo:n=96,size=16", "demo:n=96,size=32"])
    assert g.parse_grid_item("cgc.crop_scale=[0.08, 1.0],[0.2, 1.0]")[1] == [[0.08, 1.0], [0.2, 1.0]]
    for bad in ("steps", "steps=", "steps=1,,3", "steps=1,1", "seed=0,1", "out=a,b", "ecl..steps=1"):
        with pytest.raises(ConfigError):
            g.parse_grid_item(bad)


def test_expansion_is_the_cartesian_product_first_key_slowest():
    grid = [g.parse_grid_item("lr=0.1,0.2"), g.parse_grid_item("epochs=1,2,3")]
    arms = g.expand_arms(grid, base_method="erm", methods=METHODS)
    assert [a.name for a in arms] == ["lr=0.1,epochs=1", "lr=0.1,epochs=2", "lr=0.1,epochs=3",
                                      "lr=0.2,epochs=1", "lr=0.2,epochs=2", "lr=0.2,epochs=3"]
    assert arms[4].nested() == {"lr": 0.2, "epochs": 2}
    assert [a.name for a in g.expand_arms(base_method="erm", methods=METHODS)] == ["base"]


def test_other_methods_options_are_dropped_and_duplicates_merged():
    grid = [g.parse_grid_item("method=erm,ecl"), g.parse_grid_item("ecl.consistency.steps=1,3")]
    arms = g.expand_arms(grid, base_method="erm", methods=METHODS)
    assert [a.name for a in arms] == ["method=erm", "method=ecl,ecl.consistency.steps=1",
                                      "method=ecl,ecl.consistency.steps=3"]
    assert arms[2].nested() == {"method": "ecl", "ecl": {"consistency": {"steps": 3}}}
    # the base config's method counts when an arm does not set one
    assert [a.name for a in g.expand_arms(grid[1:], base_method="erm", methods=METHODS)] == ["base"]


def test_explicit_arms_times_grid_and_conflicts():
    arms = [g.parse_assignments("method=erm"), g.parse_assignments("method=ecl 'ecl.consistency.attack=noise'")]
    out = g.expand_arms([g.parse_grid_item("lr=0.1,0.2")], arms, base_method="erm", methods=METHODS)
    assert [a.name for a in out] == ["method=erm,lr=0.1", "method=erm,lr=0.2",
                                     "method=ecl,ecl.consistency.attack=noise,lr=0.1",
                                     "method=ecl,ecl.consistency.attack=noise,lr=0.2"]
    with pytest.raises(ConfigError, match="both set 'lr'"):
        g.expand_arms([g.parse_grid_item("lr=0.1,0.2")], [g.parse_assignments("lr=0.3")], methods=METHODS)
    with pytest.raises(ConfigError, match="conflicts"):
        g.expand_arms([], [g.parse_assignments("ecl=1 ecl.warmup=2")], methods=())
    with pytest.raises(ConfigError, match="given twice"):
        g.parse_assignments("lr=1 lr=2")


def test_member_folders_are_stable_safe_and_unique():
    arms = [g.Arm((("method", "ecl"), ("ecl.consistency.eps", 0.5))), g.Arm((("data", "demo:n=9,size=8"),)),
            g.Arm((("data", "demo:n=9/size=8"),)), g.Arm((("note", "x" * 300),))]
    items = g.members(arms, [0, 2])
    names = [m.folder for m in items]
    assert names[:2] == ["method=ecl__ecl.consistency.eps=0.5_s0", "method=ecl__ecl.consistency.eps=0.5_s2"]
    assert len(set(names)) == len(names) and all("/" not in n and ":" not in n and len(n) < 120 for n in names)
    assert names == [m.folder for m in g.members(arms, [0, 2])]  # a pure function of arms and seeds
    with pytest.raises(ConfigError):
        g.members(arms, [0, 0])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 13])
def test_shards_cover_every_member_exactly_once(count):
    arms = g.expand_arms([g.parse_grid_item("lr=0.1,0.2,0.3"), g.parse_grid_item("epochs=1,2")], methods=METHODS)
    items = g.members(arms, [0, 1, 2])
    shards = [g.shard(items, i, count) for i in range(count)]
    folders = [m.folder for s in shards for m in s]
    assert sorted(folders) == sorted(m.folder for m in items) and len(folders) == len(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    assert shards == [g.shard(items, i, count) for i in range(count)]  # deterministic
    for bad in ("3/3", "1", "-1/2", "0/0", "a/b"):
        with pytest.raises(ConfigError):
            g.parse_shard(bad)


def test_baseline_selection():
    arms = g.expand_arms([], [g.parse_assignments(a) for a in ("method=erm", "method=ecl", "method=ecl lr=0.1")],
                         methods=METHODS)
    assert g.select_arm(arms, None, "erm").name == "method=erm"
    assert g.select_arm(arms, "method=ecl,lr=0.1", "erm") is arms[2]  # by name
    assert g.select_arm(arms, "lr=0.1", "erm") is arms[2]  # by KEY=V words matching exactly one arm
    with pytest.raises(ConfigError, match="matches 2 arms"):
        g.select_arm(arms[:1] + [g.Arm((("method", "ecl"), ("lr", 0.2)))] + arms[2:], "method=ecl", "erm")
    with pytest.raises(ConfigError, match="matches 0 arms"):
        g.select_arm(arms, "lr=0.3", "erm")
    lrs = g.expand_arms([g.parse_grid_item("lr=0.1,0.2")], methods=METHODS)
    assert g.select_arm(lrs, None, "erm") is None  # two erm arms: no default baseline


# -- statistics ------------------------------------------------------------------------------------------
def test_t_quantile_matches_tables():
    for df, expected in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.99, 2) == pytest.approx(9.9248, abs=1e-4)
    scipy = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 17):
        assert t_quantile(0.9, df) == pytest.approx(scipy.t.ppf(0.95, df), rel=1e-9)


def test_verdict_on_hand_made_numbers():
    # the demo table of docs/results.md: ECL - ERM per seed +0.084, +0.100, +0.061 (paired p = 0.02)
    erm = {0: 0.40, 1: 0.35, 2: 0.66}
    ecl = {0: 0.484, 1: 0.45, 2: 0.721}
    p = paired(ecl, erm)
    assert p.n == 3 and p.mean == pytest.approx(0.245 / 3)
    sd = math.sqrt(sum((d - 0.245 / 3) ** 2 for d in (0.084, 0.1, 0.061)) / 2)
    assert p.std == pytest.approx(sd) and p.half_width == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    assert p.verdict == "higher"
    # unpaired, the same gain is inside the spread of the seeds; paired it is not
    assert abs(summarize(ecl).mean - summarize(erm).mean) < summarize(erm).std
    assert paired({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.2, 1: 0.3, 2: 0.4}).verdict == "lower"  # constant -0.1
    assert paired({0: 0.5, 1: 0.3, 2: 0.45}, {0: 0.4, 1: 0.4, 2: 0.4}).verdict == "none"  # +0.1, -0.1, +0.05
    assert paired({0: 0.4, 1: 0.4}, {0: 0.4, 1: 0.4}).verdict == "none"  # identical
    assert paired({0: 0.5}, {0: 0.4}).verdict == "n/a"  # one pair: no spread
    # pairs only where both arms have a finite value
    q = paired({0: 0.5, 1: float("nan"), 2: 0.7, 3: 0.9}, {0: 0.4, 1: 0.4, 2: 0.6})
    assert q.diffs == pytest.approx({0: 0.1, 2: 0.1}) and q.verdict == "higher"


def test_table_rows_markdown_csv_and_plot(tmp_path):
    c = Collected({"test": {"acc": {"method=erm": {0: 0.4, 1: 0.5, 2: 0.6}, "method=ecl": {0: 0.5, 1: 0.6, 2: 0.7}},
                            "deletion": {"method=erm": {0: 0.2, 1: 0.2, 2: 0.2}}}}, missing=["x_s3", "x_s4"],
                  missing_seeds={"x": [3, 4]})
    arms = ["method=erm", "method=ecl"]
    rows = build_rows(c, arms, "method=erm")
    ecl = next(r for r in rows if r["arm"] == "method=ecl")
    assert ecl["verdict"] == "higher" and ecl["diff_mean"] == pytest.approx(0.1) and ecl["n_pairs"] == 3
    text = markdown(rows, arms, None, "method=erm", 0.95, missing=c.missing_seeds)
    assert "| `method=erm` | 0,1,2 | 0.500 ± 0.100 |" in text
    assert "0.600 ± 0.100; Δ +0.100 ± 0.000 (higher)" in text and "left out): `x` seeds 3,4." in text
    out = write_outputs(tmp_path, c, arms, "method=erm", plot_metric="test/acc")
    with out["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert {(r["metric"], r["arm"]) for r in table} == {("acc", "method=erm"), ("acc", "method=ecl"),
                                                         ("deletion", "method=erm")}
    assert json.loads(out["json"].read_text())["rows"][0]["std"] == pytest.approx(0.1)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no evaluated member has metric 'nope'"):
        write_outputs(tmp_path, c, arms, "method=erm", plot_metric="test/nope")


# -- running: a sweep interrupted by a kill resumes to the same table ------------------------------------------
def _sweep(out: Path, *extra: str) -> list[str]:
    return ["sweep", *TINY, "--grid", "lr=0.05,0.1", "--seeds", "0", "--out", str(out), "--baseline", "lr=0.05",
            *extra, *EVAL]


def _rows(out: Path) -> list[dict]:
    """The table's rows, less the training wall time (a measurement, not a result of the runs)."""
    return [r for r in json.loads((out / "sweep.json").read_text())["rows"] if r["metric"] != "train_time_s"]


def test_killed_sweep_resumes_only_what_is_missing_and_gives_the_same_table(tmp_path, capsys):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(_sweep(ref)) == 0
    # a real kill (SIGKILL) when the second member starts its second epoch: member 1 is complete and
    # evaluated, member 2 has the checkpoint of its first epoch and status "running"
    # (same intra-op thread count as this process: float sums, hence the table, depend on it)
    env = {**os.environ, "CONSISTCAM_KILL_AT": "epoch1:start#2", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "consistcam", *_sweep(killed)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    first, second = killed / "lr=0.05_s0", killed / "lr=0.1_s0"
    assert json.loads((first / "status.json").read_text())["state"] == "complete"
    assert (first / "eval" / "metrics.json").is_file()
    assert json.loads((second / "status.json").read_text())["state"] == "running"
    assert not (killed / "sweep.json").exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_sweep(killed)) == 0
    log = capsys.readouterr().err
    assert "lr=0.05_s0: skipped" in log and "lr=0.1_s0: resumed, evaluated" in log
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # the complete member was not touched
    assert _rows(killed) == _rows(ref)  # bit-identical resume on CPU: the very same table
    # a third invocation runs nothing; the shards list every member once, both evaluated
    assert main(_sweep(killed)) == 0
    assert capsys.readouterr().err.count(": skipped") == 2
    listed = []
    for i in range(2):
        assert main(_sweep(killed, "--shard", f"{i}/2", "--list")) == 0
        listed += [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted(x[0] for x in listed) == ["lr=0.05_s0", "lr=0.1_s0"]  # each member in exactly one shard
    assert {x[1] for x in listed} == {"complete, evaluated"}


def test_a_folder_holding_another_run_is_refused(tmp_path):
    items = g.members(g.expand_arms([g.parse_grid_item("lr=0.05")], methods=METHODS), [0])
    base = {"data": "demo:n=16,n_test=8,size=16", "epochs": 1, "batch_size": 8}
    cfg = member_config(None, base, items[0], tmp_path)
    run_dir = Path(cfg.out)
    run_dir.mkdir()
    cfg.save_yaml(run_dir / "config.yaml")  # what a finished run of this member leaves (no need to train it)
    write_status(run_dir, "complete", epochs=1)
    assert train_member(cfg) == "skipped"
    changed = member_config(None, {**base, "weight_decay": 0.0}, items[0], tmp_path)
    with pytest.raises(ValueError, match=r"lr=0.05_s0 holds a run whose config differs .*weight_decay"):
        check_same_config(run_dir, changed)
    with pytest.raises(ValueError, match="differs"):
        train_member(changed)
    check_same_config(run_dir, member_config(None, {**base, "device": "cpu", "workers": 1}, items[0], tmp_path))


def test_a_finished_fine_tuning_member_is_skipped_unless_its_init_file_changed(tmp_path):
    # training records init_sha256 in config.yaml; the member's config (init given, no hash) is the same
    # run while the file is unchanged or gone, and another run once the file holds other weights
    from safetensors.torch import save_file

    from consistcam.models import create
    from consistcam.run.init import file_sha256

    init = tmp_path / "backbone.safetensors"
    save_file(create("cc_resnet10", 4).state_dict(), str(init))
    items = g.members(g.expand_arms([g.parse_grid_item("lr=0.05")], methods=METHODS), [0])
    base = {"data": "demo:n=16,n_test=8,size=16", "epochs": 1, "batch_size": 8, "init": str(init)}
    cfg = member_config(None, base, items[0], tmp_path / "sweep")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True)
    recorded = member_config(None, base, items[0], tmp_path / "sweep")
    recorded.init_sha256 = file_sha256(init)
    recorded.save_yaml(run_dir / "config.yaml")
    write_status(run_dir, "complete", epochs=1)
    assert train_member(cfg) == "skipped"
    save_file(create("cc_resnet10", 4).state_dict(), str(init))  # other random weights
    with pytest.raises(ValueError, match="differs .*init_sha256"):
        check_same_config(run_dir, cfg)
    init.unlink()
    assert train_member(cfg) == "skipped"


def test_members_are_evaluated_through_evaluate_run_without_the_command_line(tmp_path, monkeypatch):
    import consistcam.cli
    from consistcam.sweep.runner import evaluate_member, is_evaluated
    from tests.evaluation.runs import make_run

    def forbidden(*args, **kwargs):
        raise AssertionError("the sweep built the whole command line")

    monkeypatch.setattr(consistcam.cli, "build_parser", forbidden)
    run = make_run(tmp_path)
    args = ["--split", "test", "--subset", "8", "--protocols", "localization", "--no-background", "--no-report"]
    assert evaluate_member(run, args)
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert doc["meta"]["subset"] == 8 and list(doc["splits"]) == ["test"] and doc["meta"]["protocols"] == [
        "localization"]
    assert doc["meta"]["command"] == f"consistcam evaluate {run} " + " ".join(args)
    assert is_evaluated(run, args) and not is_evaluated(run, args[:-1])
    assert not evaluate_member(run, args)  # evaluated with these arguments already
    with pytest.raises(ValueError, match="--out is not allowed"):
        evaluate_member(run, [*args[:-1], "--out", str(tmp_path / "elsewhere")])


def test_cli_errors_name_the_argument(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "nope.yaml not found" in capsys.readouterr().err
    assert main(["sweep", "--grid", "ecl.consistency.stpes=1,2", "--set", "method=ecl", "--out", str(tmp_path)]) == 2
    assert "stpes" in capsys.readouterr().err
    assert main(["sweep", "--set", "seed=3", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["sweep", "--grid", "lr=0.1", "--shard", "2/2", "--out", str(tmp_path)]) == 2
    assert "--shard" in capsys.readouterr().err
    # a bad --evaluate-args fails before the first member trains
    assert main(["sweep", *TINY, "--out", str(tmp_path), "--evaluate-args", "--subset", "0"]) == 2
    assert "subset: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["sweep", *TINY, "--out", str(tmp_path), "--evaluate-args", "--out", "x"]) == 2
    assert "--out is not allowed" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran


def test_collect_reads_splits_and_the_summary_and_metrics_pick_split_columns(tmp_path):
    items = g.members(g.expand_arms([g.parse_grid_item("method=erm,ecl")], methods=METHODS), [0, 1])
    for k, m in enumerate(items):
        eval_dir = tmp_path / m.folder / "eval"
        eval_dir.mkdir(parents=True)
        doc = {"meta": {}, "splits": {"val": {"acc": 0.5 + k / 10, "n_images": 9, "acc_per_class": [0.1]}},
               "summary": {"worst_group_acc": 0.1 * k, "group_acc": {"a/aligned": 0.3}}}
        (eval_dir / "metrics.json").write_text(json.dumps(doc))
        (eval_dir / "sweep_evaluate.json").write_text(json.dumps({"evaluate_args": [], "model_sha256": ""}))
        epochs = [{"epoch": e, "time_s": 10.0 * (k + 1) + e, "train/acc": 0.4 + e / 10 + k / 100}
                  for e in range(2)]  # training time: sum of epochs; train_acc: the last epoch's
        (tmp_path / m.folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
        if k == 3:
            (eval_dir / "sweep_evaluate.json").write_text(json.dumps({"evaluate_args": ["--subset", "5"],
                                                                      "model_sha256": ""}))
    c = collect(tmp_path, items, [])
    assert c.values["val"]["acc"] == {"method=erm": {0: 0.5, 1: 0.6}, "method=ecl": {0: 0.7}}
    assert c.values["summary"]["worst_group_acc"]["method=ecl"] == {0: pytest.approx(0.2)}
    assert "group_acc" not in c.values["summary"] and c.missing_seeds == {"method=ecl": [1]}
    assert c.values["summary"]["train_time_s"] == {"method=erm": {0: 21.0, 1: 41.0}, "method=ecl": {0: 61.0}}
    assert c.values["summary"]["train_acc"] == {"method=erm": {0: 0.5, 1: 0.51}, "method=ecl": {0: 0.52}}
    rows = build_rows(c, ["method=erm", "method=ecl"], "method=erm")
    text = markdown(rows, ["method=erm", "method=ecl"], ["acc", "summary/worst_group_acc"], "method=erm", 0.95)
    assert "**summary**\n\n| arm | seeds | worst_group_acc |" in text and "| arm | seeds | acc | n_images |" not in text
