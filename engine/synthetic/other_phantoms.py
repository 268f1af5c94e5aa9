"""Images the demo chest model was not made for, drawn like its phantoms: an abdomen-like slice, a
hand-like radiograph and a photograph-like colour picture. They are part of the set the
out-of-distribution benchmark must flag (``lantern-engine bench --ood``), beside pydicom's own
test files; no patient data anywhere.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("abdomen", "hand", "photo")


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rng.normal(0, sigma, shape).astype(np.float32), (0, 0), 1.0)


def abdomen(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A CT-like axial slice: a round body of soft tissue, organs, a spine, air outside (HU-like)."""
    image = np.full((size, size), -1000.0, np.float32)
    c = size // 2
    axes = (int(size * rng.uniform(0.36, 0.45)), int(size * rng.uniform(0.28, 0.36)))
    cv2.ellipse(image, (c, c), axes, 0, 0, 360, 40.0, -1)
    cv2.ellipse(image, (c - size // 8, c - size // 16), (size // 6, size // 8), rng.uniform(0, 40), 0, 360, 60.0, -1)
    cv2.ellipse(image, (c + size // 7, c), (size // 14, size // 10), 0, 0, 360, 30.0, -1)
    cv2.circle(image, (c, c + size // 4), size // 18, 700.0, -1)  # vertebra
    for _ in range(rng.integers(3, 7)):  # bowel gas
        cv2.circle(image, (int(rng.uniform(c - size // 4, c + size // 4)), int(rng.uniform(c, c + size // 5))),
                   int(rng.uniform(3, size // 25)), -900.0, -1)
    return image + _noise(rng, image.shape, 15)


def hand(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A radiograph of a hand: a palm and five fingers of bright bone in soft tissue."""
    image = np.full((size, size), 200.0, np.float32)
    palm = (size // 2, int(size * 0.72))
    cv2.ellipse(image, palm, (size // 5, size // 6), 0, 0, 360, 900.0, -1)
    for k, angle in enumerate(np.linspace(-50, 40, 5) + rng.normal(0, 4, 5)):
        length = size * (0.28 if k in (1, 2, 3) else 0.2)
        a = np.deg2rad(angle - 90)
        start = (palm[0] + int(np.cos(a) * size * 0.15), palm[1] + int(np.sin(a) * size * 0.12))
        end = (start[0] + int(np.cos(a) * length), start[1] + int(np.sin(a) * length))
        cv2.line(image, start, end, 900.0, size // 16)
        cv2.line(image, start, end, 2200.0, size // 40)
    for bone in range(5):  # metacarpals
        x = palm[0] - size // 8 + bone * size // 16
        cv2.line(image, (x, palm[1] + size // 10), (x, palm[1] - size // 10), 2000.0, size // 45)
    return cv2.GaussianBlur(image, (0, 0), 1.5) + _noise(rng, image.shape, 40)


def photo(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An RGB uint8 picture with a sky-like gradient and coloured shapes: nothing like a radiograph."""
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = np.broadcast_to(top * (1 - y) + bottom * y, (size, size, 3)).copy()
    for _ in range(rng.integers(3, 8)):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        cv2.circle(image, centre, int(rng.uniform(size / 16, size / 4)), colour, -1)
    noisy = image + rng.normal(0, 6, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_other(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    return {"abdomen": abdomen, "hand": hand, "photo": photo}[kind](rng, size)
