"""The napari plugin in a headless viewer (napari's make_napari_viewer, Qt's offscreen
platform, OpenGL from Xvfb): the Segment widget's Labels layer, the reader of fastunet
outputs found through the npe2 manifest, the axes a layer is segmented in."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt creates the QApplication

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("napari", reason="needs the fastunet[napari] extra")
try:  # triton loads only before napari's canvas brings in Mesa's LLVM (see jobs.triton_clash)
    import triton  # noqa: F401
except ImportError:
    pass
pytest.importorskip("pytestqt", reason="needs pytest-qt (the test extra)")

from fastunet import segment  # noqa: E402
from fastunet.errors import UserError  # noqa: E402
from fastunet.napari.jobs import layer_axes, triton_clash  # noqa: E402
from fastunet.synthetic import synthetic_nuclei  # noqa: E402

TIMEOUT_MS = 120_000  # a worker thread on a loaded 2-core machine
# napari's canvas needs OpenGL, which Qt's offscreen platform takes from an X display (GLX):
# pytest-xvfb starts Xvfb when it is installed (.ci/run installs it). CI never skips.
needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY") and not os.environ.get("CI"),
                                   reason="napari's canvas needs an X display for OpenGL: apt-get install xvfb "
                                   "(pytest-xvfb, in the test extra, then starts it)")


def _image(shape=(96, 120)):
    return synthetic_nuclei(shape, seed=int(torch.initial_seed() % 2**31), dtype="uint16")[0]


@needs_display
def test_segment_widget_adds_labels_with_the_image_scale(make_napari_viewer, qtbot):
    from fastunet.napari.widgets import SegmentWidget

    viewer = make_napari_viewer()
    image = _image()
    layer = viewer.add_image(image, name="nuclei", scale=(0.5, 0.25), translate=(10.0, -4.0),
                             units=("micrometer", "micrometer"))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="fastunet")
    assert widget.image.value is layer and widget.model is None  # the bundled model by default
    seen = []
    worker = widget.run()
    worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: "nuclei labels" in viewer.layers and widget.run_button.enabled, timeout=TIMEOUT_MS)
    labels = viewer.layers["nuclei labels"]
    assert type(labels).__name__ == "Labels"
    assert tuple(labels.scale) == (0.5, 0.25) and tuple(labels.translate) == (10.0, -4.0)
    assert tuple(str(u) for u in labels.units) == tuple(str(u) for u in layer.units)
    np.testing.assert_array_equal(labels.data, segment(image, None, None, axes="YX", progress=False))
    assert labels.data.max() > 0 and widget.progress.value == 100 and seen and seen[-1] == 1.0
    assert "objects" in widget.status.value
    # A model file that is not there: one line, no worker, the labels left as they were.
    widget.default_model.value = False
    widget.model_file.value = "missing.safetensors"
    assert widget.run() is None and "does not exist" in widget.status.value


@needs_display
def test_train_widget_writes_a_model_the_segment_widget_runs(make_napari_viewer, qtbot, tmp_path):
    """Train on an image layer and a labels layer (one step: the wiring, not the quality), then
    segment with the model file it wrote."""
    from fastunet import read_model
    from fastunet.napari.widgets import SegmentWidget, TrainWidget

    image, truth = synthetic_nuclei((96, 120), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(truth, name="annotations")
    train = TrainWidget(viewer)
    train.output.value = tmp_path / "mine.safetensors"
    train.iterations.value, train.device.value = 1, "cpu"
    assert train.labels_layer.value.name == "annotations" and train.run() is not None
    qtbot.waitUntil(lambda: train.run_button.enabled, timeout=TIMEOUT_MS)
    assert "saved" in train.status.value, train.status.value
    assert read_model(tmp_path / "mine.safetensors").config.depth == 3  # the bundled model's recipe
    assert "init" not in read_model(tmp_path / "mine.safetensors").extra  # from scratch unless asked
    widget = SegmentWidget(viewer)
    widget.image.value = viewer.layers["cells"]
    widget.default_model.value = False
    widget.model_file.value = tmp_path / "mine.safetensors"
    assert widget.model_file.enabled and widget.run() is not None
    qtbot.waitUntil(lambda: "cells labels" in viewer.layers and widget.run_button.enabled, timeout=TIMEOUT_MS)
    want = segment(image, str(tmp_path / "mine.safetensors"), None, axes="YX", progress=False)
    np.testing.assert_array_equal(viewer.layers["cells labels"].data, want)


@needs_display
def test_reader_opens_an_output_with_its_image_and_pixel_size(make_napari_viewer, tmp_path):
    """napari finds the reader through the npe2 manifest; an OME-Zarr output opens as the
    input image with the labels on top, both at the input's pixel size (napari-ome-zarr shows
    the ids as a grayscale image and hides the labels)."""
    import tifffile

    from fastunet.cli import main

    image = _image((64, 80))
    tifffile.imwrite(tmp_path / "cells.tif", image, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"unit": "um"})
    assert main(["segment", str(tmp_path / "cells.tif"), "-o", str(tmp_path / "cells.ome.zarr"), "--quiet"]) == 0
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "cells.ome.zarr"), plugin="fastunet")
    assert [type(x).__name__ for x in layers] == ["Image", "Labels"]
    raw, labels = layers
    assert raw.name == "cells.tif" and labels.visible and labels.name == "cells instances"
    np.testing.assert_array_equal(np.asarray(raw.data), image)
    assert np.asarray(labels.data).shape == image.shape and np.asarray(labels.data).max() > 0
    for x in layers:
        assert tuple(x.scale) == (0.5, 0.5) and [str(u) for u in x.units] == ["micrometer", "micrometer"]
    from fastunet.napari.reader import get_reader

    assert get_reader(str(tmp_path / "cells.tif")) is None  # not an output: left to other readers
    # A zarr output with probabilities: one hidden, lazy image per class but the background; a
    # TIFF output (which records no input): its labels, at its own pixel size.
    assert main(["segment", str(tmp_path / "cells.tif"), "-o", str(tmp_path / "p.zarr"), "--kind", "instances,probs",
                 "--quiet"]) == 0
    assert main(["segment", str(tmp_path / "cells.tif"), "-o", str(tmp_path / "seg.tif"), "--quiet"]) == 0
    (_, _, a), (_, _, b), (probs, meta, kind) = get_reader(str(tmp_path / "p.zarr"))(str(tmp_path / "p.zarr"))
    assert (a, b, kind) == ("image", "labels", "image") and not meta["visible"] and hasattr(probs, "dask")
    assert probs.shape == image.shape and meta["scale"] == (0.5, 0.5)
    ((ids, meta, kind),) = get_reader(str(tmp_path / "seg.tif"))(str(tmp_path / "seg.tif"))
    assert kind == "labels" and meta["scale"] == (0.5, 0.5)
    np.testing.assert_array_equal(ids, np.asarray(labels.data))


def test_layer_axes():
    class Layer:
        def __init__(self, shape, rgb=False, axis_labels=()):
            self.data, self.rgb, self.axis_labels, self.name = np.zeros(shape), rgb, axis_labels, "x"

    assert layer_axes(Layer((5, 6))) == "YX" and layer_axes(Layer((4, 5, 6))) == "ZYX"
    assert layer_axes(Layer((2, 4, 5, 6), axis_labels=("c", "z", "y", "x"))) == "CZYX"
    assert layer_axes(Layer((4, 5, 6), axis_labels=("-3", "-2", "-1"))) == "ZYX"  # napari's default names
    with pytest.raises(UserError, match="RGB image"):
        layer_axes(Layer((5, 6, 3), rgb=True))
    with pytest.raises(UserError, match="4 dimensions"):
        layer_axes(Layer((2, 4, 5, 6)))


def test_triton_clash_is_said_before_it_crashes(monkeypatch):
    """triton imported after Mesa's libLLVM segfaults (seen in this suite): the widgets refuse
    with the way out instead; nothing is said when triton is loaded, absent, or LLVM is not."""
    import importlib.util
    import sys

    maps = "7f0-7f1 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "triton" else None)
    assert "import triton, napari; napari.run()" in triton_clash(maps)
    assert triton_clash("7f0-7f1 r-xp 0 08:01 1 /usr/lib/libc.so.6\n") is None
    monkeypatch.setitem(sys.modules, "triton", object())
    assert triton_clash(maps) is None
    monkeypatch.delitem(sys.modules, "triton")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert triton_clash(maps) is None


def test_train_job_fine_tunes_the_bundled_model(tmp_path):
    """The Train widget's job with fine_tune: the bundled model's weights are the start (its
    SHA-256 recorded), at the fine-tuning learning rate; the network is the bundled one's."""
    import hashlib

    from fastunet import read_model
    from fastunet.modelfile import default_model_path
    from fastunet.napari.jobs import FINE_TUNE_LR, train_model

    image, truth = synthetic_nuclei((96, 120), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    path = train_model(image, truth, tmp_path / "tuned.safetensors", iterations=1, device="cpu", fine_tune=True)
    tuned = read_model(path)
    assert tuned.extra["init"]["sha256"] == hashlib.sha256(default_model_path().read_bytes()).hexdigest()
    assert tuned.extra["training_config"]["lr"] == FINE_TUNE_LR
    assert tuned.extra["training_config"]["amp"] == "none"  # not the recipe's bf16: any CPU trains it
    assert tuned.extra["training_config"]["lr_period"] == 1  # the cosine over this run, not the recipe's 24,000
    assert tuned.config == read_model(default_model_path()).config
