import json

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage as ndi

from fastunet import geometry, load_model, read_model, read_model_metadata
from fastunet.cli import main
from fastunet.errors import UserError
from fastunet.normalization import Normalization
from fastunet.synthetic import synthetic_nuclei, synthetic_volume
from fastunet.train import (
    AugmentConfig,
    TrainConfig,
    checkpoint_path,
    load_checkpoint,
    load_pairs,
    train,
)
from fastunet.train.datasets import normalized_slices

PNG = b"\x89PNG\r\n\x1a\n"


def _seed() -> int:
    return int(torch.initial_seed() % 2**31)


def _tiny(**changes) -> TrainConfig:
    """A tiny network (base 4, depth 2, 92 -> 52 tiles) that trains in milliseconds per step."""
    options = dict(base_channels=4, depth=2, tile=92, optimizer="adam", lr=3e-3, val_every=10, checkpoint_every=10)
    options.update(changes)
    return TrainConfig(**options)


def test_tiny_training_run_reduces_the_loss(tmp_path):
    image, labels = synthetic_nuclei((160, 160), seed=_seed())
    # Four tiles per step: the per-tile loss varies with the tile's content, a batch evens it out.
    config = _tiny(
        base_channels=8, batch_size=4, iterations=60, val_fraction=0.0, seed=_seed(), augment=AugmentConfig.none()
    )
    result = train(image, labels, tmp_path / "m.safetensors", config=config, progress=False)
    loss = np.asarray(result.history["loss"])
    assert len(loss) == result.steps == 60 and np.isfinite(loss).all()
    first, last = loss[:10].mean(), loss[-10:].mean()
    assert last < 0.75 * first, f"loss went from {first:.3f} to only {last:.3f}"
    bundle = read_model(tmp_path / "m.safetensors")
    model = bundle.module
    assert model.config == config.unet_config()
    assert bundle.normalization == config.normalization
    assert bundle.extra["training_steps"] == 60
    assert bundle.extra["training_config"] == config.to_dict()
    assert (tmp_path / "m.curve.png").read_bytes()[:8] == PNG
    # The saved weights are the trained ones.
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_resume_continues_exactly(tmp_path):
    """2N steps in one run equal N steps, a resume, and N more (CPU, deterministic)."""
    images = [synthetic_nuclei((120, 120), seed=_seed() + k)[0] for k in range(3)]
    labels = [synthetic_nuclei((120, 120), seed=_seed() + k)[1] for k in range(3)]
    for optimizer in ("sgd", "adam"):
        lr = 1e-3 if optimizer == "sgd" else 3e-3
        full = _tiny(iterations=8, val_every=4, checkpoint_every=4, seed=_seed(), optimizer=optimizer, lr=lr)
        a = train(images, labels, tmp_path / f"a_{optimizer}.safetensors", config=full, progress=False)
        half = TrainConfig(**{**full.__dict__, "iterations": 4})
        out = tmp_path / f"b_{optimizer}.safetensors"
        train(images, labels, out, config=half, progress=False)
        saved = load_checkpoint(checkpoint_path(out))
        assert saved["step"] == 4 and len(saved["history"]["loss"]) == 4
        assert saved["optimizer"]["state"], "the optimizer state (momentum / moments) is in the checkpoint"
        b = train(images, labels, out, config=full, resume=True, progress=False)
        assert b.steps == 8 and any("resumed" in n for n in b.notes)
        assert b.history["loss"] == a.history["loss"]
        assert b.history["val"] == a.history["val"]
        for key, value in a.model.state_dict().items():
            torch.testing.assert_close(b.model.state_dict()[key], value, rtol=0, atol=0)
        final = load_checkpoint(checkpoint_path(out))
        ref = load_checkpoint(checkpoint_path(tmp_path / f"a_{optimizer}.safetensors"))
        for index, state in ref["optimizer"]["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(final["optimizer"]["state"][index][key], value, rtol=0, atol=0)


def test_interrupt_writes_a_checkpoint_to_resume_from(tmp_path, monkeypatch):
    from fastunet.train import loop

    image, labels = synthetic_nuclei((120, 120), seed=_seed())
    calls = []
    real_loss = loop.weighted_cross_entropy

    def interrupted_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "weighted_cross_entropy", interrupted_loss)
    out = tmp_path / "m.safetensors"
    config = _tiny(iterations=6, checkpoint_every=100, val_fraction=0.0)
    with pytest.raises(KeyboardInterrupt):
        train(image, labels, out, config=config, progress=False)
    assert load_checkpoint(checkpoint_path(out))["step"] == 3 and not out.exists()
    monkeypatch.setattr(loop, "weighted_cross_entropy", real_loss)
    result = train(image, labels, out, config=config, resume=True, progress=False)
    assert result.steps == 6 and len(result.history["loss"]) == 6


