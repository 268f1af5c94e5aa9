"""Preprocessing geometry: maps on the model's grid land back on the right source pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.bundle import InputSpec
from engine.images import ImageMetadata, SourceImage, Window
from engine.preprocess import map_to_source, prepare_input


def dot_image(shape, at) -> SourceImage:
    pixels = np.zeros(shape, np.float32)
    pixels[at] = 1000.0
    return SourceImage(Path("dot.png"), pixels, Window(500, 1000), ImageMetadata())


@pytest.mark.parametrize("rule", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("shape, dot", [((300, 200), (120, 90)), ((180, 400), (100, 210))])
def test_a_point_seen_by_the_model_maps_back_to_its_source_pixel(rule, shape, dot):
    spec = InputSpec(channels=1, size=(64, 64), resize=rule, intensity="minmax", mean=(0.0,), std=(1.0,))
    model_input = prepare_input(dot_image(shape, dot), spec)
    seen = model_input.seen
    assert seen.shape == (64, 64)
    iy, ix = np.unravel_index(np.argmax(seen), seen.shape)
    # A map that is hot only where the model saw the dot...
    grid = np.zeros((1, 64, 64), np.float32)
    grid[0, iy, ix] = 1.0
    back = map_to_source(grid, model_input.geometry)[0]
    assert back.shape == shape
    py, px = np.unravel_index(np.argmax(back), back.shape)
    # ...peaks on the source within one model pixel of the dot.
    scale = max(shape) / 64 if rule == "letterbox" else (min(shape) / 64 if rule == "center_crop" else max(shape) / 64)
    assert abs(py - dot[0]) <= scale + 1 and abs(px - dot[1]) <= scale + 1


def test_letterbox_pads_and_center_crop_drops_outside():
    spec = InputSpec(1, (64, 64), "letterbox", "minmax", (0.0,), (1.0,))
    wide = SourceImage(Path("w.png"), np.ones((100, 200), np.float32), Window(0.5, 1), ImageMetadata())
    wide.pixels[0, 0] = 0  # minmax needs a range
    seen = prepare_input(wide, spec).seen
    assert seen[:10].max() == 0 and seen[-10:].max() == 0 and seen[32].min() > 0.9
    crop = InputSpec(1, (64, 64), "center_crop", "minmax", (0.0,), (1.0,))
    geometry = prepare_input(wide, crop).geometry
    back = map_to_source(np.ones((1, 8, 8), np.float32), geometry)[0]
    assert back[:, :40].max() == 0 and back[:, -40:].max() == 0 and back[:, 100].min() == 1


def test_normalisation_and_channels():
    rgb = SourceImage(Path("c.png"), np.full((40, 40, 3), 255, np.uint8), Window(127.5, 255), ImageMetadata())
    spec3 = InputSpec(3, (32, 32), "stretch", "unit8", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    tensor = prepare_input(rgb, spec3).tensor
    assert tensor.shape == (1, 3, 32, 32) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, 2.0, atol=1e-5)
    spec1 = InputSpec(1, (32, 32), "stretch", "unit8", (0.0,), (1.0,))
    assert prepare_input(rgb, spec1).tensor.shape == (1, 1, 32, 32)


def test_padding_pixels_are_ignored_by_the_percentile_window():
    pixels = np.linspace(0, 100, 50 * 50, dtype=np.float32).reshape(50, 50)
    padding = np.zeros_like(pixels, bool)
    padding[:, :10] = True
    pixels[padding] = -2000  # padding value far outside the body
    image = SourceImage(Path("p.dcm"), pixels, Window(50, 100), ImageMetadata(), padding_mask=padding)
    spec = InputSpec(1, (50, 50), "stretch", "percentile", (0.0,), (1.0,))
    seen = prepare_input(image, spec).seen
    assert seen[:, 20:].max() > 0.95  # the body spans the full range, not squeezed by -2000
