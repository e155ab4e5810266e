"""P2 and P6: the whole network, fused against PyTorch.

P2     the whole forward in Mpx/s for bf16, fp16 and tf32 vs PyTorch eager, vs
       ``torch.compile(mode="max-autotune")`` of the reference, and as a fraction of the FLOP
       bound (FLOPs from :func:`fastunet.model.forward_flops`, the peak measured in the same run
       with a large bf16 matmul).
P2-3D  the same for a 3D U-Net (:data:`~fastunet.bench.operators.CICEK_3D`): the fused 3D
       network (:class:`~fastunet.engine.fused3d.FusedUNet3D`) in Mvoxel/s.
P6     a training step (forward, weighted loss, backward, SGD) vs the same step in PyTorch
       eager with bf16 autocast.
"""

from __future__ import annotations

import math

import torch

from .. import geometry
from ..model import ReferenceUNet, UNetConfig, forward_flops
from . import timing
from .operators import CICEK_3D, CICEK_3D_TILE

__all__ = ["bench_forward", "bench_forward_3d", "bench_train_step"]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # tf32: no autocast


def _fused_forward_ms(model: ReferenceUNet, dtype: str, inputs, runs: dict) -> float:
    """Median milliseconds of the fused forward of ``model`` in ``dtype``; the fused network
    (its packed weights) lives only here."""
    if model.config.spatial_dims == 3:
        from ..engine.fused3d import FusedUNet3D as FusedUNet
    else:
        from ..engine.fused import FusedUNet

    net = FusedUNet(model, device=runs["device"], dtype=dtype)
    return timing.median_ms(lambda x: net(x), make_inputs=inputs, **runs)


def _eager_forward(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None):
    """The inference call of ``model`` (eager or compiled) on channels_last input, under
    autocast to ``amp`` (none for fp32/tf32)."""

    def forward(x):
        layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x.contiguous(memory_format=layout))

    return forward


def bench_forward(*, tile: int = 572, batch: int = 8, compile_baseline: bool = True, base_channels: int = 64,
                  depth: int = 4, device="cuda", peak_n: int = 8192, warmup: int = 5, reps: int = 25,
                  dtypes=("bf16", "fp16", "tf32")) -> tuple[dict, dict]:
    """P2: the whole forward (bf16, fp16, tf32) fused vs eager (and ``torch.compile``), and
    the bf16 FLOP-bound fraction against a ``peak_n``-sized bf16 matmul measured now.

    The cuDNN/matmul TF32 flags are set per dtype for the eager side and restored to what
    they were on return, also when a measurement raises. ``device="cpu"`` (kernels under
    the Triton interpreter) is for tests only, with ``compile_baseline=False``.

    Parameters
    ----------
    tile, batch : int
        Input tile edge and batch.
    compile_baseline : bool
        Also time ``torch.compile(mode="max-autotune")`` of the reference in bf16.
    base_channels, depth : int
        The network's widths (:class:`~fastunet.model.UNetConfig`).
    device : str
        ``"cuda"``, or ``"cpu"`` for tests.
    peak_n : int
        Edge of the matmul that measures the peak (:func:`~fastunet.bench.timing.measured_peak_tflops`).
    warmup, reps : int
        Untimed and timed calls of each measurement.
    dtypes : sequence of str
        The dtype paths timed (``benchmarks/device_check.sh`` times bf16 alone first).

    Returns
    -------
    figures, ratios : dict
        ``P2.<dtype>.fused_mpx_s`` / ``.eager_mpx_s`` (and ``P2.bf16.compile_mpx_s``),
        ``P2.peak_bf16_tflops``, ``P2.flops_per_output_px``; ``P2.<dtype>.vs_eager``,
        ``P2.bf16.flop_bound_fraction`` (and ``P2.bf16.vs_compile``).
    """
    config = UNetConfig(base_channels=base_channels, depth=depth)
    return _forward("P2", config, (tile, tile), batch, compile_baseline=compile_baseline, device=device, peak_n=peak_n,
                    warmup=warmup, reps=reps, dtypes=dtypes)


def bench_forward_3d(*, config: UNetConfig = CICEK_3D, tile=CICEK_3D_TILE, batch: int = 1,
                     compile_baseline: bool = True, device="cuda", peak_n: int = 8192, warmup: int = 5, reps: int = 25,
                     dtypes=("bf16", "fp16", "tf32")) -> tuple[dict, dict]:
    """P2-3D: the whole forward of the 3D network ``config`` at ``tile`` ``(D, H, W)`` and
    ``batch`` (the engine runs a 3D network one tile at a time), fused
    (:class:`~fastunet.engine.fused3d.FusedUNet3D`) vs eager channels_last_3d (and
    ``torch.compile``), and the bf16 FLOP-bound fraction: :func:`bench_forward`'s figures
    under ``P2-3D.``, its ``fused_mpx_s`` counting output voxels (Mvoxel/s)."""
    if config.spatial_dims != 3:
        raise ValueError(f"bench_forward_3d times a 3D network; got {config.describe()} (use bench_forward).")
    return _forward("P2-3D", config, tuple(tile), batch, compile_baseline=compile_baseline, device=device,
                    peak_n=peak_n, warmup=warmup, reps=reps, dtypes=dtypes)


