"""All settings: the CT patch pipeline in one object saved with every patch bundle, and the 2D
image track's training settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cadx.errors import ConfigError

# Exam (patient) scores from per-image probabilities, see cadx.decide.exam.
EXAM_SCORES = ("theta", "mean", "max")
# CT patient scores from patch probabilities, see cadx.decide.aggregate.
PATIENT_SCORES = ("fraction", "topk", "cluster")
# Training (and, for CT patch models, scoring) precision, see cadx.train.precision.
# "auto": bf16 where the device has bf16 instructions, fp32 elsewhere, silently.
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class LabelConvention:
    """Which label values mean organ and tumour (default: MSD Task07 Pancreas, 1 organ, 2 tumour).

    The organ region is the union of `organ_values` and `tumour_values`: in MSD the tumour voxels
    carry 2, not 1, but they lie inside the pancreas.
    """

    organ_values: tuple[int, ...] = (1,)
    tumour_values: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        if not self.organ_values:
            raise ConfigError("label convention needs at least one organ label value")
        overlap = set(self.organ_values) & set(self.tumour_values)
        if overlap:
            raise ConfigError(f"label values {sorted(overlap)} are both organ and tumour")


# The pixel sizes a CT/MR volume may have (cadx.io.limits.VolumeLimits), as a target grid.
MIN_IN_PLANE_SPACING_MM, MAX_IN_PLANE_SPACING_MM = 0.05, 50.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Resampling, dilation, windowing (seed 000: 5 mm slices, 3x3 dilation, WL 75 / WW 250 HU)."""

    slice_thickness_mm: float = 5.0
    dilation_kernel_px: int = 3
    window_level_hu: float = 75.0
    window_width_hu: float = 250.0
    # "window" for CT (HU); "percentile" maps the organ's 1st..99th intensity percentiles to
    # 0..1, for MR whose units are arbitrary.
    intensity: str = "window"
    # Resample y and x to pixels this wide (mm) before cropping, so that a patch covers the
    # same millimetres on every scan; None keeps each scan's own pixels (the seed resamples z
    # only). A trained bundle holds its training patients' spacing here (cadx.train.pipeline).
    in_plane_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        if self.intensity not in ("window", "percentile"):
            raise ConfigError(f"intensity must be 'window' or 'percentile', got {self.intensity!r}")
        if self.slice_thickness_mm <= 0:
            raise ConfigError(f"slice thickness must be > 0 mm, got {self.slice_thickness_mm}")
        if self.dilation_kernel_px < 1 or self.dilation_kernel_px % 2 == 0:
            raise ConfigError(
                f"dilation kernel must be an odd size >= 1 px, got {self.dilation_kernel_px}"
            )
        if self.window_width_hu <= 0:
            raise ConfigError(f"window width must be > 0 HU, got {self.window_width_hu}")
        if self.in_plane_spacing_mm is not None and not (
                MIN_IN_PLANE_SPACING_MM <= self.in_plane_spacing_mm <= MAX_IN_PLANE_SPACING_MM):
            raise ConfigError(f"in-plane spacing must be {MIN_IN_PLANE_SPACING_MM:g} to "
                              f"{MAX_IN_PLANE_SPACING_MM:g} mm, got {self.in_plane_spacing_mm}")


MAX_CONTEXT_SLICES = 8


