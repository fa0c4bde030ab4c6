"""Settings of the organ segmenter, saved in its bundle so inference treats a CT as in training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cadx.config import PRECISIONS
from cadx.errors import ConfigError


@dataclass(frozen=True)
class SegConfig:
    """Grid, intensity window, network, training and post-processing of the organ segmenter.

    The network sees the CT at `slice_thickness_mm` slices (the patch pipeline's grid) and
    `in_plane_spacing_mm` pixels, windowed to 0..1, with `context_slices` neighbours on each side
    of a slice as extra input channels (2.5D). Tumour label values count as organ: a tumour lies
    inside the organ and must stay inside the crop.
    """

    organ_values: tuple[int, ...] = (1,)
    tumour_values: tuple[int, ...] = (2,)
    slice_thickness_mm: float = 5.0
    in_plane_spacing_mm: float = 2.5
    window_level_hu: float = 50.0
    window_width_hu: float = 500.0
    context_slices: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128)
    roi_px: int = 96
    batch_size: int = 16
    steps_per_epoch: int = 40
    max_epochs: int = 16
    learning_rate: float = 2e-3
    validation_fraction: float = 0.2
    seed: int = 0
    # Smaller predicted components are noise, not an organ ("organ not found"). A pancreas is
    # ~50-100 ml; at 3 ml a phantom-trained segmenter passed a 3.2 ml speck on a water cylinder.
    min_organ_volume_ml: float = 10.0
    # "bf16": bfloat16 autocast of the training forward pass (CPUs with bf16 instructions);
    # validation Dice and segmentation stay fp32. Bundles written before this field: fp32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not self.organ_values:
            raise ConfigError("the segmenter needs at least one organ label value")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.slice_thickness_mm <= 0 or self.in_plane_spacing_mm <= 0:
            raise ConfigError("segmenter slice thickness and pixel spacing must be > 0 mm")
        if self.window_width_hu <= 0:
            raise ConfigError(f"window width must be > 0 HU, got {self.window_width_hu}")
        if self.context_slices < 0:
            raise ConfigError(f"context slices must be >= 0, got {self.context_slices}")
        if len(self.channels) < 2:
            raise ConfigError(f"the UNet needs >= 2 levels, got channels {self.channels}")
        if self.roi_px % 2 ** (len(self.channels) - 1):
            raise ConfigError(f"roi {self.roi_px} px must be divisible by "
                              f"{2 ** (len(self.channels) - 1)} for {len(self.channels)} levels")
        if self.batch_size < 1 or self.steps_per_epoch < 1 or self.max_epochs < 1:
            raise ConfigError("batch size, steps per epoch and epochs must be >= 1")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation fraction must be in (0, 1), got "
                              f"{self.validation_fraction}")
        if self.min_organ_volume_ml < 0:
            raise ConfigError("minimum organ volume must be >= 0 ml")

    @property
    def in_channels(self) -> int:
        return 2 * self.context_slices + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegConfig:
        """Rebuild from `to_dict` output; unknown keys are an error (a bundle from elsewhere)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown segmenter settings: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
