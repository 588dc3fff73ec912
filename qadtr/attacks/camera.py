"""The camera a stop-sign photo passes through: pose, exposure, defocus and JPEG, byte-exact on every machine.

It acts on the WHOLE image (sign with the sticker already pasted), so the sticker moves, tilts, darkens and
blurs with the sign. One implementation serves expectation-over-transformation (EOT) training of a physical
sticker (`CameraNet`, differentiable) and the replayed test images (`camera_uint8`). Per image, a `View` records:
- geometry: rotation about the image centre, scale (distance), shift, projective tilt (the far edge shrinks);
- photometry: y = ((x - 0.5) * contrast + 0.5) * brightness, clipped to [0, 1];
- blur: a 3x3 binomial filter ([1, 2, 1] outer [1, 2, 1] / 16) on some images (defocus, motion);
- JPEG at a drawn quality on some images (Pillow encode then decode).

Why each stage is byte-exact on every machine:
- Geometry: the output->source index map is float64 from the float32 view values with only + - * / and floor
  (numpy evaluates them element by element, nothing is fused), cos/sin from `_place._cos_sin` (a fixed
  polynomial, no libm); the images are then gathered (a copy of values, nearest neighbour, edges replicated).
- Photometry: float32 elementwise * + -, clip, then round half to even to the uint8 grid (k / 255).
- Blur: on the integer grid k = y * 255 (exact integers in float32) as shifted-slice adds of integers < 2^24,
  exact in any order; the division by 16 is exact and is followed by round half to even.
- JPEG: uint8 in, uint8 out, through Pillow's bundled libjpeg-turbo with its default integer DCT (exact
  integer arithmetic, its SIMD paths equal to its C code): the same bytes for the same Pillow build.
Every rounding passes the gradient straight through (JPEG included: BPDA), so the input pixels get a gradient.

Example:
    >>> cfg = CameraConfig()
    >>> views = sample_views(len(images), cfg, np.random.default_rng(0), hw=images.shape[1:3])
    >>> photos = camera_uint8(images, views)  # (N, H, W, 3) uint8, the same bytes on every machine
    >>> patch = universal_patch(CameraNet(net, cfg, seed=0), train.images, train.labels, cfg=ucfg)  # EOT
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from qadtr._config import register_config
from qadtr._errors import QadtrError
from qadtr.attacks._place import _cos_sin, _RoundSTE
from qadtr.predict import to_tensor

_MIN_DENOMINATOR = 0.5  # floor of the projective denominator 1 + gx*dx + gy*dy (see `view_index`)


@register_config
@dataclass(frozen=True)
class CameraConfig:
    """The range each camera parameter is drawn from (`sample_views`)."""

    VERSION = 1
    max_angle: float = 10.0  # degrees; a hand-held camera is rarely level: rotation uniform in [-max_angle, max_angle]
    scale: tuple[float, float] = (0.9, 1.1)  # sign size multiplier (distance to the sign) uniform in [lo, hi]
    shift: float = 2.0  # pixels; the sign is never exactly centred: translation uniform in [-shift, shift] per axis
    perspective: float = 0.1  # a sign seen at an angle: the far edge shrinks by up to this fraction, per axis
    brightness: tuple[float, float] = (0.7, 1.3)  # exposure and daylight: multiplicative, uniform in [lo, hi]
    contrast: tuple[float, float] = (0.7, 1.3)  # haze and glare: contrast about mid-grey 0.5, uniform in [lo, hi]
    blur: float = 0.5  # probability of a 3x3 binomial blur (defocus, motion)
    jpeg: tuple[int, int] = (60, 95)  # phones save JPEG: quality uniform in [lo, hi] (integers); (0, 0) = no JPEG

    def __post_init__(self) -> None:
        for name in ("scale", "brightness", "contrast"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "jpeg", tuple(int(v) for v in self.jpeg))
        for name, hi, example in (("max_angle", 45.0, 10), ("shift", 8.0, 2), ("perspective", 0.5, 0.1),
                                  ("blur", 1.0, 0.5)):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, {hi:g}], e.g. {example}")
        for name, hi in (("scale", 2.0), ("brightness", 3.0), ("contrast", 3.0)):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= hi:
                raise ValueError(f"{name}={lo_hi} must be (lo, hi) with 0 < lo <= hi <= {hi:g}, e.g. (0.9, 1.1)")
        if len(self.jpeg) != 2 or (self.jpeg != (0, 0) and not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100):
            raise ValueError(f"jpeg={self.jpeg} must be (lo, hi) qualities with 1 <= lo <= hi <= 100, e.g. (60, 95), "
                             "or (0, 0) for no JPEG")


@dataclass(frozen=True, eq=False)
class View:
    """The camera parameters of each of N images (arrays of shape (N,))."""

    angle: np.ndarray  # (N,) float32, degrees about the image centre; > 0 turns the image clockwise on screen
    scale: np.ndarray  # (N,) float32, sign size multiplier (> 1: closer)
    dx: np.ndarray  # (N,) float32, pixels, shift to the right
    dy: np.ndarray  # (N,) float32, pixels, shift down
    gx: np.ndarray  # (N,) float32, 1/pixels, projective term along columns (tilt / (W / 2))
    gy: np.ndarray  # (N,) float32, 1/pixels, projective term along rows (tilt / (H / 2))
    brightness: np.ndarray  # (N,) float32, pixel multiplier
    contrast: np.ndarray  # (N,) float32, multiplier of the distance from mid-grey
    blur: np.ndarray  # (N,) bool, 3x3 binomial blur
    jpeg: np.ndarray  # (N,) int32, JPEG quality 1..100; 0 = none

    FIELDS = ("angle", "scale", "dx", "dy", "gx", "gy", "brightness", "contrast", "blur", "jpeg")

    def __post_init__(self) -> None:
        dtypes = {"blur": np.bool_, "jpeg": np.int32}
        n = None
        for name in self.FIELDS:
            arr = np.ascontiguousarray(getattr(self, name), dtype=dtypes.get(name, np.float32)).reshape(-1)
            object.__setattr__(self, name, arr)
            if n is not None and len(arr) != n:
                raise QadtrError(f"view field {name} has {len(arr)} entries, angle has {n}; re-draw the views")
            if name not in dtypes and not np.isfinite(arr).all():
                raise QadtrError(f"view field {name} holds a non-finite value; re-draw the views")
            n = len(arr)
        if (self.scale <= 0).any() or ((self.jpeg < 0) | (self.jpeg > 100)).any():
            raise QadtrError("view scales must be > 0 and JPEG qualities in 0..100; re-draw the views")

    def __len__(self) -> int:
        return len(self.angle)

    def __getitem__(self, idx) -> "View":
        return View(*(np.atleast_1d(getattr(self, f)[idx]) for f in self.FIELDS))

    def to_arrays(self, prefix: str = "view_") -> dict[str, np.ndarray]:
        return {prefix + f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "view_") -> "View":
        return cls(*(arrays[prefix + f] for f in cls.FIELDS))


def sample_views(n: int, cfg: CameraConfig, rng: np.random.Generator, *, hw: tuple[int, int]) -> View:
    """Draw n views from the ranges of `cfg` for (H, W) = `hw` images.

    Draw order (fixed, so a seed gives the same views): n angles, n scales, n dx, n dy, n tilts along columns,
    n tilts along rows, n brightness, n contrast factors (each `rng.uniform`), n blur coins (`rng.random`),
    n JPEG qualities (`rng.integers`, inclusive; all 0 when cfg.jpeg is (0, 0)).
    """
    h, w = hw
    angle = rng.uniform(-cfg.max_angle, cfg.max_angle, n)
    scale = rng.uniform(*cfg.scale, n)
    dx = rng.uniform(-cfg.shift, cfg.shift, n)
    dy = rng.uniform(-cfg.shift, cfg.shift, n)
    tilt_x = rng.uniform(-cfg.perspective, cfg.perspective, n)
    tilt_y = rng.uniform(-cfg.perspective, cfg.perspective, n)
    bright = rng.uniform(*cfg.brightness, n)
    contrast = rng.uniform(*cfg.contrast, n)
    blur = rng.random(n) < cfg.blur
    jpeg = rng.integers(cfg.jpeg[0], cfg.jpeg[1] + 1, n)
    return View(angle, scale, dx, dy, tilt_x / (w / 2), tilt_y / (h / 2), bright, contrast, blur, jpeg)


def view_index(view: View, hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) int64: the flat index (row * W + col) of the source pixel each output pixel shows.

    With c the image centre, q an output pixel centre and d = q - c - (dx, dy), the source point is
    c + R(-angle) d / scale / (1 + gx * d_x + gy * d_y), taken nearest neighbour and clamped to the image
    (edges replicated). float64, + - * / and floor only: the same map on every machine.
    """
    h, w = hw
    n = len(view)
    cos_sin = np.array([_cos_sin(a) for a in view.angle], dtype=np.float64).reshape(n, 2, 1, 1)
    cos, sin = cos_sin[:, 0], cos_sin[:, 1]  # (N, 1, 1)

    def per_image(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64).reshape(n, 1, 1)

    cx, cy = w / 2, h / 2
    d_x = (np.arange(w, dtype=np.float64) + 0.5).reshape(1, 1, w) - cx - per_image(view.dx)  # (N, 1, W)
    d_y = (np.arange(h, dtype=np.float64) + 0.5).reshape(1, h, 1) - cy - per_image(view.dy)  # (N, H, 1)
    den = 1.0 + per_image(view.gx) * d_x + per_image(view.gy) * d_y  # (N, H, W)
    # den >= 1 - perspective * (|d_x| / (W/2) + |d_y| / (H/2)), so drawn views keep den >= 0.5 at perspective
    # <= 0.25 without shift (the defaults: den >= 0.78 on 32x32 with the 2 px shift). Past that (corners at
    # perspective 0.5, or large shifts on tiny images) the floor keeps the map finite and unmirrored; exact.
    den = np.maximum(den, _MIN_DENOMINATOR)
    scale = per_image(view.scale)
    u = (cos * d_x + sin * d_y) / scale / den + cx  # (N, H, W) source column, rotated back by -angle
    v = (cos * d_y - sin * d_x) / scale / den + cy  # (N, H, W) source row
    col = np.clip(np.floor(u), 0, w - 1)
    row = np.clip(np.floor(v), 0, h - 1)
    return (row * w + col).astype(np.int64)


