"""Training methods as plug-ins: one file and one config dataclass per strategy.

``consistcam list methods`` shows the registered names. A new method is a module with a
``@register_strategy("name")`` class; importing this package registers the built-in ones.
"""

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
from consistcam.train.strategies.ecl import ECL, ECLConfig
from consistcam.train.strategies.erm import ERM

__all__ = [
    "ECL",
    "ERM",
    "STRATEGIES",
    "ECLConfig",
    "NoOptions",
    "StepOutput",
    "Strategy",
    "StrategyContext",
    "build_strategy",
    "register_strategy",
    "strategy_config",
]
