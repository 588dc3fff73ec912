"""The stop-sign scenario's recipe (`StopSignConfig`), apart from its run: a patch file made by the scenario carries
it, so readers of patch files register it (eval._configs) without importing the scenario's run and its imports."""

from __future__ import annotations

from dataclasses import dataclass, field

from qadtr._config import register_config
from qadtr.attacks.camera import CameraConfig


@register_config
@dataclass(frozen=True)
class StopSignConfig:
    """The scenario's recipe, saved beside its stickers (stop_sign.json) and its results."""

    VERSION = 1
    checkpoint: str = "zoo/gtsrb_resnet20_sw248"  # relative to the repository; the GTSRB switchable ResNet-20
    bits: int = 4  # the attacked and replayed w = a bit width (w4a4: the zoo's mid precision)
    source: int = 14  # GTSRB "stop"
    target: int = 1  # GTSRB "speed_30": a car that reads a stop sign as 30 km/h drives on
    size: float = 0.1  # 10x10 px on the 32x32 crop: a sticker inside the octagon's centre
    steps: int = 1000  # sign-gradient steps; the targeted camera-EOT loss flattens after ~800 here
    batch_size: int = 64  # signs per step, each seen through its own camera view
    lr: float = 0.03  # sign step in pixels (7.7 uint8 levels), cosine-decayed: the camera blurs small steps away
    camera: CameraConfig = field(default_factory=CameraConfig)  # the dashcam (defaults of qadtr.attacks.camera)
    seed: int = 0  # sticker init, minibatches, training views, control noise
    view_seed: int = 1  # the replay's one view per test sign (held out from training's views)

    def __post_init__(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ValueError(f"bits={self.bits}; the switchable zoo models have 2, 4 and 8")
        if self.source == self.target or min(self.source, self.target) < 0:
            raise ValueError(f"source={self.source}, target={self.target}: two different class indices >= 0")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"size={self.size}: a sticker is a fraction of the image below 0.5, e.g. 0.1")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}: all must be positive")