def _forward(name: str, config: UNetConfig, tile: tuple, batch: int, *, compile_baseline: bool, device, peak_n: int,
             warmup: int, reps: int, dtypes) -> tuple[dict, dict]:
    """P2's measurements of the network ``config`` at ``tile`` (one edge per axis): ``<name>.*``."""
    dev = timing.bench_device(device)
    model = ReferenceUNet(config).eval().to(dev)
    out = math.prod(geometry.layer_shapes(config, tile, "head")[0].out_size)  # output pixels (voxels) per tile
    mpx = batch * out / 1e6
    flops = forward_flops(config, *tile) * batch
    runs = dict(warmup=warmup, reps=reps, device=dev)
    peak = timing.measured_peak_tflops(peak_n, device=dev)
    figures, ratios = {f"{name}.peak_bf16_tflops": peak, f"{name}.flops_per_output_px": flops / (batch * out)}, {}

    def inputs():
        return (torch.randn(batch, config.in_channels, *tile, device=dev),)

    layout = torch.channels_last_3d if config.spatial_dims == 3 else torch.channels_last
    cl = model.to(memory_format=layout)
    saved_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for dtype in dtypes:
            t_fused = _fused_forward_ms(model, dtype, inputs, runs)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
            t_eager = timing.median_ms(_eager_forward(cl, dev, _AUTOCAST.get(dtype)), make_inputs=inputs, **runs)
            figures[f"{name}.{dtype}.fused_mpx_s"] = mpx / (t_fused * 1e-3)
            figures[f"{name}.{dtype}.eager_mpx_s"] = mpx / (t_eager * 1e-3)
            ratios[f"{name}.{dtype}.vs_eager"] = t_eager / t_fused
            if dtype == "bf16":
                ratios[f"{name}.bf16.flop_bound_fraction"] = flops / (t_fused * 1e-3) / (peak * 1e12)
                if compile_baseline:
                    compiled = torch.compile(cl, mode="max-autotune")
                    t_comp = timing.median_ms(_eager_forward(compiled, dev, torch.bfloat16), make_inputs=inputs,
                                              **{**runs, "warmup": 3})
                    figures[f"{name}.bf16.compile_mpx_s"] = mpx / (t_comp * 1e-3)
                    ratios[f"{name}.bf16.vs_compile"] = t_comp / t_fused
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return figures, ratios


def bench_train_step(*, tile: int = 572, batch: int = 4, base_channels: int = 64, depth: int = 4, device="cuda",
                     warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """P6: one training step (bf16 autocast forward of :class:`ReferenceUNet`, weighted
    loss, backward, SGD with momentum) with the fused loss vs the same step with the eager
    PyTorch loss.

    Both models start from the same weights; targets are uint8, as the trainer feeds them
    (:func:`fastunet.train.augment.augment_batch`). ``device="cpu"`` (the loss kernel under the
    Triton interpreter) is for tests only.

    Parameters
    ----------
    tile, batch : int
        Input tile edge and batch.
    base_channels, depth : int
        The network's widths (:class:`~fastunet.model.UNetConfig`).
    device : str
        ``"cuda"``, or ``"cpu"`` for tests.
    warmup, reps : int
        Untimed and timed steps of each side.

    Returns
    -------
    figures, ratios : dict
        ``P6.fused_ms``, ``P6.eager_amp_ms``; ``P6.vs_eager_amp``.
    """
    from ..train.loss import weighted_cross_entropy

    dev = timing.bench_device(device)
    config = UNetConfig(base_channels=base_channels, depth=depth)
    out = geometry.output_size(tile, config.depth)
    first = ReferenceUNet(config)
    second = ReferenceUNet(config)
    second.load_state_dict(first.state_dict())
    models = {k: m.to(dev).to(memory_format=torch.channels_last).train() for k, m in (("fused", first), ("eager", second))}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.99) for k, m in models.items()}

    def inputs():
        x = torch.randn(batch, 1, tile, tile, device=dev).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, config.num_classes, (batch, out, out), device=dev, dtype=torch.uint8)
        weight = torch.rand(batch, out, out, device=dev) * 10
        return x, target, weight

    def step(kind):
        model, opt, backend = models[kind], opts[kind], ("triton" if kind == "fused" else "torch")

        def train_step(x, target, weight):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                logits = model(x)
            weighted_cross_entropy(logits, target, weight, backend=backend).backward()
            opt.step()
        return train_step

    runs = dict(warmup=warmup, reps=reps, device=dev)
    t_fused = timing.median_ms(step("fused"), make_inputs=inputs, **runs)
    t_eager = timing.median_ms(step("eager"), make_inputs=inputs, **runs)
    return ({"P6.fused_ms": t_fused, "P6.eager_amp_ms": t_eager}, {"P6.vs_eager_amp": t_eager / t_fused})
