"""Models created by name (timm's `_registry.py`): `create_model("resnet20", bits=((4, 4),))`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from qadtr._registry import Registry, UnknownName, resolve


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what --model takes
    builder: str | Callable[..., nn.Module]  # `fn(quant: QuantSpec | None, num_classes: int)`, or "module:fn"
    doc: str = ""


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder `fn(quant: QuantSpec | None, num_classes: int) -> nn.Module` by its name."""
    MODELS.register(ModelInfo(fn.__name__, fn, doc=(fn.__doc__ or "").strip().split("\n")[0]))
    return fn


def list_models() -> list[str]:
    return sorted(MODELS)


def get_builder(arch: str) -> Callable[..., nn.Module]:
    if arch not in MODELS:  # the message lists the models sorted, as --help does
        raise UnknownName(f"unknown model {arch!r}; known: {list_models()}")
    return resolve(MODELS.get(arch).builder, what=f"model {arch!r}")
