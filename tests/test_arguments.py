"""consistcam.arguments: flags built from config dataclasses, and what every command shares."""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from consistcam.arguments import (
    DEVICE_HELP,
    Formatter,
    add_config_options,
    config_overrides,
    int_at_least,
    parse_set,
    yaml_value,
)
from consistcam.config import ConfigError, option, validate


@dataclass
class Inner:
    steps: int = option(5, "inner steps", ge=1)


@dataclass
class Toy:
    switch: bool = option(False, "a switch")
    count: int = option(3, "how many", ge=1)
    rate: float = option(0.5, "a rate", gt=0.0)
    name: str | None = option("x", "a name (None: no name)")
    pair: tuple = option((1, 2), "two integers")
    tags: tuple = option(("a",), "tags; repeat the flag")
    device: str = option("auto", "the toy's own device text")
    inner: Inner = option(help="nested, through --set", default_factory=Inner)

    def __post_init__(self) -> None:
        validate(self)


LISTS = {"pair": {"nargs": 2, "type": int, "metavar": ("A", "B")},
         "tags": {"flag": "--tag", "action": "append", "metavar": "TAG"}}


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy", formatter_class=Formatter)
    add_config_options(p, Toy, lists=LISTS, **kw)
    return p


def test_only_given_flags_are_overrides():
    assert config_overrides(_parser().parse_args([]), Toy) == {}
    args = _parser().parse_args(["--switch", "--count", "7", "--rate", "1e-3", "--name", "null", "--pair", "3", "4",
                                 "--tag", "b", "--tag", "c", "--device", "cpu"])
    overrides = config_overrides(args, Toy)
    assert overrides == {"switch": True, "count": 7, "rate": "1e-3", "name": None, "pair": [3, 4],
                         "tags": ["b", "c"], "device": "cpu"}
    assert Toy(**overrides).rate == 0.001  # YAML 1.1 reads 1e-3 as a string; the config makes it a number
    assert config_overrides(_parser().parse_args(["--no-switch"]), Toy) == {"switch": False}
    assert not hasattr(args, "inner")  # nested configs go through --set


def test_values_are_checked_by_the_dataclass_which_names_the_option():
    for argv, message in ((["--count", "0"], "count: must be >= 1, got 0"),
                          (["--count", "2.5"], "count: expected an integer, got 2.5"),
                          (["--rate", "fast"], "rate: expected a number, got 'fast'")):
        with pytest.raises(ConfigError, match=message):
            Toy(**config_overrides(_parser().parse_args(argv), Toy))


def test_prefixes_keep_several_configs_apart():
    p = argparse.ArgumentParser()
    add_config_options(p, Toy, skip=("device",))
    add_config_options(p, Inner, dest_prefix="inner__", flag_prefix="inner-", help_prefix="inner only: ")
    args = p.parse_args(["--count", "2", "--inner-steps", "9"])
    assert config_overrides(args, Toy) == {"count": 2}
    assert config_overrides(args, Inner, dest_prefix="inner__") == {"steps": 9}
    assert "inner only: inner steps (default: 5)" in p.format_help().replace("\n", " ").replace("  ", " ")
    assert "--device" not in p.format_help()


def test_help_shows_the_option_help_and_default():
    text = " ".join(_parser().format_help().split())
    assert "how many (default: 3)" in text and "a rate (default: 0.5)" in text
    assert "a name (None: no name) (default: x)" in text
    assert "--switch, --no-switch a switch (default: False)" in text
    assert f"{DEVICE_HELP} (default: auto)" in text  # the one device text, not the dataclass's
    assert "the toy's own device text" not in text


