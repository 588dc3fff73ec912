"""Models created by name (timm's `_registry.py`): `create_model("resnet20", bits=((4, 4),))`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from qadtr._errors import QadtrError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder `fn(quant: QuantSpec | None, num_classes: int) -> nn.Module`."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_builder(arch: str) -> Callable[..., nn.Module]:
    if arch not in _MODELS:
        raise QadtrError(f"unknown model {arch!r}; known: {list_models()}")
    return _MODELS[arch]
