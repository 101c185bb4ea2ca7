"""Fault injection: a training run killed (SIGKILL) at any moment resumes to ``complete``,
bit-identical on the CPU to a run that was never interrupted: the same tensors and the same file
bytes (sha256), so a checksum of a run's artefacts is a reproducibility check."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ARGS = ["train", "--data", "demo:n=32,n_test=16,size=16", "--epochs", "3", "--batch-size", "16", "--method", "ecl",
        "--set", "ecl.warmup=0", "--set", "ecl.update_every=1", "--set", "ecl.consistency.steps=1",
        "--set", "ecl.score_batch_size=16", "--quiet"]
# every write of every file, and the epoch boundaries; "#k" = the k-th time the point is passed
POINTS = (
    ["write:config.yaml", "write:status.json#1", "write:status.json#2"]
    + [f"epoch{e}:{w}" for e in range(3) for w in ("start", "end")]
    + [f"write:{name}#{k}" for name in ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl")
       for k in (1, 2, 3)]
    + [f"write:epoch_00{e}.safetensors" for e in range(3)]
)
DRIVER = Path(__file__).with_name("fault_driver.py")


def _drive(tmp_path: Path, cases: list[dict]) -> list[dict]:
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"args": ARGS, "cases": cases}))
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    env.pop("CONSISTCAM_KILL_AT", None)
    proc = subprocess.run([sys.executable, str(DRIVER), str(spec), str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _state(run: Path) -> dict:
    files = {"model": load_file(str(run / "model.safetensors"))}
    digests = {"model": hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()}
    for f in sorted((run / "consistency").glob("*.safetensors")):
        files[f.name] = load_file(str(f))
        digests[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"files": files, "sha256": digests,
            "metrics": [{k: v for k, v in r.items() if k != "time_s"} for r in records],
            "status": json.loads((run / "status.json").read_text())["state"]}


def _same(a: dict, b: dict) -> bool:
    if a["metrics"] != b["metrics"] or a["status"] != b["status"] or a["files"].keys() != b["files"].keys() \
            or a["sha256"] != b["sha256"]:
        return False
    return all(x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)
               for x, y in zip(a["files"].values(), b["files"].values()))


@pytest.mark.slow
def test_kill_at_every_write_and_at_random_moments_resumes_bit_identical(tmp_path):
    reference = _drive(tmp_path, [{"out": str(tmp_path / "reference")}])[0]
    assert reference["first"] == 0
    rng = random.Random(0)
    cases = [{"out": str(tmp_path / f"k{i}"), "kill_at": p} for i, p in enumerate(POINTS)]
    cases += [{"out": str(tmp_path / f"r{i}"), "delay": round(rng.uniform(0.2, reference["seconds"]), 2)}
              for i in range(3)]
    assert len(cases) >= 20
    results = _drive(tmp_path, cases)
    ref = _state(tmp_path / "reference")
    assert ref["status"] == "complete" and [r["epoch"] for r in ref["metrics"]] == [0, 1, 2]
    for r in results:
        where = r.get("kill_at") or f"after {r['delay']} s"
        if "kill_at" in r:
            assert r["first"] == -9, f"{where}: the fault point was not reached (exit {r['first']})"
        assert r["first"] in (0, -9) and r["second"] in (None, 0), f"{where}: {r}"
        assert _same(_state(Path(r["out"])), ref), f"killed at {where}: resumed run differs from the reference"
        assert not list(Path(r["out"]).rglob(".*.tmp")), f"{where}: temporary files left behind"
