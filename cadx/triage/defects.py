"""Realistic quality-control defects applied to real frames, and project-made non-medical images
for measuring the out-of-distribution guard (issue 19).

Defects imitate the ways scanners and exports fail; each takes and returns a square RGB image
(n, n, 3) in 0..1 and is strong enough that a reader could not judge the frame:

* ``blur``: heavy Gaussian blur (sigma 2-3.5 % of the side);
* ``noise``: heavy additive and speckle noise;
* ``dropout``: black bands across 35-60 % of the frame (lost scan lines, torn exports);
* ``dark``: near-black (gain 3-8 %);
* ``bright``: near-white (saturated);
* ``cropped``: tiny content (the frame shrunk to 10-20 % on black) or cropped away (a corner
  strip left);
* ``jpeg``: heavy JPEG blocking (quality 2-4, half the time at half resolution); milder
  compression leaves a frame readable, so it is not called a defect.

``doppler`` is not a defect but a QC flag: :func:`cadx.synth.categories.doppler_overlay` paints
a colour box with flow over a real B-mode frame.

The non-medical images (:data:`OOD_KINDS`: photo, screenshot, document, chart, radiograph) are
drawn by generators the router never trains on; its "other" category trains on text screens,
blank screens and 3D renderings only.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from cadx.errors import ConfigError
from cadx.synth.categories import doppler_overlay

DEFECTS = ("blur", "noise", "dropout", "dark", "bright", "cropped", "jpeg")
OOD_KINDS = ("photo", "screenshot", "document", "chart", "radiograph")
# Bumped whenever a defect or generator changes, so cached features of the old look are not
# reused.
DEFECTS_VERSION = 2


def _square(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ConfigError(f"expected a square RGB image (n, n, 3), got shape {image.shape}")
    return image


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) 0..1 -> (size[1], size[0], 3), bilinear."""
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR), dtype=np.float64) / 255


def apply_defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> np.ndarray:
    """`image` (n, n, 3) in 0..1 with defect `kind` (one of :data:`DEFECTS`, or "doppler"
    for a colour-Doppler overlay); (n, n, 3) in 0..1."""
    image = _square(image)
    n = image.shape[0]
    if kind == "doppler":
        return doppler_overlay(rng, image @ np.array([0.299, 0.587, 0.114]))
    if kind == "blur":
        sigma = rng.uniform(0.02, 0.035) * n
        return np.clip(gaussian_filter(image, (sigma, sigma, 0)), 0, 1)
    if kind == "noise":
        speckle = image * rng.rayleigh(rng.uniform(0.6, 0.9), image.shape[:2])[..., None]
        return np.clip(speckle + rng.normal(0, rng.uniform(0.3, 0.45), image.shape[:2])[..., None],
                       0, 1)
    if kind == "dropout":
        out, covered = image.copy(), np.zeros(n, bool)
        vertical = rng.random() < 0.5
        while covered.mean() < rng.uniform(0.35, 0.6):
            start, width = int(rng.integers(0, n)), int(rng.uniform(0.04, 0.12) * n)
            covered[start:start + width] = True
        fill = rng.choice([0.0, rng.uniform(0.0, 0.15)])
        if vertical:
            out[:, covered] = fill
        else:
            out[covered] = fill
        return out
    if kind == "dark":
        return np.clip(image * rng.uniform(0.03, 0.08) + rng.normal(0, 0.01, image.shape), 0, 1)
    if kind == "bright":
        return np.clip(rng.uniform(0.82, 0.92) + 0.12 * image
                       + rng.normal(0, 0.02, image.shape), 0, 1)
    if kind == "cropped":
        out = np.zeros_like(image)
        if rng.random() < 0.5:  # tiny content in a black frame
            side = max(int(rng.uniform(0.1, 0.2) * n), 2)
            y0, x0 = (int(v) for v in rng.integers(0, n - side, 2))
            out[y0:y0 + side, x0:x0 + side] = _resize(image, (side, side))
        else:  # cropped away: only a strip at one edge survives
            keep = int(rng.uniform(0.08, 0.18) * n)
            edge = int(rng.integers(4))
            if edge == 0:
                out[:keep] = image[:keep]
            elif edge == 1:
                out[-keep:] = image[-keep:]
            elif edge == 2:
                out[:, :keep] = image[:, :keep]
            else:
                out[:, -keep:] = image[:, -keep:]
        return out
    if kind == "jpeg":
        small = n // 2 if rng.random() < 0.5 else n
        pil = Image.fromarray(np.round(_resize(image, (small, small)) * 255).astype(np.uint8))
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(rng.integers(2, 5)))
        blocky = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255
        return _resize(blocky, (n, n)) if small != n else blocky
    raise ConfigError(f"unknown defect {kind!r}; one of {', '.join((*DEFECTS, 'doppler'))}")


