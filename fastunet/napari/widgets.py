"""napari dock widgets: segment the selected image layer, train a model on a layer's labels.

Both run in a napari worker thread (the viewer stays responsive) with a progress bar, and
report fastunet's one-line errors as napari notifications. Built with magicgui, so they
work with any Qt binding napari runs on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from .jobs import labels_placement, layer_array, layer_axes, segment_steps, train_model, triton_clash

__all__ = ["SegmentWidget", "TrainWidget"]

MODEL_FILTER = "*.safetensors *.zip"


def _model_edit(label: str) -> FileEdit:
    return FileEdit(label=label, mode="r", filter=MODEL_FILTER, enabled=False,
                    tooltip="a fastunet .safetensors model, or a bioimage.io package from fastunet export")


def _uses_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _notify_error(exc: BaseException) -> str:
    from napari.utils.notifications import show_error

    message = str(exc) or type(exc).__name__
    show_error(f"fastunet: {message}")
    return message


class SegmentWidget(Container):
    """Segment the chosen Image layer; the object ids come back as a Labels layer
    (``"<image> labels"``, replaced on a rerun) with the image's scale, translation and units.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (napari passes it).
    """

    def __init__(self, napari_viewer) -> None:
        import napari

        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.default_model = CheckBox(value=True, text="bundled model (synthetic nuclei)")
        self.model_file = _model_edit("model file")
        self.object_size = FloatSpinBox(value=0.0, min=0.0, max=10000.0, step=1.0, label="object size (px)",
                                        tooltip="the objects' typical diameter in pixels; 0: as the model was trained")
        self.run_button = PushButton(text="Segment")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.default_model, self.model_file, self.object_size,
                                  self.run_button, self.progress, self.status])
        self.default_model.changed.connect(lambda on: setattr(self.model_file, "enabled", not on))
        self.run_button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self.worker = None

    @property
    def model(self) -> str | None:
        """The chosen model file, or None for the bundled model."""
        if self.default_model.value:
            return None
        return str(self.model_file.value)

    def run(self, *_):
        """Start segmenting the chosen layer in a worker thread; returns the worker (None when
        nothing was started: no layer, or an error said in the status line)."""
        from napari.qt.threading import create_worker

        from ..errors import UserError

        layer = self.image.value
        if layer is None:
            self.status.value = "Open an image and choose its layer."
            return None
        try:
            axes = layer_axes(layer)
            model = self.model
            if model is not None and not Path(model).is_file():
                raise UserError(f"Model file {model!r} does not exist; choose a .safetensors model or a .zip package.")
            if _uses_cuda() and triton_clash():  # the Triton kernels run on CUDA
                raise UserError(triton_clash())
        except UserError as exc:
            self.status.value = _notify_error(exc)
            return None
        size = float(self.object_size.value) or None
        worker = create_worker(segment_steps, layer_array(layer), model=model, axes=axes, object_size=size,
                               _start_thread=False)
        worker.yielded.connect(lambda fraction: setattr(self.progress, "value", round(100 * fraction)))
        worker.returned.connect(lambda labels: self._show(layer, axes, labels))
        worker.errored.connect(lambda exc: setattr(self.status, "value", _notify_error(exc)))
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.run_button.enabled, self.progress.value = False, 0
        self.status.value = f"segmenting {layer.name} ({axes})..."
        self.worker = worker
        worker.start()
        return worker

    def _show(self, layer, axes: str, labels) -> None:
        from napari.layers import Labels

        name = f"{layer.name} labels"
        placement = labels_placement(layer, axes)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            target = self.viewer.layers[name]
            target.data = labels
            for key, value in placement.items():
                setattr(target, key, value)
        else:
            self.viewer.add_labels(labels, name=name, **placement)
        self.status.value = f"{layer.name}: {len(np.unique(labels)) - (0 in labels)} objects"


class TrainWidget(Container):
    """Train a model on an Image layer and a Labels layer of its objects (instance ids, or
    classes) and save it as a ``.safetensors`` file that the Segment widget can choose.

    The settings are the bundled model's recipe (base 16 channels, depth 3) but the length;
    "fine-tune the bundled model" starts from its weights (at a learning rate of 3e-4: about
    half the steps of training from scratch, measured on one style) instead of random ones;
    the model trains on a GPU when there is one. The progress bar shows that it runs (the
    training loop reports to the terminal only); the loss curve is written beside the model
    (``<model>.curve.png``).
    """

    def __init__(self, napari_viewer) -> None:
        import napari

        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.output = FileEdit(label="save model as", mode="w", filter="*.safetensors", value="model.safetensors")
        self.iterations = SpinBox(value=2000, min=1, max=1_000_000, label="iterations")
        self.fine_tune = CheckBox(value=False, text="fine-tune the bundled model (else: from scratch)")
        self.device = ComboBox(choices=["auto", "cpu", "cuda"], value="auto", label="device")
        self.run_button = PushButton(text="Train")
        self.progress = ProgressBar(value=0, min=0, max=100, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.labels_layer, self.output, self.iterations, self.fine_tune,
                                  self.device, self.run_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.image.reset_choices)
            event.connect(self.labels_layer.reset_choices)
        self.worker = None

    def run(self, *_):
        """Start training in a worker thread; returns the worker (None when nothing started)."""
        from napari.qt.threading import create_worker

        from ..errors import UserError

        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            self.status.value = "Choose an image layer and a labels layer of its objects."
            return None
        try:
            axes = layer_axes(image)
            if triton_clash():
                raise UserError(triton_clash())
        except UserError as exc:
            self.status.value = _notify_error(exc)
            return None
        device = None if self.device.value == "auto" else self.device.value
        worker = create_worker(train_model, layer_array(image), layer_array(labels), self.output.value, axes=axes,
                               iterations=int(self.iterations.value), device=device,
                               fine_tune=bool(self.fine_tune.value), _start_thread=False)
        worker.returned.connect(self._trained)
        worker.errored.connect(lambda exc: setattr(self.status, "value", _notify_error(exc)))
        worker.finished.connect(self._done)
        self.run_button.enabled, self.progress.max = False, 0  # max 0: a busy bar
        self.status.value = f"training on {image.name} and {labels.name}..."
        self.worker = worker
        worker.start()
        return worker

    def _done(self) -> None:
        self.run_button.enabled, self.progress.max = True, 100

    def _trained(self, path) -> None:
        self.progress.max = self.progress.value = 100
        self.status.value = f"saved {path}: choose it in fastunet's Segment widget"