@dataclass(frozen=True)
class PatchConfig:
    """Square sliding window; stride = size means no overlap, 20-80 % overlap is allowed."""

    size_px: int = 50
    stride_px: int = 50
    start: str = "corner"  # "corner" of the image, or "organ" bounding box
    cover_edges: bool = True  # add a last window flush with the right/bottom border (seed FIG. 2C)
    # 2.5D input: this many neighbouring slices on each side become extra input channels
    # (0: the seed's single slice).
    context_slices: int = 0

    def __post_init__(self) -> None:
        if self.size_px < 8:
            raise ConfigError(f"patch size must be >= 8 px, got {self.size_px}")
        if not 0 <= self.context_slices <= MAX_CONTEXT_SLICES:
            raise ConfigError(f"context slices must be 0..{MAX_CONTEXT_SLICES} per side, "
                              f"got {self.context_slices}")
        if self.start not in ("corner", "organ"):
            raise ConfigError(f"patch start must be 'corner' or 'organ', got {self.start!r}")
        if self.stride_px != self.size_px:
            overlap = 1.0 - self.stride_px / self.size_px
            if not 0.2 - 1e-9 <= overlap <= 0.8 + 1e-9:
                raise ConfigError(
                    f"stride {self.stride_px} px gives {overlap:.0%} overlap of a "
                    f"{self.size_px} px patch; use stride = size (no overlap) or 20-80 % overlap"
                )

    @property
    def overlap_fraction(self) -> float:
        return 1.0 - self.stride_px / self.size_px

    @property
    def channels(self) -> int:
        """Input channels of a patch: the slice plus `context_slices` on each side."""
        return 2 * self.context_slices + 1


# The CT patch network: seed 000's Table-1 CNN, or an ImageNet-pretrained EfficientNet-Lite0
# fine-tuned on the patches (docs/ct-pipeline.md, run 7).
PATCH_ARCHS = ("table1", "efficientnet_lite0", "unet")
# Patch networks trained on each patch's tumour mask (pixel supervision), not on its label alone.
DENSE_PATCH_ARCHS = ("unet",)
# Where a dense patch network looks for its patch score, the largest pixel logit: anywhere in
# the window (as the patch networks before it), or inside the preprocessed (dilated) organ mask
# only, so that a structure beside the organ cannot outscore a tumour in it
# (docs/ct-pipeline.md, "organ-restricted patch score").
SCORE_REGIONS = ("window", "organ")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture options of the patch network."""

    batch_norm: bool = True  # Table 1 only (EfficientNet-Lite has its own BatchNorm)
    arch: str = "table1"
    # "window" for bundles written before the organ-restricted score (and for non-dense
    # networks); `cadx train` chooses "organ" for a dense network.
    score_region: str = "window"
    # The dense UNet's channels at its first level (doubled at each of its four levels: 16 ->
    # 16/32/64/128, 0.21 M parameters; compute grows with its square).
    unet_width: int = 16

    def __post_init__(self) -> None:
        if self.unet_width < 4:
            raise ConfigError(f"UNet width must be >= 4 channels, got {self.unet_width}")
        if self.unet_width != 16 and self.arch not in DENSE_PATCH_ARCHS:
            raise ConfigError(f"--unet-width applies to the dense UNet only, not {self.arch}")
        if self.arch not in PATCH_ARCHS:
            raise ConfigError(f"unknown patch network {self.arch!r}; one of "
                              f"{', '.join(PATCH_ARCHS)}")
        if self.score_region not in SCORE_REGIONS:
            raise ConfigError(f"unknown patch score region {self.score_region!r}; one of "
                              f"{', '.join(SCORE_REGIONS)}")
        if self.score_region == "organ" and self.arch not in DENSE_PATCH_ARCHS:
            raise ConfigError(f"--patch-score-region organ needs a dense patch network "
                              f"({', '.join(DENSE_PATCH_ARCHS)}); {self.arch} scores whole "
                              "patches")
        if self.arch != "table1" and not self.batch_norm:
            raise ConfigError(f"--no-batch-norm applies to the Table-1 network only; "
                              f"{self.arch} keeps its own BatchNorm")

    @property
    def dense(self) -> bool:
        """Whether the network trains on the patches' tumour masks (pixel supervision)."""
        return self.arch in DENSE_PATCH_ARCHS

    @property
    def organ_scored(self) -> bool:
        """Whether patches are scored inside the organ mask (they then carry its crop)."""
        return self.score_region == "organ"


