"""One set of shared weights at several bit widths (the basis of DBWT and DWQ).

`QuantNet` holds one fixed-precision Brevitas network per (w, a) pair. All of them share the same
float conv/linear weights (the same `nn.Parameter` objects) and, unless `per_bit_bn`, the same
BatchNorm modules; each keeps its own quantizer scales, which are tiny. `set_bits(model, w, a)`
picks the network that runs; `at_bits(model, w, a)` hands one of them to an exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from qadtr._config import check_state_dict, register_config
from qadtr._errors import QadtrError
from qadtr.bits import Bits, bits_name
from qadtr.models._layers import SUPPORTED_BITS, QuantSpec
from qadtr.models._registry import get_builder, list_models


@register_config
@dataclass(frozen=True)
class ModelConfig:
    """What to build: architecture, classes and the bit widths it runs at."""

    VERSION = 1
    arch: str  # a registered name: resnet20, resnet56, resnet8, test_qnet
    num_classes: int = 10
    bits: tuple[tuple[int, int], ...] = ()  # (w, a) pairs; () = float model
    per_bit_bn: bool = False  # a separate BatchNorm per bit width (switchable-precision nets, DWQ)
    edge_bits: int = 8  # weight bits of the first conv and the classifier
    residual_bits: int = 8  # bits of the residual-add operands

    def __post_init__(self) -> None:
        if self.arch not in list_models():
            raise ValueError(f"unknown model {self.arch!r}; known: {list_models()}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes}; a classifier needs at least 2")
        bits = tuple((int(w), int(a)) for w, a in self.bits)
        object.__setattr__(self, "bits", bits)
        for w, a in bits:
            if w not in SUPPORTED_BITS or a not in SUPPORTED_BITS:
                raise ValueError(f"bits (w={w}, a={a}) not supported; each must be one of {SUPPORTED_BITS}")
        if len(set(bits)) != len(bits):
            raise ValueError(f"bits {bits} repeats a pair; list each (w, a) once")
        if self.per_bit_bn and len(bits) < 2:
            raise ValueError("per_bit_bn needs at least two bit widths; drop it or add bit widths")
        for name in ("edge_bits", "residual_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name}={getattr(self, name)} not supported; choose one of {SUPPORTED_BITS}")

    @property
    def is_quant(self) -> bool:
        return bool(self.bits)

    def spec(self, w: int, a: int, deploy: bool = False) -> QuantSpec:
        return QuantSpec(w, a, self.edge_bits, self.residual_bits, deploy)


class QuantNet(nn.Module):
    """Fixed-precision networks keyed "w4a4" with tied weights; forward runs the active one."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        build = get_builder(cfg.arch)
        self.nets = nn.ModuleDict({bits_name((w, a)): build(cfg.spec(w, a), cfg.num_classes) for w, a in cfg.bits})
        first = next(iter(self.nets.values()))
        for net in list(self.nets.values())[1:]:
            _tie_(net, first, share_bn=not cfg.per_bit_bn)
        self.active = next(iter(self.nets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        return self.nets[self.active](x)


def _tie_(net: nn.Module, ref: nn.Module, share_bn: bool) -> None:
    """Make `net` use `ref`'s float weights (and BatchNorms), in place."""
    ref_modules = dict(ref.named_modules())
    for name, mod in list(net.named_modules()):
        other = ref_modules[name]
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight = other.weight
            if mod.bias is not None:
                mod.bias = other.bias
        elif isinstance(mod, nn.BatchNorm2d) and share_bn:
            parent_name, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, attr, other)


def create_model(cfg: ModelConfig) -> nn.Module:
    """A float network when `cfg.bits` is empty, else a `QuantNet` over `cfg.bits`."""
    if not cfg.is_quant:
        return get_builder(cfg.arch)(None, cfg.num_classes)
    return QuantNet(cfg)


def bits_of(model: nn.Module) -> list[tuple[int, int]]:
    """The (w, a) pairs a model runs at; [] for a float model."""
    if not isinstance(model, QuantNet):
        return []
    return [Bits.parse(k).pair for k in model.nets]


def get_bits(model: nn.Module) -> tuple[int, int] | None:
    if not isinstance(model, QuantNet):
        return None
    return Bits.parse(model.active).pair


def _key(model: nn.Module, w: int, a: int | None, *, what: str) -> str:
    """The model's network key for (w, a) (a defaults to w); QadtrError for a float model or a missing width."""
    a = w if a is None else a
    if not isinstance(model, QuantNet):
        raise QadtrError(f"{what}(w={w}, a={a}) on a float model; build it with bits=(({w}, {a}),)")
    key = str(Bits(w, a))
    if key not in model.nets:
        raise QadtrError(f"model has no {key}; it was built for {list(model.nets)}")
    return key


def set_bits(model: nn.Module, w: int, a: int | None = None) -> None:
    """Switch the active precision for good (a defaults to w); prefer `running_at`, which switches back."""
    model.active = _key(model, w, a, what="set_bits")


@contextmanager
def running_at(model: nn.Module, w: int, a: int | None = None) -> Iterator[nn.Module]:
    """`with running_at(model, 4): model(x)` runs the switchable model at w4a4, then restores its precision."""
    key = _key(model, w, a, what="running_at")
    before, model.active = model.active, key
    try:
        yield model
    finally:
        model.active = before


def at_bits(model: nn.Module, w: int, a: int | None = None) -> nn.Module:
    """The trained fixed-precision network for (w, a), sharing weights with `model` (BatchNorm unfolded);
    `model` itself is left as it was."""
    return model.nets[_key(model, w, a, what="at_bits")]


def deploy_net(model: nn.Module, w: int, a: int | None = None) -> nn.Module:
    """The deployable network for (w, a): BatchNorm folded, int32 bias, eval mode, weights copied; `model`
    itself is left as it was (active precision, train/eval mode).

    This is the fake-quant reference for every exporter and the model attacks and replays run on.
    """
    from qadtr.models._fold import fold_bn

    net = at_bits(model, w, a)
    was_training = net.training
    try:
        return fold_bn(net.eval(), get_builder(model.cfg.arch), model.cfg.num_classes)
    finally:
        net.train(was_training)


# akamaster names -> ours: module.layer2.1.conv1 -> layers.1.1.conv1
def _akamaster_key(key: str) -> str:
    key = key.removeprefix("module.")
    if key.startswith("layer") and not key.startswith("layers."):
        stage, rest = key[len("layer"):].split(".", 1)
        key = f"layers.{int(stage) - 1}.{rest}"
    return key


def _float_state(raw: dict) -> dict:
    """Float tensors keyed as in our float nets, from an akamaster file or one of our checkpoints."""
    state = raw.get("state_dict", raw)
    if any(k.startswith("nets.") for k in state):  # a QuantNet checkpoint: take its first network
        first = next(k for k in state if k.startswith("nets.")).split(".")[1]
        state = {k[len(f"nets.{first}."):]: v for k, v in state.items() if k.startswith(f"nets.{first}.")}
    return {_akamaster_key(k): v for k, v in state.items()}


def load_pretrained_(model: nn.Module, path: str) -> None:
    """Copy float weights (conv, linear, BatchNorm) into a float model or into every net of a QuantNet.

    `path` is an akamaster CIFAR ResNet file (../shared/models/*.th) or a qadtr checkpoint (model.pt).
    Quantizer scales are left alone: they initialise from statistics (see `calibrate_`).
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise QadtrError(f"initial weights {path} not found; pass a file from ../shared/models or a model.pt") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise QadtrError(f"cannot read initial weights {path} ({type(e).__name__}); is it a torch file?") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw  # akamaster files nest it
    state = _float_state(check_state_dict(state, f"initial weights {path}",
                                          "pass an akamaster .th file from ../shared/models or a qadtr model.pt"))
    nets = list(model.nets.values()) if isinstance(model, QuantNet) else [model]
    for net in nets:
        own = net.state_dict()
        float_keys = [k for k in own if not any(s in k for s in ("_quant", "scaling_impl", "normalize."))
                      and not k.endswith("num_batches_tracked")]
        missing = [k for k in float_keys if k not in state]
        if missing:
            raise QadtrError(f"{path} lacks {missing[:3]} for a {type(net).__name__}; wrong architecture?")
        for k in float_keys:
            if own[k].shape != state[k].shape:
                raise QadtrError(f"{path}: {k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}")
        net.load_state_dict({k: state[k] for k in float_keys}, strict=False)
