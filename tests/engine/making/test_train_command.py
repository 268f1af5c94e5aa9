"""``lantern-engine train`` on a small phantom set written as PNG and DICOM files. A tiny torchvision
ResNet (resnet18's class and layer names, an eighth of its widths: about 0.1 M parameters) stands
behind ``--arch resnet18``, so that training, export and quantization take seconds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from engine.cli.main import build_parser, main  # noqa: E402
from engine.synthetic.phantoms import CLASSES, make_dataset  # noqa: E402

SIZE = 64  # phantoms and model input alike: layer4 is then a 2 x 2 grid


def _tiny_torchvision(architecture: str, *, weights, num_classes: int, **options):
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    assert architecture == "resnet18" and weights is None

    class TinyResNet(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            return super()._make_layer(block, planes // 8, blocks, stride, dilate)

    model = TinyResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    model.fc = nn.Linear(64, num_classes)  # layer4's 64 channels, not resnet18's 512
    return model


@pytest.fixture(autouse=True, scope="module")
def tiny_models():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.models, "get_model", _tiny_torchvision)
        yield


def write_phantom_set(folder: Path, n: int = 66, seed: int = 3) -> Path:
    """Phantoms as PNG (some grouped by a 'group' column) and DICOM (3 per Patient ID), and 2 bad files."""
    import cv2
    import pydicom

    from engine.synthetic.demo_data import radiograph_dicom_bytes

    folder.mkdir(parents=True, exist_ok=True)
    images, _masks, labels = make_dataset(n, seed=seed, size=SIZE)
    rows = ["file,class,group"]
    for i, (image, label) in enumerate(zip(images, labels)):
        if i % 2 == 0:
            name, group = f"img{i:03d}.png", (f"pat{i // 4}" if i % 8 else "")
            cv2.imwrite(str(folder / name), np.clip(image / 16, 0, 255).astype(np.uint8))
        else:
            name, group = f"img{i:03d}.dcm", ""
            ds = pydicom.dcmread(io.BytesIO(radiograph_dicom_bytes(image, key=f"k{i}")))
            ds.PatientID = f"PID{i // 6}"
            ds.save_as(folder / name, enforce_file_format=True)
        rows.append(f"{name},{CLASSES[label]},{group}")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.dcm").write_text("this is not DICOM")
    rows += ["broken.png,normal,", "notes.dcm,nodule,"]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory) -> Path:
    return write_phantom_set(tmp_path_factory.mktemp("phantoms") / "set")


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--arch", "resnet18", "--size", str(SIZE), "--batch", "16",
            "--out", str(out), *extra]


def _true_groups(folder: Path) -> dict[str, str]:
    """file -> the patient it belongs to, read from the files themselves (not from split.csv)."""
    import pydicom

    rows = [r for r in csv.DictReader((folder / "labels.csv").open()) if r["file"] not in ("broken.png", "notes.dcm")]
    return {r["file"]: pydicom.dcmread(folder / r["file"]).PatientID if r["file"].endswith(".dcm")
            else r["group"] or "file:" + r["file"] for r in rows}


# -- a whole run, ending in an explained, calibrated, quantized bundle ------------------------------

@pytest.fixture(scope="module")
def trained(phantom_set, tmp_path_factory):
    from engine.cli.train_command import options_from
    from engine.making.train_run import train_model

    out = tmp_path_factory.mktemp("trained") / "bundle"
    args = build_parser().parse_args(train_args(phantom_set, out, "--epochs", "2", "--augment", "rotate,contrast",
                                                "flip", "--early-stop", "auc", "--export", "int8"))
    lines: list[str] = []  # the progress lines
    # A tiny, barely trained model's int8 maps and accuracy on phantoms are not a real model's:
    # the limits are relaxed as in test_export_architectures; the figures must still be recorded.
    limits = dict(calibration_images=16, validation_images=8, min_correlation=0.8, max_accuracy_drop=0.25,
                  max_size_ratio=1.5)
    result = train_model(options_from(args), log=lines.append, quantize_limits=limits)
    return out, result, lines


def test_the_bundle_analyses_on_torch_onnx_and_int8(trained):
    from engine.analysis import AnalysisOptions, analyze, load_model
    from engine.making.training import phantom_image

    out, result, _lines = trained
    assert result.bundle is not None and result.folder == out
    image = phantom_image(make_dataset(1, seed=99, size=SIZE)[0][0])
    for engine in ("torch", "onnx", "onnx-int8"):
        model = load_model(out, engine)
        assert model.engine == engine and model.ood is not None
        analysis = analyze(image, model, AnalysisOptions(methods=("gradcam",), mc_samples=4))
        assert np.isclose(analysis.probabilities.sum(), 1.0, atol=1e-5)
        assert analysis.maps["gradcam"].source_map(0).shape == image.shape
        assert analysis.uncertainty is not None and analysis.input_check.score is not None


def test_the_card_holds_test_metrics_temperature_ood_and_split(trained):
    out, result, lines = trained
    manifest = json.loads((out / "manifest.json").read_text())
    card = manifest["model_card"]
    metrics = card["metrics"]
    assert metrics["split"] == "test" and metrics["cases"] == sum(card["split"]["images"]["test"].values())
    assert set(metrics["per_class"]) == set(CLASSES) and 0.0 <= metrics["accuracy"] <= 1.0
    assert "auc" in metrics["per_class"]["normal"] and metrics["int8"]["accuracy"] is not None
    assert (out / metrics["report"] / "metrics.json").is_file() and (out / metrics["report"] / "roc.png").is_file()
    assert "validation split" in manifest["calibration"]["fitted_on"] and "training split" in manifest["ood"]["fitted_on"]
    assert set(manifest["ood"]["thresholds"]) == {"torch", "onnx", "onnx-int8"}
    assert manifest["onnx"]["int8"] == "model.int8.onnx" and "int8_validation" in card
    assert sum(card["reliability"]["counts"]) == metrics["cases"]
    training = card["training"]
    assert training["epochs_run"] == 2 and len(training["history"]) == 2 and training["init"]["from"].startswith("scratch")
    assert training["options"]["augment"] == ["rotate", "contrast", "flip"]
    assert card["split"]["file"] == "split.csv" and card["split"]["seed"] == 0
    # Progress: epoch, loss, validation figures and the time left; TensorBoard said either way.
    assert any(line.startswith("epoch 1/2: loss ") and "validation loss" in line and "AUC" in line and "left" in line
               for line in lines)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert any("TensorBoard is not installed: no event files written" in line for line in lines)
    else:
        assert list((out / "training").glob("events.out.tfevents.*"))


def test_refused_images_are_listed_and_training_continues(trained):
    out, result, lines = trained
    refused = json.loads((out / "manifest.json").read_text())["model_card"]["refused"]
    assert [(r["file"], r["line"]) for r in refused] == [("broken.png", 68), ("notes.dcm", 69)]
    assert all("not an image file" in r["reason"] for r in refused)
    assert any(line.startswith("refused line 68 (broken.png): ") for line in lines)
    assert len(result.problems) == 2
    rows = list(csv.DictReader((out / "split.csv").open()))
    assert [r["split"] for r in rows if r["file"] in ("broken.png", "notes.dcm")] == [f"refused: {r['reason']}"
                                                                                       for r in refused]


def test_no_patient_is_in_two_splits(trained, phantom_set):
    out, _result, _lines = trained
    rows = [r for r in csv.DictReader((out / "split.csv").open()) if not r["split"].startswith("refused")]
    truth = _true_groups(phantom_set)
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(truth[row["file"]], set()).add(row["split"])
        assert "PID" not in row["group"] and "pat" not in row["group"]  # pseudonyms only
    assert all(len(s) == 1 for s in splits_of.values()), splits_of
    # Grouping happened: several DICOMs share a patient, several PNGs a group column's value.
    assert {r["grouped_by"] for r in rows} == {"group column", "DICOM Patient ID", "own file"}
    assert len(splits_of) < len(rows)
    for part in ("train", "validation", "test"):
        assert {r["class"] for r in rows if r["split"] == part} == set(CLASSES)


def test_the_split_keeps_groups_whole_and_follows_the_seed():
    from engine.making.train_data import TEST, TRAIN, VALIDATION, split_by_group

    rng = np.random.default_rng(5)
    keys = [f"p{int(k)}" for k in rng.integers(0, 40, size=200)]
    labels = rng.integers(0, 3, size=200)
    split = split_by_group(labels, keys, 3, (0.7, 0.15, 0.15), seed=1)
    for key in set(keys):
        assert len({int(split[i]) for i, k in enumerate(keys) if k == key}) == 1
    shares = np.bincount(split, minlength=3) / len(split)
    assert shares[TRAIN] > 0.55 and 0.08 < shares[VALIDATION] < 0.25 and 0.08 < shares[TEST] < 0.25
    assert np.array_equal(split, split_by_group(labels, keys, 3, (0.7, 0.15, 0.15), seed=1))
    assert not np.array_equal(split, split_by_group(labels, keys, 3, (0.7, 0.15, 0.15), seed=2))


# -- --resume continues exactly -------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    ["--augment", "rotate,flip,contrast", "--early-stop", "auc"],
    ["--optimizer", "sgd", "--schedule", "plateau", "--loss", "focal", "--early-stop", "loss", "--patience", "2"],
], ids=["adamw-cosine", "sgd-plateau-focal"])
def test_resume_after_an_interruption_gives_the_same_weights(phantom_set, tmp_path, capsys, extra):
    from engine.backends.architectures import read_safetensors

    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert main(train_args(phantom_set, whole, "--epochs", "3", *extra)) == 1  # 1: two images were refused
    assert main(train_args(phantom_set, halves, "--epochs", "3", "--stop-after", "1", *extra)) == 1
    assert not (halves / "model.safetensors").exists() and (halves / "training" / "checkpoint.safetensors").is_file()
    assert "stopped after epoch 1 (--stop-after); continue with --resume" in capsys.readouterr().err
    # A resumed run must be the same run: other options are refused, naming them.
    assert main(train_args(phantom_set, halves, "--epochs", "3", "--resume", "--lr", "0.5", *extra)) == 2
    assert "these options differ from the checkpoint's: lr" in capsys.readouterr().err
    assert main(train_args(phantom_set, halves, "--epochs", "3", "--resume", *extra)) == 1
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err
    a, b = read_safetensors(whole / "model.safetensors"), read_safetensors(halves / "model.safetensors")
    for key in a.keys() | b.keys():
        assert torch.equal(a[key], b[key]), key  # bit-identical, not merely close
    history = [json.loads((folder / "training" / "history.json").read_text()) for folder in (whole, halves)]
    assert [h["validation"] for h in history[0]] == [h["validation"] for h in history[1]]


# -- bad input stops early, naming the labels file's line --------------------------------------

@pytest.mark.parametrize("rows, extra, words", [
    (["img000.png,normal", "img002.png,pneumonia"], ["--classes", "normal,nodule,effusion"],
     "line 3: unknown class 'pneumonia'"),
    (["img000.png,normal", "missing.png,nodule"], [], "line 3: the image file 'missing.png' does not exist"),
    ([f"img{i:03d}.png,normal" for i in range(0, 12, 2)] + ["img012.png,nodule", "img014.png,nodule",
                                                             "img016.png,effusio", "img018.png,nodule"], [],
     "class 'effusio' has 1 image(s) (line 10): too few to split"),
], ids=["unknown-class", "missing-file", "too-few"])
def test_a_bad_labels_file_is_refused_with_its_line(phantom_set, tmp_path, capsys, rows, extra, words):
    labels = phantom_set / f"bad-{len(rows)}-{len(extra)}.csv"
    labels.write_text("file,class\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(train_args(phantom_set, out, "--labels", labels.name, *extra)) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"lantern-engine: {labels.name}: ") and words in message
    assert not out.exists()  # refused before anything was written


def test_too_many_refused_images_stop_training(phantom_set, tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    rows = ["file,class"]
    for i, name in enumerate(["normal"] * 4 + ["nodule"] * 4 + ["effusion"] * 4):
        source = phantom_set / f"img{2 * i:03d}.png"
        (folder / source.name).write_bytes(source.read_bytes() if i < 10 else b"damaged")
        rows.append(f"{source.name},{name}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(train_args(folder, tmp_path / "out")) == 2
    message = capsys.readouterr().err
    assert "refused line 12 (img020.png)" in message and "refused line 13 (img022.png)" in message
    assert "2 image(s) could not be read (listed above), and too few remain to split: 'effusion' 2" in message


# -- starting weights ------------------------------------------------------------------------------

def test_init_averages_rgb_into_one_channel_and_replaces_the_head(tmp_path):
    from safetensors.torch import save_file

    from engine.backends.architectures import build_model
    from engine.bundle import parse_manifest
    from engine.errors import LanternError
    from engine.making.train_options import TrainOptions
    from engine.making.train_weights import starting_model

    def bundle(channels, classes):
        options = TrainOptions(data=tmp_path, labels=Path("l.csv"), out=tmp_path / "b", arch="resnet18",
                               channels=channels, size=(SIZE, SIZE))
        return parse_manifest(options.manifest(classes), tmp_path / "b")

    torch.manual_seed(7)
    rgb = build_model(bundle(3, ("a", "b", "c", "d", "e"))).state_dict()  # someone else's five classes
    save_file({k: v.contiguous() for k, v in rgb.items()}, str(tmp_path / "rgb.safetensors"))
    model, record = starting_model(bundle(1, ("x", "y")), tmp_path / "rgb.safetensors", seed=0)
    state = model.state_dict()
    assert torch.allclose(state["conv1.weight"], rgb["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(state["layer4.0.conv2.weight"], rgb["layer4.0.conv2.weight"])
    assert state["fc.weight"].shape == (2, 64) and record["first_conv"].startswith("conv1.weight: the mean")
    # weights-only .pt loads; pickled code is refused; weights of another model are named.
    torch.save(rgb, tmp_path / "rgb.pt")
    assert torch.equal(starting_model(bundle(3, ("x", "y")), tmp_path / "rgb.pt", seed=0)[0].state_dict()
                       ["conv1.weight"], rgb["conv1.weight"])
    torch.save({"weights": rgb, "code": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(LanternError, match="only plain tensors are accepted"):
        starting_model(bundle(1, ("x", "y")), tmp_path / "pickled.pt", seed=0)
    save_file({"conv1.weight": rgb["conv1.weight"].contiguous()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(LanternError, match="these weights do not fit a resnet18 .* missing"):
        starting_model(bundle(1, ("x", "y")), tmp_path / "partial.safetensors", seed=0)


def test_benchmark_prints_training_images_per_second(capsys):
    assert main(["train", "--benchmark", "--arch", "resnet18", "--size", "32", "--batch", "4",
                 "--benchmark-steps", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images_per_second"] > 0 and "training images/s" in captured.err
