"""The attack table: one row per white-box patch attack, found by name (--attack) or by its config's type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qadtr._registry import Registry


@dataclass(frozen=True)
class AttackInfo:
    name: str  # what --attack takes
    config: type  # its frozen config class; attack_for_config(cfg) finds the row by type(cfg)
    function: str | Callable  # `fn(net, images, labels, *, cfg, progress=...) -> Patch`, or "module:fn"
    doc: str = ""


ATTACK_ROWS: Registry[AttackInfo] = Registry("attack")
ATTACKS = ATTACK_ROWS.view(("config", "function"))  # name -> (config class, attack function), the older shape


def attack_for_config(cfg: Any) -> AttackInfo:
    """The attack row whose config class is `type(cfg)`; UnknownName (a QadtrError) for any other config."""
    return ATTACK_ROWS.for_config(cfg)
