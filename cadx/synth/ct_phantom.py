"""Synthetic contrast-enhanced abdominal CT phantoms with a pancreas label (MSD Task07 layout).

Each case is an axial stack ``(z, y, x)`` in Hounsfield units built analytically: every organ is
an ellipse (or a chain of ellipsoids) whose centre, size and in-plane rotation vary smoothly
with ``z`` and per patient. Axes follow the DICOM/ITK LPS convention of the written NIfTI files
(identity direction): ``x`` increases towards the patient's left (so the patient's right -- the
liver -- is on the image left, as on a radiology display), ``y`` increases anterior -> posterior
and ``z`` increases caudal -> cranial. All geometry is defined in millimetres, so the anatomy
keeps its size whatever the voxel spacing (tests use coarse grids).

Simulated anatomy and attenuation (pancreatic / early portal-venous phase, ~45-70 s):

* air -1000; skin +30; subcutaneous fat -100 +- 8 (per patient); visceral fat -90 +- 5;
  abdominal wall, psoas, quadratus lumborum and paraspinal muscles +45..+60
  (fat -120..-80 HU and enhanced muscle 40-60 HU are textbook values).
* lumbar spine: cortical shell +700, cancellous bone +150..+280 (decreasing with age),
  discs +90, spinal canal (CSF) +15, posterior elements +500, ribs in the upper slices.
* liver +90..+120 with enhanced vessels, gallbladder bile 0..+20, spleen +105..+130,
  kidneys with corticomedullary differentiation (cortex +150..+200, medulla +90..+120,
  sinus fat, pelvis fluid), stomach and colon with enhancing wall and fluid/gas/stool,
  small-bowel loops (fluid-filled, collapsed and enhancing like parenchyma, or gas-filled),
  duodenum (2nd part hugging the pancreatic head, 3rd part between aorta and SMA),
  peripancreatic lymph nodes +40..+70.
* vessels: aorta +160..+240 (arterial enhancement), SMA and celiac/splenic arteries at the same
  value, IVC +100..+150, SMV / portal / splenic / left renal veins +90..+170 -- in the
  pancreatic phase the splenic-portal venous system may still be poorly opacified, so the
  splenic vein on the back of the pancreas is sometimes darker than the parenchyma.
* pancreas: a lobulated curved tube (head beside the duodenum, neck anterior to the SMV/SMA,
  body over the aorta, tail towards the splenic hilum), 20-30 mm thick, ~120-160 mm long,
  ~30-60 mm craniocaudal, base +100..+130 HU (normal parenchyma enhances to ~100-130 HU in the
  pancreatic phase, e.g. Lu et al., AJR 1996; Prokesch et al., Radiology 2002), plus fine
  texture and sparse fatty interdigitation between lobules (a heterogeneous, not flat, organ).
* tumour (PDAC): an irregular ellipsoid of the requested volume-equivalent diameter centred in
  the pancreas (65 % in the head), locally enlarging the gland (mass effect), hypoattenuating by
  40-80 HU relative to the mean parenchyma, with internal heterogeneity, central hypodensity
  when large and an infiltrative margin; 12 % are near-isoattenuating (10-20 HU lower) --
  about 5-15 % of PDAC are isoattenuating in the pancreatic phase (Prokesch et al., Radiology
  2002; Kim et al., Radiology 2010). Half of the tumours dilate the upstream main pancreatic
  duct, and a head tumour dilates and cuts off the common bile duct (secondary signs).
* distractors in tumour-free and tumour patients alike: a dilated main duct (10 % of
  tumour-free patients), the common bile duct in the head (label 0), focal fatty infiltration
  of the head in 15 % (pseudolesion, -10..-25 HU, label 1), fluid-filled duodenum/jejunum,
  lymph nodes, a variably opacified splenic vein, mesenteric vessels.

Label values follow MSD Task07: 0 background, 1 pancreas, 2 tumour (tumour voxels are not 1).
Vessels and the bile duct drawn over the pancreas are label 0; they never overwrite tumour.

Acquisition: the reconstruction kernel is modelled as a Gaussian PSF (sigma 0.55-0.85 mm
in-plane, slice-sensitivity sigma ~ slice thickness / 2.355 along z) applied to the phantom
*plus* white Gaussian noise. Blurring the noise with the same kernel gives the correlated
noise texture of filtered back-projection (at 0.9 mm pixels the noise correlation sigma is
0.6-0.95 px); the white-noise level is scaled so that the standard deviation measured in a
uniform region is 10-18 HU (drawn per patient). Values are clipped to [-1024, 3071] and
stored as int16.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from rich.progress import track
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.ndimage import label as connected_components

__all__ = ["CohortSpec", "PhantomCase", "default_synthesis_workers", "make_ct_phantom",
           "write_msd_cohort"]

_HU_MIN, _HU_MAX = -1024, 3071
_GAUSS_TRUNCATE = 4.0  # scipy's default; the noise normalisation below relies on it


@dataclass(frozen=True)
class CohortSpec:
    """Parameters of a synthetic cohort written by :func:`write_msd_cohort`.

    Tumour diameters are drawn by stratified uniform sampling over ``tumour_diameter_mm``
    (one draw per equal-width stratum, strata shuffled): the marginal is uniform but every
    sub-range gets its share, so a cohort with >= 12 tumours over (5, 40) mm always has
    tumours both below 20 mm and in 20-40 mm. Upper bounds above 40 mm are honoured.
    """

    n_patients: int = 60
    tumour_fraction: float = 0.5
    shape_zyx: tuple[int, int, int] = (40, 384, 384)
    spacing_zyx_mm: tuple[float, float, float] = (2.5, 0.9, 0.9)
    tumour_diameter_mm: tuple[float, float] = (5.0, 40.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise ValueError(f"n_patients must be >= 1, got {self.n_patients}")
        if not 0.0 <= self.tumour_fraction <= 1.0:
            raise ValueError(f"tumour_fraction must be in [0, 1], got {self.tumour_fraction}")
        _check_grid(self.shape_zyx, self.spacing_zyx_mm)
        lo, hi = self.tumour_diameter_mm
        if not 0.0 < lo <= hi:
            raise ValueError(f"tumour_diameter_mm must satisfy 0 < lo <= hi, got {(lo, hi)}")


@dataclass
class PhantomCase:
    """One synthetic patient: HU volume, MSD-style label and voxel spacing, all (z, y, x)."""

    image_hu: np.ndarray
    label: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    tumour_diameter_mm: float | None


def _check_grid(shape_zyx: tuple[int, ...], spacing_zyx_mm: tuple[float, ...]) -> None:
    if len(shape_zyx) != 3 or min(shape_zyx) < 1:
        raise ValueError(f"shape_zyx must be 3 positive ints, got {shape_zyx}")
    if len(spacing_zyx_mm) != 3 or min(spacing_zyx_mm) <= 0:
        raise ValueError(f"spacing_zyx_mm must be 3 positive floats, got {spacing_zyx_mm}")


# --------------------------------------------------------------------------------------------
# Low-level painting
# --------------------------------------------------------------------------------------------


def _kernel_sq_norm(sigmas_px: tuple[float, ...]) -> float:
    """Sum of squared weights of scipy's separable Gaussian kernel (noise variance gain)."""
    total = 1.0
    for s in sigmas_px:
        if s > 0:
            r = int(_GAUSS_TRUNCATE * s + 0.5)
            delta = np.zeros(2 * r + 1)
            delta[r] = 1.0
            total *= float(np.sum(gaussian_filter1d(delta, s, mode="constant") ** 2))
    return total


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float,
                  spacing: tuple[float, ...]) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``sigma_mm``."""
    sig = tuple(sigma_mm / s for s in spacing)
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig)
    field *= np.float32(1.0 / np.sqrt(_kernel_sq_norm(sig)))
    return field


Region = tuple[tuple[slice, slice, slice], np.ndarray]


class _Canvas:
    """HU and label volumes plus millimetre coordinates; paints per-slice ellipses."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        self.z, self.y, self.x = (
            (np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)
        )
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def span(self, axis: int, lo: float, hi: float) -> slice:
        """Index slice of the voxels whose coordinate along ``axis`` lies in [lo, hi] mm."""
        coords = (self.z, self.y, self.x)[axis]
        return slice(int(np.searchsorted(coords, lo, "left")),
                     int(np.searchsorted(coords, hi, "right")))

    def ellipse(self, cx: np.ndarray | float, cy: np.ndarray | float, a: np.ndarray | float,
                b: np.ndarray | float, theta: float = 0.0,
                box: tuple[slice, slice, slice] | None = None) -> Region | None:
        """Mask of a z-varying rotated ellipse (per-slice centre/semi-axes, mm; a=0: absent).

        Each row of each slice is an x-interval (a quadratic in x), so the cost is two
        comparisons per voxel of the bounding box (or of ``box`` if given).
        """
        nz = self.shape[0]
        cx, cy, a, b = (np.broadcast_to(np.asarray(v, dtype=np.float64), (nz,))
                        for v in (cx, cy, a, b))
        present = (a > 0) & (b > 0)
        if not present.any():
            return None
        c, s = np.cos(theta), np.sin(theta)
        if box is None:
            hx = np.sqrt((a * c) ** 2 + (b * s) ** 2)[present]
            hy = np.sqrt((a * s) ** 2 + (b * c) ** 2)[present]
            zi = np.flatnonzero(present)
            box = (slice(int(zi[0]), int(zi[-1]) + 1),
                   self.span(1, float(np.min(cy[present] - hy)), float(np.max(cy[present] + hy))),
                   self.span(2, float(np.min(cx[present] - hx)), float(np.max(cx[present] + hx))))
        zs, ys, xs = box
        if zs.stop <= zs.start or ys.stop <= ys.start or xs.stop <= xs.start:
            return None
        pres = present[zs][:, None]
        ia2 = 1.0 / np.where(present, a, 1.0)[zs][:, None] ** 2
        ib2 = 1.0 / np.where(present, b, 1.0)[zs][:, None] ** 2
        dy = self.y[ys][None, :] - cy[zs][:, None]
        qa = c * c * ia2 + s * s * ib2
        qb = 2.0 * dy * s * c * (ia2 - ib2)
        qc = dy * dy * (s * s * ia2 + c * c * ib2) - 1.0
        disc = qb * qb - 4.0 * qa * qc
        root = np.sqrt(np.maximum(disc, 0.0))
        ok = (disc >= 0) & pres
        lo = np.where(ok, (-qb - root) / (2 * qa) + cx[zs][:, None], np.inf)
        hi = np.where(ok, (-qb + root) / (2 * qa) + cx[zs][:, None], -np.inf)
        xx = self.x[xs]
        mask = (xx >= lo[..., None]) & (xx <= hi[..., None])
        return box, mask

    def fill(self, region: Region | None, value: float | np.ndarray,
             label: int | None = None) -> None:
        """Paint ``value`` into ``region``; ``label`` (if given) also overwrites the label,
        except tumour voxels, which later structures never overwrite."""
        if region is None:
            return
        box, mask = region
        if label is not None:
            mask = mask & (self.label[box] != 2)
            np.copyto(self.label[box], np.uint8(label), where=mask)
        np.copyto(self.hu[box], np.asarray(value, dtype=np.float32), where=mask)

    def bead(self, x: float, y: float, z: float, r: float) -> Region | None:
        """Sphere of radius ``r`` mm centred at (x, y, z) mm."""
        f = _zcap(self.z, z, r)
        return self.ellipse(x, y, r * f, r * f)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of a boolean mask (the mask itself if empty)."""
    comp, n = connected_components(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    return comp == (int(np.argmax(np.bincount(comp.ravel())[1:])) + 1)


def _zcap(z: np.ndarray, zc: float, c: float) -> np.ndarray:
    """Per-slice scale of an ellipsoid's cross-section (0 outside its z extent)."""
    return np.sqrt(np.clip(1.0 - ((z - zc) / c) ** 2, 0.0, None))


