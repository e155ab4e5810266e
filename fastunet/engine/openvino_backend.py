"""The network under OpenVINO's CPU runtime: ``backend="openvino"`` (``pip install 'fastunet[openvino]'``).

The reference network (:class:`~fastunet.model.ReferenceUNet`) is traced once by
``torch.jit.trace`` on the smallest valid tile and converted by ``openvino.convert_model``;
the trace records the crops from the tensors' sizes, so the one converted model serves every
tile shape. It is kept in OpenVINO's IR format in a disk cache (:func:`cache_dir`; the
:data:`CACHE_ENTRIES` most recently used models), keyed by the weights and the versions of
torch and OpenVINO, so that later processes skip the conversion (seconds) and only compile
it (a fraction of a second). Given a :class:`~fastunet.engine.handle.ModelHandle` (what the
engine passes), the backend reads the weights with numpy for that key and builds the PyTorch
network only to convert it: a run whose model is in the cache never imports PyTorch (1.4-1.9 s
of a process's start here, P7's ``torch_import_s``). Each tile shape is compiled for the CPU
plugin with the dtype as its inference precision (``bf16``, or ``f32`` for fp32/tf32; weights
prepacked once, at compile time), as many streams as threads
(:func:`fastunet.devices.cpu_threads`: torch's intra-op threads, or as many as torch would
take), one thread each: the tiles of a batch run side by side. OpenVINO keeps what it
compiles in the cache's ``compiled`` folder (its ``CACHE_DIR``, :func:`use_compiled_cache`),
so a later process imports it instead of compiling it again. :meth:`OpenVINOPredictor.start`
queues a batch without waiting for it (the device runner queues the next batch behind the
running one). The labels (and the object probability that ``min_confidence`` needs) come from
a compact form of the converted network that computes them as its last operations
(:mod:`fastunet.engine.openvino_head`); the probabilities, from its scores with numpy.

OpenVINO is imported only here, when this backend is made (``import fastunet`` stays light).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import geometry
from ..devices import cpu_threads
from ..errors import UserError
from ..netconfig import parameter_shapes
from .predictor import OUTPUTS, Prediction, Predictor, class_labels

if TYPE_CHECKING:
    import torch

    from ..model import ReferenceUNet
    from .handle import ModelHandle

__all__ = ["OpenVINOPredictor", "import_openvino", "available", "picked_by_auto", "cache_dir", "convert", "PRECISIONS",
           "stream_count", "runs_bf16"]

# fastunet's dtype -> the CPU plugin's inference precision (int8: of what stays in floating
# point, bf16 where the CPU has bf16 units: OpenVINOPredictor)
PRECISIONS = {"bf16": "bf16", "fp32": "f32", "tf32": "f32", "int8": "f32"}
CACHE_ENTRIES = 8  # converted models kept on disk (the most recently used)
COMPILED_ENTRIES = 16  # OpenVINO's compiled models (per model, tile shape and precision) kept on disk
GRAPH_FORM = "split-merge"  # how the network is written for the conversion (:func:`convert`), in the cache key
COMPILED_DIR = "compiled"  # their folder, inside the converted models'


def available() -> bool:
    """Whether the openvino package is installed (without importing it)."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def picked_by_auto() -> bool:
    """Whether ``backend="auto"`` runs the CPU on OpenVINO: when it is installed, unless the
    environment says ``FASTUNET_OPENVINO=0`` (PyTorch then, e.g. for a test suite whose
    references are PyTorch's, or to compare)."""
    return os.environ.get("FASTUNET_OPENVINO", "").strip() != "0" and available()


def import_openvino():
    """The ``openvino`` module, or a :class:`~fastunet.errors.UserError` that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise UserError(f'backend="openvino" needs the openvino package, which cannot be imported here ({exc}): '
                        "pip install 'fastunet[openvino]', or use backend=\"torch\".") from None
    return openvino


def cache_dir() -> Path:
    """The folder of the converted models: ``$FASTUNET_CACHE/openvino``, else
    ``$XDG_CACHE_HOME/fastunet/openvino``, else ``~/.cache/fastunet/openvino``."""
    root = os.environ.get("FASTUNET_CACHE")
    if root:
        return Path(root) / "openvino"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastunet" / "openvino"


def _weights(model: ReferenceUNet | ModelHandle) -> dict[str, np.ndarray]:
    """The network's weights as float32 numpy arrays by name (a handle reads them without torch)."""
    from .handle import ModelHandle

    if isinstance(model, ModelHandle):
        return model.weights()
    state = model.state_dict()
    return {k: state[k].detach().to("cpu").float().numpy() for k in parameter_shapes(model.config)}


