"""qadtr.attacks.camera on tiny random images (CPU, seconds): geometry, photometry, blur, JPEG, gradients, EOT."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from qadtr import QadtrError
from qadtr._config import config_from_dict, config_to_dict
from qadtr.attacks import Placement, apply_patch
from qadtr.attacks._place import _cos_sin
from qadtr.attacks.camera import (CameraConfig, CameraNet, View, apply_camera, camera_uint8, sample_views,
                                  view_index)
from qadtr.predict import to_tensor

IDENTITY = CameraConfig(max_angle=0.0, scale=(1.0, 1.0), shift=0.0, perspective=0.0, brightness=(1.0, 1.0),
                        contrast=(1.0, 1.0), blur=0.0, jpeg=(0, 0))
ALL_ON = CameraConfig(max_angle=20.0, scale=(0.8, 1.2), shift=3.0, perspective=0.3, brightness=(0.6, 1.4),
                      contrast=(0.6, 1.4), blur=0.5, jpeg=(50, 95))


def _images(n: int = 4, hw: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)  # (N, H, W, 3)


def _view(n: int, **fields) -> View:
    """An identity view of n images with some fields set (scalars broadcast)."""
    base = {"angle": 0.0, "scale": 1.0, "dx": 0.0, "dy": 0.0, "gx": 0.0, "gy": 0.0, "brightness": 1.0,
            "contrast": 1.0, "blur": False, "jpeg": 0}
    base.update(fields)
    return View(*(np.broadcast_to(np.asarray(base[f]), (n,)) for f in View.FIELDS))


# --- geometry --------------------------------------------------------------------------------------------

def test_identity_config_returns_the_input_bytes():
    images = _images()
    views = sample_views(len(images), IDENTITY, np.random.default_rng(0), hw=(16, 16))
    assert not views.blur.any() and (views.jpeg == 0).all()
    out = camera_uint8(images, views)
    assert out.dtype == np.uint8 and np.array_equal(out, images)
    assert np.array_equal(view_index(views, (16, 16)), np.broadcast_to(np.arange(256).reshape(16, 16), (4, 16, 16)))


def test_a_whole_pixel_shift_moves_the_image_and_replicates_the_edge():
    images = _images()
    right = camera_uint8(images, _view(4, dx=1.0))
    assert np.array_equal(right[:, :, 1:], images[:, :, :-1])  # column j shows column j - 1
    assert np.array_equal(right[:, :, 0], images[:, :, 0])  # the left edge is replicated
    up = camera_uint8(images, _view(4, dy=-1.0))
    assert np.array_equal(up[:, :-1], images[:, 1:])
    assert np.array_equal(up[:, -1], images[:, -1])
    assert not np.array_equal(right, images)


def test_a_quarter_turn_turns_the_image_clockwise_on_screen():
    images = _images()
    out = camera_uint8(images, _view(4, angle=90.0))
    assert np.array_equal(out, np.rot90(images, k=-1, axes=(1, 2)))  # rows grow downwards


def test_view_index_is_the_documented_formula_pixel_by_pixel():
    h, w = 8, 10
    view = _view(1, angle=7.0, scale=1.05, dx=0.7, dy=-1.3, gx=0.02, gy=-0.01)
    cos, sin = _cos_sin(7.0)
    gx, gy, sc = (float(np.float32(v)) for v in (0.02, -0.01, 1.05))
    expected = np.zeros((h, w), np.int64)
    for r in range(h):
        for c in range(w):
            d_x, d_y = c + 0.5 - w / 2 - float(np.float32(0.7)), r + 0.5 - h / 2 - float(np.float32(-1.3))
            den = max(1.0 + gx * d_x + gy * d_y, 0.5)
            u = (cos * d_x + sin * d_y) / sc / den + w / 2
            v = (cos * d_y - sin * d_x) / sc / den + h / 2
            expected[r, c] = min(max(math.floor(v), 0), h - 1) * w + min(max(math.floor(u), 0), w - 1)
    assert np.array_equal(view_index(view, (h, w))[0], expected)


def test_a_steep_tilt_stays_inside_the_image():
    idx = view_index(_view(2, gx=[1.0, -1.0], gy=[-1.0, 1.0]), (16, 16))  # far past the drawn ranges: the floor
    assert idx.min() >= 0 and idx.max() < 256


# --- photometry, blur, JPEG ---------------------------------------------------------------------------------

@pytest.mark.parametrize("contrast,brightness", [(0.8, 1.2), (2.5, 0.7), (1.0, 1.3)])
def test_brightness_and_contrast_follow_the_formula_in_float32(contrast, brightness):
    images = _images()
    out = camera_uint8(images, _view(4, contrast=contrast, brightness=brightness))
    x = images.astype(np.float32) / np.float32(255)
    c, b, half = np.float32(contrast), np.float32(brightness), np.float32(0.5)
    y = np.clip(((x - half) * c + half) * b, np.float32(0), np.float32(1))
    assert np.array_equal(out, np.rint(y * np.float32(255)).astype(np.uint8))
    assert not np.array_equal(out, images)


def test_blur_keeps_a_constant_image():
    images = np.full((2, 16, 16, 3), 137, np.uint8)
    assert np.array_equal(camera_uint8(images, _view(2, blur=True)), images)


@pytest.mark.parametrize("value,expected", [
    (255, [[16, 32, 16], [32, 64, 32], [16, 32, 16]]),  # 255 * [1, 2, 4] / 16 = 15.94, 31.88, 63.75
    (8, [[0, 1, 0], [1, 2, 1], [0, 1, 0]]),  # corners 8 / 16 = 0.5 -> 0: half to even
    (24, [[2, 3, 2], [3, 6, 3], [2, 3, 2]]),  # corners 24 / 16 = 1.5 -> 2: half to even
])
def test_blur_of_one_pixel_gives_the_binomial_weights(value, expected):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, 8, 8] = value
    out = camera_uint8(images, _view(1, blur=True))
    want = np.zeros((16, 16), np.uint8)
    want[7:10, 7:10] = expected
    for ch in range(3):
        assert np.array_equal(out[0, :, :, ch], want)


def test_blur_replicates_the_border():
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, 0, 0] = 255  # padded: the corner counts 9 times, its neighbours 3 times and once
    out = camera_uint8(images, _view(1, blur=True))[0, :, :, 0]
    assert out[:2, :2].tolist() == [[143, 48], [48, 16]]  # 255 * [9, 3, 1] / 16 = 143.4, 47.8, 15.9
    assert out[2:].max() == 0 and out[:, 2:].max() == 0


def _smooth(n: int = 2, hw: int = 16) -> np.ndarray:
    ramp = np.linspace(40, 220, hw)
    img = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                    (ramp[None, :] + ramp[:, None]) / 2], axis=-1)
    noise = np.random.default_rng(1).integers(-3, 4, (n, hw, hw, 3))
    return np.clip(img[None] + noise, 0, 255).astype(np.uint8)


def test_jpeg_is_pillows_close_to_the_input_and_deterministic():
    images = _smooth()
    view = _view(2, jpeg=[95, 0])
    out = camera_uint8(images, view)
    assert np.array_equal(out, camera_uint8(images, view))  # the same bytes twice
    assert np.array_equal(out[1], images[1])  # quality 0: no JPEG
    assert not np.array_equal(out[0], images[0])
    assert np.abs(out[0].astype(int) - images[0].astype(int)).mean() < 4
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, "JPEG", quality=95)
    assert np.array_equal(out[0], np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    low = camera_uint8(images, _view(2, jpeg=10))
    assert np.abs(low[0].astype(int) - images[0].astype(int)).mean() > np.abs(out[0].astype(int) - images[0]).mean()


@pytest.mark.parametrize("seed", range(4))
def test_output_is_on_the_grid_and_replays_byte_for_byte(seed):
    rng = np.random.default_rng(seed)
    images = _images(seed=seed)
    for cfg in (ALL_ON, CameraConfig(), dataclasses.replace(ALL_ON, blur=1.0, perspective=0.5, shift=8.0)):
        view = sample_views(len(images), cfg, rng, hw=(16, 16))
        out = apply_camera(to_tensor(images), view)
        assert out.dtype == torch.float32 and out.shape == (4, 3, 16, 16)
        assert torch.equal(torch.round(out * 255.0) / 255.0, out)
        assert out.min() >= 0 and out.max() <= 1
        photos = camera_uint8(images, view)
        assert np.array_equal(photos, camera_uint8(images, view))
        assert np.array_equal(photos, np.rint(out.permute(0, 2, 3, 1).numpy() * np.float32(255)).astype(np.uint8))


def test_sample_views_follows_the_ranges_and_the_seed():
    views = sample_views(200, ALL_ON, np.random.default_rng(3), hw=(16, 32))
    again = sample_views(200, ALL_ON, np.random.default_rng(3), hw=(16, 32))
    assert all(np.array_equal(getattr(views, f), getattr(again, f)) for f in View.FIELDS)
    assert np.abs(views.angle).max() <= 20 and views.scale.min() >= 0.8 and views.scale.max() <= 1.2
    assert np.abs(views.gx).max() <= 0.3 / 16 and np.abs(views.gy).max() <= 0.3 / 8  # tilt / half the side
    assert views.jpeg.min() >= 50 and views.jpeg.max() <= 95 and 0 < views.blur.sum() < 200
    assert views.jpeg.dtype == np.int32 and views.blur.dtype == np.bool_ and views.angle.dtype == np.float32


def test_view_arrays_round_trip_slice_and_check_lengths():
    views = sample_views(5, ALL_ON, np.random.default_rng(0), hw=(16, 16))
    back = View.from_arrays(views.to_arrays())
    assert all(np.array_equal(getattr(views, f), getattr(back, f)) for f in View.FIELDS)
    assert len(views[1:3]) == 2 and len(views[4]) == 1 and views[4].jpeg[0] == views.jpeg[4]
    with pytest.raises(QadtrError, match="view field scale has 2 entries"):
        View(np.zeros(3), np.ones(2), *(np.zeros(3) for _ in range(8)))
    with pytest.raises(QadtrError, match="scales must be > 0"):
        _view(2, scale=0.0)
    with pytest.raises(QadtrError, match="one view per image"):
        apply_camera(to_tensor(_images()), views)


# --- gradients and EOT ---------------------------------------------------------------------------------------

def test_every_stage_passes_a_gradient_to_the_patch():
    images = to_tensor(_images())
    patch = torch.rand(3, 6, 6, requires_grad=True)
    view = _view(4, angle=5.0, scale=1.1, dx=0.5, dy=-0.5, gx=0.01, gy=0.01, brightness=1.1, contrast=0.9,
                 blur=True, jpeg=80)
    out = apply_camera(apply_patch(images, patch, Placement.fixed(4, 5, 5)), view)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert torch.isfinite(patch.grad).all() and patch.grad.abs().sum() > 0


def test_blur_gradient_is_the_linear_filter():
    x = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    apply_camera(x, _view(1, blur=True))[0, 0, 4, 4].backward()
    assert torch.allclose(x.grad[0, 0, 3:6, 3:6], torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    assert x.grad.abs().sum().item() == pytest.approx(1.0)


def test_camera_net_draws_fresh_views_and_is_seeded():
    x = to_tensor(_images())
    net = CameraNet(torch.nn.Flatten(), ALL_ON, seed=7)
    first, second = net(x), net(x)
    assert first.shape == (4, 3 * 16 * 16) and not torch.equal(first, second)
    other = CameraNet(torch.nn.Flatten(), ALL_ON, seed=7)
    assert torch.equal(other(x), first) and torch.equal(other(x), second)
    assert not torch.equal(CameraNet(torch.nn.Flatten(), ALL_ON, seed=8)(x), first)


# --- configuration -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("max_angle", -1.0), ("max_angle", 46.0), ("scale", (0.0, 1.0)), ("scale", (1.2, 1.1)), ("scale", (1.0, 2.5)),
    ("scale", (1.0,)), ("shift", -0.5), ("shift", 9.0), ("perspective", 0.6), ("perspective", -0.1),
    ("brightness", (0.0, 1.0)), ("brightness", (1.0, 3.5)), ("contrast", (1.3, 0.7)), ("contrast", (-1.0, 1.0)),
    ("blur", 1.5), ("blur", -0.1), ("jpeg", (0, 90)), ("jpeg", (95, 60)), ("jpeg", (60, 101)), ("jpeg", (60,)),
    ("max_angle", float("nan")),
])
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        CameraConfig(**{field: value})


def test_lists_become_tuples_and_the_config_round_trips():
    cfg = CameraConfig(scale=[0.9, 1.0], brightness=[1, 2], contrast=[0.5, 1.5], jpeg=[60.0, 90])
    assert cfg.scale == (0.9, 1.0) and cfg.brightness == (1.0, 2.0) and cfg.jpeg == (60, 90)
    assert isinstance(cfg.jpeg[0], int)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert CameraConfig(jpeg=(0, 0)).jpeg == (0, 0) and CameraConfig(jpeg=(100, 100)).jpeg == (100, 100)