def _zband(z: np.ndarray, z0: float, z1: float) -> np.ndarray:
    """1 on slices with z in [z0, z1], else 0 (a tube over a z range)."""
    return ((z >= z0) & (z <= z1)).astype(np.float64)


def _wiggle(rng: np.random.Generator, amp: float) -> Callable[[np.ndarray], np.ndarray]:
    """Smooth random drift along z (mm -> mm), amplitude ``amp``."""
    period, phase = rng.uniform(80.0, 220.0), rng.uniform(0.0, 2 * np.pi)
    return lambda z: amp * np.sin(2 * np.pi * np.asarray(z) / period + phase)


# --------------------------------------------------------------------------------------------
# Patient anatomy
# --------------------------------------------------------------------------------------------


class _Body:
    """Per-patient frame: patient (u, v) mm -> image (x, y) mm with drift, rotation, offset."""

    def __init__(self, rng: np.random.Generator, cv: _Canvas):
        half_x = cv.shape[2] * cv.spacing[2] / 2.0
        half_y = cv.shape[1] * cv.spacing[1] / 2.0
        self.off = (rng.normal(0.0, 4.0), rng.normal(0.0, 4.0))
        self.theta = np.deg2rad(rng.normal(0.0, 3.0))
        self.drift = (_wiggle(rng, rng.uniform(0.0, 3.0)), _wiggle(rng, rng.uniform(0.0, 3.0)))
        # Outer body ellipse (~320 x 240 mm), kept inside the field of view.
        self.a = min(rng.uniform(145.0, 165.0), 0.97 * half_x - abs(self.off[0]))
        self.b = min(rng.uniform(103.0, 128.0), 0.97 * half_y - abs(self.off[1]))
        self.fat_ant, self.fat_lat, self.fat_post = (rng.uniform(10.0, 30.0),
                                                     rng.uniform(12.0, 35.0),
                                                     rng.uniform(10.0, 25.0))
        self.muscle = rng.uniform(8.0, 14.0)
        # Peritoneal cavity and internal scale.
        self.cav_v = (self.fat_ant - self.fat_post) / 2.0
        self.cav_a = self.a - self.fat_lat - self.muscle
        self.cav_b = self.b - (self.fat_ant + self.fat_post) / 2.0 - self.muscle
        self.s = float(np.clip(np.sqrt(self.cav_a / 120.0 * self.cav_b / 85.0), 0.85, 1.15))
        self.back = self.b - self.fat_post  # posterior muscle surface (v)

    def xy(self, u: np.ndarray | float, v: np.ndarray | float,
           z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of patient-frame point(s) at height(s) ``z``."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        x = self.off[0] + self.drift[0](z) + c * np.asarray(u) - s * np.asarray(v)
        y = self.off[1] + self.drift[1](z) + s * np.asarray(u) + c * np.asarray(v)
        return x, y


def _organ(cv: _Canvas, body: _Body, u: np.ndarray | float, v: np.ndarray | float,
           a: np.ndarray | float,
           b: np.ndarray | float, theta: float = 0.0, wobble: float = 0.0,
           rng: np.random.Generator | None = None,
           box: tuple[slice, slice, slice] | None = None) -> Region | None:
    """Ellipse column at patient position (u, v) (scalars or per-slice arrays) with per-slice
    semi-axes ``a``/``b``, optionally drifting along z by up to ``wobble`` mm."""
    du = dv = 0.0
    if wobble and rng is not None:
        du, dv = _wiggle(rng, wobble)(cv.z), _wiggle(rng, wobble)(cv.z)
    x, y = body.xy(u + du, v + dv, cv.z)
    return cv.ellipse(x, y, a, b, theta + body.theta, box=box)


def _intersect(r1: Region | None, r2_mask_fn: Callable[[tuple], Region | None]) -> Region | None:
    """Restrict region ``r1`` to another shape evaluated on ``r1``'s box."""
    if r1 is None:
        return None
    r2 = r2_mask_fn(r1[0])
    return None if r2 is None else (r1[0], r1[1] & r2[1])


def _viscus(cv: _Canvas, rng: np.random.Generator, body: _Body, u: float, v: float,
            a: np.ndarray, b: np.ndarray, theta: float, wall: float, wall_hu: float, kind: str,
            wobble: float = 0.0) -> None:
    """Hollow viscus: enhancing wall of thickness ``wall`` mm and fluid / gas / air-fluid /
    stool / collapsed content; ``a``/``b`` are the per-slice outer semi-axes."""
    uu, vv = u + _wiggle(rng, wobble)(cv.z), v + _wiggle(rng, wobble)(cv.z)
    cv.fill(_organ(cv, body, uu, vv, a, b, theta), wall_hu)
    inner = _organ(cv, body, uu, vv, a - wall, b - wall, theta)
    if inner is None or kind == "collapsed":
        return
    box, mask = inner
    if not mask.any():
        return
    if kind == "fluid":
        cv.fill(inner, rng.uniform(0.0, 25.0))
    elif kind == "gas":
        cv.fill(inner, -900.0)
    elif kind == "air-fluid":  # supine: gas rises anteriorly (small y)
        cv.fill(inner, rng.uniform(0.0, 25.0))
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        level = cv.y[box[1]][rows[0]] + rng.uniform(0.3, 0.6) * (rows[-1] - rows[0]) * cv.spacing[1]
        cv.fill((box, mask & (cv.y[box[1]] < level)[None, :, None]), -900.0)
    else:  # stool: soft material with gas bubbles
        bubbles = _smooth_noise(rng, mask.shape, 2.5, cv.spacing) > 1.2
        cv.fill(inner, np.where(bubbles, -850.0, rng.uniform(-60.0, 20.0)))


def _pick_kind(rng: np.random.Generator, kinds: tuple[str, ...], p: tuple[float, ...]) -> str:
    return str(kinds[int(rng.choice(len(kinds), p=p))])


def _paint_body_wall(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict) -> None:
    z = cv.z
    one = np.ones_like(z)
    cv.fill(_organ(cv, body, 0, 0, body.a * one, body.b * one), 30.0)  # skin
    cv.fill(_organ(cv, body, 0, 0, (body.a - 2) * one, (body.b - 2) * one), pt["fat_sc"])
    fat_a, fat_b = body.a - body.fat_lat, body.b - (body.fat_ant + body.fat_post) / 2
    cv.fill(_organ(cv, body, 0, body.cav_v, fat_a * one, fat_b * one), pt["muscle"])
    cv.fill(_organ(cv, body, 0, body.cav_v, body.cav_a * one, body.cav_b * one), pt["fat_vis"])
    # Posterior muscles: erector spinae, quadratus lumborum, psoas (grows caudally).
    s, zp = body.s, pt["z_panc"]
    for side in (-1, 1):
        cv.fill(_organ(cv, body, side * 28 * s, body.back - 24 * s, 26 * s * one, 23 * s * one,
                       side * 0.2), pt["muscle"])
        ql = 15 * s * _zband(z, -1e9, zp + 15)
        cv.fill(_organ(cv, body, side * 62 * s, body.back - 40 * s, ql, 9 * s * one, side * 0.5),
                pt["muscle"])
        r_ps = np.clip(8 + 0.25 * (zp + 25 - z), 6, 22) * s * _zband(z, -1e9, zp + 25)
        cv.fill(_organ(cv, body, side * 36 * s, body.back - 68 * s, r_ps, 0.8 * r_ps, side * 0.4),
                pt["muscle"])


def _paint_spine(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict) -> dict:
    z, s = cv.z, body.s
    one = np.ones_like(z)
    r = rng.uniform(17.0, 21.0) * s
    v_vb = body.back - 70 * s
    period, phase = rng.uniform(32.0, 38.0), rng.uniform(0.0, 38.0)
    disc = (np.mod(z + phase, period) < 9.0).astype(np.float64)
    bone = 1.0 - disc
    cancellous = rng.uniform(150.0, 280.0)
    # Posterior arch (pedicles/laminae), spinous and transverse processes, then the canal.
    cv.fill(_organ(cv, body, 0, v_vb + r + 10 * s, 17 * s * bone, 14 * s * one), 500.0)
    cv.fill(_organ(cv, body, 0, v_vb + r + 32 * s, 4 * s * bone, 13 * s * one), 500.0)
    for side in (-1, 1):
        cv.fill(_organ(cv, body, side * 30 * s, v_vb + r + 6 * s, 15 * s * bone, 4 * s * one),
                450.0)
    cv.fill(_organ(cv, body, 0, v_vb + r + 10 * s, 10 * s * one, 8 * s * one), 15.0)
    cv.fill(_organ(cv, body, 0, v_vb, r * one, 0.9 * r * one), 700.0)
    cv.fill(_organ(cv, body, 0, v_vb, (r - 2.5) * bone, (0.9 * r - 2.5) * one), cancellous)
    cv.fill(_organ(cv, body, 0, v_vb, r * disc, 0.9 * r * one), 90.0)
    # Ribs in the upper slices along the posterolateral and lateral wall.
    zp = pt["z_panc"]
    for _ in range(int(rng.integers(6, 12))):
        phi = rng.uniform(-0.35, 1.15)  # 0: left lateral, pi/2: posterior (v > 0)
        if rng.random() < 0.5:
            phi = np.pi - phi
        u = np.cos(phi) * (body.a - body.fat_lat - body.muscle / 2)
        v = body.cav_v + np.sin(phi) * (body.b - (body.fat_ant + body.fat_post) / 2
                                        - body.muscle / 2)
        zc = rng.uniform(zp - 10.0, zp + 80.0)
        f = _zcap(z, zc, rng.uniform(6.0, 14.0))
        rr = rng.uniform(4.0, 6.0)
        tangent = phi + np.pi / 2
        cv.fill(_organ(cv, body, u, v, 1.5 * rr * f, rr * f, tangent), 650.0)
        cv.fill(_organ(cv, body, u, v, (1.5 * rr - 1.5) * f, (rr - 1.5) * f, tangent), 250.0)
    return {"v_vb": v_vb, "r_vb": r}


def _paint_organs(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict,
                  spine: dict) -> dict:
    """Solid organs and retroperitoneum; returns the landmarks the pancreas hangs from."""
    z, s, zp = cv.z, body.s, pt["z_panc"]
    one = np.ones_like(z)
    v_vb, r_vb = spine["v_vb"], spine["r_vb"]

    def cavity(box: tuple[slice, slice, slice]) -> Region | None:
        return _organ(cv, body, 0, body.cav_v, body.cav_a * one, body.cav_b * one, box=box)

    # Liver: right lobe (image left) hugging the right wall, its medial extent shrinking
    # caudally, plus the left lobe crossing the midline in the upper slices.
    f = _zcap(z, zp + rng.uniform(70.0, 90.0), rng.uniform(88.0, 100.0))
    liver_a, liver_v = rng.uniform(68.0, 80.0) * s * f, -10 * s + rng.normal(0, 4)
    liver_u = -body.cav_a + 0.9 * liver_a
    liver = _organ(cv, body, liver_u, liver_v, liver_a, 88 * s * f, rng.normal(-0.2, 0.08),
                   2.0, rng)
    cv.fill(_intersect(liver, cavity), pt["liver"])
    liver_mid = float(np.max(liver_u))
    f_left = _zcap(z, zp + rng.uniform(55.0, 75.0), 55.0)
    cv.fill(_intersect(_organ(cv, body, -10 * s, -58 * s, 48 * s * f_left, 24 * s * f_left, 0.1),
                       cavity), pt["liver"])
    for _ in range(int(rng.integers(4, 8))):  # hepatic / portal branches
        zc = zp + rng.uniform(25.0, 60.0)
        rr = rng.uniform(2.5, 6.0) * _zcap(z, zc, rng.uniform(10.0, 30.0))
        cv.fill(_organ(cv, body, liver_mid + rng.uniform(-35, 35) * s,
                       liver_v + rng.uniform(-45, 45) * s, rr, rr, 0, 1.5, rng), pt["vein"])
    if rng.random() < 0.75:  # gallbladder
        f = _zcap(z, zp + rng.uniform(5.0, 25.0), rng.uniform(25.0, 40.0))
        cv.fill(_intersect(_organ(cv, body, -48 * s, -58 * s, 14 * s * f, 22 * s * f, 0.5),
                           cavity), rng.uniform(0.0, 20.0))
    # Spleen along the left posterolateral wall.
    f = _zcap(z, zp + rng.uniform(30.0, 50.0), 55.0)
    spleen = _organ(cv, body, 92 * s, 35 * s, 22 * s * f, 48 * s * f, 0.55, 2.0, rng)
    cv.fill(_intersect(spleen, cavity), pt["spleen"])
    # Kidneys: long axis of the cross-section from posteromedial to anterolateral.
    for side, zc in ((-1, zp - rng.uniform(5.0, 25.0)), (1, zp + rng.uniform(-15.0, 5.0))):
        f = _zcap(z, zc, rng.uniform(50.0, 60.0))
        th = side * rng.uniform(0.5, 0.8)
        ku, kv = side * 70 * s + rng.normal(0, 3), v_vb + 8 * s + rng.normal(0, 3)
        ka, kb = rng.uniform(20, 25) * s, rng.uniform(28, 34) * s
        cv.fill(_organ(cv, body, ku, kv, ka * f, kb * f, th), pt["cortex"])
        cv.fill(_organ(cv, body, ku, kv, 0.62 * ka * f, 0.72 * kb * f, th), pt["medulla"])
        hilum = np.clip(f - 0.45, 0.0, None)  # sinus only in the mid-kidney
        med = -side * np.sign(np.cos(th)) * 0.55 * ka  # along the a-axis, towards the midline
        mu, mv = ku + med * np.cos(th), kv + med * np.sin(th)
        cv.fill(_organ(cv, body, mu, mv, 0.45 * ka * hilum, 0.6 * kb * hilum, th), -60.0)
        cv.fill(_organ(cv, body, mu, mv, 0.2 * ka * hilum, 0.3 * kb * hilum, th), 10.0)
    aorta = (14 * s + rng.normal(0, 2), v_vb - r_vb - rng.uniform(11, 14) * s)
    return {"aorta": aorta, "v_vb": v_vb}


def _paint_bowel(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict,
                 smv: tuple[float, float], head: tuple[float, float, float, float]) -> None:
    z, s, zp = cv.z, body.s, pt["z_panc"]
    wall = pt["bowel_wall"]
    # Stomach anterior-left in the upper slices, with an anterior gas cap.
    f = _zcap(z, zp + rng.uniform(30.0, 50.0), 45.0)
    sa, sb = rng.uniform(38, 50) * s, rng.uniform(22, 32) * s
    _viscus(cv, rng, body, 45 * s, -55 * s, sa * f, sb * f, rng.uniform(0.2, 0.6), 5.0, wall,
            _pick_kind(rng, ("air-fluid", "fluid", "stool"), (0.6, 0.25, 0.15)))
    # Colon: ascending (image left), descending (image right), transverse (anterior).
    for u, v, r in ((-0.78 * body.cav_a, 0.0, rng.uniform(14, 20)),
                    (0.82 * body.cav_a, 15 * s, rng.uniform(11, 16))):
        band = r * _zband(z, -1e9, zp + rng.uniform(10.0, 40.0))
        _viscus(cv, rng, body, u, v, band, band, 0.0, 3.0, 40.0,
                _pick_kind(rng, ("gas", "stool"), (0.4, 0.6)), 4.0)
    f = _zcap(z, zp - rng.uniform(20.0, 35.0), rng.uniform(12.0, 20.0))
    _viscus(cv, rng, body, 0.0, body.cav_v - 0.72 * body.cav_b, 0.55 * body.cav_a * f,
            rng.uniform(12.0, 18.0) * f, 0.05, 3.0, 40.0,
            _pick_kind(rng, ("gas", "stool"), (0.35, 0.65)), 3.0)
    # Small-bowel loops in the anterior / lower abdomen.
    kinds, p = ("fluid", "collapsed", "gas", "air-fluid"), (0.4, 0.35, 0.1, 0.15)
    for _ in range(int(rng.integers(5, 11))):
        u = rng.uniform(-0.6, 0.6) * body.cav_a
        v = body.cav_v + rng.uniform(-0.8, -0.05) * body.cav_b
        f = rng.uniform(9.0, 15.0) * _zcap(z, rng.uniform(cv.z[0] - 10, zp + 5.0),
                                           rng.uniform(12.0, 35.0))
        _viscus(cv, rng, body, u, v, f, 0.85 * f, rng.uniform(0, np.pi), 2.5, wall,
                _pick_kind(rng, kinds, p), 5.0)
    # Duodenum: 2nd part lateral to the head, 3rd part below the pancreas, plus a jejunal loop
    # at the duodenojejunal flexure under the body -- fluid-filled ones mimic hypodense masses.
    head_u, head_v, head_z, head_r = head
    r = rng.uniform(10.0, 14.0)
    band = r * _zband(z, head_z - 35.0, head_z + 20.0)
    du = head_u - (head_r + r + rng.uniform(-2.0, 3.0))
    _viscus(cv, rng, body, du, head_v, band, band, 0.0, 2.5, wall, _pick_kind(rng, kinds, p),
            3.0)
    f = _zcap(z, zp - rng.uniform(28.0, 38.0), 9.0)
    _viscus(cv, rng, body, smv[0] - 12 * s, smv[1] + 10 * s, 40 * s * f, 9 * f, 0.1, 3.0, wall,
            _pick_kind(rng, kinds, p))
    f = rng.uniform(10.0, 14.0) * _zcap(z, zp - rng.uniform(15.0, 25.0), rng.uniform(10.0, 16.0))
    _viscus(cv, rng, body, smv[0] + 40 * s, smv[1] + rng.uniform(-5, 10), f, f, 0.0, 2.5, wall,
            _pick_kind(rng, kinds, p))


@dataclass
class _Centreline:
    """Pancreas centreline sampled every ~1.5 mm (patient frame u, v; image-space z)."""

    u: np.ndarray
    v: np.ndarray
    z: np.ndarray
    r: np.ndarray  # in-plane radius
    hz: np.ndarray  # craniocaudal semi-axis
    s: np.ndarray  # arc length

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def normal(self, k: int) -> tuple[float, float]:
        """Unit in-plane normal at sample k, pointing posteriorly (+v)."""
        k0, k1 = max(k - 1, 0), min(k + 1, len(self.u) - 1)
        tu, tv = self.u[k1] - self.u[k0], self.v[k1] - self.v[k0]
        n = np.array([-tv, tu]) / max(np.hypot(tu, tv), 1e-9)
        return (float(n[0]), float(n[1])) if n[1] >= 0 else (float(-n[0]), float(-n[1]))


def _make_centreline(rng: np.random.Generator, s: float, smv: tuple[float, float],
                     zp: float) -> _Centreline:
    su, sv = smv
    k = s * rng.uniform(0.9, 1.1)
    ctrl = np.array([[su - 33 * k, sv + 1], [su, sv - 15 * s], [su + 38 * k, sv - 9 * s],
                     [su + 85 * k, sv + 30 * s]])
    ctrl += rng.normal(0.0, [[4, 4], [2, 2], [5, 5], [6, 6]])
    chord = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(ctrl, axis=0).T))])
    spline = CubicSpline(chord, ctrl, bc_type="natural")
    dense = spline(np.linspace(0.0, chord[-1], 400))
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(dense, axis=0).T))])
    sa = np.arange(0.0, arc[-1], 1.5)
    u, v = np.interp(sa, arc, dense[:, 0]), np.interp(sa, arc, dense[:, 1])
    t = sa / arc[-1]
    wig = 1.0 + 0.1 * _wiggle(rng, 1.0)(sa * 3.0)
    r_head = rng.uniform(12.0, 16.0)
    r = np.interp(t, [0, 0.2, 0.33, 0.6, 1.0],
                  [r_head, 0.9 * r_head, rng.uniform(7.0, 9.5), rng.uniform(9.0, 12.5),
                   rng.uniform(8.5, 12.0)]) * wig
    hz = np.interp(t, [0, 0.18, 0.33, 0.6, 1.0],
                   [rng.uniform(13.0, 20.0), rng.uniform(11.0, 15.0), rng.uniform(9.0, 12.0),
                    rng.uniform(9.0, 12.0), rng.uniform(8.0, 12.0)])
    zc = zp + rng.uniform(8.0, 22.0) * (t - 0.3) - rng.uniform(2.0, 6.0) * np.clip(
        1 - t / 0.15, 0, 1)  # uncinate process hangs lower
    return _Centreline(u, v, zc, r, hz, sa)


