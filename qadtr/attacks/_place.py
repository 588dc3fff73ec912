"""Placing a square patch on images: differentiable for attacks, byte-exact for replay.

One geometry serves both paths. A `Placement` records, per image, the top-left corner (x, y) of the
scaled, unrotated patch square, its rotation angle (degrees, about the square's centre), its scale
and a brightness factor. Pixel (r, c) of the image is covered when its centre, rotated back by the
angle and divided by the scale, lands inside the patch; it then takes the patch pixel it lands in
(nearest neighbour, no interpolation) times the brightness, clipped to [0, 1] and rounded to the
uint8 grid.

Why this is reproducible byte for byte on any machine:
- The index map (which patch pixel covers which image pixel) is computed in float64 from the
  recorded float32 placement values using only +, -, *, / and floor, which IEEE-754 rounds the same
  everywhere (numpy evaluates them element by element; nothing is fused into an FMA). cos/sin come
  from a fixed Taylor polynomial in plain float64 arithmetic (`_cos_sin`), not from libm, whose last
  bits may differ between platforms.
- Pixel values are computed in float32: v = clip(patch * brightness, 0, 1), then rint(v * 255) with
  round-half-to-even (numpy and torch agree), so the result is a uint8. Clean pixels stay untouched.
- The differentiable path (`apply_patch`) uses the same index map and rounds with a straight-through
  estimator, so its forward output equals `to_tensor(rebuild(...))` exactly (tested).

Example:
    >>> rng = np.random.default_rng(0)
    >>> pl = sample_placements(4, side=10, hw=(32, 32), eot=EOTConfig(), rng=rng)
    >>> adv = rebuild(images_uint8, patch_values, pl)  # (4, 32, 32, 3) uint8
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from qadtr._config import register_config
from qadtr._errors import QadtrError

LOCATIONS = ("random", "fixed")


@register_config
@dataclass(frozen=True)
class EOTConfig:
    """Expectation over transformations: the range each placement parameter is drawn from."""

    VERSION = 1
    location: str = "random"  # random: uniform over positions where the (rotated) patch fits; fixed: at xy
    xy: tuple[int, int] = (0, 0)  # top-left (x=column, y=row) when location="fixed"
    max_angle: float = 0.0  # rotation drawn uniformly from [-max_angle, max_angle] degrees
    scale: tuple[float, float] = (1.0, 1.0)  # side multiplier drawn uniformly from [lo, hi]
    brightness: tuple[float, float] = (1.0, 1.0)  # multiplicative brightness drawn uniformly from [lo, hi]

    def __post_init__(self) -> None:
        object.__setattr__(self, "xy", tuple(int(v) for v in self.xy))
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "brightness", tuple(float(v) for v in self.brightness))
        if self.location not in LOCATIONS:
            raise ValueError(f"location={self.location!r}; choose one of {LOCATIONS}")
        if len(self.xy) != 2 or min(self.xy) < 0:
            raise ValueError(f"xy={self.xy} must be two non-negative pixel coordinates (column, row)")
        if not 0.0 <= self.max_angle <= 180.0:
            raise ValueError(f"max_angle={self.max_angle} must be in [0, 180] degrees")
        for name in ("scale", "brightness"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{name}={lo_hi} must be (lo, hi) with 0 < lo <= hi, e.g. (0.9, 1.1)")
        if self.location == "fixed" and (self.max_angle or self.scale != (1.0, 1.0)):
            raise ValueError("a fixed location takes no rotation or scaling; set max_angle=0, scale=(1, 1)")


@dataclass(frozen=True, eq=False)
class Placement:
    """Where and how the patch sits on each of N images (all float32/int32 arrays of shape (N,))."""

    x: np.ndarray  # (N,) int32, column of the scaled square's top-left corner
    y: np.ndarray  # (N,) int32, row of the scaled square's top-left corner
    angle: np.ndarray  # (N,) float32, degrees, counter-clockwise about the square's centre
    scale: np.ndarray  # (N,) float32, side multiplier
    brightness: np.ndarray  # (N,) float32, pixel multiplier

    FIELDS = ("x", "y", "angle", "scale", "brightness")

    def __post_init__(self) -> None:
        dtypes = {"x": np.int32, "y": np.int32}
        n = None
        for name in self.FIELDS:
            arr = np.ascontiguousarray(getattr(self, name), dtype=dtypes.get(name, np.float32)).reshape(-1)
            object.__setattr__(self, name, arr)
            if n is not None and len(arr) != n:
                raise QadtrError(f"placement field {name} has {len(arr)} entries, x has {n}; re-run the attack")
            n = len(arr)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> "Placement":
        return Placement(*(np.atleast_1d(getattr(self, f)[idx]) for f in self.FIELDS))

    def to_arrays(self, prefix: str = "placement_") -> dict[str, np.ndarray]:
        return {prefix + f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "placement_") -> "Placement":
        return cls(*(arrays[prefix + f] for f in cls.FIELDS))

    @classmethod
    def fixed(cls, n: int, x: int, y: int) -> "Placement":
        return cls(np.full(n, x), np.full(n, y), np.zeros(n), np.ones(n), np.ones(n))


class PatchSizeError(QadtrError, ValueError):
    """A patch size that is no fraction of the image, or a patch larger than the image: one line for a user (a
    QadtrError, wherever it is raised) and a ValueError for a library caller."""


def patch_side(size: float, hw: tuple[int, int]) -> int:
    """Side in pixels of a square patch covering `size` (a fraction) of an image of `hw` pixels.

    Rounded to the nearest pixel: on 32x32, 2% -> 5 px (2.4%), 5% -> 7 px (4.8%), 10% -> 10 px (9.8%).
    """
    if not 0.0 < size < 1.0:
        raise PatchSizeError(f"patch size {size} must be a fraction of the image area in (0, 1), e.g. 0.05")
    side = max(1, round(math.sqrt(size * hw[0] * hw[1])))
    if side > min(hw):
        raise PatchSizeError(f"a {size:.0%} patch ({side} px) does not fit a {hw[0]}x{hw[1]} image")
    return side


def _cos_sin(degrees: float) -> tuple[float, float]:
    """cos and sin from a fixed Taylor polynomial in float64 (+ and * only): identical on every machine."""
    t = float(np.float32(degrees)) * (math.pi / 180.0)  # |t| <= pi: terms to t^31 reach < 1e-16
    c, s, term_c, term_s = 0.0, 0.0, 1.0, t
    for k in range(16):
        c += term_c
        s += term_s
        term_c = term_c * (-t * t) / ((2 * k + 1) * (2 * k + 2))
        term_s = term_s * (-t * t) / ((2 * k + 2) * (2 * k + 3))
    return c, s


def _extent(side: int, scale: float, angle: float) -> float:
    """Side of the axis-aligned box around the rotated, scaled patch."""
    c, s = _cos_sin(angle)
    return side * scale * (abs(c) + abs(s))


def sample_placements(n: int, *, side: int, hw: tuple[int, int], eot: EOTConfig,
                      rng: np.random.Generator) -> Placement:
    """Draw n placements from the EOT ranges; the rotated patch always lies inside the image."""
    h, w = hw
    if eot.location == "fixed":
        x, y = eot.xy
        if x + side > w or y + side > h:
            raise QadtrError(f"a {side}px patch at xy={eot.xy} leaves the {h}x{w} image; move it or shrink it")
        return Placement.fixed(n, x, y)
    angle = rng.uniform(-eot.max_angle, eot.max_angle, n).astype(np.float32)
    scale = rng.uniform(*eot.scale, n).astype(np.float32)
    bright = rng.uniform(*eot.brightness, n).astype(np.float32)
    xs, ys = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
        sq = side * float(scale[i])  # side of the unrotated square
        margin = math.ceil((_extent(side, float(scale[i]), float(angle[i])) - sq) / 2)  # rotation overhang
        hi_x, hi_y = math.floor(w - sq) - margin, math.floor(h - sq) - margin
        if hi_x < margin or hi_y < margin:
            raise QadtrError(f"a {side}px patch scaled by {scale[i]:.2f} and rotated {angle[i]:.0f} deg does not "
                             f"fit a {h}x{w} image; lower EOTConfig.scale or max_angle")
        xs[i], ys[i] = rng.integers(margin, hi_x + 1), rng.integers(margin, hi_y + 1)
    return Placement(xs, ys, angle, scale, bright)


def index_map(placement: Placement, side: int, hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) int64: the flat patch index (row * side + col) covering each image pixel, -1 if none."""
    h, w = hw
    n = len(placement)
    cos_sin = np.array([_cos_sin(a) for a in placement.angle], dtype=np.float64).reshape(n, 2, 1, 1)
    cos, sin = cos_sin[:, 0], cos_sin[:, 1]  # (N, 1, 1)
    scale = placement.scale.astype(np.float64).reshape(n, 1, 1)
    cx = placement.x.astype(np.float64).reshape(n, 1, 1) + side * scale / 2  # square centre
    cy = placement.y.astype(np.float64).reshape(n, 1, 1) + side * scale / 2
    dx = (np.arange(w, dtype=np.float64) + 0.5).reshape(1, 1, w) - cx  # (N, 1, W) pixel centres
    dy = (np.arange(h, dtype=np.float64) + 0.5).reshape(1, h, 1) - cy  # (N, H, 1)
    u = (cos * dx + sin * dy) / scale + side / 2  # (N, H, W) patch column, rotated back by -angle
    v = (cos * dy - sin * dx) / scale + side / 2  # (N, H, W) patch row
    col, row = np.floor(u), np.floor(v)
    inside = (col >= 0) & (col < side) & (row >= 0) & (row < side)
    return np.where(inside, row * side + col, -1).astype(np.int64)


