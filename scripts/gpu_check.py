"""The GPU check of issue 24, as one prepared run that fits a short lease of one GPU (about 8 min).

Steps (each with its own time limit; a failing step is recorded and the next one runs):
  tests       pytest -m gpu (explain, attack, scoring, AMP step, evaluation, 1-process NCCL DDP)
  bench_*     the benchmarks of docs/benchmarks.md on the GPU, each writing JSON
  determinism ERM trained twice with deterministic: true on the GPU: model.safetensors sha256 equal?
  compare_*   ERM vs ECL vs CGC on the shortcut benchmark with the GPU preset, 3 seeds, members in
              parallel processes, evaluated on the GPU; then the sweep table (--compare: other sets)
Everything lands in OUT (default $OUT or runs/gpu_check): gpu_check.json (every step: command,
return code, seconds, output tail, the JSON a step wrote) and gpu_check.md (the tables).

  scripts/gpu_check.sh                 # on a machine with a CUDA GPU
  scripts/gpu_check.sh --dry-run       # anywhere, seconds: checks every step's files and arguments
  scripts/gpu_check.sh --only tests,compare --budget 400
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CC = [PY, "-m", "consistcam"]


@dataclass
class Step:
    name: str
    commands: list[list[str]]  # run in parallel; the step's rc is the worst of them
    limit_s: int
    json_out: Path | None = None
    threads: int = 16
    env: dict = field(default_factory=dict)
    concurrent: bool = False  # starts together with the neighbouring concurrent steps (not timed work)


def data_spec(kind: str, root: str) -> str:
    return f"{kind}:tinyimagenet:{root}" if kind == "shortcut" else f"tinyimagenet:{root}"


METRICS = ("acc,summary/acc_correlated,summary/acc_decorrelated,summary/worst_group_acc,energy,pointing_game,"
           "bg_gap,insertion,deletion,consistency_E,summary/train_time_s")
# the evaluation of scripts/compare_methods.sh, on the GPU
EVALUATE = ["--evaluate-args", "--explainer", "gradcam", "--protocols", "localization,faithfulness,consistency",
            "--faithfulness-steps", "16", "--device", "cuda", "--workers", "2"]
DATA = {"demo": None, "shortcut_tinyimagenet": "shortcut", "tinyimagenet": "plain"}


def compare_steps(out: Path, entry: str, data_root: str, seeds: list[str], parallel: int) -> list[Step]:
    """``DATASET:PRESET:METHODS`` (methods joined by '+'): the members of scripts/compare_methods.sh
    for that data set and preset in ``parallel`` processes, then its table."""
    dataset, preset, methods = entry.split(":")
    methods = methods.replace("+", ",")
    config = ROOT / f"configs/compare/{dataset}_{preset}.yaml"
    sweep = [*CC, "sweep", str(config), "--grid", f"method={methods}", "--seeds", *seeds, "--out",
             str(out / f"compare_{dataset}_{preset}"), "--set", "workers=2", "--metrics", METRICS, "--quiet"]
    if DATA.get(dataset):
        sweep += ["--set", f"data={data_spec(DATA[dataset], data_root)}"]
    shards = min(parallel, len(methods.split(",")) * len(seeds))
    name = f"compare_{dataset}_{preset}"
    folder = out / name
    # consistcam diagnose: how well ECL's weights / JTT's error set single out the bias-conflicting images
    diagnose = [[*CC, "diagnose", *(str(folder / f"method={m}_s{s}") for s in seeds), "--summary",
                 str(folder / f"diagnosis_{m}.md")] for m in ("ecl", "jtt")
                if m in methods.split(",") and dataset in ("demo", "shortcut_tinyimagenet")]
    return [Step(name, [[*sweep, "--shard", f"{i}/{shards}", *EVALUATE] for i in range(shards)], 420,
                 threads=max(1, 12 // shards), concurrent=True),
            Step(name + "_table", [[*sweep, "--table-only", *EVALUATE]], 60),
            Step(name + "_diagnose", diagnose, 60)]


def build_steps(out: Path, data_root: str, seeds: list[str], compare: list[str], parallel: int) -> list[Step]:
    bench = ROOT / "benchmarks"
    shortcut = data_spec("shortcut", data_root)
    # the comparisons run at the same time: --parallel is the number of their processes together (each
    # holds a CUDA context and its own evaluation buffers; 72 at once exhausted an H200's 139 GiB)
    parallel = max(1, parallel // max(1, len(compare)))
    det = [[*CC, "train", "--config", str(ROOT / "configs/compare/shortcut_tinyimagenet_gpu.yaml"), "--set",
            f"data={shortcut}", "--set", "deterministic=true", "--set", "epochs=2", "--set", "workers=2",
            "--out", str(out / f"determinism/run{k}"), "--quiet"] for k in (0, 1)]
    return [
        Step("determinism", det, 150, threads=8),
        # the run of the determinism step (ResNet-18, 64 px, shortcut data) is the one evaluated
        Step("bench_evaluation", [[PY, str(bench / "bench_evaluation.py"), "--run", str(out / "determinism/run0"),
                                   "--only-new", "--device", "cuda", "--size", "64", "--n", "1000", "--workers", "4",
                                   "--repeats", "3"]], 150),
        *(Step(name, [[PY, str(bench / "bench_train_throughput.py"), "--device", "cuda", "--data",
                       data_spec("plain", data_root), "--preload", preload, "--epochs", epochs, "--json",
                       str(out / f"{name}.jsonl")]], 120, out / f"{name}.jsonl")
          for name, preload, epochs in (("bench_train", "on", "4"), ("bench_train_dataloader", "off", "2"))),
        Step("bench_ecl_scoring", [[PY, str(bench / "bench_ecl_scoring.py"), "--device", "cuda", "--json",
                                    str(out / "bench_ecl_scoring.jsonl")]], 90, out / "bench_ecl_scoring.jsonl"),
        Step("bench_gradcam", [[PY, str(bench / "bench_gradcam.py"), "--device", "cuda", "--batch", "64", "--size",
                                "224", "--repeats", "10", "--json", str(out / "bench_gradcam.jsonl")]], 120,
             out / "bench_gradcam.jsonl"),
        Step("tests", [[PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py",
                        "tests/attack/test_attack.py::test_range_is_checked_on_gpu"]], 240, threads=2,
             concurrent=True),
        *[s for entry in compare for s in compare_steps(out, entry, data_root, seeds, parallel)][0::3],
        *[s for entry in compare for s in compare_steps(out, entry, data_root, seeds, parallel)][1::3],
        *[s for entry in compare for s in compare_steps(out, entry, data_root, seeds, parallel)][2::3],
    ]


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def start_step(step: Step, logs: Path) -> list[subprocess.Popen]:
    """Start every command of ``step``, output to logs/<step>_<k>.log (files, not pipes: concurrent
    processes never block on a full pipe)."""
    paths = [str(ROOT / "src"), str(ROOT), str(PEER_DIR), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
           "OMP_NUM_THREADS": str(step.threads), "PYTHONUNBUFFERED": "1", **step.env}
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(logs / f"{step.name}_{k}.log").open("w"),
                             stderr=subprocess.STDOUT) for k, cmd in enumerate(step.commands)]


def finish_step(step: Step, procs: list[subprocess.Popen], t0: float, deadline: float, logs: Path) -> dict:
    limit = max(5, min(step.limit_s, int(deadline - t0)))
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, limit - (time.time() - t0))))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(124)
    outputs = [(logs / f"{step.name}_{k}.log").read_text(errors="replace") for k in range(len(procs))]
    record = {"commands": [shlex.join(c) for c in step.commands], "rc": max(codes, key=abs),
              "seconds": round(time.time() - t0, 1), "tail": tail("\n".join(outputs))}
    if step.json_out is not None and step.json_out.is_file():  # JSON, or JSON lines (one per benchmark)
        text = step.json_out.read_text()
        try:
            record["result"] = json.loads(text)
        except ValueError:
            record["result"] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return record


# The peers of the Grad-CAM benchmark, from wheels carried in .whl/ (the GPU machine has no network):
# installed into a private folder, and only where the module does not import already.
PEERS = {"captum": "captum-*.whl", "torchcam": "torchcam-*.whl", "ttach": "ttach-*.whl", "scipy": "scipy-*.whl",
         "joblib": "joblib-*.whl", "threadpoolctl": "threadpoolctl-*.whl", "sklearn": "scikit_learn-*.whl",
         "pytorch_grad_cam": "grad_cam-*.whl"}
PEER_DIR = Path("/tmp/consistcam_peers")


def install_peers() -> list[str]:
    notes = []
    for module, pattern in PEERS.items():
        if subprocess.run([PY, "-c", f"import {module}"], capture_output=True).returncode == 0:
            continue
        wheels = sorted((ROOT / ".whl").glob(pattern))
        if not wheels:
            notes.append(f"{module}: not installed and no .whl/{pattern}")
            continue
        r = subprocess.run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(PEER_DIR),
                            str(wheels[0])], capture_output=True, text=True)
        notes.append(f"{module}: installed from {wheels[0].name}" if r.returncode == 0 else
                     f"{module}: install failed: {tail(r.stderr, 300)}")
    return notes


def model_digest(run: Path) -> str | None:
    path = run / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def tensors_equal(a: Path, b: Path) -> bool | None:
    """The determinism verdict on the tensors (metadata such as timestamps aside)."""
    if not ((a / "model.safetensors").is_file() and (b / "model.safetensors").is_file()):
        return None
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ta.keys() == tb.keys() and all(bool((ta[k] == tb[k]).all()) for k in ta)


def dry_run(steps: list[Step]) -> int:
    """Check what each step needs without a GPU: files exist, scripts parse their arguments."""
    problems = []
    for step in steps:
        for cmd in step.commands:
            print(f"[{step.name}] {shlex.join(cmd)}")
            scripts = [c for c in cmd if c.endswith(".py")]
            for s in scripts:
                if not Path(s).is_file():
                    problems.append(f"{step.name}: {s} not found")
            configs = [c for c in cmd if c.endswith(".yaml")]
            for c in configs:
                if not Path(c).is_file():
                    problems.append(f"{step.name}: {c} not found")
        if step.name.startswith("bench_"):
            script = next(c for c in step.commands[0] if c.endswith(".py"))
            if Path(script).is_file():
                r = subprocess.run([PY, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                flags = [c for c in step.commands[0] if c.startswith("--")]
                missing = [f for f in flags if f not in r.stdout]
                if r.returncode or missing:
                    problems.append(f"{step.name}: {script} --help rc {r.returncode}, flags missing {missing}")
        if step.name.endswith("_table"):  # the sweep validates every member's config (no data is read)
            cmd = step.commands[0]
            r = subprocess.run([*cmd[:cmd.index("--table-only")], "--list"], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            if r.returncode:
                problems.append(f"{step.name}: sweep --list rc {r.returncode}: {tail(r.stderr, 400)}")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print("dry run:", "ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def write_markdown(out: Path, results: dict) -> None:
    lines = [f"# GPU check {results['date']} on {results['gpu']}", ""]
    lines += ["| step | rc | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['rc']} | {v['seconds']} |" for k, v in results["steps"].items()]
    det = results.get("determinism")
    if det:
        lines += ["", f"Determinism (deterministic: true, ERM 2 epochs, run twice): tensors equal "
                      f"{det['tensors_equal']}, sha256 equal {det['sha256_equal']}"]
    for name, rec in results["steps"].items():
        if "result" in rec:
            lines += ["", f"## {name}", "", "```json", json.dumps(rec["result"], indent=1), "```"]
    for table in sorted(out.glob("compare_*/sweep.md")):
        lines += ["", f"## {table.parent.name}", "", table.read_text()]
        for summary in sorted(table.parent.glob("diagnosis_*.md")):
            lines += ["", f"### {summary.stem}", "", summary.read_text()]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="check the steps' files and arguments; run nothing")
    p.add_argument("--out", default="runs/gpu_check", help="work folder (run folders, logs, results)")
    p.add_argument("--export", help="copy the results and an archive of the small files here (e.g. $OUT)")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data/tiny-imagenet-10"),
                   help="tiny-imagenet-10 folder")
    p.add_argument("--only", help="comma-separated step names (default: all)")
    p.add_argument("--seeds", default="0 1 2", help="seeds of the comparison")
    p.add_argument("--compare", default="shortcut_tinyimagenet:gpu:erm+ecl+cgc",
                   help="comparisons, comma-separated DATASET:PRESET:METHODS (methods joined by +), from "
                        "configs/compare/DATASET_PRESET.yaml")
    p.add_argument("--parallel", type=int, default=9,
                   help="comparison members trained at once, all comparisons together (at most 24: GPU memory)")
    p.add_argument("--compare-first", action="store_true", help="run the comparisons before the benchmarks")
    p.add_argument("--budget", type=int, default=470, help="seconds for all steps together")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to test this script itself)")
    args = p.parse_args()
    if not 1 <= args.parallel <= 24:
        p.error(f"--parallel must be 1..24 (72 processes at once ran one H200 out of memory), got {args.parallel}")
    out = Path(args.out).resolve()
    steps = build_steps(out, args.data_root, args.seeds.split(), args.compare.split(","), args.parallel)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(f"--only: unknown step(s) {sorted(unknown)}; known: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in wanted]
    steps = [s for s in steps if s.commands]
    if args.compare_first:  # the comparisons (and the GPU tests beside them) before the timed benchmarks
        order = {"_table": 1, "_diagnose": 2}
        steps = sorted(steps, key=lambda s: 0 if s.concurrent else next(
            (v for k, v in order.items() if s.name.endswith(k)), 3))
    if args.dry_run:
        return dry_run(steps)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA GPU here (torch.cuda.is_available() is False); use --dry-run", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (--allow-cpu)"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu,
               "torch": torch.__version__, "steps": {}}
    if any(s.name == "bench_gradcam" for s in steps):
        results["peers"] = install_peers()
    phases: list[list[Step]] = []  # each timed step alone; consecutive concurrent steps together
    for step in steps:
        if step.concurrent and phases and phases[-1][0].concurrent:
            phases[-1].append(step)
        else:
            phases.append([step])
    for phase in phases:
        if time.time() > deadline - 5:
            results["steps"].update({s.name: {"rc": "skipped (budget)", "seconds": 0} for s in phase})
            continue
        print(f"== {', '.join(s.name for s in phase)}", flush=True)
        t0 = time.time()
        started = [(s, start_step(s, out / "logs")) for s in phase]
        for step, procs in started:
            results["steps"][step.name] = rec = finish_step(step, procs, t0, deadline, out / "logs")
            print(f"   {step.name}: rc {rec['rc']} in {rec['seconds']} s", flush=True)
        if "determinism" in results["steps"] and "determinism" not in results:
            a, b = out / "determinism/run0", out / "determinism/run1"
            digest = model_digest(a)
            results["determinism"] = {"tensors_equal": tensors_equal(a, b),
                                      "sha256_equal": digest is not None and digest == model_digest(b)}
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        write_markdown(out, results)
    print((out / "gpu_check.md").read_text())
    if args.export:
        export(out, Path(args.export))
    return 0


def export(out: Path, dest: Path) -> None:
    """gpu_check.json, gpu_check.md and one archive of the small files (logs, tables, every run's
    metrics and config): a lease hands back only a few files."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_check.json", "gpu_check.md"):
        if (out / name).is_file():
            shutil.copy(out / name, dest / name)
    keep = ("*.log", "*.jsonl", "sweep.*", "metrics.json", "config.yaml", "status.json", "*.json", "*.md")
    with tarfile.open(dest / "gpu_check_files.tar.gz", "w:gz") as tar:
        for pattern in keep:
            for path in sorted(out.rglob(pattern)):
                if path.is_file() and path.stat().st_size < 2 << 20:
                    tar.add(path, arcname=str(path.relative_to(out)))


if __name__ == "__main__":
    sys.exit(main())