def _module(model: ReferenceUNet | ModelHandle) -> ReferenceUNet:
    """The PyTorch network (built from a handle: only to convert it)."""
    from .handle import ModelHandle

    return (model.load() if isinstance(model, ModelHandle) else model).eval()


def _version(distribution: str) -> str:
    """An installed distribution's version, without importing it; ``"none"`` when it is not there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "none"


def _model_key(model: ReferenceUNet | ModelHandle, ov_version: str) -> str:
    """A digest of the weights, the config and the versions that make the converted model."""
    digest = hashlib.sha256()
    # torch's version: the conversion's tracer is torch's
    digest.update(repr((model.config.to_dict(), _version("torch"), ov_version, GRAPH_FORM)).encode())
    for name, value in _weights(model).items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value, np.float32).tobytes())
    return digest.hexdigest()[:32]


def convert(ov, model: ReferenceUNet, *, split: bool = True):
    """``openvino.convert_model`` of the network (2D or 3D) traced on the smallest valid tile
    (every tile shape runs on the result: the trace keeps the crops' sizes symbolic). ``split``: each
    decoder level's first convolution over the crop-concat as two summed convolutions
    (:func:`~fastunet.model.split_merge`, what the engine runs), else the reference's
    crop-concat (to compare: ``benchmarks/openvino_merge.py``)."""
    import torch

    from ..model import split_merge

    merge = split_merge if split else None

    class Layers(torch.nn.Module):
        """The network's forward without its input checks (they would fix the tile size in the trace)."""

        def __init__(self, net: ReferenceUNet):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net._layers(x, merge)

    edges = [geometry.min_input_size(pools) for pools in model.config.axis_pools]
    example = torch.zeros(1, model.config.in_channels, *edges)
    module = Layers(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the crop's size checks, traced as constants
        # torch.jit.trace is deprecated from torch 2.13 (still there in 2.14); torch.export
        # specializes the crops to the example's size, so one conversion would not serve every tile
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


def converted_model(ov, core, model: ReferenceUNet | ModelHandle, folder: Path | None):
    """The converted network: read from ``folder`` when it is there, else converted (and
    saved there, when the folder can be written; a failed save only costs the next process
    the conversion)."""
    return cached_model(ov, core, folder, f"unet-{_model_key(model, ov.get_version())}",
                        lambda: convert(ov, _module(model)))


def int8_model(ov, core, model: ReferenceUNet | ModelHandle, folder: Path | None):
    """The converted network quantized to int8 (:mod:`fastunet.engine.openvino_int8`), cached
    as the converted ones are."""
    from .openvino_int8 import CALIBRATION_VERSION, quantize

    # the quantization depends on NNCF's version too
    name = f"unet-int8-{_model_key(model, ov.get_version())}-c{CALIBRATION_VERSION}-nncf{_version('nncf')}"
    return cached_model(ov, core, folder, name, lambda: quantize(converted_model(ov, core, model, folder),
                                                                 model.config))


def cached_model(ov, core, folder: Path | None, name: str, make):
    """The OpenVINO model ``folder/name.xml``: read when it is there, else ``make()`` (and
    saved there when the folder can be written; a failed save only costs the next process
    the work)."""
    if folder is None:
        return make()
    path = folder / f"{name}.xml"
    if path.exists() and path.with_suffix(".bin").exists():
        try:
            found = core.read_model(str(path))
            os.utime(path)  # used now: the last entry the pruning removes
            return found
        except (RuntimeError, OSError):  # a damaged entry: made again, and replaced below
            pass
    made = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
            ov.save_model(made, str(Path(tmp) / path.name), compress_to_fp16=False)
            os.replace(Path(tmp) / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(Path(tmp) / path.name, path)  # the .xml last: the mark of a complete entry
        _prune(folder)
    except OSError:
        pass
    return made


def _prune(folder: Path, keep: int = CACHE_ENTRIES, pattern: str = "unet-*.xml", parts=(".xml", ".bin")) -> None:
    """Keep the ``keep`` most recently used converted models in ``folder`` (each new set of
    weights, e.g. a model in training, adds one); or, with ``pattern`` and ``parts``, other entries."""
    entries = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        for suffix in parts:
            old.with_suffix(suffix).unlink(missing_ok=True)


def use_compiled_cache(core, folder: Path) -> bool:
    """Let OpenVINO keep the models it compiles in ``folder`` (its ``CACHE_DIR``): a later
    process imports a tile shape's compiled model instead of compiling it again (measured on
    this shared 2-core machine for the default model's 604 x 604 tile at bf16, medians of 5
    interleaved processes: 0.106 s against 0.137 s; more for larger networks). The
    :data:`COMPILED_ENTRIES` newest are kept. False (no cache) where the folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _prune(folder, COMPILED_ENTRIES, "*.blob", (".blob",))
    except OSError:
        return False
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    core.set_property({"CACHE_DIR": str(folder)})
    return True


class OpenVINOPredictor(Predictor):
    """The network on the CPU through OpenVINO (see the module's docstring).

    Parameters
    ----------
    model : ReferenceUNet or ModelHandle
        The network, or a handle to its weights (:class:`~fastunet.engine.handle.ModelHandle`:
        PyTorch is then imported only to convert it, when it is not cached).
    device : str or torch.device
        The CPU (OpenVINO's CPU plugin).
    dtype : {"bf16", "fp32", "tf32", "int8"}
        The inference precision (tf32 runs as fp32; int8: the network quantized after training,
        :func:`int8_model`; bf16 only where OpenVINO computes it, :func:`runs_bf16`, else a
        :class:`~fastunet.errors.UserError` rather than fp32 under bf16's name).
    cache : path-like, None or False
        The folder of converted models (default :func:`cache_dir`), and of OpenVINO's compiled
        ones in its ``compiled`` folder (:func:`use_compiled_cache`); False: no disk cache.
    streams : int, optional
        Tiles computed at once, each on its share of the threads (default: one stream per thread).
    threads : int, optional
        The threads OpenVINO computes on (default :func:`fastunet.devices.cpu_threads`: torch's
        intra-op threads where torch is imported, else as many as torch would use).

    Tiles may come as numpy arrays (what the engine passes: the prediction is then numpy
    too) or torch tensors (the prediction is then torch tensors, as other backends give).
    """

    backend = "openvino"
    dtypes = tuple(PRECISIONS)
    takes_numpy = True  # numpy tiles in, numpy predictions out (no PyTorch needed)
    # "confidence": the labels and each voxel's object probability, (N, 1, h, w) uint8 in steps
    # of 1/255 as ``probs`` (what the objects' min_confidence needs; see openvino_head)
    outputs = (*OUTPUTS, "confidence")

    def __init__(self, model: ReferenceUNet | ModelHandle, device="cpu", dtype: str = "fp32", *, cache=None,
                 streams: int | None = None, threads: int | None = None) -> None:
        if dtype not in PRECISIONS:
            raise UserError(f'backend="openvino" runs in {", ".join(PRECISIONS)}; got dtype="{dtype}".')
        super().__init__(model, device, dtype)
        if self.device.type != "cpu":
            raise UserError(f'backend="openvino" runs on the CPU; got device="{self.device}" (use backend="auto").')
        ov = import_openvino()
        self._ov = ov
        self._core = ov.Core()
        bf16 = runs_bf16(self._core)
        if dtype == "bf16" and not bf16:
            raise UserError('dtype="bf16" on OpenVINO needs a CPU with bf16 units (AVX512-BF16 or AMX-BF16), which '
                            "this one lacks: OpenVINO would compute in fp32 while the run said bf16. Use "
                            'dtype="fp32" (what "auto" picks here), or backend="torch" (bf16 emulated, many times '
                            "slower).")
        folder = None if cache is False else Path(cache) if cache is not None else cache_dir()
        make = int8_model if dtype == "int8" else converted_model
        self._models = {"scores": make(ov, self._core, model, folder)}  # and "compact", made on first use
        if folder is not None:
            use_compiled_cache(self._core, folder / COMPILED_DIR)
        self.streams, threads = stream_count(streams, threads)
        precision = PRECISIONS[dtype]
        if dtype == "int8" and bf16:
            precision = "bf16"
        self._config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": self.streams,
                        "INFERENCE_NUM_THREADS": threads}
        self._compiled: dict = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()

    def _model(self, form: str):
        """The converted network (``"scores"``), or it with the labels and the object
        probability as its outputs (``"compact"``, :func:`~fastunet.engine.openvino_head.labels_and_confidence`)."""
        model = self._models.get(form)
        if model is None:
            from .openvino_head import labels_and_confidence

            model = self._models[form] = labels_and_confidence(self._models["scores"], self.config.num_classes)
        return model

    def _queue(self, shape: tuple, form: str):
        """The infer requests (one per stream) of one input shape ``(1, C, H, W)`` and graph
        ``form`` (see :meth:`_model`), compiled on first use."""
        with self._lock:
            queue = self._compiled.get((shape, form))
            if queue is None:
                model = self._model(form).clone()
                model.reshape(list(shape))
                compiled = self._core.compile_model(model, "CPU", self._config)
                queue = self._compiled[shape, form] = self._ov.AsyncInferQueue(compiled, self.streams)
                queue.set_callback(_Pending.done)  # each tile's user data: (its call, its index)
            return queue

    def prepare(self, tile: tuple, output: str = "labels") -> None:
        """Compile the network for input tiles ``tile`` (their spatial edges) and ``output`` now,
        not at the first call."""
        self._queue((1, self.config.in_channels, *tile), _form(output))

    def start(self, tiles: np.ndarray | torch.Tensor, output: str = "labels") -> "_Pending":
        """Start the inference of ``tiles`` ``(N, C, H, W)`` and return once every tile is
        queued (waiting only for a free infer request): one tile per inference (one compiled
        shape serves every batch, and a tile's result depends on nothing else), the tiles
        spread over the streams, each on one thread (measured on 2 cores: 2 streams x 1 thread
        used less CPU per tile than 1 x 2, see benchmarks P7). The inputs are copied before
        this returns. :meth:`_Pending.result` gives the :class:`Prediction`; calls may
        overlap, so that a stream that finishes its tile starts the next call's at once
        (the device runner's next batch: no stream waits for the other at the end of a batch).

        ``"labels"`` and ``"confidence"`` run the compact graph (the labels and the object
        probability computed by OpenVINO), ``"probs"`` and ``"both"`` the scores (the softmax
        computed with numpy)."""
        if output not in self.outputs:
            raise ValueError(f"output must be one of {self.outputs}; got {output!r}.")
        as_torch = not isinstance(tiles, np.ndarray)
        x = np.ascontiguousarray(tiles.to("cpu").float().numpy() if as_torch else tiles, np.float32)
        queue = self._queue((1, *x.shape[1:]), _form(output))
        pending = _Pending(x.shape[0], output, queue, as_torch)
        with self._starting:  # one call's tiles queued after the other's
            for i in range(x.shape[0]):
                queue.start_async([x[i:i + 1]], (pending, i), share_inputs=False)
        return pending

    def logits(self, tiles: np.ndarray | torch.Tensor) -> Any:
        """Scores ``(N, K, h, w)`` float32 of ``tiles`` ``(N, C, H, W)`` (see :meth:`start`), as
        the tiles came (numpy or torch)."""
        scores = self.start(tiles, "probs").scores()
        if isinstance(tiles, np.ndarray):
            return scores
        import torch

        return torch.from_numpy(scores)

    def predict(self, tiles: np.ndarray | torch.Tensor, output: str = "labels") -> Prediction:
        """As :meth:`Predictor.predict` (softmax probabilities as float32, argmax labels as
        uint8; ``output="confidence"``: the labels and the object probability, see
        :attr:`outputs`)."""
        return self.start(tiles, output).result()


def runs_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin (of ``core``) computes bf16 on this CPU (its ``BF16``
    capability: AVX512-BF16 or AMX-BF16); elsewhere it takes a bf16 precision hint and computes
    fp32 without a word."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def stream_count(streams: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """``(streams, threads)`` of an :class:`OpenVINOPredictor` asked for ``streams`` and
    ``threads`` (defaults: one stream a thread, :func:`fastunet.devices.cpu_threads` threads):
    the tiles it computes side by side, at most one a thread."""
    threads = max(1, int(threads or cpu_threads()))
    return max(1, min(int(streams or threads), threads)), threads


def _form(output: str) -> str:
    """The graph an output is computed by (:meth:`OpenVINOPredictor._model`)."""
    return "compact" if output in ("labels", "confidence") else "scores"


class _Pending:
    """One call's tiles in OpenVINO's queue: :meth:`query` (all done?), :meth:`scores`,
    :meth:`result` (both wait)."""

    def __init__(self, count: int, output: str, queue, as_torch: bool = False):
        self.output = output
        self.as_torch = as_torch
        self.fetch = 2 if output == "confidence" else 1  # outputs copied (the compact graph's labels alone for "labels")
        self._queue = queue
        self._out: list = [None] * count
        self._left = count
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._event = threading.Event()
        if not count:
            self._event.set()

    @staticmethod
    def done(request, userdata) -> None:
        """The queue's callback (in OpenVINO's thread): keep the tile's outputs."""
        pending, i = userdata
        try:
            pending._out[i] = [request.get_output_tensor(k).data[0].copy() for k in range(pending.fetch)]
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            pending._error = exc
        with pending._lock:
            pending._left -= 1
            if pending._left == 0:
                pending._event.set()

    def query(self) -> bool:
        return self._event.is_set()

    def _wait(self) -> None:
        while not self._event.wait(timeout=30.0):
            # OpenVINO calls no callback for a failed inference: once every request of the
            # queue is idle (wait_all raises the failure, where it keeps one), ours is lost. Not
            # sooner: wait_all also waits for the next call's tiles, queued behind these.
            self._queue.wait_all()
            if not self._event.is_set():
                raise RuntimeError("OpenVINO's inference of a tile failed without an error message.")
        if self._error is not None:
            raise self._error

    def _stacked(self, k: int) -> np.ndarray:
        """Output ``k`` of every tile, ``(N, ...)``: one tile's own copy as it is (the engine's
        calls are of one tile), more stacked."""
        self._wait()
        if len(self._out) == 1:
            return self._out[0][k][None]
        return np.stack([out[k] for out in self._out])

    def scores(self) -> np.ndarray:
        """``(N, K, h, w)`` float32, once every tile is done (outputs ``"probs"``, ``"both"``)."""
        if _form(self.output) != "scores":
            raise ValueError(f'scores() needs the output "probs" or "both"; this call computes {self.output!r}.')
        return self._stacked(0)

    def result(self) -> Prediction:
        """The :class:`Prediction`: softmax probabilities as float32 (numpy's float16 conversion
        would cost more than the rest of a tile's numpy work; the engine converts what it
        writes), argmax labels as uint8,
        computed with numpy (torch's intra-op threads, which spin for a while after each
        parallel operation, then never compete with OpenVINO's); ``"confidence"``: the labels
        and the object probability, uint8, as OpenVINO computed them. torch tensors where the
        tiles came as torch tensors."""
        output = self.output
        probs = labels = None
        if _form(output) == "compact":
            labels = self._stacked(0)
            probs = self._stacked(1) if output == "confidence" else None
        else:
            scores = self.scores()
            probs = _softmax(scores)
            labels = class_labels(scores) if output == "both" else None
        if self.as_torch:
            import torch

            probs, labels = (None if a is None else torch.from_numpy(a) for a in (probs, labels))
        return Prediction(probs=probs, labels=labels)


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(N, K, ...)`` float32 scores; for two classes the logistic of
    their difference, in place in the result (one exponential a pixel, no maximum pass)."""
    if scores.shape[1] == 2:
        out = np.empty_like(scores, dtype=np.float32)
        p0, p1 = out[:, 0], out[:, 1]
        np.subtract(scores[:, 0], scores[:, 1], out=p1)
        with np.errstate(over="ignore"):  # exp -> inf: a probability of 0, as it should
            np.exp(p1, out=p1)
        p1 += 1.0
        np.reciprocal(p1, out=p1)
        np.subtract(1.0, p1, out=p0)
        return out
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
