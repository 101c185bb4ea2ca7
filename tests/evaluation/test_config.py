"""EvaluationConfig: the defaults of ``evaluate_run`` and ``consistcam evaluate`` are written once."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from consistcam.cli import build_parser, main
from consistcam.config import ConfigError
from consistcam.consistency import ConsistencyConfig
from consistcam.evaluation import PROTOCOLS, EvaluationConfig, evaluate_run
from consistcam.evaluation.cli import evaluation_config, parse_evaluate_args
from tests.evaluation.runs import make_run


def test_cli_defaults_are_the_dataclass_defaults():
    args = build_parser().parse_args(["evaluate", "RUN"])
    assert evaluation_config(args) == EvaluationConfig()
    config = EvaluationConfig()
    assert config.explainers == ("gradcam",) and config.protocols == PROTOCOLS and config.background
    assert (config.faithfulness_steps, config.batch_size, config.workers, config.seed) == (16, 200, 0, 0)
    assert config.device == "auto" and config.subset is None and config.skip_bad is None
    # the consistency scorer is the one evaluate_run hard-coded before it had a config
    assert config.consistency == ConsistencyConfig()


def test_flags_set_the_config_and_set_reaches_the_consistency_scorer():
    config, args = parse_evaluate_args("RUN", ["--explainer", "gradcam", "--explainer", "layercam", "--protocols",
                                               "localization,consistency", "--no-background", "--subset", "8",
                                               "--set", "consistency.steps=2", "--set", "consistency.tau=0.3",
                                               "--no-skip-bad", "--out", "o"])
    assert config == EvaluationConfig(explainers=("gradcam", "layercam"), protocols=("localization", "consistency"),
                                      background=False, subset=8, skip_bad=False,
                                      consistency=ConsistencyConfig(steps=2, tau=0.3))
    assert args.out == "o"
    assert parse_evaluate_args("RUN", ["--protocols", "all"])[0].protocols == PROTOCOLS
    with pytest.raises(ConfigError, match="unknown protocol"):
        parse_evaluate_args("RUN", ["--protocols", "localisation"])
    with pytest.raises(ConfigError, match="unknown option 'consistency.stpes'"):
        parse_evaluate_args("RUN", ["--set", "consistency.stpes=2"])
    assert EvaluationConfig(explainers="layercam").explainers == ("layercam",)


def test_evaluate_run_with_a_config_equals_the_command_line(tmp_path, capsys):
    run = make_run(tmp_path)
    config = EvaluationConfig(subset=16, batch_size=8, protocols=("localization", "consistency", "equivariance"),
                              background=False, faithfulness_steps=2, examples=2, seed=1,
                              consistency=ConsistencyConfig(steps=2))
    api = evaluate_run(run, config, splits=("test",), out=tmp_path / "api", report=False, progress=False)
    assert main(["evaluate", str(run), "--split", "test", "--subset", "16", "--batch-size", "8", "--protocols",
                 "localization,consistency,equivariance", "--no-background", "--faithfulness-steps", "2",
                 "--examples", "2", "--seed", "1", "--set", "consistency.steps=2", "--no-report", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    docs = [json.loads((out / "metrics.json").read_text()) for out in (api, tmp_path / "cli")]
    assert docs[0]["splits"] == docs[1]["splits"]
    assert docs[0]["meta"]["consistency"] == docs[1]["meta"]["consistency"]
    assert docs[0]["meta"]["consistency"]["steps"] == 2 and docs[0]["meta"]["consistency"]["seed"] == 1
    a, b = (load_file(str(out / "per_sample_test.safetensors")) for out in (api, tmp_path / "cli"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # keyword options replace fields of the config (and are checked like it)
    again = evaluate_run(run, config, splits=("test",), out=tmp_path / "kw", report=False, progress=False,
                         consistency=dataclasses.replace(config.consistency))
    assert json.loads((again / "metrics.json").read_text())["splits"] == docs[0]["splits"]
    with pytest.raises(ConfigError, match="unknown option 'subsett'; did you mean subset"):
        evaluate_run(run, config, subsett=4)
