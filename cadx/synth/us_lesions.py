"""Synthetic B-mode ultrasound images of benign and malignant lesions (2D classification data).

Each image is simulated the way a scanner forms it, on a polar grid of beams fanning out from
a curvilinear probe's virtual apex above the image:

* a scene of *reflectivity* (linear echo amplitude, soft tissue ~1): a near-field layer, one
  or two bright specular interfaces (fascia / organ capsule), parenchyma with smooth texture,
  sometimes an anechoic round distractor (vessel, follicle) and one lesion;
* *attenuation* integrated along each beam, with a time-gain compensation that under-corrects
  it, so the image darkens with depth; a lesion that attenuates less than tissue (a cyst) is
  followed by posterior acoustic enhancement, one that attenuates more by a posterior shadow;
* fully developed *speckle*: the reflectivity multiplies the magnitude of a correlated complex
  Gaussian field (Rayleigh distributed), coarser across beams than along them, plus a faint
  electronic noise floor; strong specular echoes (interfaces, calcifications) are added on top;
* log compression to a 45-60 dB dynamic range with a random overall gain and display gamma,
  then scan conversion to the (H, W) image: black outside the fan-shaped field of view.

Lesion appearance follows the ultrasound criteria the seed documents rely on (ovarian and
thyroid US; TI-RADS / IOTA-style descriptors). A "benign-looking" lesion is round or oval,
wider than tall, circumscribed with a smooth sharp margin, and either an anechoic cyst (with
posterior enhancement), an isoechoic nodule (often with a thin hypoechoic halo or capsule) or a
mildly hypoechoic one. A "suspicious" lesion is markedly hypoechoic and heterogeneous, has a
lobulated, irregular or spiculated margin that is blurred, is taller than wide in half the
cases, holds microcalcification-like bright dots in ~45 % and casts a posterior shadow in ~40 %.
The classes overlap: 15 % of benign patients have a suspicious-looking lesion and 15 % of
malignant patients a benign-looking (solid, circumscribed) one, and the features vary within
each look, so even an observer who reads the look without error reaches a patient AUC of only
~0.85. Lesion size does not depend on the class, and darkness alone does not separate the
classes: anechoic benign cysts are the darkest lesions of all.

One patient's images are different views of the same lesion: same class, appearance and shape,
size within +-10 %, different position, in-plane rotation, mirroring, probe geometry, gain,
dynamic range and speckle. About 15 % of the written images are RGB: coloured caliper marks
across the lesion and sometimes a tinted (sepia / blue) grey map, as ultrasound machines export.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track
from scipy.ndimage import gaussian_filter, map_coordinates

from cadx.errors import ConfigError
from cadx.io.atomic import atomic_path, write_text_atomic

__all__ = ["UltrasoundCohortSpec", "make_us_image", "write_us_cohort"]

_ATYPICAL_FRACTION = 0.15  # patients whose lesion looks like the other class
_RGB_FRACTION = 0.15  # written images exported in colour (calipers, tinted grey map)
_TISSUE_ATTENUATION = 3.0  # nepers per image height, before time-gain compensation
_CALIPER_COLOURS = ((255, 255, 0), (0, 255, 0), (0, 255, 255), (255, 128, 0))


@dataclass(frozen=True)
class UltrasoundCohortSpec:
    """Parameters of a synthetic ultrasound cohort written by :func:`write_us_cohort`.

    ``images_per_patient`` is an inclusive range; each patient draws its count from it.
    Exactly ``round(n_patients * malignant_fraction)`` patients are malignant.
    """

    n_patients: int = 40
    images_per_patient: tuple[int, int] = (2, 4)
    malignant_fraction: float = 0.5
    image_size_px: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise ConfigError(f"n_patients must be >= 1, got {self.n_patients}")
        lo, hi = self.images_per_patient
        if not 1 <= lo <= hi:
            raise ConfigError(f"images_per_patient must satisfy 1 <= lo <= hi, got {(lo, hi)}")
        if not 0.0 <= self.malignant_fraction <= 1.0:
            raise ConfigError(f"malignant_fraction must be in [0, 1], "
                              f"got {self.malignant_fraction}")
        if self.image_size_px < 32:
            raise ConfigError(f"image_size_px must be >= 32, got {self.image_size_px}")


@dataclass(frozen=True)
class _Lesion:
    """Per-patient lesion phenotype; lengths are fractions of the image height."""

    radius: float  # radius of the circle of equal area
    aspect: float  # height / width (> 1: taller than wide)
    harmonics: np.ndarray  # rows (k, relative amplitude, phase) of the margin's radius
    edge_width: float  # margin blur, relative to the radius
    echo: float  # interior reflectivity relative to parenchyma
    heterogeneity: float  # std of the interior's log-reflectivity texture
    transmission: float  # amplitude factor behind the lesion (< 1 shadow, > 1 enhancement)
    # Rows (angle, relative height, sharpness) of spiculations.
    spikes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    n_calcifications: int = 0
    wall_attenuation: float = 0.0  # a cyst's wall: refractive edge shadows
    capsule: float = 0.0  # thin echogenic rim amplitude
    halo: float = 0.0  # thin hypoechoic rim depth (0..1)
    echogenic_rim: float = 0.0  # thick ill-defined echogenic rim (desmoplastic reaction)


def _harmonics(rng: np.random.Generator, ks: np.ndarray, amp_lo: float,
               amp_hi: float) -> np.ndarray:
    return np.column_stack([ks, rng.uniform(amp_lo, amp_hi, len(ks)),
                            rng.uniform(0, 2 * np.pi, len(ks))])


def _draw_lesion(rng: np.random.Generator, malignant: bool) -> _Lesion:
    """Draw a lesion phenotype: the class sets the look, with a 15 % swap either way."""
    suspicious = malignant != (rng.random() < _ATYPICAL_FRACTION)
    radius = rng.uniform(0.07, 0.16)  # independent of the class
    if suspicious:
        return _suspicious_lesion(rng, radius)
    return _benign_looking_lesion(rng, radius, solid_only=malignant)


def _suspicious_lesion(rng: np.random.Generator, radius: float) -> _Lesion:
    """Markedly hypoechoic, heterogeneous, non-circumscribed; often taller than wide,
    calcified or shadowing."""
    kind = str(rng.choice(["marked", "mild", "iso"], p=[0.8, 0.17, 0.03]))
    echo = {"marked": rng.uniform(0.07, 0.22), "mild": rng.uniform(0.3, 0.5),
            "iso": rng.uniform(0.6, 0.85)}[kind]
    margin = str(rng.choice(["spiculated", "lobulated", "indistinct"], p=[0.4, 0.45, 0.15]))
    if margin == "lobulated":
        harmonics = _harmonics(rng, np.arange(3, 7), 0.06, 0.14)
    else:
        harmonics = _harmonics(rng, np.arange(2, 4), 0.02, 0.06)
    harmonics = np.concatenate([harmonics, _harmonics(rng, np.arange(7, 13), 0.01, 0.03)])
    spikes = np.zeros((0, 3))
    if margin == "spiculated":
        n = int(rng.integers(6, 15))
        spikes = np.column_stack([rng.uniform(0, 2 * np.pi, n), rng.uniform(0.25, 0.6, n),
                                  rng.uniform(60.0, 200.0, n)])
    edge_width = rng.uniform(0.05, 0.12)
    aspect = rng.uniform(1.05, 1.5) if rng.random() < 0.5 else rng.uniform(0.7, 1.0)
    heterogeneity = rng.uniform(0.25, 0.5)
    n_calc = int(rng.integers(4, 15)) if rng.random() < 0.45 else 0
    u = rng.random()
    transmission = (rng.uniform(0.12, 0.4) if u < 0.4 else
                    rng.uniform(1.3, 1.6) if u < 0.48 else rng.uniform(0.8, 1.1))
    rim = rng.uniform(0.4, 0.9) if rng.random() < 0.25 else 0.0
    return _Lesion(radius, aspect, harmonics, edge_width, echo, heterogeneity, transmission,
                   spikes=spikes, n_calcifications=n_calc, echogenic_rim=rim)


def _benign_looking_lesion(rng: np.random.Generator, radius: float,
                           solid_only: bool) -> _Lesion:
    """Circumscribed, oval, wider than tall: an anechoic cyst or a hyper-/iso-/mildly
    hypoechoic solid nodule. A malignancy that looks benign is solid, never a simple cyst."""
    kind = str(rng.choice(["cyst", "hyper", "iso", "mild"],
                          p=[0.0, 0.0, 0.5, 0.5] if solid_only else [0.35, 0.15, 0.2, 0.3]))
    echo = {"cyst": rng.uniform(0.015, 0.06), "hyper": rng.uniform(1.8, 3.0),
            "iso": rng.uniform(0.65, 0.85), "mild": rng.uniform(0.4, 0.65)}[kind]
    if rng.random() < 0.15:  # gently lobulated
        harmonics = _harmonics(rng, np.arange(4, 6), 0.02, 0.07)
    else:
        harmonics = _harmonics(rng, np.arange(2, 4), 0.02, 0.05)
    edge_width = rng.uniform(0.015, 0.035)
    aspect = rng.uniform(1.0, 1.2) if rng.random() < 0.08 else rng.uniform(0.55, 0.9)
    heterogeneity = rng.uniform(0.1, 0.25)
    n_calc = int(rng.integers(1, 4)) if rng.random() < 0.08 else 0
    transmission = rng.uniform(2.2, 3.5) if kind == "cyst" else rng.uniform(0.85, 1.3)
    capsule = rng.uniform(0.8, 2.0) if rng.random() < 0.4 else 0.0
    halo = rng.uniform(0.5, 0.8) if kind == "iso" and rng.random() < 0.7 else 0.0
    wall = rng.uniform(0.5, 1.0) if kind == "cyst" else 0.0
    return _Lesion(radius, aspect, harmonics, edge_width, echo, heterogeneity, transmission,
                   n_calcifications=n_calc, wall_attenuation=wall, capsule=capsule, halo=halo)


@dataclass(frozen=True)
class _View:
    """Where and how one image shows the lesion; lengths are fractions of the image height."""

    near_depth: float  # depth of the near-field interface above the lesion
    cx: float
    cy: float
    scale: float
    angle: float
    mirror: float  # +1 or -1
    phase_jitter: np.ndarray
    amp_jitter: np.ndarray

    def lesion_coords(self, lesion: _Lesion, x: np.ndarray, y: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius (1 = mean margin) and the margin's radius at each point."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        u = self.mirror * (c * dx + s * dy)
        v = -s * dx + c * dy
        r = lesion.radius * self.scale
        u = u / (r / np.sqrt(lesion.aspect))
        v = v / (r * np.sqrt(lesion.aspect))
        return np.hypot(u, v), self.margin(lesion, np.arctan2(v, u))

    def margin(self, lesion: _Lesion, phi: np.ndarray) -> np.ndarray:
        """Radius of the margin at polar angle ``phi`` in lesion coordinates (mean ~1)."""
        margin = np.ones_like(phi)
        for (k, amp, phase), dp, da in zip(lesion.harmonics, self.phase_jitter, self.amp_jitter,
                                           strict=True):
            margin += amp * da * np.cos(k * phi + phase + dp)
        for angle, height, sharpness in lesion.spikes:
            margin += height * np.maximum(np.cos(phi - angle), 0.0) ** sharpness
        return margin

    def extent(self, lesion: _Lesion) -> tuple[float, float]:
        """Half-width and half-height of a box that holds the lesion (with a 5 % margin)."""
        reach = 1.05 * float(self.margin(lesion, np.linspace(0, 2 * np.pi, 721)).max())
        r = lesion.radius * self.scale * reach
        a, b = r / np.sqrt(lesion.aspect), r * np.sqrt(lesion.aspect)
        c, s = np.cos(self.angle), np.sin(self.angle)
        return float(np.hypot(a * c, b * s)), float(np.hypot(a * s, b * c))


def _unit_field(rng: np.random.Generator, size: int,
                sigma_px: float | tuple[float, float]) -> np.ndarray:
    """Smooth Gaussian random field on a (size, size) grid, zero mean and unit std."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma_px, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of an image-grid field at normalised positions (pixel centres)."""
    n = field.shape[0]
    return map_coordinates(field, [y * n - 0.5, x * n - 0.5], order=1, mode="nearest")