def _paint_pancreas(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict,
                    cl: _Centreline, tumour_d: float | None) -> dict:
    """Pancreas (label 1) with texture, optional tumour (label 2); returns tumour geometry."""
    length = cl.length
    r, hz = cl.r.copy(), cl.hz.copy()
    x_img, y_img = body.xy(cl.u, cl.v, cl.z)
    z_img = cl.z.copy()
    tumour = None
    if tumour_d is not None:
        z_lo, z_hi = cv.z[0], cv.z[-1]
        in_fov = (z_img >= z_lo) & (z_img <= z_hi)
        if rng.random() < 0.65:  # head
            region = (cl.s >= 0.03 * length) & (cl.s <= 0.25 * length)
        else:  # body / tail
            region = (cl.s >= 0.3 * length) & (cl.s <= 0.9 * length)
        cand = np.flatnonzero(region & in_fov)
        if cand.size == 0:
            cand = np.flatnonzero(in_fov)
        if cand.size == 0:
            cand = np.array([int(np.argmin(np.abs(z_img)))])
        k = int(rng.choice(cand))
        n = cl.normal(k)
        off = rng.uniform(-0.3, 0.3) * r[k]
        tu, tv = cl.u[k] + off * n[0], cl.v[k] + off * n[1]
        tz = float(np.clip(z_img[k] + rng.uniform(-0.25, 0.25) * hz[k], z_lo, z_hi))
        e = rng.normal(0.0, 0.12, 3)
        semi = tumour_d / 2.0 * np.exp(e - e.mean())  # volume-equivalent diameter = tumour_d
        # Mass effect: enlarge the gland so that it contains the lesion.
        ds = cl.s - cl.s[k]
        r_in = max(semi[0], semi[1])
        r = np.maximum(r, np.sqrt(np.clip(r_in**2 - ds**2, 0, None)) + abs(off) + 2.0)
        hz = np.maximum(hz, np.sqrt(np.clip(semi[2] ** 2 - ds**2, 0, None))
                        + abs(tz - z_img[k]) + 2.0)
        tx, ty = body.xy(tu, tv, tz)
        tumour = {"x": float(tx), "y": float(ty), "z": tz, "semi": semi,
                  "phi": rng.uniform(0, np.pi), "s": float(cl.s[k])}
    # Bounding box of the gland (with room for lobulation).
    m = 1.6
    box = (cv.span(0, float(np.min(z_img - m * hz)), float(np.max(z_img + m * hz))),
           cv.span(1, float(np.min(y_img - m * r)), float(np.max(y_img + m * r))),
           cv.span(2, float(np.min(x_img - m * r)), float(np.max(x_img + m * r))))
    shape = tuple(sl.stop - sl.start for sl in box)
    if min(shape) <= 0:
        return {}
    zz = cv.z[box[0]][:, None, None]
    yy = cv.y[box[1]][None, :, None]
    xx = cv.x[box[2]][None, None, :]
    # nd: normalised squared distance to the union of ellipsoids along the centreline.
    nd = np.full(shape, np.inf, dtype=np.float32)
    for k in range(len(r)):
        lz = cv.span(0, z_img[k] - m * hz[k], z_img[k] + m * hz[k])
        ly = cv.span(1, y_img[k] - m * r[k], y_img[k] + m * r[k])
        lx = cv.span(2, x_img[k] - m * r[k], x_img[k] + m * r[k])
        loc = (slice(max(lz.start - box[0].start, 0), max(lz.stop - box[0].start, 0)),
               slice(max(ly.start - box[1].start, 0), max(ly.stop - box[1].start, 0)),
               slice(max(lx.start - box[2].start, 0), max(lx.stop - box[2].start, 0)))
        d = (((xx[:, :, loc[2]] - x_img[k]) ** 2 + (yy[:, loc[1]] - y_img[k]) ** 2) / r[k] ** 2
             + ((zz[loc[0]] - z_img[k]) / hz[k]) ** 2)
        np.minimum(nd[loc], d, out=nd[loc])
    sp = cv.spacing
    lob = np.clip(_smooth_noise(rng, shape, 3.0, sp), -2.0, 2.0)
    fat = _smooth_noise(rng, shape, 1.8, sp)
    tex = _smooth_noise(rng, shape, 1.0, sp)
    envelope = (1.0 + rng.uniform(0.12, 0.22) * lob) ** 2
    gland = _largest_component(nd < envelope)  # lobulation can pinch off tiny islands
    # Parenchyma: base + fine texture, fatty clefts between lobules (partial-volume blend).
    par = pt["pancreas"] + rng.uniform(5.0, 9.0) * tex
    cleft = np.clip((fat - rng.uniform(1.6, 2.2)) / 0.6, 0.0, 1.0) * 0.4
    par = par * (1 - cleft) + pt["fat_vis"] * cleft
    if rng.random() < 0.15:  # focal fatty infiltration of the anterior head (pseudolesion)
        kf = int(rng.integers(0, max(int(0.15 * len(cl.s)), 1)))
        fx, fy = body.xy(cl.u[kf], cl.v[kf] - 0.3 * cl.r[kf], cl.z[kf])
        rho = rng.uniform(5.0, 11.0)
        d2 = (xx - fx) ** 2 + (yy - fy) ** 2 + (zz - cl.z[kf]) ** 2
        par -= rng.uniform(10.0, 25.0) * np.exp(-d2 / (2 * rho**2))
    hu_box = cv.hu[box]
    np.copyto(hu_box, par.astype(np.float32), where=gland)
    np.copyto(cv.label[box], np.uint8(1), where=gland)
    if tumour is None:
        return {}
    # Tumour: irregular ellipsoid, hypoattenuating, heterogeneous, infiltrative margin.
    c, s_ = np.cos(tumour["phi"] + body.theta), np.sin(tumour["phi"] + body.theta)
    dx, dy, dz = xx - tumour["x"], yy - tumour["y"], zz - tumour["z"]
    a, b, cz = tumour["semi"]
    q = ((dx * c + dy * s_) / a) ** 2 + ((-dx * s_ + dy * c) / b) ** 2 + (dz / cz) ** 2
    d = tumour_d
    border = 1.0 + rng.uniform(0.08, 0.16) * np.clip(
        _smooth_noise(rng, shape, max(d / 6.0, 0.8), sp), -1.5, 1.5)
    rr = np.sqrt(q) / border
    tum = (rr < 1.0) & (nd < 1.3 * envelope)
    if not tum.any():  # lesion smaller than a voxel: keep the voxel at its centre
        idx = tuple(int(np.argmin(np.abs(ax.ravel() - v)))
                    for ax, v in ((zz, tumour["z"]), (yy, tumour["y"]), (xx, tumour["x"])))
        tum[idx] = True
    # Attenuation difference relative to the mean parenchyma (fatty clefts included), so the
    # lesion is darker than the gland it sits in by ``delta`` on average.
    delta = rng.uniform(10.0, 20.0) if rng.random() < 0.12 else rng.uniform(40.0, 80.0)
    coarse = lob - float(lob[tum].mean())  # zero-mean inside the lesion: no offset for tiny ones
    ref = float(par[gland].mean()) if gland.any() else pt["pancreas"]
    t_hu = (ref - delta + rng.uniform(8.0, 14.0) * tex + 6.0 * coarse
            - (rng.uniform(8.0, 20.0) if d >= 25.0 else 0.0) * np.clip(1 - rr / 0.5, 0, 1))
    w = np.clip((1.0 - rr) / 0.25, 0.6, 1.0)
    np.copyto(hu_box, (par * (1 - w) + t_hu * w).astype(np.float32), where=tum)
    np.copyto(cv.label[box], np.uint8(2), where=tum)
    tumour["top"] = float(np.max(np.broadcast_to(zz, tum.shape)[tum]))
    return tumour


