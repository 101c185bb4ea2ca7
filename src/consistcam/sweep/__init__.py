"""Sweeps: a grid of training options x seeds, run (resumably, shardable) and tabulated against a baseline.

``consistcam sweep CONFIG --grid key=v1,v2 --seeds 0 1 2 --out DIR`` (docs/sweep.md). The pieces:
:mod:`.grid` (members, folder names, shards), :mod:`.runner` (train, resume, evaluate, collect),
:mod:`.stats` (mean ± std, paired difference, verdict), :mod:`.table` (markdown/CSV/JSON, plot).
"""

from consistcam.sweep.grid import Arm, Member, expand_arms, members, parse_grid_item, parse_shard, select_arm, shard
from consistcam.sweep.runner import collect, evaluate_member, member_config, run_members, train_member
from consistcam.sweep.stats import Paired, Summary, paired, summarize, t_quantile
from consistcam.sweep.table import build_rows, write_outputs

__all__ = ["Arm", "Member", "Paired", "Summary", "build_rows", "collect", "evaluate_member", "expand_arms",
           "member_config", "members", "paired", "parse_grid_item", "parse_shard", "run_members", "select_arm",
           "shard", "summarize", "t_quantile", "train_member", "write_outputs"]
