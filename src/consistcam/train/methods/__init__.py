"""Training methods as plug-ins: one file and one config dataclass per method.

``consistcam list methods`` shows the registered names. A new method is a module with a
``@register_method("name")`` class; importing this package registers the built-in ones. Other
packages register theirs through the entry-point group ``consistcam.strategies`` (name ->
``module:Class``), loaded on the first lookup of :data:`METHODS`.
"""

from consistcam.consistency.ecl import ECLConfig  # the ecl method's Config is the public API's
from consistcam.train.methods.base import (
    METHODS,
    Method,
    MethodContext,
    NoOptions,
    StepOutput,
    build_method,
    method_config,
    register_method,
)
from consistcam.train.methods.cgc import CGC, CGCConfig
from consistcam.train.methods.dfr import DFR, DFRConfig
from consistcam.train.methods.ecl import ECL
from consistcam.train.methods.edda import EDDA, EDDAConfig
from consistcam.train.methods.erm import ERM
from consistcam.train.methods.excon import ExCon, ExConConfig
from consistcam.train.methods.groupdro import GroupDRO, GroupDROConfig
from consistcam.train.methods.jtt import JTT, JTTConfig
from consistcam.train.methods.lico import LICO, LICOConfig
from consistcam.train.methods.reweight_groups import ReweightGroups, ReweightGroupsConfig
from consistcam.train.methods.sgt import SGT, SGTConfig

__all__ = [
    "CGC",
    "DFR",
    "ECL",
    "EDDA",
    "ERM",
    "JTT",
    "LICO",
    "SGT",
    "METHODS",
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
    "Method",
    "MethodContext",
    "build_method",
    "register_method",
    "method_config",
]
