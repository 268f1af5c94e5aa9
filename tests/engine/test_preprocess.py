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


def test_a_crop_share_keeps_the_middle_of_the_shorter_side():
    """A checkpoint's crop_pct 0.875: the shorter side is scaled to size / 0.875 and the middle
    kept, so the input sees the middle 87.5 % of it, and maps go back to exactly that part."""
    spec = InputSpec(1, (64, 64), "center_crop", "minmax", (0.0,), (1.0,), crop=0.875)
    square = SourceImage(Path("s.png"), np.ones((160, 160), np.float32), Window(0.5, 1), ImageMetadata())
    square.pixels[0, 0] = 0
    back = map_to_source(np.ones((1, 8, 8), np.float32), prepare_input(square, spec).geometry)[0]
    kept = np.nonzero(back[80] > 0.5)[0]
    assert abs(len(kept) - 0.875 * 160) <= 2 and abs(kept.mean() - 79.5) <= 1


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


def test_map_alignment_follows_the_receptive_field_of_a_resnet():
    """A feature cell of a padded ResNet is centred on input pixel i*stride, not on the middle of
    its block: measured from the gradient of one cell with respect to the input."""
    torch = pytest.importorskip("torch")
    import torchvision

    from engine.preprocess import Geometry

    net = torchvision.models.resnet18(num_classes=3).eval()
    # Uniform positive kernels make every layer's footprint symmetric, so the gradient's centroid
    # is the receptive field's centre (random kernels add noise of several pixels).
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    size = 384  # big enough that the cell's receptive field stays clear of the border
    x = torch.full((1, 3, size, size), 0.01, requires_grad=True)
    features = trunk(x)
    cell = (12, 11)
    features[0, :, cell[0], cell[1]].sum().backward()
    weight = x.grad[0].abs().sum(0).numpy()
    yy, xx = np.mgrid[:size, :size]
    centre = ((weight * yy).sum() / weight.sum(), (weight * xx).sum() / weight.sum())

    geometry = Geometry((size, size), (size, size), np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    grid = np.zeros((1,) + tuple(features.shape[2:]), np.float32)
    grid[0][cell] = 1.0
    for alignment, should_match in (("stride", True), ("resize", False)):
        back = map_to_source(grid, geometry, alignment)[0]
        peak = np.unravel_index(np.argmax(back), back.shape)
        close = abs(peak[0] - centre[0]) <= 2.5 and abs(peak[1] - centre[1]) <= 2.5
        assert close == should_match, (alignment, peak, centre)