def _interface(rng: np.random.Generator, depth: float) -> tuple[float, float, float, float]:
    """(depth, tilt, wave amplitude, wave phase) of a roughly horizontal bright interface."""
    return depth, rng.normal(0.0, 0.06), rng.uniform(0.0, 0.012), rng.uniform(0, 2 * np.pi)


def _interface_depth(line: tuple[float, float, float, float], x: np.ndarray) -> np.ndarray:
    depth, tilt, wave, phase = line
    return depth + tilt * (x - 0.5) + wave * np.sin(2 * np.pi * 1.7 * x + phase)


def _line(rng: np.random.Generator, offset: np.ndarray, texture: np.ndarray, size_px: int
          ) -> np.ndarray:
    """Specular echo of an interface at signed distance ``offset``, brightness varying along it."""
    thickness = rng.uniform(0.9, 1.6) / size_px
    return rng.uniform(2.0, 4.5) * np.exp(0.6 * texture - (offset / thickness) ** 2)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


@dataclass(frozen=True)
class _Fan:
    """Curvilinear probe geometry and its polar sampling grid (radius along rows)."""

    apex: float  # height of the virtual apex above the image's top edge
    half_angle: float  # radians
    radii: np.ndarray
    angles: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, size_px: int) -> _Fan:
        apex = rng.uniform(0.08, 0.5)
        half_angle = np.deg2rad(rng.uniform(28.0, 42.0))
        radii = np.linspace(apex + rng.uniform(0.01, 0.04), apex + rng.uniform(0.93, 0.99),
                            int(1.3 * size_px))
        return cls(apex, half_angle, radii, np.linspace(-half_angle, half_angle,
                                                        int(1.2 * size_px)))

    def grid_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Image positions (x right, y down; fractions of the height) of the polar samples."""
        return (0.5 + self.radii[:, None] * np.sin(self.angles)[None, :],
                -self.apex + self.radii[:, None] * np.cos(self.angles)[None, :])

    def half_width_at(self, depth: float) -> float:
        return float((depth + self.apex) * np.tan(self.half_angle))

    def scan_convert(self, polar: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
        """Resample a polar-grid image to (size_px, size_px); also the field-of-view mask."""
        pix = (np.arange(size_px) + 0.5) / size_px
        px, py = np.meshgrid(pix, pix)
        radius, angle = np.hypot(px - 0.5, py + self.apex), np.arctan2(px - 0.5, py + self.apex)
        fov = ((radius >= self.radii[0]) & (radius <= self.radii[-1])
               & (np.abs(angle) <= self.half_angle))
        rows = (radius - self.radii[0]) / (self.radii[1] - self.radii[0])
        cols = (angle - self.angles[0]) / (self.angles[1] - self.angles[0])
        image = map_coordinates(polar, [rows, cols], order=1, mode="nearest")
        return np.where(fov, image, 0.0), fov


@dataclass
class _Scene:
    """Echo sources on the polar grid: diffuse reflectivity (speckled), specular echoes
    (not speckled) and attenuation per unit depth."""

    reflect: np.ndarray
    specular: np.ndarray
    attenuation: np.ndarray


def _background(rng: np.random.Generator, fan: _Fan, view: _View, lesion: _Lesion,
                size_px: int) -> _Scene:
    """Near-field layer, bright interfaces, textured parenchyma, maybe an anechoic distractor."""
    n = size_px
    x, y = fan.grid_xy()
    near = _interface(rng, view.near_depth)
    half_w, half_h = view.extent(lesion)
    deep_depth = max(rng.uniform(0.75, 0.92), view.cy + half_h + 0.05)
    deep = _interface(rng, deep_depth) if rng.random() < 0.65 and deep_depth < 0.93 else None
    coarse = _sample(_unit_field(rng, n, 0.06 * n), x, y)
    streaks = _sample(_unit_field(rng, n, (0.012 * n, 0.08 * n)), x, y)  # tissue layering
    fine = _sample(_unit_field(rng, n, 0.015 * n), x, y)
    near_y = _interface_depth(near, x)
    reflect = np.exp(0.3 * coarse + 0.25 * streaks + 0.15 * fine)
    reflect *= np.where(y < near_y, rng.uniform(0.5, 1.1) * np.exp(0.3 * streaks), 1.0)
    specular = _line(rng, y - near_y, coarse, n)
    if deep is not None:
        deep_y = _interface_depth(deep, x)
        reflect *= np.where(y > deep_y, rng.uniform(0.6, 0.9), 1.0)
        specular += _line(rng, y - deep_y, coarse, n)
    attenuation = np.full_like(x, _TISSUE_ATTENUATION)
    if rng.random() < 0.35:  # vessel / follicle, placed clear of the lesion
        for _ in range(10):
            rad = rng.uniform(0.03, 0.07)
            cx, cy = rng.uniform(0.2, 0.8), rng.uniform(view.near_depth + rad + 0.03, 0.85)
            if abs(cx - view.cx) > half_w + rad + 0.04 or abs(cy - view.cy) > half_h + rad + 0.04:
                inside = _sigmoid((rad - np.hypot(x - cx, y - cy)) * n / 0.6)
                reflect = reflect * (1 - inside) + rng.uniform(0.02, 0.06) * inside
                attenuation -= 0.8 * _TISSUE_ATTENUATION * inside
                break
    return _Scene(reflect, specular, attenuation)


def _add_lesion(rng: np.random.Generator, scene: _Scene, fan: _Fan, view: _View,
                lesion: _Lesion, size_px: int) -> None:
    """Paint the lesion's interior, margin, rims and acoustic behaviour into ``scene``."""
    x, y = fan.grid_xy()
    dist, margin = view.lesion_coords(lesion, x, y)
    weight = _sigmoid((margin - dist) / lesion.edge_width)
    texture = _sample(_unit_field(rng, size_px, 0.03 * size_px), x, y)
    interior = lesion.echo * np.exp(lesion.heterogeneity * texture)
    scene.reflect = scene.reflect * (1 - weight) + interior * weight
    outside = dist - margin
    if lesion.halo:
        scene.reflect *= 1 - lesion.halo * np.exp(-((outside - 0.1) / 0.07) ** 2)
    if lesion.echogenic_rim:
        scene.reflect *= 1 + lesion.echogenic_rim * np.exp(-((outside - 0.2) / 0.15) ** 2)
    if lesion.capsule:
        # A specular wall is bright where the beam meets it head-on (top and bottom).
        facing = np.abs(y - view.cy) / (np.hypot(x - view.cx, y - view.cy) + 1e-9)
        scene.specular += lesion.capsule * (0.3 + 0.7 * facing) * np.exp(-(outside / 0.04) ** 2)
    thickness = 2 * lesion.radius * view.scale * np.sqrt(lesion.aspect)
    scene.attenuation += -np.log(lesion.transmission) / thickness * weight
    if lesion.wall_attenuation:
        # Beams tangent to a cyst's wall cross more of it: refractive edge shadows.
        scene.attenuation += (3.3 * lesion.wall_attenuation / thickness
                              * np.exp(-(outside / 0.05) ** 2))
    scene.specular += _calcifications(rng, lesion, view, x, y, size_px)