def _paint_pancreatic_vessels(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict,
                              lm: dict, cl: _Centreline, tumour: dict) -> None:
    """Vessels, ducts and nodes around the gland (label 0; they never overwrite tumour)."""
    z, s, zp = cv.z, body.s, pt["z_panc"]
    one = np.ones_like(z)
    au, av = lm["aorta"]
    smau, smav = lm["sma"]
    smvu, smvv = lm["smv"]
    r_ao = rng.uniform(10.0, 13.0) * s
    cv.fill(_organ(cv, body, au, av, r_ao * one, r_ao * one, 0, 1.5, rng), pt["artery"], 0)
    ivc_u, ivc_v = -22 * s, lm["v_vb"] - 32 * s
    cv.fill(_organ(cv, body, ivc_u, ivc_v, 14 * s * one, 10 * s * one, 0.2, 1.5, rng),
            pt["ivc"], 0)
    band = _zband(z, -1e9, zp + 8.0)
    cv.fill(_organ(cv, body, smau, smav, 3.5 * band, 3.5 * band, 0, 1.0, rng), pt["artery"], 0)
    cv.fill(_organ(cv, body, au, av - r_ao - 5, 4 * _zband(z, zp + 16, zp + 28), 4 * one),
            pt["artery"], 0)  # celiac trunk
    r_smv = rng.uniform(5.0, 7.0)
    cv.fill(_organ(cv, body, smvu, smvv, r_smv * _zband(z, -1e9, zp + 3.0), r_smv * one, 0, 1.0,
                   rng), pt["vein"], 0)
    # Portal vein: from the confluence behind the neck up and right towards the liver hilum.
    t = np.clip((z - zp) / 40.0, 0.0, 1.0)
    pu, pv = smvu + t * (-30 * s), smvv + t * (5 * s)
    px, py = body.xy(pu, pv, z)
    rp = rng.uniform(6.0, 8.0) * _zband(z, zp, zp + 55.0)
    cv.fill(cv.ellipse(px, py, rp, rp, 0.0), pt["vein"], 0)
    # Left renal vein between aorta and SMA, into the IVC.
    zr = zp - rng.uniform(4.0, 12.0)
    path = np.array([[60 * s, lm["v_vb"] - 5 * s], [au, av - r_ao - 4], [ivc_u, ivc_v]])
    for fr in np.linspace(0.0, 2.0, 40):
        i = min(int(fr), 1)
        uu, vv = path[i] + (fr - i) * (path[i + 1] - path[i])
        bx, by = body.xy(uu, vv, zr)
        cv.fill(cv.bead(float(bx), float(by), zr, 4.5), pt["vein"], 0)
    # Splenic vein on the back of the body/tail; splenic artery tortuous along the top edge.
    rsv = rng.uniform(3.5, 5.0)
    phase = rng.uniform(0, 2 * np.pi)
    for k in range(int(0.3 * len(cl.s)), int(0.95 * len(cl.s)), 2):
        nu, nv = cl.normal(k)
        vx, vy = body.xy(cl.u[k] + nu * (cl.r[k] + 1.0), cl.v[k] + nv * (cl.r[k] + 1.0), cl.z[k])
        cv.fill(cv.bead(float(vx), float(vy), float(cl.z[k]), rsv), pt["splenic_vein"], 0)
        wig = 5.0 * np.sin(cl.s[k] / 9.0 + phase)
        ax_, ay_ = body.xy(cl.u[k] + nu * wig, cl.v[k] + nv * wig, cl.z[k])
        cv.fill(cv.bead(float(ax_), float(ay_), float(cl.z[k] + cl.hz[k] + 2.0), 2.5),
                pt["artery"], 0)
    # Common bile duct in the posterolateral head (dilated and cut off by a head tumour).
    head_tumour = bool(tumour) and tumour["s"] < 0.28 * cl.length
    if head_tumour or rng.random() < 0.6:
        k = int(0.08 * len(cl.s))
        nu, nv = cl.normal(k)
        # Posterior normal plus a shift towards the patient's right (-u): posterolateral.
        bu, bv = cl.u[k] + 0.45 * cl.r[k] * (nu - 0.5), cl.v[k] + 0.45 * cl.r[k] * nv
        rb = rng.uniform(4.5, 7.0) if head_tumour else rng.uniform(2.5, 4.0)
        z0 = tumour["top"] if head_tumour else cl.z[k] - 0.4 * cl.hz[k]
        bx, by = body.xy(bu, bv, z)
        band = _zband(z, z0, cl.z[k] + cl.hz[k] + 25.0)
        cv.fill(cv.ellipse(bx, by, rb * band, rb * band), pt["bile"], 0)
    # Main pancreatic duct, dilated upstream of a tumour (half) or in 10 % of normal glands
    # (label 1: the duct belongs to the pancreas annotation).
    start = tumour["s"] + max(tumour["semi"]) + 3.0 if tumour else 0.1 * cl.length
    if rng.random() < (0.5 if tumour else 0.1):
        rd = rng.uniform(1.5, 3.5)
        for k in np.flatnonzero((cl.s >= start) & (cl.s <= 0.93 * cl.length))[::2]:
            dx_, dy_ = body.xy(cl.u[k], cl.v[k], cl.z[k])
            region = cv.bead(float(dx_), float(dy_), float(cl.z[k]), rd)
            if region is not None:
                region = (region[0], region[1] & (cv.label[region[0]] == 1))
            cv.fill(region, pt["bile"], 1)