# --------------------------------------------------------------------------------------------
# Non-medical images for the out-of-distribution guard
# --------------------------------------------------------------------------------------------


def _canvas(n: int, colour: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("RGB", (n, n), colour)
    return canvas, ImageDraw.Draw(canvas)


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _photo(rng: np.random.Generator, n: int) -> np.ndarray:
    """An outdoor snapshot: sky gradient, hills, a sun, trees or houses, sensor noise."""
    y = np.linspace(0, 1, n)[:, None, None]
    top, bottom = np.array(_colour(rng, 60, 200)), np.array(_colour(rng, 150, 256))
    image = (top * (1 - y) + bottom * y) * np.ones((1, n, 1))
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    sun = rng.uniform(0.1, 0.9) * n, rng.uniform(0.05, 0.3) * n
    r = rng.uniform(0.04, 0.09) * n
    draw.ellipse([sun[0] - r, sun[1] - r, sun[0] + r, sun[1] + r], fill=(255, 230, 120))
    for _ in range(int(rng.integers(2, 4))):  # hills
        cx, h = rng.uniform(0, 1) * n, rng.uniform(0.45, 0.75) * n
        draw.ellipse([cx - n * 0.6, h, cx + n * 0.6, h + n], fill=_colour(rng, 20, 140))
    for _ in range(int(rng.integers(2, 7))):  # trees and houses
        x, base = rng.uniform(0, 1) * n, rng.uniform(0.7, 0.95) * n
        w = rng.uniform(0.04, 0.1) * n
        if rng.random() < 0.5:
            draw.rectangle([x - w / 6, base - w * 1.5, x + w / 6, base], fill=(90, 60, 30))
            draw.ellipse([x - w, base - 3 * w, x + w, base - w], fill=_colour(rng, 0, 150))
        else:
            draw.rectangle([x - w, base - w * 1.5, x + w, base], fill=_colour(rng, 100, 256))
            draw.polygon([(x - w * 1.2, base - w * 1.5), (x + w * 1.2, base - w * 1.5),
                          (x, base - w * 2.5)], fill=_colour(rng, 80, 200))
    pixels = np.asarray(canvas, dtype=np.float64) / 255
    texture = gaussian_filter(rng.normal(0, 1, (n, n)), 1.0)[..., None] * 0.04
    return np.clip(pixels + texture + rng.normal(0, 0.02, pixels.shape), 0, 1)


def _screenshot(rng: np.random.Generator, n: int) -> np.ndarray:
    """A desktop: coloured wallpaper, windows with title bars, buttons, icons, text."""
    canvas, draw = _canvas(n, _colour(rng, 30, 200))
    font = ImageFont.load_default(size=max(n // 24, 6))
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (rng.uniform(0, 0.5, 2) * n).astype(int)
        x1, y1 = x0 + int(rng.uniform(0.35, 0.6) * n), y0 + int(rng.uniform(0.3, 0.6) * n)
        draw.rectangle([x0, y0, x1, y1], fill=(245, 245, 245), outline=(90, 90, 90))
        draw.rectangle([x0, y0, x1, y0 + n // 16], fill=_colour(rng, 0, 200))
        for k in range(int(rng.integers(2, 6))):
            row = y0 + n // 12 + k * n // 18
            if row < y1 - n // 20:
                draw.text((x0 + 4, row), "File  Edit  View  Settings"[: int(rng.integers(8, 26))],
                          fill=(20, 20, 20), font=font)
        bx = x1 - n // 6
        draw.rectangle([bx, y1 - n // 12, x1 - 4, y1 - 4], fill=(60, 120, 220))
    for k in range(int(rng.integers(3, 7))):  # desktop icons
        draw.rectangle([4, 4 + k * n // 9, 4 + n // 14, 4 + k * n // 9 + n // 14],
                       fill=_colour(rng))
    draw.rectangle([0, n - n // 14, n, n], fill=(40, 40, 50))  # task bar
    return np.asarray(canvas, dtype=np.float64) / 255


def _document(rng: np.random.Generator, n: int) -> np.ndarray:
    """A scanned page: paper colour, a heading, paragraphs of text lines, sometimes a table."""
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    canvas, draw = _canvas(n * 2, paper)
    font = ImageFont.load_default(size=max(n // 14, 8))
    draw.text((n // 8, n // 10), "Quarterly report", fill=(10, 10, 10), font=font)
    row = n // 4
    while row < 2 * n - n // 6:
        length = rng.uniform(0.4, 0.85) * 2 * n
        draw.text((n // 8, row), "lorem ipsum dolor sit amet consectetur " * 3,
                  fill=(30, 30, 30), font=font)
        draw.rectangle([n // 8 + length, row, 2 * n, row + n // 12], fill=paper)
        row += int(rng.uniform(0.09, 0.14) * n)
    small = canvas.resize((n, n), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64) / 255
    return np.clip(pixels + rng.normal(0, 0.015, pixels.shape), 0, 1)


def _chart(rng: np.random.Generator, n: int) -> np.ndarray:
    """A plot: white background, axes, grid, coloured bars or lines, a legend box."""
    canvas, draw = _canvas(n, (255, 255, 255))
    left, bottom = n // 8, n - n // 8
    for k in range(1, 5):
        draw.line([(left, bottom - k * n // 6), (n - 4, bottom - k * n // 6)],
                  fill=(220, 220, 220))
    draw.line([(left, 4), (left, bottom), (n - 4, bottom)], fill=(0, 0, 0), width=2)
    if rng.random() < 0.5:
        bars = int(rng.integers(3, 9))
        width = (n - left - 8) // bars
        for k in range(bars):
            height = int(rng.uniform(0.1, 0.8) * n)
            draw.rectangle([left + k * width + 3, bottom - height, left + (k + 1) * width - 3,
                            bottom], fill=_colour(rng, 0, 220))
    else:
        for _ in range(int(rng.integers(1, 4))):
            xs = np.linspace(left, n - 6, 12)
            ys = bottom - np.cumsum(rng.normal(0, 0.05, 12)) * n - rng.uniform(0.2, 0.6) * n
            draw.line(list(zip(xs.tolist(), np.clip(ys, 6, bottom).tolist(), strict=True)),
                      fill=_colour(rng, 0, 220), width=2)
    draw.rectangle([n - n // 3, 8, n - 8, n // 6], outline=(0, 0, 0), fill=(250, 250, 250))
    return np.asarray(canvas, dtype=np.float64) / 255


def _radiograph(rng: np.random.Generator, n: int) -> np.ndarray:
    """A chest-radiograph-like projection: bright body, two dark lung fields, spine, heart,
    rib arcs. Medical, but no category of the router."""
    y, x = np.mgrid[0:n, 0:n] / n
    body = np.exp(-(((x - 0.5) / 0.42) ** 8 + ((y - 0.55) / 0.5) ** 8))
    lungs = sum(np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.28) ** 2) ** 2)
                for cx in (0.5 - rng.uniform(0.16, 0.2), 0.5 + rng.uniform(0.16, 0.2)))
    heart = np.exp(-(((x - 0.55) / 0.12) ** 2 + ((y - 0.6) / 0.12) ** 2))
    spine = np.exp(-((x - 0.5) / 0.03) ** 2) * (y > 0.1)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (y + 0.15 * (x - 0.5) ** 2 * 4) / rng.uniform(0.07, 0.09))
    image = (0.75 * body - 0.45 * lungs * (1 - 0.3 * ribs ** 4) + 0.3 * heart + 0.25 * spine)
    image = gaussian_filter(image, 1.0) + rng.normal(0, 0.02, image.shape)
    image = np.clip(image * rng.uniform(0.9, 1.1), 0, 1)
    return np.repeat(image[..., None], 3, axis=-1)


_OOD = {"photo": _photo, "screenshot": _screenshot, "document": _document, "chart": _chart,
        "radiograph": _radiograph}


def make_ood_image(rng: np.random.Generator, kind: str, size_px: int = 256) -> np.ndarray:
    """One project-made image of `kind` (see :data:`OOD_KINDS`) that belongs to no triage
    category: (size_px, size_px, 3) uint8."""
    if kind not in _OOD:
        raise ConfigError(f"unknown out-of-distribution image kind {kind!r}; one of "
                          f"{', '.join(OOD_KINDS)}")
    return np.round(np.clip(_OOD[kind](rng, size_px), 0, 1) * 255).astype(np.uint8)
