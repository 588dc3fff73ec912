"""The config classes that patch files made by eval's own attacks carry, registered before a patch file is read.

`qadtr.attacks.load_patch` rebuilds only registered config classes (qadtr._config). The query attacks' configs and
the scenarios' live above qadtr, so every eval module that reads patch files (eval.replay, eval.report) calls
`register_eval_configs()` first: `eval.on_device --patches` then takes a query attack's or a scenario's patches.
"""

from __future__ import annotations


def register_eval_configs() -> None:
    """Import the modules whose import registers those configs (each registers itself once)."""
    import eval.query.decision  # noqa: F401  DecisionConfig
    import eval.query.sparse_rs  # noqa: F401  SparseRSConfig
    import eval.scenario._stop_config  # noqa: F401  StopSignConfig