def test_resume_refuses_other_settings_or_missing_checkpoint(tmp_path):
    image, labels = synthetic_nuclei((120, 120), seed=_seed())
    out = tmp_path / "m.safetensors"
    with pytest.raises(UserError, match="No checkpoint"):
        train(image, labels, out, config=_tiny(iterations=2), resume=True, progress=False)
    train(image, labels, out, config=_tiny(iterations=2), progress=False)
    with pytest.raises(UserError, match="other settings.*lr"):
        train(image, labels, out, config=_tiny(iterations=4, lr=1e-2), resume=True, progress=False)
    with pytest.raises(UserError, match="other training data"):
        train(image[:100], labels[:100], out, config=_tiny(iterations=4), resume=True, progress=False)
    # Longer training with the same settings is fine; the curve PNG covers all steps.
    result = train(image, labels, out, config=_tiny(iterations=4), resume=True, progress=False)
    assert result.steps == 4 and len(result.history["loss"]) == 4


def test_validation_scores_the_held_out_rows_as_inference_does(tmp_path):
    image, labels = synthetic_nuclei((120, 100), seed=_seed())
    config = _tiny(iterations=3, val_fraction=0.25, val_every=3, seed=_seed())
    result = train(image, labels, tmp_path / "m.safetensors", config=config, progress=False)
    assert [v["step"] for v in result.history["val"]] == [3]
    assert any("bottom 30 of 120 rows" in n for n in result.notes)
    # The saved model, run by the inference engine on the bottom 30 rows, gives the same scores.
    from fastunet.metrics import foreground_iou, instance_f1
    from fastunet.segmentation import segment

    model = load_model(tmp_path / "m.safetensors")
    pred = np.asarray(segment(image[90:], model, None, tile=92, device="cpu", progress=False,
                              output_kind="labels")) == 1
    assert result.val["foreground_iou"] == pytest.approx(foreground_iou(pred, labels[90:] > 0), abs=1e-12)
    assert result.val["instance_f1"] == pytest.approx(instance_f1(pred, labels[90:]).f1, abs=1e-12)


