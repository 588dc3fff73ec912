"""Patch attacks on the deployed artifact: queries through the Runner contract (devices.runtimes.make_runner),
so they run against every registered runtime and, through an agent, a board.

    sparse-rs  score-based random search (Sparse-RS / Patch-RS, Croce et al. 2022): per-image or universal,
               targeted or untargeted, with location search (eval/query/sparse_rs.py)
    decision   top-1 label only: independent draws until fooled, then the visible patch shrinks (decision.py)
    refine.py  transfer-then-refine: sparse-rs started from a white-box fake-quant patch file

The library of `python -m eval.query_attack` is eval/query/run.py. Attacks on fake-quant models live in
qadtr/attacks (torch, gradients); these live in eval/ because they query devices' runners (layering).
"""

from __future__ import annotations

from dataclasses import dataclass

from qadtr._registry import Registry, resolve


@dataclass(frozen=True)
class QueryAttackInfo:
    name: str  # what --attack takes
    config: str  # "module:Class" of its frozen config
    run: str  # "module:function" (runner, images, labels, *, cfg, state_path, inputs, progress) -> QueryOutcome
    doc: str = ""

    def load(self):
        """(config class, attack function), imported on first use."""
        return resolve(self.config), resolve(self.run)


QUERY_ATTACKS: Registry[QueryAttackInfo] = Registry("query attack")
for _row in (
    QueryAttackInfo("sparse-rs", "eval.query.sparse_rs:SparseRSConfig", "eval.query.sparse_rs:sparse_rs",
                    "score-based random search over patch pixels and location (margin loss)"),
    QueryAttackInfo("decision", "eval.query.decision:DecisionConfig", "eval.query.decision:decision_attack",
                    "top-1 label only: find an adversarial patch, then shrink its visible pixels"),
):
    QUERY_ATTACKS.register(_row)