def _render(rng: np.random.Generator, lesion: _Lesion, size_px: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """One B-mode view of ``lesion``: uint8 image (H, W) and uint8 lesion mask (0/1)."""
    fan = _Fan.draw(rng, size_px)
    view = _place_view(rng, lesion, fan)
    scene = _background(rng, fan, view, lesion, size_px)
    _add_lesion(rng, scene, fan, view, lesion, size_px)

    # Beam formation: attenuation along each beam with an under-compensating time-gain
    # compensation (darker with depth), speckle, electronic noise, weaker beams at the edges.
    depth = (fan.radii - fan.radii[0])[:, None]
    tgc = _TISSUE_ATTENUATION * rng.uniform(0.35, 0.7)
    dr = fan.radii[1] - fan.radii[0]
    beam_gain = np.exp(-np.cumsum(scene.attenuation, axis=0) * dr + tgc * depth)
    speckle = _speckle(rng, scene.reflect.shape, axial_sigma=0.9, lateral_sigma=1.6)
    amplitude = (scene.reflect * speckle + scene.specular * (0.5 + 0.5 * speckle)) * beam_gain
    noise = np.abs(rng.standard_normal(speckle.shape) + 1j * rng.standard_normal(speckle.shape))
    amplitude += rng.uniform(0.004, 0.015) * noise * np.exp(tgc * depth)
    amplitude *= 1 - 0.35 * (fan.angles / fan.half_angle) ** 4

    # Display: log compression to the dynamic range, overall gain, gamma; scan conversion.
    tissue_grey = rng.uniform(0.42, 0.62)
    dynamic_range_db = rng.uniform(45.0, 60.0)
    display = np.clip(tissue_grey + 20 * np.log10(amplitude + 1e-6) / dynamic_range_db, 0, 1)
    display **= rng.uniform(0.85, 1.2)
    image, fov = fan.scan_convert(display, size_px)
    pix = (np.arange(size_px) + 0.5) / size_px
    dist, margin = view.lesion_coords(lesion, *np.meshgrid(pix, pix))
    mask = (dist <= margin) & fov
    return np.round(image * 255).astype(np.uint8), mask.astype(np.uint8)


def _place_view(rng: np.random.Generator, lesion: _Lesion, fan: _Fan) -> _View:
    """A view of the lesion inside the fan, below the near-field interface."""
    n_h = len(lesion.harmonics)
    view = _View(near_depth=rng.uniform(0.1, 0.22), cx=0.5, cy=0.5,
                 scale=rng.uniform(0.9, 1.1), angle=np.deg2rad(rng.normal(0.0, 12.0)),
                 mirror=float(rng.choice([-1.0, 1.0])), phase_jitter=rng.normal(0.0, 0.2, n_h),
                 amp_jitter=rng.uniform(0.8, 1.2, n_h))
    half_w, half_h = view.extent(lesion)
    top, bottom = view.near_depth + half_h + 0.03, 0.9 - half_h
    cy = rng.uniform(top, bottom) if top < bottom else 0.5 * (top + bottom)
    room = min(fan.half_width_at(cy - half_h) - half_w - 0.03, 0.5 - half_w - 0.02)
    room = max(room, 0.0)
    return replace(view, cx=0.5 + rng.uniform(-room, room), cy=cy)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], axial_sigma: float,
             lateral_sigma: float) -> np.ndarray:
    """Rayleigh speckle of unit mean square: magnitude of a correlated complex Gaussian."""
    sig = (axial_sigma, lateral_sigma)
    re = gaussian_filter(rng.standard_normal(shape), sig)
    im = gaussian_filter(rng.standard_normal(shape), sig)
    magnitude = np.hypot(re, im)
    return magnitude / np.sqrt(np.mean(magnitude ** 2))


