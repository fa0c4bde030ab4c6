"""Synthetic images of several categories, for image triage and quality control (issue 8).

Each image is one *look*: an axial CT slice of the abdomen, a B-mode ultrasound of the thyroid,
the breast or the adnexa, or an "other" screen (text, blank, 3D surface rendering). The
categories differ the way real exports do:

* ``ct-abdomen``: a slice of :func:`cadx.synth.ct_phantom.make_ct_phantom`, soft-tissue window
  (level 40 HU, width 400 HU): a round body on black, bright spine and vessels, no speckle;
* ``us-thyroid`` (linear probe, transverse): skin, hypoechoic strap muscles, two bright
  homogeneous lobes joined by an isthmus over the trachea (bright arc with reverberations and a
  shadow beneath), anechoic carotid arteries beside the lobes;
* ``us-breast`` (linear probe): bright skin line, dark fat lobules with bright septa, a bright
  heterogeneous glandular layer with Cooper's ligaments, a striated pectoral muscle, sometimes a
  rib with its shadow;
* ``us-adnexa`` (transvaginal sector probe, wide fan): pelvic tissue, an ovary holding several
  anechoic follicles with posterior enhancement, sometimes the uterus and free fluid;
* ``other``: text screens (reports, worklists), blank screens, and 3D surface renderings.

Ultrasound images are formed from a reflectivity map: Rayleigh speckle, depth attenuation with
under-correcting gain, log compression, the probe's field of view (rectangle or sector). An
ultrasound or CT patient may have a *lesion* (a hypoechoic or anechoic nodule in the organ; the
phantom's tumour for CT). Quality-control flags are known for every image:

* ``target``: the image shows one of the organs this cohort is about (every category but other);
* ``lesion``: a lesion is visible;
* ``doppler``: a colour-Doppler-like overlay (colour box with red/blue flow) is present;
* ``is3d``: a 3D surface rendering rather than a 2D slice;
* ``unreadable``: the organ image cannot be judged (gain far too low, saturated, probe lifted
  off the skin, heavy blur), or a blank screen.

:func:`write_category_cohort` writes a router dataset (one folder per category), a QC manifest
with the five flags, and one binary lesion manifest per organ category (for analysers).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.progress import track
from scipy.ndimage import gaussian_filter, zoom

from cadx.errors import ConfigError
from cadx.io.atomic import atomic_path, write_text_atomic
from cadx.synth.ct_phantom import make_ct_phantom

__all__ = ["CATEGORIES", "LOOKS", "ORGAN_CATEGORIES", "QC_FLAGS", "CategoryCohortSpec",
           "SyntheticImage", "doppler_overlay", "make_category_image", "write_category_cohort"]

ORGAN_CATEGORIES = ("ct-abdomen", "us-thyroid", "us-breast", "us-adnexa")
CATEGORIES = (*ORGAN_CATEGORIES, "other")
OTHER_LOOKS = ("text-screen", "blank-screen", "render-3d")
LOOKS = (*ORGAN_CATEGORIES, *OTHER_LOOKS)
QC_FLAGS = ("target", "lesion", "doppler", "is3d", "unreadable")
DEGRADATIONS = ("dark", "saturated", "lifted", "blurred")
_CT_SHAPE_ZYX, _CT_SPACING_ZYX_MM = (8, 96, 96), (5.0, 3.6, 3.6)
_WORDS = ("PATIENT", "STUDY", "SERIES", "REPORT", "WORKLIST", "ACCESSION", "DATE", "EXAM",
          "IMPRESSION", "FINDINGS", "NORMAL", "SCHEDULED", "COMPLETED", "US", "CT", "MR",
          "THYROID", "BREAST", "PELVIS", "ABDOMEN", "ID", "NAME", "AGE", "SEX", "OK", "CANCEL")


@dataclass(frozen=True)
class SyntheticImage:
    """One image (uint8, (H, W) grey or (H, W, 3) RGB), its category and its QC flags."""

    pixels: np.ndarray
    category: str
    look: str
    flags: dict[str, bool]


# --------------------------------------------------------------------------------------------
# Ultrasound formation
# --------------------------------------------------------------------------------------------


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre positions (x right, y down) as fractions of the image side."""
    pix = (np.arange(n) + 0.5) / n
    return np.meshgrid(pix, pix)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float,
             edge: float, angle: float = 0.0) -> np.ndarray:
    """Soft indicator (0..1) of an ellipse with semi-axes a, b; `edge` is the blur width."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    r = np.hypot(u / a, v / b)
    return 0.5 * (1.0 + np.tanh((1.0 - r) * np.minimum(a, b) / edge))


def _field(rng: np.random.Generator, n: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit std; sigma in fractions of the side."""
    sig = tuple(max(s * n, 0.5) for s in np.broadcast_to(sigma, 2))
    field = gaussian_filter(rng.standard_normal((n, n)), sig, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _band(y: np.ndarray, top: np.ndarray, bottom: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of top < y < bottom (the bounds may vary along x)."""
    return (0.5 * (1 + np.tanh((y - top) / edge))) * (0.5 * (1 + np.tanh((bottom - y) / edge)))


def _wavy(rng: np.random.Generator, x: np.ndarray, depth: float, amp: float) -> np.ndarray:
    """A roughly horizontal boundary at `depth` with a random tilt and waviness."""
    return (depth + rng.normal(0, 0.03) * (x - 0.5)
            + amp * np.sin(2 * np.pi * rng.uniform(0.6, 2.0) * x + rng.uniform(0, 2 * np.pi)))


def _linear_fov(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Field of view of a linear probe: a rectangle (sometimes a trapezoid) below the top."""
    top, left = rng.uniform(0.02, 0.08), rng.uniform(0.05, 0.15)
    flare = rng.uniform(0.0, 0.1) if rng.random() < 0.3 else 0.0
    half = 0.5 - left + flare * (y - top)
    return (y >= top) & (y <= rng.uniform(0.92, 0.99)) & (np.abs(x - 0.5) <= half)


def _sector_fov(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                half_angle_deg: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Field of view of a sector probe whose apex sits at the top centre; also the depth."""
    apex = rng.uniform(0.0, 0.06)
    radius = np.hypot(x - 0.5, y + apex)
    angle = np.degrees(np.arctan2(x - 0.5, y + apex))
    fov = ((radius >= apex + 0.02) & (radius <= rng.uniform(0.9, 1.0))
           & (np.abs(angle) <= rng.uniform(*half_angle_deg)))
    return fov, radius - apex


def _bmode(rng: np.random.Generator, reflect: np.ndarray, fov: np.ndarray,
           depth: np.ndarray) -> np.ndarray:
    """B-mode display (0..1) of a reflectivity map: speckle, attenuation, log compression."""
    n = reflect.shape[0]
    re = gaussian_filter(rng.standard_normal((n, n)), (0.7, 1.3))
    im = gaussian_filter(rng.standard_normal((n, n)), (0.7, 1.3))
    speckle = np.hypot(re, im)
    speckle /= np.sqrt(np.mean(speckle ** 2))
    gain = np.exp(-rng.uniform(0.6, 1.6) * depth)
    amplitude = reflect * speckle * gain + rng.uniform(0.003, 0.01) * rng.rayleigh(1.0, (n, n))
    display = rng.uniform(0.5, 0.65) + 20 * np.log10(amplitude + 1e-6) / rng.uniform(45, 60)
    return np.where(fov, np.clip(display, 0, 1) ** rng.uniform(0.85, 1.15), 0.0)


def _lesion(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cx: float, cy: float,
            size: float) -> tuple[np.ndarray, float]:
    """A nodule inside an organ at (cx, cy): soft mask and its echo level (cyst or solid)."""
    a = size * rng.uniform(0.8, 1.2)
    wobble = 1 + 0.12 * _field(rng, x.shape[0], 0.05)
    mask = _ellipse(x, y, cx, cy, a * wobble, a * rng.uniform(0.6, 1.0) * wobble,
                    rng.uniform(0.004, 0.015), rng.uniform(0, np.pi))
    echo = rng.uniform(0.02, 0.06) if rng.random() < 0.35 else rng.uniform(0.15, 0.45)
    return mask, echo


def _with_lesion(rng: np.random.Generator, reflect: np.ndarray, x: np.ndarray, y: np.ndarray,
                 centre: tuple[float, float], size: float) -> np.ndarray:
    mask, echo = _lesion(rng, x, y, *centre, size)
    return reflect * (1 - mask) + echo * mask * np.exp(0.3 * _field(rng, x.shape[0], 0.02))


def _thyroid(rng: np.random.Generator, n: int, lesion: bool) -> np.ndarray:
    x, y = _grid(n)
    fov = _linear_fov(rng, x, y)
    zoom_factor = rng.uniform(0.85, 1.15)
    cx = 0.5 + rng.uniform(-0.08, 0.08)
    reflect = 0.7 * np.exp(0.25 * _field(rng, n, (0.01, 0.06)))  # deep neck muscles
    strap_bottom = _wavy(rng, x, rng.uniform(0.16, 0.22), 0.01)
    reflect *= 1 - 0.45 * _band(y, 0.05, strap_bottom, 0.006)  # strap muscles
    reflect += 3.0 * np.exp(-((y - rng.uniform(0.03, 0.05)) / 0.008) ** 2)  # skin
    lobe_y = strap_bottom.mean() + 0.17 * zoom_factor
    lobes = np.zeros_like(x)
    for side in (-1, 1):
        lobes = np.maximum(lobes, _ellipse(
            x, y, cx + side * rng.uniform(0.22, 0.27) * zoom_factor, lobe_y,
            rng.uniform(0.13, 0.17) * zoom_factor, rng.uniform(0.1, 0.14) * zoom_factor, 0.008,
            rng.normal(0, 0.1)))
    isthmus = _band(y, lobe_y - 0.16 * zoom_factor, lobe_y - 0.1 * zoom_factor, 0.008)
    lobes = np.maximum(lobes, isthmus * (np.abs(x - cx) < 0.15 * zoom_factor))
    thyroid_echo = rng.uniform(1.6, 2.4) * np.exp(0.12 * _field(rng, n, 0.015))
    reflect = reflect * (1 - lobes) + thyroid_echo * lobes
    trachea_r = rng.uniform(0.08, 0.11) * zoom_factor
    trachea_y = lobe_y - 0.02
    ring = np.hypot(x - cx, y - trachea_y)
    reflect += 4.0 * np.exp(-((ring - trachea_r) / 0.008) ** 2) * (y < trachea_y)
    shadow = (np.abs(x - cx) < trachea_r * 0.9) & (y > trachea_y - trachea_r * 0.3)
    reverberation = 0.5 + 0.5 * np.cos(2 * np.pi * (y - trachea_y) / rng.uniform(0.05, 0.08))
    reflect = np.where(shadow, 0.05 + 0.25 * reverberation ** 8, reflect)
    for side in (-1, 1):  # carotid arteries, anechoic
        vessel = _ellipse(x, y, cx + side * rng.uniform(0.4, 0.46) * zoom_factor,
                          lobe_y + rng.uniform(0.0, 0.05), 0.06 * zoom_factor,
                          0.06 * zoom_factor, 0.005)
        reflect = reflect * (1 - vessel) + 0.02 * vessel
    if lesion:
        side = rng.choice([-1, 1])
        reflect = _with_lesion(rng, reflect, x, y, (cx + side * 0.24 * zoom_factor, lobe_y),
                               rng.uniform(0.04, 0.08))
    return _bmode(rng, reflect, fov, y)


def _breast(rng: np.random.Generator, n: int, lesion: bool) -> np.ndarray:
    x, y = _grid(n)
    fov = _linear_fov(rng, x, y)
    skin = rng.uniform(0.03, 0.06)
    fat_bottom = _wavy(rng, x, rng.uniform(0.2, 0.32), 0.03)
    gland_bottom = _wavy(rng, x, rng.uniform(0.55, 0.68), 0.04)
    muscle_top = gland_bottom + rng.uniform(0.04, 0.08)
    muscle_bottom = muscle_top + rng.uniform(0.12, 0.2)
    reflect = 0.35 * np.exp(0.3 * _field(rng, n, 0.03))  # fat
    lobules = _field(rng, n, (0.025, 0.05))
    septa = np.exp(-(lobules / 0.15) ** 2)  # bright septa between fat lobules
    reflect += 0.9 * septa * _band(y, skin, fat_bottom, 0.01)
    gland = _band(y, fat_bottom, gland_bottom, 0.01)
    gland_echo = rng.uniform(1.3, 2.0) * np.exp(0.45 * _field(rng, n, (0.01, 0.03)))
    reflect = reflect * (1 - gland) + gland_echo * gland
    ligaments = np.exp(-(_field(rng, n, (0.04, 0.02)) / 0.08) ** 2)  # Cooper's ligaments
    reflect += 1.5 * ligaments * _band(y, skin, gland_bottom, 0.02)
    muscle = _band(y, muscle_top, muscle_bottom, 0.008)
    fibres = 0.5 + 0.5 * np.cos(2 * np.pi * ((y - 0.3 * x * rng.uniform(-1, 1)) / 0.025))
    reflect = reflect * (1 - muscle) + (0.5 + 0.8 * fibres ** 4) * muscle
    reflect += 3.5 * np.exp(-((y - skin) / 0.006) ** 2)
    reflect += 2.0 * np.exp(-((y - skin - 0.015) / 0.006) ** 2)
    if rng.random() < 0.5:  # a rib: bright anterior surface, shadow beneath
        rx, ry = rng.uniform(0.25, 0.75), muscle_bottom.mean() + rng.uniform(0.06, 0.1)
        rib = _ellipse(x, y, rx, ry, rng.uniform(0.12, 0.18), 0.05, 0.006)
        reflect = np.where((y > ry) & (np.abs(x - rx) < 0.14), 0.03, reflect)
        reflect += 3.0 * rib * (y < ry)
    if lesion:
        reflect = _with_lesion(rng, reflect, x, y, (rng.uniform(0.3, 0.7),
                                                    float(np.mean(fat_bottom + gland_bottom)) / 2),
                               rng.uniform(0.05, 0.1))
    return _bmode(rng, reflect, fov, y)


def _adnexa(rng: np.random.Generator, n: int, lesion: bool) -> np.ndarray:
    x, y = _grid(n)
    fov, depth = _sector_fov(rng, x, y, (55.0, 75.0))
    reflect = 0.8 * np.exp(0.35 * _field(rng, n, 0.04) + 0.2 * _field(rng, n, 0.01))
    if rng.random() < 0.6:  # the uterus: a large homogeneous body with an endometrial stripe
        ux, uy = rng.choice([0.15, 0.85]), rng.uniform(0.35, 0.55)
        uterus = _ellipse(x, y, ux, uy, 0.25, 0.18, 0.01, rng.normal(0, 0.3))
        stripe = _ellipse(x, y, ux, uy, 0.18, 0.025, 0.006, rng.normal(0, 0.3))
        reflect = reflect * (1 - uterus) + 1.1 * uterus + 2.5 * stripe
    ox, oy = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.6)
    oa, ob = rng.uniform(0.16, 0.22), rng.uniform(0.11, 0.15)
    angle = rng.normal(0, 0.3)
    ovary = _ellipse(x, y, ox, oy, oa, ob, 0.01, angle)
    reflect = reflect * (1 - ovary) + 1.0 * np.exp(0.2 * _field(rng, n, 0.01)) * ovary
    for _ in range(int(rng.integers(4, 11))):  # follicles: anechoic, posterior enhancement
        fr = rng.uniform(0.015, 0.045)
        t, rho = rng.uniform(0, 2 * np.pi), np.sqrt(rng.random()) * 0.7
        fx, fy = ox + rho * oa * np.cos(t), oy + rho * ob * np.sin(t)
        follicle = _ellipse(x, y, fx, fy, fr, fr * rng.uniform(0.8, 1.0), 0.003)
        reflect *= 1 + 0.6 * ((np.abs(x - fx) < fr) & (y > fy + fr))
        reflect = reflect * (1 - follicle) + 0.015 * follicle
    if rng.random() < 0.3:  # free fluid
        fluid = _ellipse(x, y, rng.uniform(0.3, 0.7), rng.uniform(0.75, 0.85), 0.15, 0.05, 0.01)
        reflect = reflect * (1 - fluid) + 0.02 * fluid
    if lesion:
        reflect = _with_lesion(rng, reflect, x, y, (ox, oy), rng.uniform(0.06, 0.1))
    return _bmode(rng, reflect, fov, depth)


def _doppler(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """A colour-Doppler-like export: a colour box with red/blue flow over the grey image."""
    n = grey.shape[0]
    x, y = _grid(n)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    bx0, by0 = rng.uniform(0.15, 0.45), rng.uniform(0.1, 0.4)
    bx1, by1 = bx0 + rng.uniform(0.25, 0.45), by0 + rng.uniform(0.25, 0.45)
    inside = (x > bx0) & (x < bx1) & (y > by0) & (y < by1) & (grey > 0)
    flow = _field(rng, n, rng.uniform(0.02, 0.04))
    velocity = _field(rng, n, 0.08)
    vessels = inside & (np.abs(flow) < rng.uniform(0.15, 0.3))
    speed = np.clip(np.abs(velocity), 0.2, 1.5) / 1.5
    towards = velocity > 0
    colour = np.stack([np.where(towards, 0.6 + 0.4 * speed, 0.1 * speed),
                       0.6 * speed ** 2,
                       np.where(towards, 0.1 * speed, 0.6 + 0.4 * speed)], axis=-1)
    rgb[vessels] = colour[vessels]
    outline = inside & ~((x > bx0 + 1.5 / n) & (x < bx1 - 1.5 / n)
                         & (y > by0 + 1.5 / n) & (y < by1 - 1.5 / n))
    rgb[outline] = 0.8
    # The velocity colour bar at the left edge.
    bar = (x < 0.04) & (y > 0.1) & (y < 0.5)
    rgb[bar] = np.stack([np.clip((0.3 - y) * 5, 0, 1), np.zeros_like(y),
                         np.clip((y - 0.3) * 5, 0, 1)], axis=-1)[bar]
    return rgb


def doppler_overlay(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """A colour-Doppler-like export of a square grey B-mode image (n, n) in 0..1: a colour box
    with red/blue flow over the tissue and a velocity colour bar; (n, n, 3) in 0..1. Used on
    real B-mode frames where a data set has no colour-Doppler frames of its own."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2 or grey.shape[0] != grey.shape[1]:
        raise ConfigError(f"doppler_overlay needs a square grey image, got shape {grey.shape}")
    return _doppler(rng, grey)


# --------------------------------------------------------------------------------------------
# CT slices and other screens
# --------------------------------------------------------------------------------------------


def _ct_slice(rng: np.random.Generator, n: int, lesion: bool) -> np.ndarray:
    phantom = make_ct_phantom(rng, rng.uniform(15.0, 35.0) if lesion else None,
                              _CT_SHAPE_ZYX, _CT_SPACING_ZYX_MM)
    if lesion:
        slices = np.flatnonzero((phantom.label == 2).any(axis=(1, 2)))
    else:
        slices = np.arange(2, _CT_SHAPE_ZYX[0] - 2)
    hu = phantom.image_hu[int(rng.choice(slices))].astype(np.float32)
    level, width = 40.0 + rng.normal(0, 10), 400.0 * rng.uniform(0.85, 1.15)
    image = np.clip((hu - (level - width / 2)) / width, 0, 1)
    return zoom(image, n / image.shape[0], order=1)[:n, :n]


def _text_screen(rng: np.random.Generator, n: int) -> np.ndarray:
    background = np.array(rng.choice([(0, 0, 0), (10, 20, 60), (235, 235, 235), (30, 30, 30)]))
    ink = (40, 40, 40) if background.mean() > 128 else tuple(
        int(v) for v in rng.choice([(255, 255, 255), (120, 255, 120), (255, 220, 120)]))
    scale = 4  # draw large, then shrink: small text keeps its anti-aliased strokes
    canvas = Image.new("RGB", (n * scale, n * scale), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=int(rng.integers(9, 14)) * scale // 2)
    row = int(rng.integers(2, 10)) * scale
    while row < n * scale - 10 * scale:
        words = " ".join(rng.choice(_WORDS, int(rng.integers(1, 5))))
        if rng.random() < 0.4:
            words += f" {int(rng.integers(0, 99999)):05d}"
        draw.text((int(rng.integers(2, 12)) * scale, row), words, fill=ink, font=font)
        row += int(rng.integers(7, 12)) * scale
    if rng.random() < 0.4:  # a table's grid lines
        for k in range(1, int(rng.integers(2, 5))):
            draw.line([(k * n * scale // 4, 0), (k * n * scale // 4, n * scale)], fill=ink,
                      width=scale)
    return np.asarray(canvas.resize((n, n), Image.Resampling.LANCZOS), dtype=np.float32) / 255


def _blank_screen(rng: np.random.Generator, n: int) -> np.ndarray:
    x, y = _grid(n)
    colour = rng.uniform(0, 1, 3) * rng.choice([0.05, 0.3, 1.0])
    image = colour[None, None, :] * (1 + rng.uniform(-0.2, 0.2) * (y - 0.5))[..., None]
    image = image + rng.normal(0, 0.01, (n, n, 3))
    if rng.random() < 0.4:  # a small logo or a cursor
        mark = _ellipse(x, y, rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), 0.04, 0.04, 0.005)
        image = image * (1 - mark[..., None]) + rng.uniform(0.5, 1.0) * mark[..., None]
    return np.clip(image, 0, 1)


def _render_3d(rng: np.random.Generator, n: int) -> np.ndarray:
    """A shaded surface of a smooth blob (as a 3D ultrasound or CT volume rendering)."""
    x, y = _grid(n)
    cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    radius = rng.uniform(0.25, 0.4) * (1 + 0.15 * _field(rng, n, 0.1))
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / radius ** 2
    height = np.sqrt(np.clip(1 - r2, 0, 1)) + 0.15 * _field(rng, n, rng.uniform(0.03, 0.08))
    gy, gx = np.gradient(gaussian_filter(height, 1.0) * n * 0.3)
    normal = np.stack([-gx, -gy, np.ones_like(gx)])
    normal /= np.linalg.norm(normal, axis=0)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.0), 1.0])
    light /= np.linalg.norm(light)
    shade = np.clip(np.tensordot(light, normal, axes=1), 0, 1) ** rng.uniform(1.0, 2.5)
    tint = np.array(rng.choice([(1.0, 0.75, 0.5), (1.0, 0.85, 0.7), (0.9, 0.6, 0.35),
                                (0.95, 0.95, 0.95)]))
    image = (0.1 + 0.9 * shade)[..., None] * tint[None, None, :] * (r2 < 1)[..., None]
    return np.clip(image, 0, 1)


def _degrade(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """An organ image that cannot be judged."""
    n = image.shape[0]
    if kind == "dark":
        return np.clip(image * rng.uniform(0.03, 0.08) + rng.normal(0, 0.01, image.shape), 0, 1)
    if kind == "saturated":
        return np.clip(0.8 + 0.2 * image + rng.normal(0, 0.02, image.shape), 0, 1)
    if kind == "lifted":  # probe off the skin: reverberation bands, no anatomy
        x, y = _grid(n)
        bands = 0.5 + 0.5 * np.cos(2 * np.pi * y / rng.uniform(0.06, 0.12))
        noise = rng.rayleigh(0.1, (n, n))
        return np.where(image > 0, np.clip(0.05 + 0.4 * bands ** 6 * np.exp(-2 * y) + noise,
                                           0, 1), 0)
    return np.clip(gaussian_filter(image, rng.uniform(3.0, 5.0)) + rng.normal(0, 0.03, image.shape),
                   0, 1)


_ORGAN_RENDERERS: dict[str, Callable[[np.random.Generator, int, bool], np.ndarray]] = {
    "ct-abdomen": _ct_slice, "us-thyroid": _thyroid, "us-breast": _breast, "us-adnexa": _adnexa,
}


def make_category_image(rng: np.random.Generator, look: str, size_px: int = 96, *,
                        lesion: bool = False, doppler: bool = False,
                        degradation: str | None = None) -> SyntheticImage:
    """One synthetic image of `look` (see :data:`LOOKS`) with its category and QC flags.

    `lesion`, `doppler` (ultrasound only) and `degradation` (one of :data:`DEGRADATIONS`)
    apply to organ looks only. Deterministic given the generator state.
    """
    if look not in LOOKS:
        raise ConfigError(f"unknown image look {look!r}; one of {', '.join(LOOKS)}")
    if size_px < 32:
        raise ConfigError(f"size_px must be >= 32, got {size_px}")
    if degradation is not None and degradation not in DEGRADATIONS:
        raise ConfigError(f"unknown degradation {degradation!r}; one of {DEGRADATIONS}")
    organ = look in ORGAN_CATEGORIES
    if not organ and (lesion or doppler or degradation):
        raise ConfigError(f"{look}: lesion, doppler and degradation apply to organ images only")
    if doppler and not look.startswith("us-"):
        raise ConfigError(f"{look}: a Doppler overlay needs an ultrasound image")
    if organ:
        pixels = _ORGAN_RENDERERS[look](rng, size_px, lesion)
        if degradation is not None:
            pixels = _degrade(rng, pixels, degradation)
        if doppler:
            pixels = _doppler(rng, pixels)
    else:
        pixels = {"text-screen": _text_screen, "blank-screen": _blank_screen,
                  "render-3d": _render_3d}[look](rng, size_px)
    flags = {"target": organ, "lesion": organ and lesion, "doppler": doppler,
             "is3d": look == "render-3d",
             "unreadable": degradation is not None or look == "blank-screen"}
    return SyntheticImage(np.round(pixels * 255).astype(np.uint8),
                          look if organ else "other", look, flags)


# --------------------------------------------------------------------------------------------
# Cohort writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryCohortSpec:
    """A synthetic cohort for triage: `patients_per_category` patients of each category
    (the "other" patients split over text, blank and 3D screens), each with
    `images_per_patient` (inclusive range) views.

    Fractions: `lesion_fraction` of organ patients have a lesion, `doppler_fraction` of
    ultrasound images carry a colour overlay, `unreadable_fraction` of organ images are
    degraded (those go to the QC manifest only, never to the router's class folders).
    """

    patients_per_category: int = 40
    images_per_patient: tuple[int, int] = (1, 3)
    lesion_fraction: float = 0.5
    doppler_fraction: float = 0.25
    unreadable_fraction: float = 0.1
    image_size_px: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patients_per_category < 3:
            raise ConfigError("patients_per_category must be >= 3 (train, validation, test)")
        lo, hi = self.images_per_patient
        if not 1 <= lo <= hi:
            raise ConfigError(f"images_per_patient must satisfy 1 <= lo <= hi, got {(lo, hi)}")
        for name in ("lesion_fraction", "doppler_fraction", "unreadable_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.image_size_px < 32:
            raise ConfigError(f"image_size_px must be >= 32, got {self.image_size_px}")


def _write_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_category_cohort(out_dir: str | Path, spec: CategoryCohortSpec,
                          progress: bool = True) -> Path:
    """Write a synthetic triage cohort into `out_dir`:

    * ``categories/<category>/<patient>_<k>.png``: readable images by category (the router's
      training data); degraded images go to ``unreadable/<patient>_<k>.png`` instead;
    * ``qc.csv``: ``path, patient_id, category`` and one 0/1 column per QC flag, every image;
    * ``lesion-<category>.csv``: ``path, patient_id, label`` (1 = lesion) of each organ
      category's readable images, for training analysers.

    Paths are relative to `out_dir`; the manifests are written last, atomically. Patient ``i``
    of category ``c`` uses its own child seed of ``spec.seed``: reproducible byte for byte.
    Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("qc.csv", *(f"lesion-{c}.csv" for c in ORGAN_CATEGORIES)):
        (out / stale).unlink(missing_ok=True)
    n = spec.patients_per_category
    seeds = np.random.SeedSequence(spec.seed).spawn(len(CATEGORIES) * n)
    lo, hi = spec.images_per_patient
    qc_rows: list[tuple] = []
    lesion_rows: dict[str, list[tuple]] = {c: [] for c in ORGAN_CATEGORIES}
    plan = [(c, i) for c in CATEGORIES for i in range(n)]
    # Exactly round(n * lesion_fraction) lesion patients per organ category, shuffled.
    order = np.random.default_rng(spec.seed).permutation(n)
    with_lesion = set(order[:round(n * spec.lesion_fraction)].tolist())
    for index in track(range(len(plan)), description="synthetic triage cohort",
                       disable=not progress):
        category, i = plan[index]
        rng = np.random.default_rng(seeds[index])
        pid = f"{category}-{spec.seed}-{i + 1:04d}"
        look = OTHER_LOOKS[i % len(OTHER_LOOKS)] if category == "other" else category
        lesion = category != "other" and i in with_lesion
        for k in range(1, int(rng.integers(lo, hi + 1)) + 1):
            degradation = None
            if category != "other" and rng.random() < spec.unreadable_fraction:
                degradation = str(rng.choice(DEGRADATIONS))
            doppler = category.startswith("us-") and rng.random() < spec.doppler_fraction
            image = make_category_image(rng, look, spec.image_size_px, lesion=lesion,
                                        doppler=doppler, degradation=degradation)
            folder = "unreadable" if degradation else f"categories/{category}"
            rel = f"{folder}/{pid}_{k}.png"
            _write_png(image.pixels, out / rel)
            qc_rows.append((rel, pid, category, *(int(image.flags[f]) for f in QC_FLAGS)))
            if category != "other" and degradation is None:
                lesion_rows[category].append((rel, pid, int(lesion)))
    for category, rows in lesion_rows.items():
        write_text_atomic(out / f"lesion-{category}.csv",
                          _csv_text(("path", "patient_id", "label"), rows))
    write_text_atomic(out / "qc.csv",
                      _csv_text(("path", "patient_id", "category", *QC_FLAGS), qc_rows))
    return out