def _paint_periphery_vessels(cv: _Canvas, rng: np.random.Generator, body: _Body, pt: dict,
                             lm: dict, cl: _Centreline) -> None:
    """Mesenteric vessels and peripancreatic lymph nodes (drawn before the gland)."""
    z, zp = cv.z, pt["z_panc"]
    smvu, smvv = lm["smv"]
    for _ in range(int(rng.integers(8, 15))):
        rv = rng.uniform(1.5, 3.0) * _zband(z, -1e9, zp - rng.uniform(0.0, 15.0))
        cv.fill(_organ(cv, body, smvu + rng.uniform(-45, 45), smvv - rng.uniform(5, 50), rv, rv,
                       0, 4.0, rng), pt["artery"] if rng.random() < 0.5 else pt["vein"])
    for _ in range(int(rng.integers(0, 4))):
        k = int(rng.integers(0, len(cl.s)))
        nu, nv = cl.normal(k)
        sign = rng.choice([-1.0, 1.0])
        d = cl.r[k] + rng.uniform(5.0, 10.0)
        nx, ny = body.xy(cl.u[k] + sign * nu * d, cl.v[k] + sign * nv * d, cl.z[k])
        ra = rng.uniform(3.0, 6.0)
        f = _zcap(z, float(cl.z[k]) + rng.uniform(-8.0, 8.0), ra * rng.uniform(1.0, 1.6))
        cv.fill(cv.ellipse(nx, ny, ra * f, 0.7 * ra * f, rng.uniform(0, np.pi)),
                rng.uniform(40.0, 70.0))