def _calcifications(rng: np.random.Generator, lesion: _Lesion, view: _View, x: np.ndarray,
                    y: np.ndarray, size_px: int) -> np.ndarray:
    """Bright point echoes inside the lesion (a different random set in each view)."""
    out = np.zeros_like(x)
    count = int(rng.poisson(lesion.n_calcifications)) if lesion.n_calcifications else 0
    if not count:
        return out
    r = lesion.radius * view.scale
    c, s = np.cos(view.angle), np.sin(view.angle)
    sigma = 0.5 / size_px
    for _ in range(count):
        rho, phi = 0.7 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        u = view.mirror * rho * np.cos(phi) * r / np.sqrt(lesion.aspect)
        v = rho * np.sin(phi) * r * np.sqrt(lesion.aspect)
        cx, cy = view.cx + c * u - s * v, view.cy + s * u + c * v
        out += rng.uniform(3.0, 8.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return out


def make_us_image(rng: np.random.Generator, malignant: bool, size_px: int = 128
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic ultrasound image with one benign or malignant lesion.

    Returns the grayscale image (uint8, (size_px, size_px), black outside the fan) and the
    lesion mask (uint8, 0/1, same shape). Deterministic given the generator state.
    """
    if size_px < 32:
        raise ConfigError(f"size_px must be >= 32, got {size_px}")
    return _render(rng, _draw_lesion(rng, bool(malignant)), size_px)


def _with_calipers(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB export of a view: '+' calipers across the lesion's long axis, sometimes tinted."""
    grey = image.astype(np.float32) / 255.0
    tints = ((1.0, 1.0, 1.0), (1.0, 0.92, 0.78), (0.85, 0.93, 1.0))  # grey, sepia, blue
    tint = tints[int(rng.choice(len(tints), p=[0.6, 0.25, 0.15]))]
    rgb = np.stack([grey * t for t in tint], axis=-1)
    ys, xs = np.nonzero(mask)
    colour = np.asarray(_CALIPER_COLOURS[int(rng.integers(len(_CALIPER_COLOURS)))]) / 255.0
    if len(xs) >= 2:
        points = np.column_stack([xs, ys]).astype(np.float64)
        centre = points.mean(axis=0)
        axis = np.linalg.svd(points - centre, full_matrices=False)[2][0]
        proj = (points - centre) @ axis
        ends = [points[int(np.argmin(proj))], points[int(np.argmax(proj))]]
        n = image.shape[0]
        arm = max(2, n // 40)
        for ex, ey in ends:
            ix, iy = int(round(ex)), int(round(ey))
            rgb[iy, max(ix - arm, 0):ix + arm + 1] = colour
            rgb[max(iy - arm, 0):iy + arm + 1, ix] = colour
        for t in np.linspace(0.1, 0.9, 8):  # dotted line between the calipers
            dx, dy = ends[0] + t * (ends[1] - ends[0])
            rgb[int(round(dy)), int(round(dx))] = colour
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _cohort_plan(spec: UltrasoundCohortSpec) -> list[bool]:
    """Malignancy per patient: exact count, shuffled."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(1)[0])
    n_malignant = round(spec.n_patients * spec.malignant_fraction)
    plan = [False] * spec.n_patients
    for i in rng.permutation(spec.n_patients)[:n_malignant]:
        plan[int(i)] = True
    return plan


def _write_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_us_cohort(out_dir: str | Path, spec: UltrasoundCohortSpec,
                    progress: bool = True) -> Path:
    """Write a synthetic ultrasound cohort as one folder per class plus a manifest.

    Creates ``benign/USnnnn_k.png`` and ``malignant/USnnnn_k.png`` (k = 1, 2, ...; 8-bit
    grayscale, ~15 % RGB), each lesion's mask as ``masks/USnnnn_k_mask.png`` (0/255) and,
    last, ``manifest.csv`` with columns ``path,patient_id,label,mask`` (paths relative to
    ``out_dir``, label 1 = malignant) beside a ``SYNTHETIC`` marker that reports read. Files
    are written atomically and an
    existing manifest is removed first, so a folder with ``manifest.csv`` holds a complete
    cohort; images left by an earlier, larger cohort in the same folder are not removed (only
    the manifest lists exactly this cohort). Patient ``i`` uses its own child seed of
    ``spec.seed``: the files are reproducible byte for byte. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").unlink(missing_ok=True)
    plan = _cohort_plan(spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_patients + 1)[1:]
    lo, hi = spec.images_per_patient
    rows = []
    patients = track(range(spec.n_patients), description="synthetic ultrasound cohort",
                     disable=not progress or spec.n_patients < 2)
    for i in patients:
        rng = np.random.default_rng(seeds[i])
        pid, malignant = f"US{i + 1:04d}", plan[i]
        lesion = _draw_lesion(rng, malignant)
        folder = "malignant" if malignant else "benign"
        for k in range(1, int(rng.integers(lo, hi + 1)) + 1):
            image, mask = _render(rng, lesion, spec.image_size_px)
            if rng.random() < _RGB_FRACTION:
                image = _with_calipers(rng, image, mask)
            rel = f"{folder}/{pid}_{k}.png"
            mask_rel = f"masks/{pid}_{k}_mask.png"
            _write_png(image, out / rel)
            _write_png(mask * np.uint8(255), out / mask_rel)
            rows.append((rel, pid, int(malignant), mask_rel))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "patient_id", "label", "mask"))
    writer.writerows(rows)
    # Reports on this folder say the data are synthetic (cadx.io.provenance.synthetic_source).
    write_text_atomic(out / "SYNTHETIC", f"cadx synthetic ultrasound lesions (cadx.synth."
                      f"us_lesions, seed {spec.seed})\n")
    write_text_atomic(out / "manifest.csv", buf.getvalue())
    return out