POSITIVE_WEIGHTINGS = ("patch", "tumour")
# How the patch network's learning rate moves: "plateau" (the seed: halved after
# reduce_lr_patience stale epochs) or "onecycle" (warm-up to learning_rate, then cosine decay
# to near zero over max_epochs, stepped per batch).
PATCH_LR_SCHEDULES = ("plateau", "onecycle")
# How a dense network's soft Dice loss is reduced: over all pixels of the batch ("batch": a
# 4 cm tumour's pixels outweigh a 1 cm tumour's sixteen-fold), or per cancerous patch, then
# averaged over them ("patch": each cancerous patch's mask counts the same, however small).
DICE_REDUCTIONS = ("batch", "patch")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, callbacks and split settings (seed 000: reduce LR after 10, stop after 40)."""

    batch_size: int = 256
    max_epochs: int = 200
    learning_rate: float = 1e-3
    reduce_lr_patience: int = 10
    reduce_lr_factor: float = 0.5
    early_stop_patience: int = 40
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    augment_flips: bool = True
    # With the flips, 90-degree rotations too: all 8 symmetries of the square.
    augment_rotations: bool = False
    # What the callbacks watch: the seed's validation "loss", or validation patch "auc".
    monitor: str = "loss"
    # Every batch holds this share of cancerous patches (oversampled) instead of a plain shuffle.
    balanced_sampling: bool = False
    batch_positive_fraction: float = 0.5
    # How the cancerous patches share the positive class's weight: "patch" (the seed: equally)
    # or "tumour" (each patient's tumour equally, so a small tumour's few patches weigh as
    # much in total as a large tumour's many).
    positive_weighting: str = "patch"
    # "bf16": bfloat16 autocast of the forward passes (CPUs with bf16 instructions), fp32
    # weights and loss. The validation scores that choose the thresholds, and diagnose and
    # evaluate, score in the same precision. Bundles written before this field are fp32.
    precision: str = "fp32"
    lr_schedule: str = "plateau"
    # Where a dense network's patch loss takes the patch's largest pixel logit: anywhere in the
    # window (runs 8-13), or inside the organ mask, where the patch is scored ("organ": the
    # largest in-organ logit of a tumour-free patch is what the loss pushes down).
    patch_loss_region: str = "window"
    dice_reduction: str = "batch"

    def __post_init__(self) -> None:
        if self.dice_reduction not in DICE_REDUCTIONS:
            raise ConfigError(f"Dice reduction must be one of {DICE_REDUCTIONS}, got "
                              f"{self.dice_reduction!r}")
        if self.patch_loss_region not in SCORE_REGIONS:
            raise ConfigError(f"patch loss region must be one of {SCORE_REGIONS}, got "
                              f"{self.patch_loss_region!r}")
        if self.lr_schedule not in PATCH_LR_SCHEDULES:
            raise ConfigError(f"learning-rate schedule must be one of {PATCH_LR_SCHEDULES}, "
                              f"got {self.lr_schedule!r}")
        if self.positive_weighting not in POSITIVE_WEIGHTINGS:
            raise ConfigError(f"positive weighting must be one of {POSITIVE_WEIGHTINGS}, got "
                              f"{self.positive_weighting!r}")
        if self.monitor not in ("loss", "auc"):
            raise ConfigError(f"monitor must be 'loss' or 'auc', got {self.monitor!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 < self.batch_positive_fraction < 1.0:
            raise ConfigError("batch positive fraction must be in (0, 1), got "
                              f"{self.batch_positive_fraction}")
        if self.balanced_sampling and self.batch_size < 2:
            raise ConfigError("balanced sampling needs a batch size >= 2 (one patch per class)")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ConfigError(f"max epochs must be >= 1, got {self.max_epochs}")
        if not 0 < self.validation_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ConfigError("validation fraction must be in (0, 1) and test fraction in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ConfigError("validation + test fractions leave no patient for training")


@dataclass(frozen=True)
class DecideConfig:
    """How patch probabilities become a patient score (seed 000: the fraction of the patient's
    patches above the patch threshold), and test-time flip averaging of the patch scores."""

    patient_score: str = "fraction"
    top_k: int = 5  # for "topk": mean of the patient's k highest patch probabilities
    test_time_flips: bool = False

    def __post_init__(self) -> None:
        if self.patient_score not in PATIENT_SCORES:
            raise ConfigError(f"patient score must be one of {PATIENT_SCORES}, "
                              f"got {self.patient_score!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ConfigError(f"top-k must be an integer >= 1, got {self.top_k!r}")

    @property
    def score_name(self) -> str:
        """`fraction`, `cluster` or `topk:K`: the key of this score's validation threshold."""
        return f"topk:{self.top_k}" if self.patient_score == "topk" else self.patient_score

    @property
    def description(self) -> str:
        """What the patient score is, in words (for reports and the service)."""
        if self.patient_score == "fraction":
            return "fraction of patches above the patch threshold"
        if self.patient_score == "cluster":
            return "largest 3D cluster of patches above the patch threshold, n/(n+1)"
        if self.top_k == 1:
            return "highest patch probability"
        return f"mean of the {self.top_k} highest patch probabilities"


