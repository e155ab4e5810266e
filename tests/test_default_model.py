"""The model bundled with fastunet: present, small, rebuilt by the recorded recipe, good."""

import numpy as np
import tifffile
import zarr

from fastunet import read_model
from fastunet.cli import main
from fastunet.default_model import TRAIN_ARGS
from fastunet.evaluate import evaluate_synthetic
from fastunet.modelfile import default_model_path
from fastunet.synthetic import synthetic_nuclei


def test_bundled_model_is_small_and_records_how_it_was_trained():
    path = default_model_path()
    assert path.stat().st_size <= 10 * 1024**2
    model = read_model(path)
    assert (model.config.base_channels, model.config.depth, model.config.num_classes) == (16, 3, 2)
    assert model.normalization.mode == "percentile"
    config = model.extra["training_config"]
    for flag, value in zip(TRAIN_ARGS[::2], TRAIN_ARGS[1::2]):  # the recipe in default_model.py
        if flag == "--zoom":
            assert ",".join(f"{v:g}" for v in config["augment"]["scale"]) == value
            continue
        recorded = config[flag[2:].replace("-", "_")]
        assert str(recorded) == value or float(recorded) == float(value), (flag, recorded, value)
    assert model.extra["trained_with"].startswith("fastunet train ")


def test_segment_without_model_uses_the_bundled_one(tmp_path, capsys):
    image, _ = synthetic_nuclei((96, 120), seed=7, dtype="uint16")
    tifffile.imwrite(tmp_path / "img.tif", image)
    assert main(["segment", str(tmp_path / "img.tif"), "-o", str(tmp_path / "out.zarr"), "--device", "cpu",
                 "--kind", "labels"]) == 0
    labels = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels"][:]
    assert labels.shape == (96, 120) and set(np.unique(labels)) <= {0, 1}


def test_bundled_model_segments_fresh_synthetic_nuclei():
    """The promise: foreground IoU and instance F1 >= 0.9 on fresh synthetic images of the
    classic style. Two 256 x 256 images keep it fast (measured: IoU 0.917, F1 0.992); the full
    measurement is `fastunet evaluate --synthetic 16` (README: classic IoU 0.914, F1 0.992)."""
    result = evaluate_synthetic(n_images=2, shape=(256, 256), device="cpu")
    assert result.foreground_iou >= 0.9, result
    assert result.instance_f1 >= 0.9, result


def test_recipe_is_what_the_bundled_model_recorded():
    """recipe_config / recipe_command rebuild the recorded config and command line exactly."""
    import shlex

    from fastunet.default_model import recipe_command, recipe_config

    extra = read_model(default_model_path()).extra
    assert recipe_config().to_dict() == extra["training_config"]
    words = shlex.split(extra["trained_with"])
    figure = words[words.index("--weight-figure") + 1]
    command = recipe_command(words[2], words[3], words[5], weight_figure=figure, quiet="--quiet" in words)
    assert command == extra["trained_with"]


def test_build_trains_the_recipe_without_the_cli(tmp_path, monkeypatch, capsys):
    """build() calls fastunet.train.train with the recipe and records the command line that
    `fastunet train` would record for the same run."""
    from pathlib import Path

    import pytest

    import fastunet.cli
    import fastunet.train
    from fastunet import default_model
    from fastunet.cli import build_parser
    from fastunet.cli.train import train_command as _train_command

    calls = []

    def fake_train(images, labels, output, **kwargs):
        calls.append((images, labels, output, kwargs))
        Path(output).write_bytes(b"model")
        return fastunet.train.TrainResult(
            model=None, output=Path(output), checkpoint=Path(output).with_suffix(".checkpoint"), curve=None, steps=0,
            history={"loss": [], "val": []}, val=None, seconds=0.0, tiles_per_second=0.0, notes=["a note"],
        )  # fmt: skip

    monkeypatch.setattr(fastunet.train, "train", fake_train)
    monkeypatch.setattr(fastunet.cli, "main", lambda *a, **k: pytest.fail("build() must not go through the CLI"))
    monkeypatch.setattr(default_model, "TRAIN_SEEDS", range(10_000, 10_002))
    calibrated = []
    monkeypatch.setattr(default_model, "calibrate", lambda path: calibrated.append(path) or {"shift": 0.4})
    work = tmp_path / "work"
    assert default_model.build(work, tmp_path / "copy.safetensors", quiet=True) == 0
    assert calibrated == [tmp_path / "copy.safetensors"]  # the build's last step: the threshold
    ((images, labels, output, kwargs),) = calls
    assert sorted(p.name for p in images.iterdir()) == ["nuclei_10000.tif", "nuclei_10001.tif"]
    assert kwargs["config"] == default_model.recipe_config() and kwargs["progress"] is False
    argv = ["train", str(images), str(labels), "-o", str(output), *TRAIN_ARGS, "--overwrite",
            "--weight-figure", str(work / "weights.png"), "--quiet"]  # fmt: skip
    assert kwargs["command"] == _train_command(build_parser().parse_args(argv))
    assert (tmp_path / "copy.safetensors").read_bytes() == b"model"
    assert "note: a note" in capsys.readouterr().err