def _acquire(rng: np.random.Generator, hu: np.ndarray, spacing: tuple[float, float, float]
             ) -> np.ndarray:
    """Gaussian PSF applied to phantom + white noise (correlated CT noise), clip, int16."""
    psf_xy = rng.uniform(0.55, 0.85)
    psf_z = spacing[0] / 2.355 * rng.uniform(0.9, 1.1)
    sig = (psf_z / spacing[0], psf_xy / spacing[1], psf_xy / spacing[2])
    noise_sd = rng.uniform(10.0, 18.0)
    gain = noise_sd / np.sqrt(_kernel_sq_norm(sig))
    hu += np.float32(gain) * rng.standard_normal(hu.shape, dtype=np.float32)
    out = gaussian_filter(hu, sig, truncate=_GAUSS_TRUNCATE)
    np.clip(out, _HU_MIN, _HU_MAX, out=out)
    np.rint(out, out=out)
    return out.astype(np.int16)


def make_ct_phantom(rng: np.random.Generator, tumour_diameter_mm: float | None,
                    shape_zyx: tuple[int, int, int] = (40, 384, 384),
                    spacing_zyx_mm: tuple[float, float, float] = (2.5, 0.9, 0.9)) -> PhantomCase:
    """Generate one synthetic contrast-enhanced abdominal CT with pancreas/tumour labels.

    ``tumour_diameter_mm`` is the volume-equivalent diameter of the lesion (None: no tumour).
    The anatomy is defined in mm around the volume centre and needs an in-plane field of view
    of ~300 mm or more (default: 384 x 0.9 = 346 mm). Deterministic given the generator state.
    """
    _check_grid(shape_zyx, spacing_zyx_mm)
    nz, ny, nx = (int(n) for n in shape_zyx)
    sz, sy, sx = (float(s) for s in spacing_zyx_mm)
    shape, spacing = (nz, ny, nx), (sz, sy, sx)
    if tumour_diameter_mm is not None and tumour_diameter_mm <= 0:
        raise ValueError(f"tumour_diameter_mm must be > 0 or None, got {tumour_diameter_mm}")
    cv = _Canvas(shape, spacing)
    body = _Body(rng, cv)
    z_half = (nz - 1) * sz / 2.0
    vein = rng.uniform(90.0, 170.0)
    pt = {  # per-patient attenuation values (HU) and the pancreas level z_panc (mm)
        "z_panc": float(np.clip(rng.uniform(-8.0, 8.0), -0.3 * z_half, 0.3 * z_half)),
        "fat_sc": rng.normal(-100.0, 8.0), "fat_vis": rng.normal(-90.0, 5.0),
        "muscle": rng.uniform(45.0, 60.0), "liver": rng.uniform(90.0, 120.0),
        "spleen": rng.uniform(105.0, 130.0), "cortex": rng.uniform(150.0, 200.0),
        "medulla": rng.uniform(90.0, 120.0), "artery": rng.uniform(160.0, 240.0),
        "ivc": rng.uniform(100.0, 150.0), "vein": vein,
        "splenic_vein": vein + rng.uniform(-30.0, 10.0), "bile": rng.uniform(0.0, 20.0),
        "pancreas": rng.uniform(100.0, 130.0), "bowel_wall": rng.uniform(70.0, 110.0),
    }
    _paint_body_wall(cv, rng, body, pt)
    spine = _paint_spine(cv, rng, body, pt)
    lm = _paint_organs(cv, rng, body, pt, spine)
    au, av = lm["aorta"]
    lm["sma"] = (au - 2.0 * body.s, av - rng.uniform(17.0, 21.0) * body.s)
    lm["smv"] = (lm["sma"][0] - rng.uniform(11.0, 15.0) * body.s, lm["sma"][1] - 2.0)
    cl = _make_centreline(rng, body.s, lm["smv"], pt["z_panc"])
    head = (float(cl.u[0]), float(cl.v[0]), float(cl.z[0]), float(cl.r[0]))
    _paint_bowel(cv, rng, body, pt, lm["smv"], head)
    _paint_periphery_vessels(cv, rng, body, pt, lm, cl)
    d = None if tumour_diameter_mm is None else float(tumour_diameter_mm)
    tumour = _paint_pancreas(cv, rng, body, pt, cl, d)
    _paint_pancreatic_vessels(cv, rng, body, pt, lm, cl, tumour)
    return PhantomCase(_acquire(rng, cv.hu, spacing), cv.label, spacing, d)


