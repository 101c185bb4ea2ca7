"""The one device rule: ``auto`` everywhere, the run's device where it exists, one-line errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from consistcam.cli import main
from consistcam.config import ConfigError
from consistcam.run import resolve_device, run_device
from tests.evaluation.runs import QUICK, make_run

NO_GPU = not torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


def test_explicit_devices_and_unknown_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not NO_GPU, reason="checks the error on a machine without a GPU")
def test_missing_gpu_is_a_one_line_error():
    for name in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ConfigError, match="no CUDA GPU is available") as err:
            resolve_device(name)
        assert "\n" not in str(err.value)


def test_the_runs_device_wins_where_it_exists(tmp_path):
    run = make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert run_device(run) is None  # no device in the config: plain auto
    assert resolve_device("auto", run) == resolve_device("auto")
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cpu"}))
    assert run_device(run) == torch.device("cpu")
    assert resolve_device("auto", run / "model.safetensors") == torch.device("cpu")  # a model path names its run
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "device": "cuda"}))
    assert run_device(run) == torch.device("cuda")
    # a run trained on a GPU opens on the GPU where there is one, and on the CPU where there is none
    assert resolve_device("auto", run) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu", run) == torch.device("cpu")  # an explicit device is always obeyed


def test_evaluate_uses_auto_by_default_and_names_a_missing_gpu(tmp_path, capsys):
    from consistcam.evaluation import evaluate_run

    run = make_run(tmp_path)
    out = evaluate_run(run, **QUICK, report=False)  # device left to the rule
    assert (out / "metrics.json").is_file()
    if NO_GPU:
        rc = main(["evaluate", str(run), "--device", "cuda", "--subset", "4", "--no-report", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "device: 'cuda' requested but no CUDA GPU is available" in err
        assert "Traceback" not in err


@pytest.mark.parametrize("command", [["evaluate", "RUN"], ["explain", "RUN", "x.png"], ["fool", "RUN", "--out", "o"],
                                     ["influence", "RUN"]])
def test_every_run_command_defaults_to_auto(command):
    from consistcam.cli import build_parser
    from consistcam.evaluation.cli import evaluation_config

    args = build_parser().parse_args(command)
    assert (evaluation_config(args).device if command[0] == "evaluate" else args.device) == "auto"