def test_load_pairs_folders_semantic_stacks_and_zarr(tmp_path):
    seed = _seed()
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    data = [synthetic_nuclei((64, 80), seed=seed + k, n_objects=15, dtype="uint16") for k in range(2)]
    for k, (image, labels) in enumerate(data):
        tifffile.imwrite(tmp_path / "img" / f"cell{k}.tif", image)
        tifffile.imwrite(tmp_path / "lab" / f"cell{k}_labels.tif", labels.astype(np.uint16))
    pairs = load_pairs(tmp_path / "img", tmp_path / "lab")
    assert [p.name for p in pairs] == ["cell0.tif", "cell1.tif"]
    for pair, (image, labels) in zip(pairs, data):
        np.testing.assert_array_equal(pair.image, image)
        np.testing.assert_array_equal(pair.labels, labels)
        assert pair.labels.dtype == np.int32 and not pair.semantic

    # 0/1 labels: connected components become the instances.
    mask = data[0][1] > 0
    (pair,) = load_pairs(data[0][0], mask.astype(np.uint8))
    assert pair.semantic
    np.testing.assert_array_equal(pair.labels, ndi.label(mask)[0])

    # A zarr group of stacks; stacks are sets of slices normalized over the whole volume.
    volume, vlabels = synthetic_volume((3, 48, 56), seed=seed, n_objects=12)  # the default density may draw none
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    root.create_array("a", data=volume)
    lroot = zarr.open_group(str(tmp_path / "l.zarr"), mode="w")
    lroot.create_array("a", data=vlabels)
    (pair,) = load_pairs(tmp_path / "v.zarr", tmp_path / "l.zarr")
    np.testing.assert_array_equal(pair.image, volume)
    slices = normalized_slices(pair, Normalization())
    lo, hi = np.percentile(volume, [1.0, 99.8])
    assert len(slices) == 3
    np.testing.assert_allclose(slices[1][1][0], (volume[1] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    per_slice = normalized_slices(pair, Normalization(scope="slice"))
    lo, hi = np.percentile(volume[2], [1.0, 99.8])
    np.testing.assert_allclose(per_slice[2][1][0], (volume[2] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_load_pairs_tiff_stack_axes(tmp_path):
    # n_objects: a 40 x 48 crop of the default density may hold no object at all.
    volume, vlabels = synthetic_volume((3, 40, 48), seed=_seed(), dtype="uint16", n_objects=12)
    # Three planes stored as RGB samples (as older tifffile versions do by default).
    tifffile.imwrite(tmp_path / "v.tif", volume, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "l.tif", vlabels.astype(np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match='3 channels.*axes="ZYX"'):
        load_pairs(tmp_path / "v.tif", tmp_path / "l.tif")
    (pair,) = load_pairs(tmp_path / "v.tif", tmp_path / "l.tif", axes="ZYX")
    np.testing.assert_array_equal(pair.image, volume)
    np.testing.assert_array_equal(pair.labels, vlabels)
    volume5, labels5 = synthetic_volume((5, 40, 48), seed=_seed(), dtype="uint16", n_objects=12)
    tifffile.imwrite(tmp_path / "v5.tif", volume5)  # 5 pages: a plain stack, Z
    tifffile.imwrite(tmp_path / "l5.tif", labels5.astype(np.uint16))
    (pair,) = load_pairs(tmp_path / "v5.tif", tmp_path / "l5.tif")
    assert pair.image.shape == (5, 40, 48)


def test_load_pairs_errors(tmp_path):
    image, labels = synthetic_nuclei((40, 40), seed=_seed())
    with pytest.raises(UserError, match="does not exist"):
        load_pairs(tmp_path / "nope.tif", labels)
    with pytest.raises(UserError, match="must match pixel for pixel"):
        load_pairs(image, labels[:30])
    with pytest.raises(UserError, match="no objects"):
        load_pairs(image, np.zeros_like(labels))
    with pytest.raises(UserError, match="2 image.*1 label"):
        load_pairs([image, image], [labels])
    with pytest.raises(UserError, match="integers"):
        load_pairs(image, labels + 0.5)
    with pytest.raises(UserError, match="RGB"):
        load_pairs(np.zeros((40, 40, 3)), labels)
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / "i" / name, image)
    for name in ("a.tif", "x.tif"):
        tifffile.imwrite(tmp_path / "l" / name, labels)
    with pytest.raises(UserError, match="names differ"):
        load_pairs(tmp_path / "i", tmp_path / "l")


def test_train_config_validation():
    with pytest.raises(ValueError, match="Nearest valid: 188, 204"):
        TrainConfig(depth=4, tile=190)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    config = TrainConfig(augment=AugmentConfig(rotation=(-10, 10)), normalization=Normalization(scope="slice"))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig().learning_rate > 0 and TrainConfig().out_tile == geometry.output_size(316, 3)


def test_cli_trains_from_tiff_files(tmp_path, capsys):
    image, labels = synthetic_nuclei((140, 150), seed=_seed(), dtype="uint16")
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint16))
    out = tmp_path / "model.safetensors"
    args = [
        "train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(out),
        "--iterations", "4", "--tile", "92", "--base-channels", "4", "--depth", "2", "--optimizer", "adam",
        "--lr", "1e-3", "--val-fraction", "0.25", "--val-every", "2", "--quiet", "--seed", "3",
        "--curve", str(tmp_path / "curve.png"), "--weight-figure", str(tmp_path / "weights.png"),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "trained 4 steps" in printed.out and "foreground_iou" in printed.out
    assert "held out" in printed.err
    model = load_model(out)
    assert model.config.base_channels == 4 and model.config.depth == 2
    config, normalization, extra = read_model_metadata(out)
    assert normalization == Normalization()
    assert extra["trained_with"].startswith("fastunet train ") and "--iterations 4" in extra["trained_with"]
    assert 0.0 <= extra["val_metrics"]["foreground_iou"] <= 1.0
    assert (tmp_path / "curve.png").read_bytes()[:8] == PNG
    assert (tmp_path / "weights.png").read_bytes()[:8] == PNG
    assert checkpoint_path(out).is_file()

    # Existing output: refused without --overwrite; resumed with --resume.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args[:5], "--iterations", "6", *args[7:], "--resume"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("shape", "must match pixel for pixel"),
        ("empty", "no objects"),
        ("tile", "Nearest valid: 188, 204"),
        ("resume", "No checkpoint"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, case, message):
    image, labels = synthetic_nuclei((64, 64), seed=_seed())
    if case == "shape":
        labels = labels[:50]
    if case == "empty":
        labels = np.zeros_like(labels)
    tifffile.imwrite(tmp_path / "i.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    images = str(tmp_path / ("none.tif" if case == "missing" else "i.tif"))
    args = ["train", images, str(tmp_path / "l.tif"), "-o", str(tmp_path / "m.safetensors"), "--quiet"]
    args += {"tile": ["--tile", "190", "--depth", "4"], "resume": ["--resume"]}.get(case, [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_validation_does_not_shift_the_training_random_streams(tmp_path):
    """Validating every 2 steps or only at the end gives the same losses: validation draws
    nothing from the RNG that drives dropout (nor from the tile generator)."""
    image, labels = synthetic_nuclei((120, 120), seed=_seed())
    runs = [
        train(image, labels, tmp_path / f"v{every}.safetensors", progress=False,
              config=_tiny(iterations=5, val_fraction=0.25, val_every=every, seed=_seed()))
        for every in (2, 1000)
    ]  # fmt: skip
    often, once = runs
    assert [v["step"] for v in often.history["val"]] == [2, 4, 5]
    assert [v["step"] for v in once.history["val"]] == [5]
    assert often.history["loss"] == once.history["loss"]
    assert often.history["val"][-1] == once.history["val"][-1]
    for key, value in once.model.state_dict().items():
        torch.testing.assert_close(often.model.state_dict()[key], value, rtol=0, atol=0)


def test_model_and_checkpoint_files_get_the_mode_of_a_new_file(tmp_path):
    """safetensors creates -rw-------; the files get 0o666 & ~umask like any new file."""
    import os
    import stat

    from fastunet import ReferenceUNet, UNetConfig, save_model

    image, labels = synthetic_nuclei((100, 100), seed=_seed())
    previous = os.umask(0o027)
    try:
        out = train(image, labels, tmp_path / "m.safetensors", config=_tiny(iterations=2, val_fraction=0.0),
                    progress=False).output
        saved = save_model(tmp_path / "s.safetensors", ReferenceUNet(UNetConfig(base_channels=4, depth=2)))
    finally:
        os.umask(previous)
    for path in (out, checkpoint_path(out), saved):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o027 == 0o640, path
    assert not list(tmp_path.glob("*.tmp"))


def test_output_must_be_a_safetensors_name(tmp_path, capsys):
    image, labels = synthetic_nuclei((64, 64), seed=_seed())
    with pytest.raises(UserError, match=r"\.safetensors name, e\.g\. '.*mymodel\.safetensors'"):
        train(image, labels, tmp_path / "mymodel.pt", config=_tiny(iterations=1), progress=False)
    tifffile.imwrite(tmp_path / "i.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    for name in ("mymodel.pt", "mymodel"):
        args = ["train", str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "-o", str(tmp_path / name), "--quiet"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "mymodel.safetensors" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.tif", "l.tif"]  # nothing written


def test_curve_draws_the_running_mean_only_when_it_averages(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fastunet.figures import write_curve

    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), savefig(self, *a, **k))[1])
    for steps, labels in ((5, ["loss"]), (39, ["loss"]), (40, ["loss", "loss (mean of 2)"]),
                          (3000, ["loss", "loss (mean of 100)"])):  # fmt: skip
        path = write_curve(tmp_path / f"c{steps}.png", {"loss": list(np.linspace(1.0, 0.1, steps)), "val": []})
        assert path.read_bytes()[:8] == PNG
        assert [line.get_label() for line in figures[-1].axes[0].get_lines()] == labels, steps


@pytest.mark.gpu
def test_adam_bf16_steps_on_cuda_use_the_fused_loss_and_gpu_augmentation(tmp_path, monkeypatch):
    """A few Adam steps with bf16 autocast on CUDA: finite losses; every step's loss went
    through the fused Triton kernel (bf16 logits, uint8 targets: no count pass) and its
    tiles were augmented on the GPU."""
    from fastunet.kernels import loss as lossk
    from fastunet.train import loop

    kernel_calls, count_calls, batches = [], [], []
    real_kernel, real_count, real_augment = lossk.weighted_softmax_ce, lossk._inverse_count, loop.augment_batch

    def kernel(logits, target, weight, **kwargs):
        kernel_calls.append((logits.dtype, target.dtype, target.device.type))
        return real_kernel(logits, target, weight, **kwargs)

    def augment(*args, **kwargs):
        out = real_augment(*args, **kwargs)
        batches.append(tuple((t.device.type, t.dtype) for t in out))
        return out

    # weighted_cross_entropy imports the kernel from its module at each call: patch it there.
    monkeypatch.setattr(lossk, "weighted_softmax_ce", kernel)
    monkeypatch.setattr(lossk, "_inverse_count", lambda *a: (count_calls.append(1), real_count(*a))[1])
    monkeypatch.setattr(loop, "augment_batch", augment)
    image, labels = synthetic_nuclei((160, 160), seed=_seed())
    config = _tiny(iterations=4, batch_size=2, amp="bf16", device="cuda", val_fraction=0.25, val_every=2,
                   seed=_seed())
    result = train(image, labels, tmp_path / "m.safetensors", config=config, progress=False)
    assert result.steps == 4 and len(result.history["loss"]) == 4
    assert np.isfinite(result.history["loss"]).all()
    assert kernel_calls == [(torch.bfloat16, torch.uint8, "cuda")] * 4
    assert not count_calls  # uint8 targets cannot hold ignore_index -100
    assert batches == [(("cuda", torch.float32), ("cuda", torch.uint8), ("cuda", torch.float32))] * 4
    assert next(result.model.parameters()).device.type == "cuda"
    assert [v["step"] for v in result.history["val"]] == [2, 4]
    assert 0.0 <= result.val["foreground_iou"] <= 1.0


def test_bf16_autocast_trains_on_a_cpu_with_bf16_units_and_is_refused_on_one_without(tmp_path, monkeypatch):
    """amp="bf16" on the CPU: the forward runs under bf16 autocast in channels-last (the loss
    sees bf16 logits), the weights stay fp32, the loss falls; a CPU without bf16 units is
    refused with one line before any work. The capability is set both ways, so the test
    does not depend on the machine."""
    from fastunet.train import loop

    image, labels = synthetic_nuclei((160, 160), seed=_seed())
    config = _tiny(base_channels=8, batch_size=4, iterations=40, val_fraction=0.0, seed=_seed(), amp="bf16",
                   device="cpu", augment=AugmentConfig.none())
    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: None)
    with pytest.raises(UserError, match="needs bf16 matrix units .* train with amp='none'"):
        train(image, labels, tmp_path / "refused.safetensors", config=config, progress=False)
    assert not list(tmp_path.iterdir())  # refused before anything was written

    seen = []
    real_loss = loop.weighted_cross_entropy

    def loss(logits, target, weight):
        seen.append((logits.dtype, logits.is_contiguous(memory_format=torch.channels_last)))
        return real_loss(logits, target, weight)

    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: "AVX512-BF16")
    monkeypatch.setattr(loop, "weighted_cross_entropy", loss)
    result = train(image, labels, tmp_path / "m.safetensors", config=config, progress=False)
    assert seen == [(torch.bfloat16, True)] * 40
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    history = np.asarray(result.history["loss"])
    assert np.isfinite(history).all() and history[-10:].mean() < 0.75 * history[:10].mean()
    assert read_model(tmp_path / "m.safetensors").extra["training_config"]["amp"] == "bf16"


def test_cosine_schedule_depends_on_the_step_only():
    config = TrainConfig(lr=1e-3, lr_period=100)
    assert config.lr_at(0) == pytest.approx(1e-3) and config.lr_at(100) == pytest.approx(1e-3)  # warm restart
    assert config.lr_at(50) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert config.lr_at(99) == pytest.approx(1e-3 * 0.01, rel=0.03)
    assert all(config.lr_at(s) > config.lr_at(s + 1) for s in range(99))
    assert TrainConfig(lr=1e-3, lr_schedule="constant").lr_at(57) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_the_model_file_keeps_the_best_validation_even_across_a_resume(tmp_path, monkeypatch):
    """Validation scores 0.5, 0.9, 0.3, 0.2 at steps 1-4: the file holds step 2's weights, also
    when the run stops after step 3 and resumes; TrainResult.model is the last step's network."""
    from fastunet.train import loop

    image, labels = synthetic_nuclei((100, 100), seed=_seed())
    merit = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.2}
    calls = []

    def fake_validate(model, val, config, device):  # the k-th validation of a run scores merit[step k]
        calls.append(1)
        return {"foreground_iou": 0.0, "instance_f1": merit[len(calls)]}

    monkeypatch.setattr(loop, "_validate", fake_validate)
    config = _tiny(iterations=4, val_every=1, val_fraction=0.25, seed=_seed())
    two = train(image, labels, tmp_path / "two.safetensors", config=TrainConfig(**{**config.__dict__, "iterations": 2}),
                progress=False)
    calls.clear()
    full = train(image, labels, tmp_path / "full.safetensors", config=config, progress=False)
    assert full.best_step == 2 and full.val["instance_f1"] == 0.9
    saved = read_model(tmp_path / "full.safetensors")
    assert saved.extra["best_step"] == 2 and saved.extra["val_metrics"]["instance_f1"] == 0.9
    for key, value in two.model.state_dict().items():
        torch.testing.assert_close(saved.module.state_dict()[key], value, rtol=0, atol=0)
        assert key.endswith("num_batches_tracked") or not torch.equal(full.model.state_dict()[key], value)
    calls.clear()
    out = tmp_path / "resumed.safetensors"
    train(image, labels, out, config=TrainConfig(**{**config.__dict__, "iterations": 3}), progress=False)
    resumed = train(image, labels, out, config=config, resume=True, progress=False)  # validates step 4 only
    assert resumed.best_step == 2
    for key, value in saved.module.state_dict().items():
        torch.testing.assert_close(read_model(out).module.state_dict()[key], value, rtol=0, atol=0)


def test_one_or_two_images_hold_out_rows_of_each_and_the_object_size_is_recorded(tmp_path):
    from fastunet.objectsize import median_diameter

    data = [synthetic_nuclei((120, 100), seed=_seed() + k, dtype="uint16") for k in range(2)]
    result = train([d[0] for d in data], [d[1] for d in data], tmp_path / "m.safetensors", progress=False,
                   config=_tiny(iterations=2, val_fraction=0.25, val_every=2, seed=_seed()))
    assert any("bottom rows of each of the 2 images (30 of 120, 30 of 120)" in n for n in result.notes)
    extra = read_model(tmp_path / "m.safetensors").extra
    assert extra["training_data"]["val"] == ["images[0][90:]", "images[1][90:]"]
    expected = np.median([median_diameter(d[1][:90]) for d in data])
    assert extra["object_size"] == pytest.approx(expected, abs=0.01)


def test_fine_tuning_starts_from_the_file_and_records_it(tmp_path):
    """init=: the first step starts from the file's weights (with a learning rate of ~0, the
    trained weights are the file's), the network and normalization are the file's, and the
    file's name and SHA-256 are in the new model; a resume from another start is refused."""
    import hashlib

    from fastunet.train import fine_tune_config

    image, labels = synthetic_nuclei((120, 120), seed=_seed())
    start = tmp_path / "start.safetensors"
    own = Normalization(mode="meanstd")
    train(image, labels, start, config=_tiny(iterations=3, val_fraction=0.0, normalization=own), progress=False)
    config = fine_tune_config(start, tile=92, lr=1e-30, iterations=2, val_fraction=0.0, augment=AugmentConfig.none())
    assert (config.base_channels, config.depth, config.normalization) == (4, 2, own)
    out = tmp_path / "tuned.safetensors"
    result = train(image, labels, out, config=config, init=start, progress=False)
    before = read_model(start)
    for key, value in before.module.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[key], value, rtol=0, atol=1e-6)
    tuned = read_model(out)
    assert tuned.normalization == own and tuned.config == before.config
    assert tuned.extra["init"]["name"] == "start.safetensors"
    assert tuned.extra["init"]["sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert tuned.extra["init"]["trained_with"] == before.extra["trained_with"]
    # the bundled model by name: another start than the checkpoint's, refused on resume
    with pytest.raises(UserError, match="started from the model file 'start.safetensors'.*random weights"):
        train(image, labels, out, config=config, resume=True, progress=False)


def test_fine_tuning_refuses_another_network_channels_or_classes(tmp_path):
    from fastunet.train import fine_tune_config

    image, labels = synthetic_nuclei((120, 120), seed=_seed())
    start = tmp_path / "start.safetensors"
    train(image, labels, start, config=_tiny(iterations=1, val_fraction=0.0), progress=False)
    with pytest.raises(UserError, match="depth=3 .the file's: 2."):
        fine_tune_config(start, depth=3)
    with pytest.raises(UserError, match="differs from the init model 'start.safetensors' in base_channels"):
        train(image, labels, tmp_path / "a.safetensors", config=_tiny(base_channels=8), init=start, progress=False)
    from fastunet.model import ReferenceUNet, UNetConfig
    from fastunet.modelfile import save_model

    for name, channels, classes, message in (("two_channels", 2, 2, "takes images of 2 channel.*have 1"),
                                             ("three_classes", 1, 3, "has 3 classes")):
        other = tmp_path / f"{name}.safetensors"
        save_model(other, ReferenceUNet(UNetConfig(in_channels=channels, num_classes=classes, base_channels=4, depth=2)))
        with pytest.raises(UserError, match=message):
            train(image, labels, tmp_path / "b.safetensors", config=fine_tune_config(other, tile=92), init=other,
                  progress=False)
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()


def test_cli_fine_tunes_the_default_model_and_never_writes_the_init_file(tmp_path, capsys):
    image, labels = synthetic_nuclei((140, 150), seed=_seed(), dtype="uint16")
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint16))
    out = tmp_path / "tuned.safetensors"
    base = ["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "--iterations", "1",
            "--val-fraction", "0.25", "--quiet"]
    assert main([*base, "-o", str(out), "--init", "2d", "--lr", "1e-4"]) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    config, _, extra = read_model_metadata(out)
    from fastunet.modelfile import default_model_path

    default = read_model_metadata(default_model_path())[0]
    assert (config.base_channels, config.depth) == (default.base_channels, default.depth)
    assert extra["init"]["name"] == default_model_path().name and "--init 2d" in extra["trained_with"]
    assert "--log-mode" not in extra["trained_with"]
    assert main(["info", str(out)]) == 0
    assert f"fine-tuned from {default_model_path().name} (sha256 {extra['init']['sha256']})" in capsys.readouterr().out
    assert main([*base, "-o", str(out), "--init", str(out), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "x.safetensors"), "--init", "2d", "--depth", "4"]) == 2
    assert "--depth 4 (the file's: 3)" in capsys.readouterr().err