# How `cadx train` and the demo decide unless told otherwise, chosen on validation phantoms
# (benchmarks/bench_ct_learning_curve.py, 60 validation patients of a separate seed;
# docs/ct-pipeline.md): patients scored by their highest patch probability (topk, k = 1;
# validation patient AUC 0.82 vs 0.70 for the seed's fraction at 36 training patients, 0.90 vs
# 0.82 at 100), each patch's probability averaged over its flips (0.88 vs 0.83 at 36). The
# seed's decision stays `--patient-score fraction --no-tta`.
CADX_DECIDE = DecideConfig(patient_score="topk", top_k=1, test_time_flips=True)

# `cadx demo`'s cohort size (cadx.workflows.DEMO_CONFIG holds its settings).
DEMO_PATIENTS = 160


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `diagnose` needs to treat a new patient exactly as the training patients."""

    labels: LabelConvention = field(default_factory=LabelConvention)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)

    def __post_init__(self) -> None:
        if self.train.patch_loss_region == "organ" and not self.model.organ_scored:
            raise ConfigError("--patch-loss-region organ needs a dense patch network scored "
                              "inside the organ (--patch-network unet --patch-score-region "
                              "organ)")
        if self.train.dice_reduction != "batch" and not self.model.dense:
            raise ConfigError(f"--dice-reduction {self.train.dice_reduction} needs a dense patch "
                              "network (--patch-network unet): only it learns tumour masks")
        if self.model.arch == "efficientnet_lite0" and self.patches.channels not in (1, 3):
            raise ConfigError(f"the {self.model.arch} patch network takes 1 slice or 3 "
                              f"(--context-slices 0 or 1), not {self.patches.channels}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Rebuild from `to_dict` output; unknown keys are an error (a bundle from elsewhere)."""
        parts = {
            "labels": LabelConvention,
            "preprocess": PreprocessConfig,
            "patches": PatchConfig,
            "model": ModelConfig,
            "train": TrainConfig,
            "decide": DecideConfig,
        }
        kwargs = {}
        for name, part_cls in parts.items():
            values = dict(data.get(name, {}))
            known = {f.name for f in fields(part_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"unknown {name} settings: {sorted(unknown)}")
            for key, value in values.items():
                if isinstance(value, list):
                    values[key] = tuple(value)
            kwargs[name] = part_cls(**values)
        return cls(**kwargs)


LR_SCHEDULES = ("constant", "onecycle")
# Default input size of the ImageNet-pretrained 2D networks (docs/images-2d.md): on BUS-BRA
# validation patients EfficientNet-Lite0 at 224 px did as well as at 160 px (AUC 0.879 / 0.833
# vs 0.865 / 0.833 with seeds 0 / 1; Grad-CAM pointing game 0.61 vs 0.62, seed 0), and only at
# 224 px is its Grad-CAM layer (the last block before the final stage, H/32) 7 x 7 rather than
# 5 x 5. It costs about twice the training time (9 vs 4 min on 2 cores).
PRETRAINED_SIZE_PX = 224
# Frozen ImageNet features (cadx train-features) try both sizes and keep the one with the best
# validation AUC: DDTI and MMOTU validation preferred 160 px (0.585 / 0.872 vs 0.526 / 0.796 at
# 224), while the fine-tuned networks' 224 px was chosen on BUS-BRA.
FEATURE_SIZES_PX = [160, 224]
# The 2D training commands' defaults (cadx train-images), as measured there.
IMAGE_CLI_EPOCHS = 8
IMAGE_CLI_SCHEDULE = "onecycle"


@dataclass(frozen=True)
class ImageTrainConfig:
    """Optimiser and stopping settings (seed 002: weight decay 5e-4)."""

    batch_size: int = 32
    max_epochs: int = 20
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    early_stop_patience: int = 6
    augment: bool = True
    # Ultrasound has a top (skin) and a bottom: no up-down flips unless asked for.
    vertical_flip: bool = False
    # "constant" learning rate, or "onecycle" (warm-up then cosine decay over max_epochs).
    schedule: str = "constant"
    # "bf16": autocast the training forward pass to bfloat16 (CPUs with bf16 instructions);
    # validation and inference stay fp32.
    precision: str = "fp32"
    seed: int = 0
    # Lesion-mask guidance: > 0 adds this weight times a segmentation loss of the CAM layer
    # (a 1x1 convolution of its map against the lesion mask, on training images with a mask),
    # so the map Grad-CAM explains with learns where the lesion is. 0: off.
    lesion_mask_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.early_stop_patience < 1:
            raise ConfigError("batch size, epochs and patience must be >= 1")
        if not 0.0 <= self.lesion_mask_weight <= 100.0:
            raise ConfigError("lesion-mask weight must be between 0 and 100, got "
                              f"{self.lesion_mask_weight}")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("learning rate must be > 0 and weight decay >= 0")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in LR_SCHEDULES:
            raise ConfigError(f"learning-rate schedule must be one of {LR_SCHEDULES}, "
                              f"got {self.schedule!r}")


@dataclass(frozen=True)
class ImageModelConfig:
    """Input size, network width, exam aggregation and split settings of the 2D track.

    The defaults train in minutes on 2 CPU cores (64 px, half-width networks); the seeds'
    networks at full width and 224 px need a GPU.
    """

    size_px: int = 64
    channels: int = 1
    width: float = 0.5
    aggregation: str = "theta"
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    train: ImageTrainConfig = field(default_factory=ImageTrainConfig)
    # EfficientNet-Lite: start from the ImageNet weights (else random init), and keep the stem
    # and this many early MBConv blocks frozen while fine-tuning.
    pretrained: bool = True
    frozen_blocks: int = 8
    # Manifest `fold` value whose patients are the test set (the others: train/validation).
    test_fold: str | None = None
    # Merge near-duplicate images (thumbnail correlation) into one patient before splitting:
    # for datasets without real patient ids.
    group_near_duplicates: bool = False

    def __post_init__(self) -> None:
        if self.aggregation not in EXAM_SCORES:
            raise ConfigError(f"exam score must be one of {EXAM_SCORES}, got {self.aggregation!r}")
        if self.size_px < 32:
            raise ConfigError(f"image size must be >= 32 px, got {self.size_px}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.frozen_blocks < 0:
            raise ConfigError(f"frozen blocks must be >= 0, got {self.frozen_blocks}")