def test_a_model_card_is_kept_in_the_model_file_and_shown_by_info(tmp_path, capsys):
    """default_model card: the scores of a benchmarks/model_card.py result go into the model's
    metadata (weights untouched); fastunet info prints the card."""
    import json

    import torch

    from fastunet import ReferenceUNet, UNetConfig, save_model
    from fastunet.default_model import NOT_FOR, write_card

    net = ReferenceUNet(UNetConfig(base_channels=2, depth=2))
    path = save_model(tmp_path / "m.safetensors", net, extra={"object_size": 20.0})
    scores = {"foreground_iou": 0.9, "instance_f1": 0.91, "precision": 0.92, "recall": 0.9, "tp": 90, "fp": 8,
              "fn": 10, "specks": 1}
    raw = {**scores, "instance_f1": 0.8, "specks": 30}
    results = {"date": "2026-12-06T00:00:00", "images": 16, "seed": 2026,
               "styles": {"classic": {"held_out": False, "nuclei": 100, "new": {"on": scores, "off": raw}},
                          "tiny": {"held_out": True, "nuclei": 100, "new": {"on": scores, "off": raw}}}}
    (tmp_path / "model-card-x.json").write_text(json.dumps(results))
    write_card(tmp_path / "model-card-x.json", path)
    again = read_model(path)
    assert again.extra["object_size"] == 20.0 and again.extra["card"]["results_file"] == "model-card-x.json"
    for a, b in zip(again.module.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model card" in out and NOT_FOR[0][:40] in out and "16 fresh 512 x 512 images per style" in out
    row = next(line for line in out.splitlines() if "tiny" in line)
    assert "held out" in row and "0.910" in row and "1.0%" in row and "0.800" in row and "30.6%" in row


def test_the_size_estimate_is_right_or_says_it_is_unsure():
    """object_size="auto" with the bundled model, on a few styles and degraded copies: within
    25 % of the true median diameter, or unsure (with a reason). The full measurement, every
    style and degradation: benchmarks/model_card.py sizes (README, "The default model")."""
    from fastunet.segmentation import Segmenter
    from fastunet.synthetic_styles import degrade, style_image

    cases = [("classic", "none"), ("classic", "noisy"), ("debris", "cluttered"), ("large", "uneven"),
             ("small", "8bit"), ("lowlight", "none")]
    sure = 0
    with Segmenter(device="cpu") as seg:
        for style, how in cases:
            drawn = degrade(style_image(style, (320, 320), seed=2026), how, seed=2026)
            measure = seg.estimate_object_size(drawn.image)
            if measure.size is None:
                assert measure.reason, (style, how)
                continue
            sure += 1
            assert abs(measure.size / drawn.object_size - 1) <= 0.25, (style, how, measure, drawn.object_size)
    assert sure >= 3


def test_detectability_measures_a_known_contrast_and_the_cards_match():
    """benchmarks/detectability.py: a disc of known contrast on noise of known sigma gets the
    integrated CNR of contrast / sigma * sqrt(area); a nucleus counts as found at IoU > 0.5."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("detectability", Path(__file__).parents[1] / "benchmarks" /
                                                  "detectability.py")
    det = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(det)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:160, :160]
    labels = np.zeros((160, 160), np.int32)
    labels[(yy - 50) ** 2 + (xx - 50) ** 2 < 12 ** 2] = 1
    labels[(yy - 110) ** 2 + (xx - 110) ** 2 < 12 ** 2] = 2
    image = 100.0 + rng.normal(0.0, 4.0, labels.shape) + np.where(labels == 1, 8.0, 0.0) + np.where(labels == 2, 4.0, 0.0)
    cnr = det.nucleus_cnr(image, labels)
    area = np.bincount(labels.ravel())[1:]
    want = np.array([8.0, 4.0]) / 4.0 * np.sqrt(area)
    assert np.allclose(cnr, want, rtol=0.2), (cnr, want)
    pred = np.zeros_like(labels)
    pred[labels == 1] = 7  # the first found whole; the second only a quarter of it
    pred[(labels == 2) & (yy < 104) & (xx < 104)] = 3
    assert det.found(pred, labels).tolist() == [True, False]


def test_a_logit_shift_is_a_foreground_threshold_and_calibrate_keeps_the_best(tmp_path, monkeypatch, capsys):
    """default_model.shifted: the argmax of the shifted network is the original's foreground
    probability >= 1 / (1 + exp(shift)). calibrate: the shift of the best mean F1 over the
    styles (scored here by a stand-in), recorded in the file with its table, the old card
    dropped; calibrating again starts from the weights as trained."""
    import torch

    from fastunet import ReferenceUNet, UNetConfig, save_model
    from fastunet import default_model as dm
    from fastunet.modelfile import read_model as read

    torch.manual_seed(0)
    net = ReferenceUNet(UNetConfig(in_channels=1, num_classes=2, base_channels=4, depth=2))
    path = save_model(tmp_path / "m.safetensors", net, extra={"card": {"old": 1}, "object_size": 19.0})
    bundle = read(path)
    x = torch.randn(1, 1, 60, 60)
    with torch.no_grad():
        p = torch.softmax(bundle.module(x), 1)[:, 1]
        for shift in (0.4, -0.7):
            labels = dm.shifted(bundle, shift).module(x).argmax(1)
            assert torch.equal(labels == 1, p >= 1 / (1 + np.exp(shift)))
    assert torch.equal(read(path).module.head.bias, bundle.module.head.bias)  # the original is untouched

    best = {"a": 0.4, "b": 0.2}

    class Scores:
        def __init__(self, f1):
            self.instance_f1 = f1

    sure = {"a": 0.7, "b": 0.7}  # the min_confidence each style scores best with

    def fake(model, *, style, n_images, seed, min_confidence):
        bias = float(read(model).module.head.bias[1] - net.head.bias[1])
        assert seed == 70_000 and n_images == 8
        return Scores(1.0 - abs(bias - best[style]) - (0.0 if min_confidence == sure[style] else 0.05))

    monkeypatch.setattr("fastunet.evaluate.evaluate_synthetic", fake)
    chosen = dm.calibrate(path, styles=("a", "b"))
    assert chosen["shift"] == 0.2 and chosen["mean_f1"]["0.2"] == 0.85  # 0.2 and 0.4 tie at 0.85: the smaller
    # then the confidence, at that shift: 0.7 is the best of both styles
    assert chosen["min_confidence"] == 0.7 and chosen["min_confidence_mean_f1"] == {
        "0.0": 0.85, "0.6": 0.85, "0.65": 0.85, "0.7": 0.9, "0.75": 0.85, "0.8": 0.85}
    calibrated = read(path)
    assert "card" not in calibrated.extra and calibrated.extra["object_size"] == 19.0
    assert calibrated.extra["calibration"]["shift"] == 0.2
    from fastunet.objectsize import model_min_confidence

    assert model_min_confidence(calibrated.extra) == 0.7  # what segment's min_confidence="auto" takes
    sure.update(a=0.6, b=0.6)
    kept = dm.calibrate(path, styles=("a", "b"), keep_shift=True)  # the shift as recorded, only the confidence
    assert kept["shift"] == 0.2 and kept["f1"] == chosen["f1"] and kept["min_confidence"] == 0.6
    assert torch.allclose(calibrated.module.head.bias[1], net.head.bias[1] + 0.2)
    best.update(a=0.6, b=0.6)
    assert dm.calibrate(path, styles=("a", "b"))["shift"] == 0.6
    assert torch.allclose(read(path).module.head.bias[1], net.head.bias[1] + 0.6)  # from the trained weights
    assert main(["info", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("calibration"))
    assert "foreground logit +0.60 (foreground from a probability of 0.35)" in line and "+0.6: 0.9500" in line
    assert "objects kept from a mean object probability of 0.60" in line and "0.60: 1.0000" in line