# --------------------------------------------------------------------------------------------
# Cohort writer (MSD layout)
# --------------------------------------------------------------------------------------------


def _cohort_plan(spec: CohortSpec) -> list[float | None]:
    """Tumour diameter (or None) per patient: exact count, shuffled, stratified sizes."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(1)[0])
    n_t = round(spec.n_patients * spec.tumour_fraction)
    who = rng.permutation(spec.n_patients)[:n_t]
    lo, hi = spec.tumour_diameter_mm
    strata = (rng.permutation(n_t) + rng.random(n_t)) / max(n_t, 1)
    plan: list[float | None] = [None] * spec.n_patients
    for i, u in zip(who, strata, strict=True):
        plan[int(i)] = round(float(lo + (hi - lo) * u), 2)
    return plan


def _atomic_write_image(arr: np.ndarray, spacing_zyx: tuple[float, float, float],
                        path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin((0.0, 0.0, 0.0))
    tmp = path.with_name(f".tmp-{path.name}")  # keeps the .nii.gz suffix for SimpleITK
    sitk.WriteImage(img, str(tmp), True)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_patient(out: Path, pid: str, seed: np.random.SeedSequence, diameter: float | None,
                   spec: CohortSpec) -> None:
    """Synthesise one patient from its own seed and write its image and label atomically."""
    case = make_ct_phantom(np.random.default_rng(seed), diameter, spec.shape_zyx,
                           spec.spacing_zyx_mm)
    _atomic_write_image(case.image_hu, case.spacing_zyx_mm, out / "imagesTr" / f"{pid}.nii.gz")
    _atomic_write_image(case.label, case.spacing_zyx_mm, out / "labelsTr" / f"{pid}.nii.gz")


# Below this many patients a second process costs more to start than it saves.
MIN_PATIENTS_PER_WORKER = 8


def default_synthesis_workers(n_patients: int) -> int:
    """One process per available core, at most one per MIN_PATIENTS_PER_WORKER patients."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_patients // MIN_PATIENTS_PER_WORKER))


