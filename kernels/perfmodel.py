"""A performance model of the kernels on an H200: predicted times, never measurements.

It ranks the configs of a kernel for a launch (``FASTUNET_AUTOTUNE=0`` launches the first
without benchmarking), and ``benchmarks/compile_report.py`` checks its per-step traffic
against the compiled code (the wgmma and TMA/cp.async instructions in the PTX) and turns it
into per-layer times and the P1/P2 predictions. Pure Python (no torch, no triton).

A tiled GEMM-like kernel is a sequence of K steps per output tile. A step moves
``l2_bytes`` from L2 into shared memory (TMA boxes or cp.async copies; both bypass L1),
its warp-group dots read ``smem_read`` bytes of operands from shared memory, and it does
``flops`` multiply-adds x 2. A step of one CTA on its SM takes the longest of

* tensor cores: ``flops / (matmul rate / SMs)``: the measured bf16 matmul rate (the
  denominator of P2) is taken as the ceiling, so no kernel is predicted above 100 %;
* shared memory: ``(l2_bytes + smem_read) / (128 B/clock x clock)``;
* L2: ``l2_bytes / (L2-to-SM bandwidth / SMs)`` (all SMs loading at once);
* latency: ``latency / ((stages - 1) x CTAs per SM)`` (the loads of a step are issued
  ``stages - 1`` steps ahead);

The epilogue's stores (asynchronous) share the L2 bandwidth with the loads: a tile's output
bytes are spread over its steps. A tile adds its pipeline fill (the first loads' latency, the
last dots' drain, the epilogue's arithmetic), divided by the CTAs an SM holds (one CTA's
fill overlaps another's main loop). A launch of ``T`` tiles on ``SMs x c`` slots takes
``ceil(T / (SMs c)) x c x t_tile`` (whole waves), and at least its compulsory HBM traffic
over the HBM bandwidth; plus a launch gap.

Every constant is a range (``low``: the pessimistic end, ``high``: the optimistic one) with
its source in ``benchmarks/NOTES.md`` (v4); :func:`device` gives one scenario.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = [
    "Device", "H200", "device", "Step", "Layer", "warp_split", "wgmma_smem_reads", "rowrun_step", "pointer_step",
    "gemm_step", "occupancy", "launch_time", "streaming_fraction", "split_rem", "SCENARIOS",
]

SCENARIOS = ("low", "high")


@dataclass(frozen=True)
class Device:
    """One scenario of the device model (see ``benchmarks/NOTES.md`` v4 for the sources)."""

    name: str
    sms: int  # streaming multiprocessors
    matmul_flops: float  # measured dense bf16 matmul rate: the P2 denominator and the tensor ceiling
    tensor_flop_per_clock: float  # dense bf16/fp16 per SM per clock
    smem_bytes_per_clock: float  # shared-memory bandwidth per SM per clock
    clock_hz: float  # the clock of the shared-memory figure
    l2_bytes_per_s: float  # L2 -> SM, all SMs together
    hbm_bytes_per_s: float  # achievable (a device copy, read + write counted)
    smem_per_sm: int  # bytes of shared memory on an SM (a block may use 1 KiB less)
    smem_per_block: int  # the most one block may use (227 KiB)
    registers_per_sm: int
    threads_per_sm: int
    latency_s: float  # L2/TMA load latency a pipeline must cover
    fill_s: float  # a tile's pipeline fill and wgmma drain, paid once per tile
    launch_s: float  # gap between two kernels of a stream (no CUDA graph)
    hbm_latency_s: float  # what a streaming kernel's loads in flight must cover

    @property
    def tensor_flops_per_sm(self) -> float:
        return self.matmul_flops / self.sms

    @property
    def smem_bytes_per_s_per_sm(self) -> float:
        return self.smem_bytes_per_clock * self.clock_hz

    @property
    def l2_bytes_per_s_per_sm(self) -> float:
        return self.l2_bytes_per_s / self.sms


# The pessimistic scenario. The shared-memory clock is the one at which the measured matmul
# rate is the tensor cores' full rate (790e12 / (132 x 4096) = 1.46 GHz): if the matmul falls
# short of NVIDIA's 989 TFLOP/s only because the clock drops under load, shared memory
# drops with it.
H200 = Device(
    name="H200 SXM (model, low)", sms=132, matmul_flops=790e12, tensor_flop_per_clock=4096,
    smem_bytes_per_clock=128, clock_hz=790e12 / (132 * 4096), l2_bytes_per_s=7.9e12, hbm_bytes_per_s=4.1e12,
    smem_per_sm=233472, smem_per_block=232448, registers_per_sm=65536, threads_per_sm=2048,
    latency_s=0.8e-6, fill_s=1.0e-6, launch_s=4e-6, hbm_latency_s=0.8e-6,
)
_HIGH = dict(name="H200 SXM (model, high)", clock_hz=1.83e9, l2_bytes_per_s=9.4e12, hbm_bytes_per_s=4.3e12,
             latency_s=0.5e-6, fill_s=0.5e-6, launch_s=2e-6, hbm_latency_s=0.6e-6)


def device(scenario: str = "low") -> Device:
    """The H200 model in the ``low`` (pessimistic) or ``high`` (optimistic) scenario."""
    if scenario == "low":
        return H200
    if scenario == "high":
        return replace(H200, **_HIGH)
    raise ValueError(f"Expected a scenario among {SCENARIOS}; got {scenario!r}.")


@dataclass(frozen=True)
class Step:
    """One K step of one CTA: FLOPs, bytes from L2 into shared memory, operand bytes the
    warp-group dots read from shared memory."""

    flops: float
    l2_bytes: float
    smem_read: float

    @property
    def smem_bytes(self) -> float:
        return self.l2_bytes + self.smem_read


def warp_split(m: int, num_warps: int) -> tuple[int, int]:
    """Warps along M and N of a warp-group dot with ``m`` rows, as triton assigns them on
    Hopper (start with 4 x 1; double M while it has rows for 16 more per warp, else N)."""
    wm, wn = 4, 1
    while wm * wn < num_warps:
        if m > 16 * wm:
            wm *= 2
        else:
            wn *= 2
    return wm, wn


def wgmma_smem_reads(m: int, n: int, k: int, num_warps: int, element_size: int, a_in_smem: bool = True) -> float:
    """Bytes the wgmma instructions of one ``m x n x k`` dot read from shared memory: each
    instruction is ``m64 n(n / warps along N) k16``; A (64 x 16) and B (16 x n / wn) per
    instruction; A not counted when it comes from registers."""
    _, wn = warp_split(m, num_warps)
    instructions = max(m // 64, 1) * wn * (k // 16)
    a = 64 * 16 * element_size if a_in_smem else 0
    return instructions * (a + 16 * (n // wn) * element_size)


def rowrun_step(r: int, bw: int, bn: int, bk: int, num_warps: int, element_size: int = 2, planes: int = 1) -> Step:
    """A K step of the TMA row-run conv loop (:mod:`fastunet.kernels.rowrun`, 2D or 3D): ``R = 1``:
    one A box, one weight box, one dot; ``R >= 2``: ``R / planes + 2`` A boxes for each of
    the tile's ``planes`` (Z planes, 3D), 3 weight boxes, ``3 R`` dots of ``bw x bn x bk``."""
    dots, a_boxes, w_boxes = (1, 1, 1) if r == 1 else (3 * r, planes * (r // planes + 2), 3)
    l2 = (a_boxes * bw * bk + w_boxes * bk * bn) * element_size
    return Step(flops=dots * 2.0 * bw * bn * bk, l2_bytes=l2,
                smem_read=dots * wgmma_smem_reads(bw, bn, bk, num_warps, element_size))


def pointer_step(bm: int, bn: int, bk: int, num_warps: int, element_size: int = 2) -> Step:
    """A K step of a pointer (cp.async) GEMM loop: one ``bm x bk`` and one ``bk x bn`` tile,
    one dot (the v2 conv loop, the up-conv and head row GEMMs)."""
    return Step(flops=2.0 * bm * bn * bk, l2_bytes=(bm + bn) * bk * element_size,
                smem_read=wgmma_smem_reads(bm, bn, bk, num_warps, element_size))


gemm_step = pointer_step  # a TMA GEMM step (the calibration matmul) moves the same bytes


def occupancy(dev: Device, smem_bytes: int, num_warps: int, registers: int) -> int:
    """CTAs one SM holds: shared memory (1 KiB reserved per block), registers, threads."""
    by_smem = dev.smem_per_sm // (smem_bytes + 1024) if smem_bytes else 32
    by_regs = dev.registers_per_sm // (max(registers, 1) * 32 * num_warps)
    by_threads = dev.threads_per_sm // (32 * num_warps)
    return max(min(by_smem, by_regs, by_threads, 32), 0)


@dataclass(frozen=True)
class Layer:
    """The launch a prediction is for: tiles, K steps a tile, its step, bytes a tile writes,
    compulsory HBM bytes, useful FLOPs (the network's, without padding or masked pixels)."""

    tiles: int
    steps: int
    step: Step
    out_bytes_per_tile: float
    hbm_bytes: float
    useful_flops: float
    smem_bytes: int  # shared memory of one CTA
    num_warps: int
    num_stages: int
    registers: int
    fills_per_tile: float = 1.0  # a persistent kernel that flattens its tile loop fills once a program
    split: int = 1  # K split over the last wave: programs for each of its tiles (a what-if, not built)
    split_tiles: int = 0  # tiles of the last wave run split (split_rem)
    partial_bytes: float = 0.0  # fp32 partial sums of one tile (what a split program stores)


def split_rem(tiles: int, slots: int, steps: int, split: int) -> int:
    """How many tiles of a launch would run split in ``split`` parts of their K steps (0: none):
    those of a last wave that fills at most ``1 / split`` of the GPU's ``slots`` (CTAs at once),
    so that their parts fit one wave; each part at least 2 steps (stream-K of the last wave; a
    what-if of the model: no kernel runs it)."""
    if split <= 1 or steps < 2 * split or slots <= 0:
        return 0
    rem = tiles % slots
    return rem if rem and rem * split <= slots else 0


def launch_time(layer: Layer, dev: Device) -> dict:
    """Predicted seconds of one launch and which limit binds, with each ceiling."""
    c = occupancy(dev, layer.smem_bytes, layer.num_warps, layer.registers)
    if c == 0:
        return dict(seconds=math.inf, bound="does not fit", ctas_per_sm=0)
    s = layer.step
    limits = {
        "tensor": s.flops / dev.tensor_flops_per_sm,
        "smem": s.smem_bytes / dev.smem_bytes_per_s_per_sm,
        "l2": (s.l2_bytes + layer.out_bytes_per_tile / layer.steps) / dev.l2_bytes_per_s_per_sm,
        "latency": dev.latency_s / (max(layer.num_stages - 1, 1) * c) if layer.steps > 1 else 0.0,
    }
    t_step = max(limits.values())
    overhead = dev.fill_s * layer.fills_per_tile / c
    t_tile = layer.steps * t_step + overhead
    split_tiles = layer.split_tiles if layer.split > 1 else 0
    full, rest = divmod(layer.tiles - split_tiles, dev.sms * c)
    waves = full + (rest > 0) + (split_tiles > 0)
    t_compute = full * c * t_tile
    work = float(full)  # waves the launch takes the time of (a split wave: 1 / split)
    for units, steps, split in ((rest, layer.steps, False),
                                (split_tiles * layer.split, -(-layer.steps // max(layer.split, 1)), True)):
        if not units:
            continue
        # a last wave: its SMs share the L2 bandwidth among fewer
        active = min(units, dev.sms)
        per_cta = max(1, math.ceil(units / dev.sms))
        l2_share = dev.l2_bytes_per_s / active
        t_last = max(limits["tensor"], limits["smem"], limits["latency"] * c / per_cta,
                     (s.l2_bytes + layer.out_bytes_per_tile / layer.steps) / l2_share)
        t_compute += per_cta * (steps * t_last) + dev.fill_s * min(layer.fills_per_tile * per_cta, 1.0)
        work += 1.0 / layer.split if split else 1.0  # a split wave: parts of its tiles' steps
        if split:  # split units: partials stored, then read back by the last of each tile
            t_compute += (layer.split + 1) * layer.partial_bytes / dev.l2_bytes_per_s_per_sm + dev.latency_s
    t_hbm = layer.hbm_bytes / dev.hbm_bytes_per_s
    bound = max(limits, key=limits.get) if t_compute >= t_hbm else "hbm"
    seconds = max(t_compute, t_hbm) + dev.launch_s
    ceilings = {k: (s.flops / v if v else math.inf) * dev.sms for k, v in limits.items()}  # FLOP/s over the GPU
    return dict(
        seconds=seconds, bound=bound, ctas_per_sm=c, waves=waves, step_seconds=t_step,
        tile_overhead_seconds=overhead, hbm_seconds=t_hbm, compute_seconds=t_compute,
        ceilings_tflops={k: round(v / 1e12, 1) for k, v in ceilings.items()},
        wave_efficiency=layer.tiles / (max(work, 1e-9) * dev.sms * c),
        tflops=layer.useful_flops / seconds / 1e12,
        fraction=layer.useful_flops / seconds / dev.matmul_flops,
    )


def streaming_fraction(dev: Device, bytes_total: float, bytes_per_program: float, programs: int,
                       programs_per_sm: int, kernels: int = 1) -> float:
    """Predicted fraction of the copy bandwidth a streaming kernel reaches: Little's law
    (the loads in flight on an SM against the HBM bandwidth share times the latency), the
    whole waves of programs, and the fixed latency and launch gaps of ``kernels`` kernels."""
    resident = max(min(programs_per_sm, math.ceil(programs / dev.sms)), 1)
    in_flight = resident * bytes_per_program
    needed = dev.hbm_bytes_per_s / dev.sms * dev.hbm_latency_s
    rate = dev.hbm_bytes_per_s * min(1.0, in_flight / needed)
    t = bytes_total / rate + dev.hbm_latency_s + kernels * dev.launch_s
    return bytes_total / dev.hbm_bytes_per_s / t
