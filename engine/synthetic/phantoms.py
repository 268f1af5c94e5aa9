"""Synthetic chest-radiograph-like phantoms for the demo classifier and the demo studies.

What they are
    Frontal (PA-like) "chest X-ray" pictures drawn entirely by code from a handful of smooth
    shapes: a soft-tissue body outline with neck and shoulders, two dark lung fields whose lower
    borders are diaphragm domes with costophrenic angles, a bright mediastinum / heart shadow
    with an aortic knob, the spine, clavicles, posterior and (fainter) anterior ribs drawn as
    curved bright arcs, some low-frequency "lung marking" texture, a smooth background gradient
    and detector-like blur and signal-dependent (Poisson-like) noise. Every image varies in
    position, scale, rotation, lung size, rib spacing, contrast, brightness, gamma, blur and
    noise, so that global intensity alone does not tell the classes apart.

    Three classes (:data:`CLASSES`):

    * ``normal``: no lesion, empty mask.
    * ``nodule``: one round, slightly lobulated, soft-edged bright blob (radius about 7..16 px at
      256 px, contrast from subtle to clear) lying entirely inside one lung field. Its mask is
      where the blob reaches half its peak, i.e. the disk of its nominal radius.
    * ``effusion``: fluid at the base of one (random) lung: a homogeneous opacity filling the
      lowest 15..40 % of that lung field, with a meniscus (edge concave upward, rising along the
      lateral chest wall) that blunts the costophrenic angle. Its mask is that region.

    Pixel values are float32 in 12-bit detector-like units (0..4095), higher = brighter, in the
    DICOM MONOCHROME2 sense (air dark, bone bright).

What they are not
    Not anatomy: proportions, densities and textures are a cartoon of a radiograph, no physics
    of X-ray attenuation is modelled beyond "add some brightness", and a "lesion" is a geometric
    shape, not pathology. A model trained on these learns to find round blobs and basal opacities
    in these pictures and nothing about real patients. They exist so that the demo can run
    offline with no patient data; never use them to judge a model meant for real images.

Only numpy and OpenCV are used (no torch, no Qt). Generation is vectorised on cached coordinate
grids: a few hundred 256 x 256 phantoms per second on one core.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["CLASSES", "Phantom", "make_phantom", "make_dataset"]

CLASSES = ("normal", "nodule", "effusion")

_MAX_VALUE = 4095.0


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph with its lesion mask and label."""

    image: np.ndarray  # float32 (H, W), 0..4095, higher = brighter (MONOCHROME2 sense)
    mask: np.ndarray  # bool (H, W), True on the lesion (all False for normal)
    label: int  # index into CLASSES
    lesion_center: tuple[float, float] | None  # (row, col) in pixels, None for normal


@lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates in [-1, 1]: (x = column, y = row), float32 (H, W)."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(t, t)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _ramp(x: np.ndarray, edge: float) -> np.ndarray:
    """Soft step: 0 for x <= -edge/2, 1 for x >= edge/2, linear between (cheap sigmoid)."""
    return np.clip(x * (1.0 / edge) + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, about unit std, made by upsampling a coarse random grid."""
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _fast_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-std white noise (uniform per pixel; Gaussian enough once blurred).

    About ten times faster than ``rng.standard_normal`` for a 256 x 256 image.
    """
    raw = np.frombuffer(rng.bytes(size * size), dtype=np.uint8).reshape(size, size)
    noise = raw.astype(np.float32)
    noise -= 127.5
    noise *= 1.0 / 73.9  # std of a uniform 0..255 byte
    return noise


# One image's anatomy parameters, in canonical body coordinates (u across, v down).
_Anatomy = namedtuple("_Anatomy", "lung_w lung_h lung_cu lung_cv dome_r dome_l dome_k rib_sp rib_k rib_m "
                      "rib_q0 rib_w rib_gain heart_cu heart_w heart_h heart_cv heart_tilt body_w neck_w arm_gap")


def make_phantom(rng: np.random.Generator, label: int, size: int = 256) -> Phantom:
    """Draw one phantom of class ``label`` (index into :data:`CLASSES`) with ``rng``.

    The result depends only on the state of ``rng`` (and ``label`` and ``size``). The smooth
    anatomy is drawn at half resolution and upsampled (it is blurred by the "detector" anyway);
    the nodule, the masks and the noise are made at full resolution.

    The steps below draw from ``rng`` in a fixed order: the demo studies, the teaching set and
    the self-test reference are these exact pixels, so the order must never change.
    """
    label = int(label)
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be 0..{len(CLASSES) - 1}, got {label}")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    low_res = max(size // 2, 32)

    x, y, u, v, a = _pose(rng, low_res)
    anatomy = _draw_anatomy(rng)
    body, att = _body_outline(u, v, a, anatomy)
    lung_alpha, lung_depth, side_alpha = _lungs(u, v, a, anatomy)

    fluid_in_lung = None
    if label == 2:
        fluid_in_lung, fluid_density = _effusion(rng, u, v, anatomy, side_alpha)
        lung_alpha -= fluid_in_lung
        # Only the effusion side: `fluid` alone spans both lungs and would opacify the other base.
        lung_depth *= 1.0 - fluid_in_lung
        att += fluid_in_lung * fluid_density

    bones = _bones(rng, v, a, anatomy, lung_alpha, body)
    _composite(rng, att, x, y, v, a, anatomy, body, lung_alpha, lung_depth, bones, low_res)

    mask = np.zeros((size, size), dtype=bool)
    center: tuple[float, float] | None = None
    if fluid_in_lung is not None:
        mask = _upsample(fluid_in_lung, size) > 0.5
        rows, cols = np.nonzero(mask)
        center = (float(rows.mean()), float(cols.mean()))
    if label == 1:
        mask, center = _nodule(rng, att, lung_alpha, size, low_res)

    return Phantom(image=_expose(rng, att, size, low_res), mask=mask, label=label, lesion_center=center)


def _upsample(arr: np.ndarray, size: int) -> np.ndarray:
    """A working-resolution array at the output size (itself when they are the same)."""
    if arr.shape[0] == size:
        return arr
    return cv2.resize(arr, (size, size), interpolation=cv2.INTER_LINEAR)


def _pose(rng: np.random.Generator, low_res: int):
    """Pose: canonical body coordinates (u across, v down) from the pixel grid, and the grid
    itself (x, y) and |u| (a); everything float32 (low_res, low_res)."""
    uniform = rng.uniform
    x, y = _grids(low_res)
    scale = uniform(0.92, 1.08)
    theta = float(np.deg2rad(uniform(-4.0, 4.0)))
    tx, ty = uniform(-0.05, 0.05), uniform(-0.05, 0.05)
    c, s = float(np.cos(theta) / scale), float(np.sin(theta) / scale)
    xs = x - tx
    ys = y - ty
    u = c * xs + s * ys
    v = c * ys - s * xs
    a = np.abs(u)
    return x, y, u, v, a


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Per-image anatomy parameters (drawn in this order; later ones depend on earlier ones)."""
    uniform = rng.uniform
    # Grouped by organ; a tuple's values are drawn left to right.
    lung_w, lung_h = uniform(0.29, 0.35), uniform(0.60, 0.70)
    lung_cu, lung_cv = uniform(0.39, 0.44), uniform(-0.10, -0.03)
    dome_r = lung_cv + lung_h * uniform(0.50, 0.62)  # top of the right (image-left) dome
    dome_l = dome_r + uniform(0.02, 0.08)  # the left dome sits lower
    dome_k = uniform(0.18, 0.28)
    rib_sp, rib_k, rib_m, rib_q0 = uniform(0.095, 0.12), uniform(1.0, 1.5), uniform(0.3, 0.42), uniform(-1.0, -0.9)
    rib_w = uniform(0.32, 0.42)  # rib thickness as a fraction of the spacing
    rib_gain = uniform(0.035, 0.065)
    heart_cu, heart_w, heart_h = uniform(0.12, 0.17), uniform(0.29, 0.34), uniform(0.2, 0.25)
    heart_cv = dome_l - heart_h * uniform(0.2, 0.5)
    heart_tilt = uniform(0.25, 0.5)  # long axis down towards the image-right apex
    body_w, neck_w, arm_gap = uniform(0.76, 0.86), uniform(0.16, 0.21), uniform(0.02, 0.08)
    return _Anatomy(lung_w, lung_h, lung_cu, lung_cv, dome_r, dome_l, dome_k, rib_sp, rib_k, rib_m,
                    rib_q0, rib_w, rib_gain, heart_cu, heart_w, heart_h, heart_cv, heart_tilt, body_w,
                    neck_w, arm_gap)


def _body_outline(u: np.ndarray, v: np.ndarray, a: np.ndarray, an: _Anatomy):
    """Body outline: neck, shoulders, torso and upper arms. Returns (body, attenuation so far)."""
    body_w, neck_w = an.body_w, an.neck_w
    shoulder = np.sqrt(np.clip((v + 1.08) * (1.0 / 0.32), 0.0, 1.0))
    half_w = neck_w + (body_w + 0.08 - neck_w) * shoulder - 0.1 * np.clip(v + 0.55, 0.0, 1.6)
    body = _ramp(half_w - a, 0.04)
    thick = np.sqrt(np.clip(1.0 - (u / half_w) ** 2, 0.0, 1.0))
    att = body * (0.45 + 0.28 * thick)
    # upper arms beside the torso, separated by a dark gap
    arm_c = body_w + 0.08 + an.arm_gap + 0.09
    arm = _ramp(0.08 - np.abs(a - arm_c), 0.04) * _ramp(v + 0.78, 0.15) * (1.0 - body)
    att += arm * 0.5
    return body, att


def _lungs(u: np.ndarray, v: np.ndarray, a: np.ndarray, an: _Anatomy):
    """Lungs (two fields, apex taper, diaphragm domes) carved by the heart, aortic knob and
    mediastinum. Returns (lung_alpha, lung_depth, [right field, left field])."""
    lung_w, lung_h, lung_cu, lung_cv = an.lung_w, an.lung_h, an.lung_cu, an.lung_cv
    lung_alpha = np.zeros_like(u)
    lung_depth = np.zeros_like(u)
    side_alpha = []
    for side, dome_top in ((-1.0, an.dome_r), (1.0, an.dome_l)):
        du = u - side * lung_cu
        dv = v - lung_cv
        taper = 0.7 + 0.3 * np.sqrt(np.clip(dv * (1.0 / lung_h) + 0.85, 0.0, 1.0))
        f = (du / (lung_w * taper)) ** 2 + (dv * (1.0 / lung_h)) ** 2
        dome = dome_top + an.dome_k * (du * (1.0 / lung_w)) ** 2
        alpha = _ramp(1.0 - f, 0.1) * _ramp(dome - v, 0.03)
        side_alpha.append(alpha)
        lung_depth += alpha * np.sqrt(np.clip((1.0 - f) * 2.5, 0.0, 1.0))
        lung_alpha += alpha

    keep = _mediastinum_gap(u, v, a, an)
    lung_alpha *= keep
    lung_depth *= keep
    side_alpha = [m * keep for m in side_alpha]
    return lung_alpha, lung_depth, side_alpha


def _mediastinum_gap(u: np.ndarray, v: np.ndarray, a: np.ndarray, an: _Anatomy) -> np.ndarray:
    """Where the lungs remain (1) once the heart (bulging into the image-right lung), the aortic
    knob and the mediastinum carve them."""
    ct, st = float(np.cos(an.heart_tilt)), float(np.sin(an.heart_tilt))
    hu = ((u - an.heart_cu) * ct + (v - an.heart_cv) * st) * (1.0 / an.heart_w)
    hv = ((v - an.heart_cv) * ct - (u - an.heart_cu) * st) * (1.0 / an.heart_h)
    heart = _ramp(1.0 - (hu * hu + hv * hv), 0.12)
    knob = _ramp(1.0 - ((u - 0.11) ** 2 + (v - an.lung_cv + 0.2) ** 2) * (1.0 / 0.065**2), 0.3)
    medial = _ramp(a - 0.1 - 0.04 * np.clip(-v - 0.2, 0.0, 1.0), 0.05)
    return (1.0 - heart) * (1.0 - knob) * medial


def _effusion(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, an: _Anatomy,
              side_alpha: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Effusion: fluid that replaces the air at the base of one lung. Returns (the fluid within
    that lung field, the fluid's added density)."""
    k = int(rng.integers(2))
    side = (-1.0, 1.0)[k]
    inside = side_alpha[k] > 0.5
    v_in = v[inside]
    top, bottom = float(v_in.min()), float(v_in.max())
    frac = rng.uniform(0.15, 0.40)
    menisc = rng.uniform(0.08, 0.16)
    level = bottom - frac * (bottom - top) + 0.5 * menisc
    t = np.clip((u - side * 0.1) * side * (1.0 / (an.lung_cu + an.lung_w - 0.1)), 0.0, 1.3)
    surface = level - menisc * t * t  # rises along the lateral wall: concave upward
    fluid = _ramp(v - surface, 0.035)
    return fluid * side_alpha[k], rng.uniform(0.0, 0.04)


def _bones(rng: np.random.Generator, v: np.ndarray, a: np.ndarray, an: _Anatomy,
           lung_alpha: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Bones: posterior and anterior ribs, clavicles and the spine, as added attenuation."""
    bones = _ribs(v, a, an, lung_alpha)
    # clavicles: bars from the sternal notch up and out to the shoulders
    clav_y = an.lung_cv - an.lung_h * 0.8 - 0.28 * (a - 0.08) + 0.35 * (a - 0.4) ** 2
    clav = _ramp(0.03 - np.abs(v - clav_y), 0.025) * _ramp(a - 0.1, 0.05) * _ramp(0.7 - a, 0.1)
    bones += clav * rng.uniform(0.07, 0.11)
    # spine with a faint vertebral pattern
    vert = 0.75 + 0.25 * np.cos(v * (2 * np.pi / rng.uniform(0.085, 0.1)))
    bones += _ramp(0.055 - a, 0.02) * vert * rng.uniform(0.06, 0.1) * body
    return bones


def _ribs(v: np.ndarray, a: np.ndarray, an: _Anatomy, lung_alpha: np.ndarray) -> np.ndarray:
    """Posterior ribs as curved bright arcs, and fainter anterior ones, within the thorax."""
    rib_sp, rib_q0 = an.rib_sp, an.rib_q0
    thorax = _ramp(an.lung_cu + an.lung_w + 0.08 - a, 0.06) * _ramp(an.dome_r + 0.04 - v, 0.12)
    q = v - an.rib_k * (a - an.rib_m) ** 2
    qq = q - rib_q0
    phase = qq * (1.0 / rib_sp) * (1.0 - 0.12 * qq)  # ribs spread out a little downwards
    frac_p = phase - np.floor(phase)
    rib = _ramp(an.rib_w * 0.5 - np.abs(frac_p - 0.5), 0.1) * _ramp(phase - 0.3, 0.5)
    # anterior ribs: fainter, descending towards the midline
    q2 = v + 0.45 * a - 0.6 * (a - 0.55) ** 2
    phase2 = (q2 - rib_q0) * (1.0 / (rib_sp * 1.3))
    frac2 = phase2 - np.floor(phase2)
    rib2 = _ramp(0.14 - np.abs(frac2 - 0.5), 0.1) * _ramp(a - 0.2, 0.1)
    return (rib + 0.4 * rib2) * (thorax * (0.35 + 0.65 * lung_alpha) * an.rib_gain)


def _composite(rng: np.random.Generator, att: np.ndarray, x: np.ndarray, y: np.ndarray, v: np.ndarray,
               a: np.ndarray, an: _Anatomy, body: np.ndarray, lung_alpha: np.ndarray,
               lung_depth: np.ndarray, bones: np.ndarray, low_res: int) -> None:
    """Composite attenuation, in place on ``att``: dark lungs with their texture and hila, the
    bones, and the background (exposed detector with a smooth gradient)."""
    uniform = rng.uniform
    texture = _smooth_noise(rng, low_res, 20)
    hilum = np.exp(-((a - 0.18) ** 2 + (v - an.lung_cv) ** 2) * (1.0 / 0.05))
    att -= lung_depth * uniform(0.26, 0.34)
    att += lung_alpha * (0.022 * texture + 0.07 * hilum)
    att += bones
    att += (1.0 - body) * (uniform(0.015, 0.05) + uniform(-0.03, 0.03) * x + uniform(-0.03, 0.03) * y)


def _nodule(rng: np.random.Generator, att: np.ndarray, lung_alpha: np.ndarray, size: int,
            low_res: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Nodule: a soft bright blob entirely inside a lung field, added to ``att`` in place.
    Returns its full-resolution mask and centre."""
    uniform = rng.uniform
    ratio = size / low_res  # full-res pixels per working-res pixel
    lung_mask = (_upsample(lung_alpha, size) > 0.9).astype(np.uint8)
    dist = cv2.distanceTransform(lung_mask, cv2.DIST_L2, 3)
    radius = uniform(7.0, 16.0) * size / 256.0
    lobe = uniform(0.0, 0.12)
    phase0 = uniform(0.0, 2.0 * np.pi)
    need = radius * (1.0 + lobe) + 2.0
    ok = np.flatnonzero(dist.ravel() >= need)
    if ok.size == 0:  # tiny lungs: shrink the nodule to fit
        need = float(dist.max())
        radius = max((need - 2.0) / (1.0 + lobe), 1.5)
        ok = np.flatnonzero(dist.ravel() >= need)
    idx = int(ok[rng.integers(ok.size)])
    r0, c0 = divmod(idx, size)
    edge_frac = uniform(0.3, 0.5)
    contrast = uniform(0.08, 0.2)

    # drawn at the working resolution (pixel centres aligned as cv2.resize does) ...
    rc, cl = (r0 + 0.5) / ratio - 0.5, (c0 + 0.5) / ratio - 0.5
    sl, blob, core = _blob(low_res, rc, cl, radius / ratio, lobe, phase0, edge_frac)
    att[sl] += contrast * (0.75 * blob + 0.25 * core)
    # ... and its mask at full resolution
    mask = np.zeros((size, size), dtype=bool)
    sl, blob, _ = _blob(size, float(r0), float(c0), radius, lobe, phase0, edge_frac)
    mask[sl] = (blob >= 0.5) & (lung_mask[sl] > 0)
    return mask, (float(r0), float(c0))


def _blob(n: int, rc: float, cc0: float, rad0: float, lobe: float, phase0: float, edge_frac: float):
    """Soft, slightly lobulated blob on an n x n grid around (rc, cc0): (slices, blob, core)."""
    reach = int(np.ceil(rad0 * (1.0 + lobe) * 1.8)) + 2
    r_i, c_i = int(round(rc)), int(round(cc0))
    rs, re = max(r_i - reach, 0), min(r_i + reach + 1, n)
    cs, ce = max(c_i - reach, 0), min(c_i + reach + 1, n)
    rr = np.arange(rs, re, dtype=np.float32)[:, None] - np.float32(rc)
    cc = np.arange(cs, ce, dtype=np.float32)[None, :] - np.float32(cc0)
    r = np.sqrt(rr * rr + cc * cc)
    rad = rad0 * (1.0 + lobe * np.cos(3.0 * np.arctan2(rr, cc) + phase0))
    blob = np.clip((rad - r) / (rad0 * edge_frac) + 0.5, 0.0, 1.0)
    blob = blob * blob * (3.0 - 2.0 * blob)  # smoothstep: soft edge, 0.5 at r == rad
    core = np.exp(-((r / rad0) ** 2))  # slightly denser centre
    return (slice(rs, re), slice(cs, ce)), blob, core


def _expose(rng: np.random.Generator, att: np.ndarray, size: int, low_res: int) -> np.ndarray:
    """Global look (contrast / brightness / gamma), then the detector (blur, upsampling to the
    output size, signal-dependent noise): attenuation (clipped to 0..1 in place) -> pixels."""
    uniform = rng.uniform
    np.clip(att, 0.0, 1.0, out=att)
    gamma = uniform(0.75, 1.3)
    low = uniform(80.0, 700.0)
    high = uniform(2900.0, 4000.0)
    img = att**gamma
    img *= high - low
    img += low
    sigma = uniform(0.5, 1.1) * low_res / 256.0
    img = _upsample(cv2.GaussianBlur(img, (0, 0), sigma), size)
    noise = _fast_noise(rng, size)
    noise *= np.sqrt(img * uniform(0.3, 2.0))
    img += cv2.GaussianBlur(noise, (0, 0), 0.6 * size / 256.0)
    np.clip(img, 0.0, _MAX_VALUE, out=img)
    return img


def make_dataset(
    n: int, seed: int, size: int = 256, balanced: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` phantoms: (images (n,H,W) float32, masks (n,H,W) bool, labels (n,) int64).

    Deterministic for ``seed``. ``balanced`` gives each class ``n // 3`` (the remainder going to
    the first classes) in shuffled order; otherwise labels are drawn uniformly at random.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    if balanced:
        labels = np.arange(n, dtype=np.int64) % k
        rng.shuffle(labels)
    else:
        labels = rng.integers(0, k, size=n).astype(np.int64)
    images = np.empty((n, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        p = make_phantom(rng, int(labels[i]), size)
        images[i] = p.image
        masks[i] = p.mask
    return images, masks, labels
