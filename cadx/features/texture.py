"""Handcrafted texture features of a 2D grayscale image in 0..1 (seed 004): grey-level
co-occurrence statistics (Haralick, Shanmugam & Dinstein, IEEE Trans. SMC 1973) and wavelet
sub-band statistics (Mallat, IEEE Trans. PAMI 1989). Given a lesion mask, the features describe
the mask's bounding box."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pywt
from skimage.feature import graycomatrix, graycoprops

from cadx.errors import ConfigError, EmptyMaskError, InputError

GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_LEVELS = 32
WAVELET = "db2"
WAVELET_LEVEL = 2
WAVELET_STATISTICS = ("mean_abs", "std", "energy")


def roi_crop(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The (H, W) image in 0..1 as float64, cropped to the bounding box of `mask` if given."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"texture features need a 2D (H, W) image; got shape {image.shape}")
    if image.size == 0 or not np.isfinite(image).all():
        raise InputError("texture features need a non-empty image without NaN or infinity")
    if image.min() < 0.0 or image.max() > 1.0:
        raise InputError(f"texture features need intensities in 0..1; got "
                         f"{image.min():.3g}..{image.max():.3g} (normalise the image first)")
    if mask is None:
        return image
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise InputError(f"lesion mask shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        raise EmptyMaskError("lesion mask is empty; cannot place the texture ROI")
    rows, cols = np.nonzero(mask)
    return image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def glcm_features(image: np.ndarray, distances: Sequence[int] = GLCM_DISTANCES,
                  angles: Sequence[float] = GLCM_ANGLES, levels: int = GLCM_LEVELS,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """Haralick statistics of the symmetric, normalised co-occurrence matrix of the image
    quantised to `levels` grey levels, averaged over `angles`: for each property of
    `GLCM_PROPERTIES`, one value per distance (property-major), length 6 x len(distances)."""
    if not 2 <= levels <= 256:
        raise ConfigError(f"GLCM levels must be 2..256 (got {levels})")
    if len(distances) == 0 or len(angles) == 0 or min(distances) < 1:
        raise ConfigError(f"GLCM needs distances >= 1 px and at least one angle "
                          f"(got distances {tuple(distances)}, angles {tuple(angles)})")
    roi = roi_crop(image, mask)
    if min(roi.shape) <= max(distances):
        raise InputError(f"texture ROI of {roi.shape[0]}x{roi.shape[1]} px is too small for a "
                         f"GLCM distance of {max(distances)} px")
    quantised = np.minimum(np.floor(roi * levels), levels - 1).astype(np.uint8)
    matrix = graycomatrix(quantised, distances, angles, levels=levels, symmetric=True,
                          normed=True)
    # graycoprops gives (distances, angles) per property; average over the angles.
    return np.concatenate([graycoprops(matrix, prop).mean(axis=1) for prop in GLCM_PROPERTIES])


def wavelet_features(image: np.ndarray, wavelet: str = WAVELET, level: int = WAVELET_LEVEL,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Mean absolute value, standard deviation and energy (mean squared coefficient, so ROIs of
    different sizes compare) of each sub-band of a `level`-level 2D discrete wavelet transform:
    the approximation at `level`, then horizontal, vertical, diagonal details from `level` down
    to 1 (pywt.wavedec2 order); length 3 x (1 + 3 x level)."""
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ConfigError(f"unknown discrete wavelet {wavelet!r}; see pywt.wavelist(kind="
                          "'discrete')")
    if level < 1:
        raise ConfigError(f"wavelet level must be >= 1 (got {level})")
    roi = roi_crop(image, mask)
    max_level = pywt.dwt_max_level(min(roi.shape), pywt.Wavelet(wavelet).dec_len)
    if level > max_level:
        raise InputError(f"texture ROI of {roi.shape[0]}x{roi.shape[1]} px allows at most "
                         f"{max_level} level(s) of the {wavelet} wavelet; asked for {level}")
    approximation, *details = pywt.wavedec2(roi, wavelet, level=level)
    bands = [approximation] + [band for per_level in details for band in per_level]
    return np.array([statistic for band in bands for statistic in
                     (np.abs(band).mean(), band.std(), np.square(band).mean())])


def _glcm_names(distances: Sequence[int]) -> list[str]:
    return [f"glcm_{prop.lower()}_d{d}" for prop in GLCM_PROPERTIES for d in distances]


def _wavelet_names(level: int) -> list[str]:
    bands = [f"L{level}_A"] + [f"L{k}_{direction}" for k in range(level, 0, -1)
                               for direction in "HVD"]
    return [f"wavelet_{band}_{stat}" for band in bands for stat in WAVELET_STATISTICS]


def texture_features(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """GLCM then wavelet features with their defaults, of the whole image or of the bounding
    box of `mask`; names in `texture_feature_names()`."""
    roi = roi_crop(image, mask)
    return np.concatenate([glcm_features(roi), wavelet_features(roi)])


def texture_feature_names() -> list[str]:
    """Names of the `texture_features` values, in order (e.g. "glcm_contrast_d1",
    "wavelet_L1_H_energy")."""
    return _glcm_names(GLCM_DISTANCES) + _wavelet_names(WAVELET_LEVEL)
