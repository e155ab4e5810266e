"""Scoring (fastunet.evaluate), the preview PNG and the demo, on the CPU with tiny models."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from fastunet import Normalization, ReferenceUNet, UNetConfig, save_model
from fastunet.cli import main
from fastunet.demo import run_demo
from fastunet.errors import UserError
from fastunet.evaluate import evaluate, evaluate_synthetic
from fastunet.figures import overlay_figure
from fastunet.metrics import instance_f1, score
from fastunet.modelfile import ModelBundle


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _blobs(rng, shape=(48, 64), n=6):
    """Instance labels of n random discs (may touch or overlap: the later disc wins)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def _tiny_model(path=None):
    net = ModelBundle(ReferenceUNet(UNetConfig(base_channels=4, depth=2)).eval(), Normalization(mode="percentile"))
    if path is not None:
        save_model(path, net)
    return net


def test_score_aggregates_slices_like_a_direct_count():
    rng = _rng()
    truths = [_blobs(rng) for _ in range(3)]
    preds = [ndi.binary_dilation(t > 0, iterations=int(rng.integers(0, 2))) ^ (rng.random(t.shape) < 0.02) for t in truths]
    result = score(preds, truths)
    inter = sum(int((p & (t > 0)).sum()) for p, t in zip(preds, truths))
    union = sum(int((p | (t > 0)).sum()) for p, t in zip(preds, truths))
    assert result.foreground_iou == pytest.approx(inter / union)
    per = [instance_f1(p, t) for p, t in zip(preds, truths)]
    tp, n_pred, n_true = (sum(getattr(s, k) for s in per) for k in ("tp", "n_pred", "n_true"))
    assert (result.tp, result.fp, result.fn) == (tp, n_pred - tp, n_true - tp)
    assert result.instance_f1 == pytest.approx(2 * tp / (n_pred + n_true))
    assert result.images == 3 and result.pixels == 3 * 48 * 64


def test_score_of_the_truth_itself_is_perfect_and_class_maps_count_as_foreground():
    truth = _blobs(_rng())
    truth[ndi.binary_dilation(truth > 0) & (truth == 0)] = 0
    separated, _ = ndi.label(truth > 0)
    perfect = score([np.where(separated > 0, 2, 0)], [separated])  # class 2 is foreground too
    assert perfect.foreground_iou == 1.0 and perfect.instance_f1 == 1.0 and perfect.fp == perfect.fn == 0
    with pytest.raises(ValueError, match="2D prediction and truth"):
        score([np.zeros((4, 4))], [np.zeros((4, 5), int)])


def test_evaluate_scores_what_the_engine_predicts(tmp_path):
    from fastunet.segmentation import segment

    net = _tiny_model()
    rng = _rng()
    truths = [_blobs(rng, (40, 52)) for _ in range(2)]
    images = [(t > 0) * 200.0 + rng.normal(0, 20, t.shape) for t in truths]
    result = evaluate(images, truths, net, device="cpu", preview=tmp_path / "p.png")
    preds = [np.asarray(segment(im, net, None, device="cpu", progress=False, output_kind="labels")) for im in images]
    cleaned = [np.asarray(segment(im, net, None, device="cpu", progress=False)) for im in images]
    assert dataclasses.replace(result, raw=None) == score(cleaned, truths)  # the objects segment writes
    assert result.raw == score(preds, truths).to_dict()  # the network's own, before the clean-up
    assert evaluate(images, truths, net, device="cpu", min_size=0, fill_holes=False) == score(preds, truths)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_synthetic_refuses_the_default_models_training_seeds():
    with pytest.raises(UserError, match="used to train the default model"):
        evaluate_synthetic(_tiny_model(), n_images=2, seed=10_001)


def test_cli_evaluate_synthetic_writes_json(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    _tiny_model(model)
    out = tmp_path / "scores.json"
    args = ["evaluate", "--synthetic", "1", "--style", "classic", "--model", str(model), "--device", "cpu",
            "--json", str(out)]
    assert main(args) == 0
    assert "foreground IoU" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["images"] == 1 and 0.0 <= data["foreground_iou"] <= 1.0
    assert main(["evaluate", "--model", str(model)]) == 2
    assert "IMAGES and LABELS" in capsys.readouterr().err


def test_overlay_figure_checks_shapes(tmp_path):
    truth = _blobs(_rng())
    path = overlay_figure(tmp_path / "o.png", truth.astype(np.float32), truth > 0, truth=truth, title="t")
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="2D image and prediction"):
        overlay_figure(tmp_path / "x.png", np.zeros((4, 4)), np.zeros((4, 5)))


def test_demo_writes_its_files_and_refuses_to_clobber(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    _tiny_model(model)
    folder = tmp_path / "demo"
    result = run_demo(folder, shape=(2, 64, 80), model=model, device="cpu", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["fastunet-demo.json", "labels.zarr", "preview.png",
                                                        "truth.zarr", "volume.zarr"]
    assert result.images == 2 and result.pixels == 2 * 64 * 80
    assert "scores against the truth" in capsys.readouterr().out
    with pytest.raises(UserError, match="overwrite=True"):
        run_demo(folder, shape=(2, 64, 80), model=model, device="cpu", progress=False)
    run_demo(folder, shape=(1, 40, 40), model=model, device="cpu", progress=False, overwrite=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        run_demo(folder, shape=(1, 40, 40), model=model, device="cpu", progress=False, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    assert main(["demo", "-o", str(tmp_path / "d2"), "--shape", "2,x", "--model", str(model)]) == 2


def test_cli_evaluate_synthetic_reports_every_style_in_a_table(tmp_path, capsys):
    """By default every style, training and held-out, one row each; the JSON holds them by name."""
    from fastunet.synthetic_styles import STYLES, style_image

    model = tmp_path / "m.safetensors"
    _tiny_model(model)
    out = tmp_path / "scores.json"
    args = ["evaluate", "--synthetic", "1", "--model", str(model), "--device", "cpu", "--json", str(out)]
    assert main([*args[:3], "--style", "lowlight,huge", *args[3:]]) == 0
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines()[2:4]]
    assert [r[:2] for r in rows] == [["lowlight", "yes"], ["huge", "yes"]]
    data = json.loads(out.read_text())["styles"]
    assert sorted(data) == ["huge", "lowlight"] and data["huge"]["images"] == 1
    truth = style_image("huge", seed=2026).labels
    assert data["huge"]["tp"] + data["huge"]["fn"] == len(np.unique(truth)) - 1
    assert set(STYLES) > {"lowlight", "huge"} and any(s.held_out for s in STYLES.values())
    assert main([*args, "--style", "nope", "--overwrite"]) == 2
    assert "Unknown style nope" in capsys.readouterr().err


def test_evaluate_synthetic_classic_is_the_old_image_set():
    """style="classic" scores exactly the images evaluate --synthetic used before styles existed."""
    from fastunet.synthetic import synthetic_nuclei

    net = _tiny_model()
    old = [synthetic_nuclei((96, 96), seed=s, dtype="uint16") for s in (2026, 2027)]
    assert evaluate_synthetic(net, n_images=2, shape=(96, 96), device="cpu") == evaluate(
        [p[0] for p in old], [p[1] for p in old], net, device="cpu")