class _RintSTE(torch.autograd.Function):
    """Round half to even in the forward pass, identity gradient (straight-through)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _binomial(k: torch.Tensor, dim: int) -> torch.Tensor:
    """[1, 2, 1] along `dim` with replicate padding: shifted-slice adds of integers (exact in any order)."""
    n = k.shape[dim]
    p = torch.cat([k.narrow(dim, 0, 1), k, k.narrow(dim, n - 1, 1)], dim=dim)
    return p.narrow(dim, 0, n) + 2.0 * p.narrow(dim, 1, n) + p.narrow(dim, 2, n)


def _blur(y: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of (B, 3, H, W) grid values, rounded back to the grid (straight-through)."""
    k = _RintSTE.apply(y * 255.0)  # exact integers 0..255 (the rint only guards them)
    k = _binomial(_binomial(k, 3), 2)  # rows then columns: integers <= 16 * 255
    return _RintSTE.apply(k / 16.0) / 255.0  # /16 is exact; half to even like np.rint


class _JpegBPDA(torch.autograd.Function):
    """Pillow JPEG encode + decode of the images with quality > 0; identity gradient (BPDA)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, qualities: tuple[int, ...]) -> torch.Tensor:
        from PIL import Image

        pixels = torch.round(y.detach() * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = pixels.copy()
        for i, q in enumerate(qualities):
            if q > 0:
                buf = io.BytesIO()
                Image.fromarray(pixels[i]).save(buf, "JPEG", quality=int(q))
                buf.seek(0)
                with Image.open(buf) as im:
                    out[i] = np.asarray(im.convert("RGB"))
        return torch.from_numpy(out).to(y.device).permute(0, 3, 1, 2).to(y.dtype) / 255.0

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def apply_camera(images: torch.Tensor, view: View) -> torch.Tensor:
    """Photograph `images` with `view`, differentiably in the pixels.

    Args:
        images: (B, 3, H, W) float32 on the uint8 grid (k / 255), e.g. from `qadtr.predict.to_tensor` or
            `apply_patch`.
        view: B views.

    Returns:
        (B, 3, H, W) float32 on the uint8 grid: rint(out * 255) / 255 == out.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise QadtrError(f"apply_camera takes (B, 3, H, W) images, got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if len(view) != b:
        raise QadtrError(f"{len(view)} views for {b} images; one view per image")
    idx = torch.from_numpy(view_index(view, (h, w))).to(images.device).reshape(b, 1, h * w).expand(b, 3, h * w)
    x = torch.gather(images.reshape(b, 3, h * w), 2, idx).reshape(b, 3, h, w)

    def per_image(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, device=images.device).view(b, 1, 1, 1)

    y = ((x - 0.5) * per_image(view.contrast) + 0.5) * per_image(view.brightness)
    y = _RoundSTE.apply(y.clamp(0.0, 1.0))
    if view.blur.any():
        y = torch.where(per_image(view.blur), _blur(y), y)
    if (view.jpeg > 0).any():
        y = _JpegBPDA.apply(y, tuple(int(q) for q in view.jpeg))
    return y


def camera_uint8(images: np.ndarray, view: View) -> np.ndarray:
    """`apply_camera` on (N, H, W, 3) uint8 images -> (N, H, W, 3) uint8; the same bytes on every machine."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise QadtrError(f"camera_uint8 takes (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    with torch.no_grad():
        out = apply_camera(to_tensor(images), view)
    return np.rint(out.permute(0, 2, 3, 1).numpy() * np.float32(255)).astype(np.uint8)


class CameraNet(torch.nn.Module):
    """`model` seen through a camera: each forward photographs the batch with freshly drawn views.

    Pass it to `universal_patch` in place of the model for EOT over the camera. The views come from a numpy
    Generator seeded once here, whose state advances with every forward call: it is the only state, so a run
    from the same seed is reproducible.

    Args:
        model: (B, 3, H, W) pixels in [0, 1] -> (B, classes) logits.
        cfg: the camera ranges.
        seed: seeds the view generator.
    """

    def __init__(self, model: torch.nn.Module, cfg: CameraConfig, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = sample_views(len(x), self.cfg, self.rng, hw=(x.shape[-2], x.shape[-1]))
        return self.model(apply_camera(x, views))
