"""The whole U-Net forward on fastunet's Triton kernels.

:class:`FusedUNet` packs a :class:`~fastunet.model.ReferenceUNet`'s weights once into the
kernels' layouts and runs a batch of tiles through them:

* encoder level: ``conv3x3`` -> ``conv3x3`` with the 2x2 max-pool fused into its epilogue
  (it writes the full-resolution skip and the pooled input of the next level);
* bottom: two ``conv3x3`` (dropout is the identity at inference);
* decoder level: ``upconv2x2``, then a ``conv3x3`` reading the center-cropped skip and the
  up-conv output as two sources (the concatenation is never materialized), then ``conv3x3``;
* head: 1x1 conv fused with softmax/argmax, in the epilogue of the last decoder conv when
  that conv's output channels fit one tile (``conv_head.can_fuse``: the paper's 64 do), so
  the full-resolution top-level features are never written; else a separate head kernel.

Activations are channels-last. The buffers of one ``(batch, height, width)`` are planned
once and reused by every later call with that shape (a small LRU keeps a few shapes); on
CUDA the forward can be captured in a CUDA graph.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .. import geometry
from ..devices import FLOAT_DTYPES
from ..model import ReferenceUNet
from .predictor import Prediction, Predictor

__all__ = ["FusedUNet", "FusedPredictor"]

log = logging.getLogger("fastunet.engine")


@dataclass
class _Plan:
    """Activation buffers of one input shape, allocated once."""

    x: torch.Tensor
    enc_mid: list = field(default_factory=list)
    enc_out: list = field(default_factory=list)  # full-resolution skips
    pooled: list = field(default_factory=list)
    bottom_mid: torch.Tensor | None = None
    bottom_out: torch.Tensor | None = None
    up: list = field(default_factory=list)
    dec_mid: list = field(default_factory=list)
    dec_out: list = field(default_factory=list)
    logits: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    graph: object = None


class FusedUNet:
    """A U-Net forward on the Triton kernels, numerically checked against :class:`ReferenceUNet`.

    Parameters
    ----------
    model : ReferenceUNet or path
        The network, or a model file (loaded with :func:`fastunet.load_model`).
    device : str or torch.device
        CUDA device, or ``cpu``: the kernels then run under the Triton interpreter (slow;
        for checking them without a GPU).
    dtype : {"bf16", "fp16", "tf32", "fp32"}
        Storage dtype of weights and activations (fp32 accumulation always); ``tf32`` and
        ``fp32`` store fp32 and differ in the precision of the dots.
    cuda_graph : bool
        Capture the forward of each shape in a CUDA graph (CUDA only).
    max_plans : int
        How many input shapes keep their buffers.
    """

    def __init__(self, model, device="cuda", dtype: str = "bf16", *, cuda_graph: bool = False, max_plans: int = 2):
        if not isinstance(model, ReferenceUNet):
            from ..modelfile import load_model

            model = load_model(model)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}; got {dtype!r}.")
        self.device = torch.device(device)
        from ..kernels import load

        self.conv, self.upconv, self.head, self.conv_head = load(self.device, "conv", "upconv", "head", "conv_head")
        from ..kernels._utils import compute_dtype

        self.config = model.config
        self.fuse_head = self.conv_head.can_fuse(model.config.widths[0], model.config.num_classes)
        self.dtype = dtype
        self.storage, _ = compute_dtype(dtype)
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.captures = 0  # CUDA graphs captured (one per input shape and output kind in use)
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._pack(model)

    # -- weights -------------------------------------------------------------------------
    def _pack(self, model: ReferenceUNet) -> None:
        dev, st = self.device, self.storage

        def conv(layer):
            return self.conv.pack_weight(layer.weight.to(dev), st), layer.bias.detach().to(dev, torch.float32).contiguous()

        self.enc = [(conv(b.conv1), conv(b.conv2)) for b in model.down]
        self.bottom = (conv(model.bottom.conv1), conv(model.bottom.conv2))
        self.ups = [
            (self.upconv.pack_weight(u.weight.to(dev), st), u.bias.detach().to(dev, torch.float32).contiguous())
            for u in model.up
        ]
        self.dec = [(conv(d.conv1), conv(d.conv2)) for d in model.dec]
        self.head_w = self.head.pack_weight(model.head.weight.to(dev), st)
        self.head_b = model.head.bias.detach().to(dev, torch.float32).contiguous()

    # -- buffers -------------------------------------------------------------------------
    def _plan(self, n: int, *size: int) -> _Plan:
        """The buffers of ``n`` tiles of ``size`` (``h, w``; ``d, h, w`` for a 3D network)."""
        key = (n, *size)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        plan = _Plan(x=torch.empty((n, *size, self.config.in_channels), device=self.device, dtype=self.storage))
        out = size
        # One NHWC buffer per layer output of the table (the head's outputs follow below); with
        # the fused head the last decoder conv's output stays in registers and gets none.
        where = {("enc", "conv1"): plan.enc_mid, ("enc", "conv2"): plan.enc_out, ("enc", "pool"): plan.pooled,
                 ("dec", "up"): plan.up, ("dec", "conv1"): plan.dec_mid, ("dec", "conv2"): plan.dec_out}
        for layer in geometry.layer_shapes(self.config, size):
            if layer.kind == "head":
                out = layer.out_size
                continue
            part, step = layer.name.split(".")
            if layer.name == "dec0.conv2" and self.fuse_head:
                plan.dec_out.append(None)
                continue
            buf = torch.empty((n, *layer.out_size, layer.c_out), device=self.device, dtype=self.storage)
            if part == "bottom":
                setattr(plan, f"bottom_{'mid' if step == 'conv1' else 'out'}", buf)
            else:
                where[(part[:3], step)].append(buf)
        k = self.config.num_classes
        plan.logits = torch.empty((n, k, *out), device=self.device, dtype=torch.float32)
        plan.probs = torch.empty((n, k, *out), device=self.device, dtype=torch.float16)
        plan.labels = torch.empty((n, *out), device=self.device, dtype=torch.uint8)
        self._plans[key] = plan
        while len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
        return plan

    # -- forward -------------------------------------------------------------------------
    # the network's operations (FusedUNet3D runs the same forward on its 3D kernels)
    def _conv(self, x, w, b, **options) -> None:
        self.conv.conv3x3(x, w, b, dtype=self.dtype, **options)

    def _pool(self, level: int):
        """What the conv before level ``level``'s max-pool is told to pool."""
        return True

    def _upconv(self, x, w, b, level: int, out) -> None:
        self.upconv.upconv2x2(x, w, b, out=out, dtype=self.dtype)

    def _conv_head(self, x, w, b, **outputs) -> None:
        self.conv_head.conv3x3_head(x, w, b, self.head_w, self.head_b, dtype=self.dtype, **outputs)

    def _head(self, x, **outputs) -> None:
        self.head.head(x, self.head_w, self.head_b, dtype=self.dtype, **outputs)

    def _run(self, plan: _Plan, output: str) -> None:
        conv = self._conv
        x = plan.x
        for level, ((w1, b1), (w2, b2)) in enumerate(self.enc):
            conv(x, w1, b1, out=plan.enc_mid[level])
            conv(plan.enc_mid[level], w2, b2, pool=self._pool(level), out=plan.enc_out[level], pooled=plan.pooled[level])
            x = plan.pooled[level]
        (w1, b1), (w2, b2) = self.bottom
        conv(x, w1, b1, out=plan.bottom_mid)
        conv(plan.bottom_mid, w2, b2, out=plan.bottom_out)
        x = plan.bottom_out
        for j, ((wu, bu), ((w1, b1), (w2, b2))) in enumerate(zip(self.ups, self.dec)):
            level = self.config.depth - 1 - j
            self._upconv(x, wu, bu, level, plan.up[j])
            conv(plan.enc_out[level], w1, b1, up=plan.up[j], out=plan.dec_mid[j])
            if plan.dec_out[j] is None:  # last level with the head fused: conv2 runs below
                break
            conv(plan.dec_mid[j], w2, b2, out=plan.dec_out[j])
            x = plan.dec_out[j]
        outputs = dict(
            logits=plan.logits if output == "logits" else None,
            probs=plan.probs if output in ("probs", "both") else None,
            labels=plan.labels if output in ("labels", "both") else None,
        )
        if plan.dec_out[-1] is None:  # the last decoder conv2 and the head as one kernel
            (w2, b2) = self.dec[-1][1]
            self._conv_head(plan.dec_mid[-1], w2, b2, **outputs)
        else:
            self._head(x, **outputs)

    def _forward(self, tiles: torch.Tensor, output: str) -> _Plan:
        if tiles.ndim != 4 or tiles.shape[1] != self.config.in_channels:
            raise ValueError(f"Expected tiles (N, {self.config.in_channels}, H, W); got {tuple(tiles.shape)}.")
        n, _, h, w = tiles.shape
        plan = self._plan(n, h, w)
        plan.x.copy_(tiles.permute(0, 2, 3, 1))  # NCHW float32 -> NHWC storage dtype, one pass
        return self._replay(plan, output)

    def _replay(self, plan: _Plan, output: str) -> _Plan:
        """Run the forward of ``plan`` (its input filled): eagerly, or its CUDA graph (captured
        on first use of this shape and output)."""
        if not self.cuda_graph:
            self._run(plan, output)
            return plan
        graphs = plan.graph if isinstance(plan.graph, dict) else {}
        plan.graph = graphs
        graph = graphs.get(output)
        if graph is None:
            graph = graphs[output] = self._capture(plan, output)
        if graph is False:  # capture failed for this shape: eager
            self._run(plan, output)
        else:
            graph.replay()
        return plan

    def _capture(self, plan: _Plan, output: str):
        """A warm-up run (autotuning, compilation and module loading happen here, never under
        capture), then the capture of :meth:`_run` in a CUDA graph. Errors are those of this
        thread only (``thread_local``: other threads may use CUDA meanwhile). A capture that
        fails for another reason than memory is logged and this shape runs eagerly (False)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._run(plan, output)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._run(plan, output)
        except torch.OutOfMemoryError:
            raise  # OOMBackoff's to handle; the next call of this shape tries again
        except RuntimeError as exc:
            log.warning("CUDA graph capture of the fused network failed for tiles %s (%s); running them "
                        "without a graph", tuple(plan.x.shape), exc)
            return False
        self.captures += 1
        return graph

    @torch.no_grad()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, K, H - 2c, W - 2c)`` float32 for NCHW tiles (a view of a reused buffer;
        ``(N, K, D', H', W')`` for the NCDHW tiles of a 3D network)."""
        return self._forward(tiles, "logits").logits

    @torch.no_grad()
    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        """Probabilities (float16) and/or labels (uint8) from the fused head; views of reused buffers."""
        if output not in ("labels", "probs", "both"):
            raise ValueError(f"output must be 'labels', 'probs' or 'both'; got {output!r}.")
        plan = self._forward(tiles, output)
        return Prediction(
            probs=plan.probs if output in ("probs", "both") else None,
            labels=plan.labels if output in ("labels", "both") else None,
        )


class FusedPredictor(Predictor):
    """The ``triton`` backend of :func:`fastunet.engine.backends.make_predictor`."""

    backend = "triton"

    def __init__(self, model: ReferenceUNet, device="cuda", dtype: str = "bf16", *, cuda_graph: bool = False) -> None:
        super().__init__(model, device, dtype)
        self.net = self.network(model, device=self.device, dtype=dtype, cuda_graph=cuda_graph)

    network = FusedUNet  # the fused network it runs (fastunet.engine.fused3d: the 3D one)

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.net(tiles.to(self.device, non_blocking=True)).clone()

    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        pred = self.net.predict(tiles.to(self.device, non_blocking=True), output)
        # The buffers are reused by the next call: hand out copies.
        return Prediction(
            probs=None if pred.probs is None else pred.probs.clone(),
            labels=None if pred.labels is None else pred.labels.clone(),
        )
