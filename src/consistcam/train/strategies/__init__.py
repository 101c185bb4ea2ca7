"""Training methods as plug-ins: one file and one config dataclass per strategy.

``consistcam list methods`` shows the registered names. A new method is a module with a
``@register_strategy("name")`` class; importing this package registers the built-in ones. Other
packages register theirs through the entry-point group ``consistcam.strategies`` (name ->
``module:Class``), loaded on the first lookup of :data:`STRATEGIES`.
"""

from consistcam.consistency.ecl import ECLConfig  # the ecl strategy's Config is the public API's
from consistcam.train.strategies.base import (
    STRATEGIES,
    NoOptions,
    StepOutput,
    Strategy,
    StrategyContext,
    build_strategy,
    register_strategy,
    strategy_config,
)
from consistcam.train.strategies.cgc import CGC, CGCConfig
from consistcam.train.strategies.dfr import DFR, DFRConfig
from consistcam.train.strategies.ecl import ECL
from consistcam.train.strategies.edda import EDDA, EDDAConfig
from consistcam.train.strategies.erm import ERM
from consistcam.train.strategies.excon import ExCon, ExConConfig
from consistcam.train.strategies.groupdro import GroupDRO, GroupDROConfig
from consistcam.train.strategies.jtt import JTT, JTTConfig
from consistcam.train.strategies.lico import LICO, LICOConfig
from consistcam.train.strategies.reweight_groups import ReweightGroups, ReweightGroupsConfig
from consistcam.train.strategies.sgt import SGT, SGTConfig

__all__ = [
    "CGC",
    "DFR",
    "ECL",
    "EDDA",
    "ERM",
    "JTT",
    "LICO",
    "SGT",
    "STRATEGIES",
    "CGCConfig",
    "DFRConfig",
    "ECLConfig",
    "EDDAConfig",
    "ExCon",
    "ExConConfig",
    "GroupDRO",
    "GroupDROConfig",
    "JTTConfig",
    "LICOConfig",
    "SGTConfig",
    "NoOptions",
    "ReweightGroups",
    "ReweightGroupsConfig",
    "StepOutput",
    "Strategy",
    "StrategyContext",
    "build_strategy",
    "register_strategy",
    "strategy_config",
]
