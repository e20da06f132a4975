"""Python benchmarks, one module per op family; `frspec bench` runs them.

Each module exposes `run(device, quick) -> list[dict]`, rows that name the
implementation, its time and its ratio to the ceiling measured in the same run.
"""

from . import apb, decoder, e2e, lm_head_topk, merge_states, tree

SUITES = {"merge_states": merge_states.run, "lm_head_topk": lm_head_topk.run, "tree": tree.run, "apb": apb.run,
          "decoder": decoder.run, "e2e": e2e.run}
# `frspec bench` with no names runs these (e2e loads an 8B model: ask for it by name)
DEFAULT_SUITES = ("merge_states", "lm_head_topk", "tree", "apb", "decoder")