def _check(patch_shape: tuple[int, ...], n_images: int, placement: Placement) -> int:
    if len(patch_shape) not in (3, 4) or patch_shape[-3] != 3 or patch_shape[-1] != patch_shape[-2]:
        raise QadtrError(f"patch shape {patch_shape}; expected (3, s, s) or (N, 3, s, s)")
    if len(patch_shape) == 4 and patch_shape[0] != n_images:
        raise QadtrError(f"{patch_shape[0]} per-image patches for {n_images} images")
    if len(placement) != n_images:
        raise QadtrError(f"{len(placement)} placements for {n_images} images; one placement per image")
    return patch_shape[-1]


class _RoundSTE(torch.autograd.Function):
    """Round to the uint8 grid (k / 255) in the forward pass, identity gradient (straight-through).

    A Function rather than `v + (q - v).detach()`: that sum can be off q by one float32 ulp.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        return torch.round(v * 255.0) / 255.0  # half-to-even, like np.rint in `rebuild`

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def apply_patch(images: torch.Tensor, patch: torch.Tensor, placement: Placement, *,
                quantize: bool = True) -> torch.Tensor:
    """Paste `patch` onto `images` at `placement`, differentiably in the patch values.

    Args:
        images: (B, 3, H, W) float32 in [0, 1] (from `qadtr.predict.to_tensor`).
        patch: (3, s, s) universal or (B, 3, s, s) per-image float32 in [0, 1].
        placement: B placements.
        quantize: round patch pixels to the uint8 grid (straight-through gradient), so the output
            equals `to_tensor(rebuild(...))` bit for bit.

    Returns:
        (B, 3, H, W) patched images.
    """
    b, _, h, w = images.shape
    side = _check(tuple(patch.shape), b, placement)
    idx = torch.from_numpy(index_map(placement, side, (h, w)))  # (B, H, W)
    mask = (idx >= 0).unsqueeze(1)  # (B, 1, H, W)
    flat = patch.reshape(*patch.shape[:-2], side * side)  # (3, s*s) or (B, 3, s*s)
    if flat.dim() == 2:
        src = flat[:, idx.clamp(min=0)].permute(1, 0, 2, 3)  # (B, 3, H, W)
    else:
        gather = idx.clamp(min=0).reshape(b, 1, h * w).expand(b, 3, h * w)
        src = torch.gather(flat, 2, gather).reshape(b, 3, h, w)  # (B, 3, H, W)
    bright = torch.from_numpy(placement.brightness).view(b, 1, 1, 1)
    src = (src * bright).clamp(0.0, 1.0)
    if quantize:
        src = _RoundSTE.apply(src)
    return torch.where(mask, src, images)


def rebuild(images: np.ndarray, patch: np.ndarray, placement: Placement) -> np.ndarray:
    """The patched images as uint8, a deterministic CPU function of (images, patch, placement).

    Args:
        images: (N, H, W, 3) uint8 clean images.
        patch: (3, s, s) or (N, 3, s, s) float32 in [0, 1].
        placement: N placements.

    Returns:
        (N, H, W, 3) uint8; equal byte for byte on every machine for the same inputs.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise QadtrError(f"rebuild takes (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    patch = np.asarray(patch, dtype=np.float32)
    side = _check(patch.shape, n, placement)
    idx = index_map(placement, side, (h, w))  # (N, H, W)
    flat = patch.reshape(*patch.shape[:-2], side * side)  # (3, s*s) or (N, 3, s*s)
    if flat.ndim == 2:
        src = flat[:, np.clip(idx, 0, None)].transpose(1, 2, 3, 0)  # (N, H, W, 3)
    else:
        src = np.take_along_axis(flat, np.clip(idx, 0, None).reshape(n, 1, h * w), axis=2)  # (N, 3, H*W)
        src = src.reshape(n, 3, h, w).transpose(0, 2, 3, 1)  # (N, H, W, 3)
    src = np.clip(src * placement.brightness.reshape(n, 1, 1, 1), np.float32(0), np.float32(1))  # float32
    pixels = np.rint(src * np.float32(255)).astype(np.uint8)
    return np.where((idx >= 0)[..., None], pixels, images)