def write_msd_cohort(out_dir: str | Path, spec: CohortSpec, progress: bool = True,
                     workers: int | None = None) -> Path:
    """Write a synthetic cohort in the Medical Segmentation Decathlon (Task07) layout.

    Creates ``imagesTr/pancreas_NNN.nii.gz`` (int16 HU), ``labelsTr/pancreas_NNN.nii.gz``
    (uint8, 0/1/2), ``cases.csv`` (patient_id, has_tumour 0/1, tumour_diameter_mm) and, last,
    ``dataset.json``. Every file is written atomically; an existing ``dataset.json`` is removed
    first, so a directory with ``dataset.json`` always holds a complete cohort. Patient ``i``
    uses its own child seed of ``spec.seed``, so the arrays are reproducible byte for byte,
    whatever the number of `workers` (processes; default one per core, see
    `default_synthesis_workers`) that write them. Returns ``out_dir``.
    """
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").unlink(missing_ok=True)
    plan = _cohort_plan(spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_patients + 1)[1:]
    pids = [f"pancreas_{i + 1:03d}" for i in range(spec.n_patients)]
    workers = default_synthesis_workers(spec.n_patients) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs = [(out, pid, seed, d, spec) for pid, seed, d in zip(pids, seeds, plan, strict=True)]
    with contextlib.ExitStack() as stack:
        if workers == 1:
            written = (_write_patient(*job) for job in jobs)
        else:  # spawn, not fork: the caller may already run torch's thread pools
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            written = pool.map(_write_patient, *zip(*jobs, strict=True))
        for _ in track(written, total=len(jobs), description="synthetic CT cohort",
                       disable=not progress or spec.n_patients < 2):
            pass
    rows = [(pid, int(d is not None), "" if d is None else f"{d:.2f}")
            for pid, d in zip(pids, plan, strict=True)]
    training = [{"image": f"./imagesTr/{pid}.nii.gz", "label": f"./labelsTr/{pid}.nii.gz"}
                for pid in pids]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("patient_id", "has_tumour", "tumour_diameter_mm"))
    writer.writerows(rows)
    _atomic_write_text(buf.getvalue(), out / "cases.csv")
    dataset = {
        "name": "cadx-synthetic-pancreas",
        "description": "Synthetic contrast-enhanced abdominal CT phantoms with pancreas and "
                       f"pancreatic cancer labels (cadx.synth.ct_phantom, seed {spec.seed}).",
        "reference": "synthetic", "licence": "CC0", "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": spec.n_patients, "numTest": 0, "training": training, "test": [],
    }
    _atomic_write_text(json.dumps(dataset, indent=2) + "\n", out / "dataset.json")
    return out