def test_yaml_values_int_at_least_and_set():
    assert yaml_value("0.001") == 0.001 and yaml_value("null") is None and yaml_value("[1, 2]") == [1, 2]
    assert yaml_value("cuda:0") == "cuda:0" and yaml_value("a: [") == "a: ["
    assert int_at_least(1)("3") == 3
    for bad in ("0", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_at_least(1)(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="must be <= 4"):
        int_at_least(1, 4)("5")
    assert parse_set(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["a"])
    with pytest.raises(ConfigError, match="conflicts"):
        parse_set(["a=1", "a.b=2"])


# -- every command ------------------------------------------------------------------------------------
def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command of ``consistcam``, by its words (``vae train``)."""
    from consistcam.cli import build_parser

    out = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[" ".join(words)] = parser
        for action in subs:
            for name, p in action.choices.items():
                walk(p, (*words, name))

    walk(build_parser(), ())
    return out


# commands that run a model (train or load one): --device; long-running ones: --quiet
MODEL_COMMANDS = {"train", "evaluate", "explain", "demo", "fool", "influence", "vae train", "vae influence"}
LONG_COMMANDS = MODEL_COMMANDS | {"variants", "sweep"}


def test_every_command_has_device_and_quiet_where_it_should_with_one_device_help():
    commands = _commands()
    assert MODEL_COMMANDS | LONG_COMMANDS <= set(commands)
    for name, p in commands.items():
        flags = {s: a for a in p._actions for s in a.option_strings}
        if name in MODEL_COMMANDS:
            assert "--device" in flags, name
            assert flags["--device"].help.startswith(DEVICE_HELP), name
        if name in LONG_COMMANDS:
            assert isinstance(flags.get("--quiet"), argparse._StoreTrueAction), name


def test_vocabulary():
    commands = _commands()
    explain = {s for a in commands["explain"]._actions for s in a.option_strings}
    assert "--explainer" in explain and "--method" not in explain  # method means a training method
    sweep = {s for a in commands["sweep"]._actions for s in a.option_strings}
    assert "--quiet" in sweep and "--progress" not in sweep
    train = {s for a in commands["train"]._actions for s in a.option_strings}
    assert {"--ecl-update-every", "--ecl-score-batch-size"} <= train
    assert not {"--update-every", "--score-batch-size"} & train  # no names from before methods had sections


def test_no_package_imports_the_command_line():
    """The command line sits on top: packages build their flags from consistcam.arguments."""
    src = Path(__file__).parents[1] / "src" / "consistcam"
    offenders = []
    for path in src.rglob("*.py"):
        if path.name == "__main__.py" and path.parent == src:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "consistcam":
                names = [f"consistcam.{a.name}" for a in node.names]
            if any(n == "consistcam.cli" for n in names):
                offenders.append(str(path.relative_to(src)))
    assert offenders == []
    arguments = ast.parse((src / "arguments.py").read_text())
    imported = {n.module for n in ast.walk(arguments) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("consistcam")} <= {"consistcam.config", "consistcam.run.device"}


def _configs_with_choices() -> list[type]:
    """Every options dataclass of the package that documents choices (imports each module once)."""
    import dataclasses
    import importlib
    import pkgutil

    import consistcam

    found = []
    for info in pkgutil.walk_packages(consistcam.__path__, "consistcam."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                  and any(f.metadata.get("choices") is not None for f in dataclasses.fields(obj))]
    return found


def test_every_documented_choice_of_every_option_passes_the_command_line():
    """``--preload off`` used to be refused: flag and ``--set`` values are read as YAML, which reads
    on/off/yes/no as booleans. Each choice goes through a flag, through ``--set`` and through a YAML file."""
    import dataclasses

    from consistcam.config import _choices, from_dict, load_yaml

    configs = _configs_with_choices()
    names = {cls.__name__ for cls in configs}
    assert {"TrainConfig", "CGCConfig", "SGTConfig", "ConsistencyConfig", "FoolConfig", "VAEConfig"} <= names
    checked = 0
    for cls in configs:
        parser = argparse.ArgumentParser()
        add_config_options(parser, cls)
        for f in dataclasses.fields(cls):
            for choice in _choices(f) or ():
                flag = "--" + f.name.replace("_", "-")
                given = {"flag": config_overrides(parser.parse_args([flag, str(choice)]), cls),
                         "--set": parse_set([f"{f.name}={choice}"]), "yaml": load_yaml(f"{f.name}: {choice}")}
                for route, overrides in given.items():
                    assert getattr(from_dict(cls, overrides), f.name) == choice, (cls.__name__, f.name, choice, route)
                checked += 1
    assert checked > 60


def test_yaml_booleans_stay_booleans_where_no_choice_is_meant():
    from consistcam.config import from_dict
    from consistcam.train import TrainConfig

    assert from_dict(TrainConfig, {"preload": False}).preload == "off"  # what YAML makes of `off`
    with pytest.raises(ConfigError, match="augment: expected a string, got False"):
        from_dict(TrainConfig, {"augment": False})  # no choice YAML reads as false


def test_every_choice_of_the_commands_own_flags_is_accepted():
    """Flags with argparse choices, on every sub-command: each documented choice converts and is accepted."""
    from consistcam.cli import build_parser

    parsers, seen = [build_parser()], 0
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
            elif action.choices is not None:
                for choice in action.choices:
                    assert (action.type or str)(str(choice)) in action.choices, (parser.prog, action.dest, choice)
                    seen += 1
    assert seen >= 5  # `list` has five
