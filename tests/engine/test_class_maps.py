"""ClassMaps warps one class at a time, on demand; its shortcuts must agree with the full warp."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.bundle import InputSpec
from engine.cam import ClassMaps
from engine.preprocess import map_to_source, plan_geometry

CASES = [((600, 800), "letterbox", "stride"), ((700, 500), "center_crop", "resize"),
         ((513, 517), "stretch", "resize"), ((2000, 1800), "letterbox", "stride")]


def make_maps(source_shape, resize, alignment, seed=0) -> ClassMaps:
    geometry, _, _ = plan_geometry(source_shape, InputSpec(channels=1, size=(160, 160), resize=resize))
    grid = np.random.default_rng(seed).gamma(2.0, 1.0, size=(3, 10, 10)).astype(np.float32)
    return ClassMaps("gradcam", grid, geometry, alignment)


@pytest.mark.parametrize("shape, resize, alignment", CASES)
def test_one_class_equals_the_same_class_of_the_full_warp(shape, resize, alignment):
    maps = make_maps(shape, resize, alignment)
    full = map_to_source(maps.grid, maps.geometry, alignment)
    assert maps.source_map(1).shape == shape
    np.testing.assert_array_equal(maps.source_map(1), full[1])
    np.testing.assert_array_equal(maps.absolute, full)


@pytest.mark.parametrize("shape, resize, alignment", CASES)
def test_normalized_maps_reach_one_at_the_peak_and_never_exceed_it(shape, resize, alignment):
    maps = make_maps(shape, resize, alignment)
    for i in range(3):
        normalized = maps.normalized_map(i)
        assert normalized.min() >= 0.0
        assert normalized.max() <= 1.0
        if resize != "center_crop":  # a crop may cut the peak cell away
            assert normalized.max() > 0.9


@pytest.mark.parametrize("shape, resize, alignment", CASES)
def test_peak_from_the_grid_lands_on_the_strongest_cell_over_the_image(shape, resize, alignment):
    maps = make_maps(shape, resize, alignment, seed=3)
    assert maps.on_image.any() and (resize != "letterbox" or not maps.on_image.all())
    for i in range(3):
        warped = maps.source_map(i)
        row, col = maps.peak(i)
        strongest = maps.image_peak(i)
        assert strongest == pytest.approx(maps.grid[i][maps.on_image].max())
        # Rounding the cell centre to a pixel moves less than a pixel: the value barely drops.
        assert warped[row, col] == pytest.approx(strongest, rel=0.05)
        centres = [maps.source_map(i)[r, c] for r, c in (maps.peak(j) for j in range(3))]
        assert warped[row, col] >= max(centres) - 1e-6


@pytest.mark.parametrize("step", [2, 7, 16])
def test_sampled_map_is_the_full_map_at_every_step_th_pixel(step):
    maps = make_maps((600, 800), "letterbox", "stride")
    np.testing.assert_allclose(maps.sampled_map(2, step, normalized=False),
                               maps.source_map(2)[::step, ::step], atol=1e-4)
    np.testing.assert_allclose(maps.sampled_map(2, step), maps.normalized_map(2)[::step, ::step], atol=1e-5)


def test_a_class_is_warped_once_and_cannot_be_changed_by_a_caller():
    maps = make_maps((600, 800), "letterbox", "stride")
    first = maps.source_map(0)
    assert maps.source_map(0) is first
    with pytest.raises(ValueError):
        first[0, 0] = 1.0


def test_concurrent_requests_share_one_warp():
    maps = make_maps((2000, 1800), "letterbox", "stride")
    results = []
    threads = [threading.Thread(target=lambda: results.append(maps.source_map(2))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is results[0] for r in results)


def test_past_the_last_cell_the_map_keeps_its_slope_instead_of_a_flat_band():
    """Stride alignment leaves the last stride of the image past the last cell centre."""
    geometry, _, _ = plan_geometry((256, 256), InputSpec(channels=1, size=(256, 256), resize="stretch"))
    ramp = np.linspace(8.0, 1.0, 8, dtype=np.float32)  # falls towards the bottom, flat across
    grid = np.repeat(ramp[:, None], 8, axis=1)[None]
    column = map_to_source(grid, geometry, "stride")[0][:, 100]
    assert column[224] == pytest.approx(1.0, abs=1e-3)  # the last cell centre (7 * 32)
    assert column[240] < column[224] < column[200]  # still falling past it, not held at 1
    assert column.min() >= 0.0
    rising = map_to_source(grid[:, ::-1].copy(), geometry, "stride")[0][:, 100]
    assert rising.max() <= 8.0 + 1e-5  # never above the map's own peak
