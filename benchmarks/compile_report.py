"""What the Triton kernels compile to on Hopper, without a GPU (CPU only).

Every kernel variant that the paper network (base 64, depth 4, tiles 572 and 1052) and the
bundled default model (``fastunet/models/default.safetensors``: base 16, depth 3) launch,
for every dtype path and every autotune config kept for it, is compiled for sm_90a with
triton's own toolchain (``triton.compile`` of an ``ASTSource``, target
``GPUTarget("cuda", 90, 32)``; ptxas bundled with triton). Per variant it records, from
the TTGIR: the K loops (``scf.for`` holding a dot), and inside them the asynchronous copies
(cp.async: ``ttg.async_copy_global_to_local``; TMA: ``ttng.async_tma_copy_global_to_local``),
plain loads and warp-group dots (``ttng.warp_group_dot``: wgmma); from the compiled kernel
its shared memory; from ptxas ``-v`` (triton's own ptxas run, its log captured) registers,
spill stores/loads and stack frame; and the wall time of the compile.

A variant is what triton compiles once: the kernel, its constexprs (flags, block shapes),
warps and stages, and the specialisation of its integer and pointer arguments (an integer
equal to 1 becomes a constant, one divisible by 16 is marked so). The launches are recorded
from the real launchers (``conv3x3``, ``upconv2x2``, ``conv3x3_head`` / ``head``, as
``FusedUNet`` calls them) on meta tensors, so arguments and specialisation are exactly what a
GPU run would pass; sizes matter only through that specialisation.

    python benchmarks/compile_report.py --quick       # bf16 variants of the paper network
    python benchmarks/compile_report.py               # everything (fp32 "ieee" takes long)

Writes ``benchmarks/results/compile-<date>-<mode>.json`` and the table between the
``compile-table`` markers of ``benchmarks/README.md``. Compile times are this machine's (a
CPU), not GPU figures; nothing here runs a kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret (set before triton is imported)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # model_report, roofline (also in the compiling processes)
BEGIN, END = "<!-- compile-table:begin -->", "<!-- compile-table:end -->"
H200_SHARED_MEMORY = 232448  # bytes a block may use on Hopper (227 KiB, opt-in)
DTYPE_PATHS = ("bf16", "fp16", "tf32", "fp32")
OUTPUTS = {"logits": ("logits",), "labels": ("labels",), "both": ("probs", "labels")}
NETWORKS = {  # name: (UNetConfig kwargs, tiles, batch): the engine's batch on CUDA (the model's config depends on it)
    "paper": (dict(in_channels=1, num_classes=2, base_channels=64, depth=4), (572, 1052), 4),
    # the default model's training tile, and the tile of the engine's 512-pixel step
    "default": (dict(in_channels=1, num_classes=2, base_channels=16, depth=3), (316, 604), 8),
    # 3D networks (their tiles: one edge per axis; on CUDA the engine calls a 3D network without batching)
    # the bundled 3D model: its training tile, and the tile of a 128-voxel step
    "3d": (dict(in_channels=1, num_classes=2, base_channels=16, depth=2, spatial_dims=3, pools=((1, 2, 2), (2, 2, 2))),
           ((42, 76, 76), (90, 164, 164)), 4),
    # Cicek et al. (2016): 3 channels in, 3 classes, 132 x 132 x 116 -> 44 x 44 x 28 (fastunet's widths)
    "cicek": (dict(in_channels=3, num_classes=3, base_channels=32, depth=3, spatial_dims=3), ((116, 132, 132),), 1),
}
BEGIN_3D, END_3D = "<!-- compile3d-table:begin -->", "<!-- compile3d-table:end -->"


# -- the launches of one forward pass -----------------------------------------------------------
def network_layers(config, tile: int) -> list[dict]:
    """The kernel launches of a FusedUNet forward at input ``tile``, in order, read off
    :func:`fastunet.geometry.layer_shapes`: the 3x3 convs (each max-pool is fused into the conv
    before it), the up-convs, and the last decoder conv with the head (FusedUNet fuses them)."""
    from fastunet import geometry

    layers = []
    for layer in geometry.layer_shapes(config, tile):
        size = layer.in_size[0]
        if layer.kind == "upconv":
            layers.append(dict(kind="upconv", name=f"up{layer.level}", size=size, c_a=layer.c_in, c_out=layer.c_out))
        elif layer.kind != "conv3x3":
            continue  # pools are fused into the conv before them, the head into the one after
        elif layer.c_skip:  # two sources: the cropped skip, then the up-conv output
            layers.append(dict(kind="conv", name=layer.name, size=size, c_a=layer.c_skip,
                               c_b=layer.c_in - layer.c_skip, c_out=layer.c_out, skip=layer.skip_size[0]))
        elif layer.name == "dec0.conv2":
            layers.append(dict(kind="head", name=layer.name, size=size, c_a=layer.c_in, c_out=layer.c_out,
                               classes=config.num_classes))
        else:
            layers.append(dict(kind="conv", name=layer.name, size=size, c_a=layer.c_in, c_out=layer.c_out,
                               **({"pool": True} if layer.pool else {})))
    return layers


def _kernels():
    from fastunet.kernels import conv, conv_head, head, upconv

    return conv, upconv, head, conv_head


def _kernels_3d():
    from fastunet.kernels import conv3d, upconv3d

    return conv3d, upconv3d


def _rowconv():
    from fastunet.kernels import rowconv

    return rowconv


def network_layers_3d(config, tile: tuple) -> list[dict]:
    """The kernel launches of a FusedUNet3D forward at input ``tile`` (Z, Y, X), as
    :func:`network_layers` reads them off :func:`fastunet.geometry.layer_shapes`."""
    from fastunet import geometry

    layers = []
    for layer in geometry.layer_shapes(config, tile):
        size = layer.in_size
        if layer.kind == "upconv":
            layers.append(dict(kind="upconv", name=f"up{layer.level}", size=size, c_a=layer.c_in, c_out=layer.c_out,
                               factor=layer.factor))
        elif layer.kind != "conv3x3":
            continue
        elif layer.c_skip:
            layers.append(dict(kind="conv", name=layer.name, size=size, c_a=layer.c_skip,
                               c_b=layer.c_in - layer.c_skip, c_out=layer.c_out, skip=layer.skip_size))
        elif layer.name == "dec0.conv2":
            layers.append(dict(kind="head", name=layer.name, size=size, c_a=layer.c_in, c_out=layer.c_out,
                               classes=config.num_classes))
        else:
            layers.append(dict(kind="conv", name=layer.name, size=size, c_a=layer.c_in, c_out=layer.c_out,
                               pool=layer.factor if layer.pool else None))
    return layers


def record_launches_3d(config, tile: tuple, batch: int, dtype: str, outputs: tuple[str, ...]) -> list[tuple]:
    """(layer name, kernel, args, meta) of every launch of one 3D forward, with meta tensors."""
    import torch

    from fastunet.kernels import head as head_module
    from fastunet.kernels._utils import compute_dtype

    conv3d, upconv3d = _kernels_3d()
    st, _ = compute_dtype(dtype)
    meta = lambda *shape, dt=st: torch.empty(shape, device="meta", dtype=dt)  # noqa: E731
    out = []
    for layer in network_layers_3d(config, tile):
        n, s, c_a, c_out = batch, layer["size"], layer["c_a"], layer["c_out"]
        with recording() as rec:
            if layer["kind"] == "upconv":
                f = layer["factor"]
                upconv3d.upconv3d(meta(n, *s, c_a), meta(c_a, 4 * f[0] * c_out), meta(c_out, dt=torch.float32),
                                  factor=f, dtype=dtype)
            elif layer["kind"] == "head" and conv3d.can_fuse_head(c_out, layer["classes"]):
                k, o = layer["classes"], tuple(v - 2 for v in s)
                conv3d.conv3x3x3_head(
                    meta(n, *s, c_a), meta(27 * c_a, c_out), meta(c_out, dt=torch.float32), meta(c_out, k),
                    meta(k, dt=torch.float32), dtype=dtype,
                    **{name: meta(n, *o, dt=torch.uint8) if name == "labels" else
                       meta(n, k, *o, dt=torch.float32 if name == "logits" else torch.float16) for name in outputs})
            else:
                c_b, skip = layer.get("c_b", 0), layer.get("skip")
                x = meta(n, *(skip or s), c_a)
                up = meta(n, *s, c_b) if c_b else None
                conv3d.conv3x3x3(x, meta(27 * (c_a + c_b), c_out), meta(c_out, dt=torch.float32), up=up,
                                 pool=layer.get("pool"), dtype=dtype)
                if layer["kind"] == "head":  # more classes or channels than one tile: the 2D head on a view
                    k, o = layer["classes"], tuple(v - 2 for v in s)
                    head_module.head(meta(n, o[0] * o[1], o[2], c_out), meta(c_out, k), meta(k, dt=torch.float32),
                                     dtype=dtype, **{name: meta(n, o[0] * o[1], o[2], dt=torch.uint8) if name == "labels"
                                                     else meta(n, k, o[0] * o[1], o[2]) for name in outputs})
        out += [(layer["name"], kernel, args, kmeta) for kernel, args, kmeta in rec.calls]
    return out


class _Recorder:
    """Stands in for ``_utils.launch`` in the kernel modules: records instead of launching."""

    def __init__(self):
        self.calls = []

    def __call__(self, kernel, grid, args, meta, config=None, **options):
        self.calls.append((kernel, args, meta))


@contextlib.contextmanager
def recording():
    rec = _Recorder()
    modules = (*_kernels(), *_kernels_3d(), _rowconv())
    saved = [m.launch for m in modules]
    for m in modules:
        m.launch = rec
    try:
        yield rec
    finally:
        for m, launch in zip(modules, saved):
            m.launch = launch


def record_launches(config, tile: int, batch: int, dtype: str, outputs: tuple[str, ...]) -> list[tuple]:
    """(layer name, kernel, args, meta) of every launch of one forward, with meta tensors."""
    import torch

    conv, upconv, head, conv_head = _kernels()
    from fastunet.kernels._utils import compute_dtype

    st, _ = compute_dtype(dtype)
    meta = lambda *shape, dt=st: torch.empty(shape, device="meta", dtype=dt)  # noqa: E731
    out = []
    for layer in network_layers(config, tile):
        n, s, c_a, c_out = batch, layer["size"], layer["c_a"], layer["c_out"]
        with recording() as rec:
            if layer["kind"] == "upconv":
                upconv.upconv2x2(meta(n, s, s, c_a), meta(c_a, 4 * c_out), meta(c_out, dt=torch.float32), dtype=dtype)
            elif layer["kind"] == "head" and conv_head.can_fuse(c_out, layer["classes"]):
                k, o = layer["classes"], s - 2
                conv_head.conv3x3_head(
                    meta(n, s, s, c_a), meta(9 * c_a, c_out), meta(c_out, dt=torch.float32),
                    meta(c_out, k), meta(k, dt=torch.float32), dtype=dtype,
                    **{name: meta(n, o, o, dt=torch.uint8) if name == "labels" else
                       meta(n, k, o, o, dt=torch.float32 if name == "logits" else torch.float16) for name in outputs},
                )
            else:  # a conv (and an unfused head after it)
                c_b, skip = layer.get("c_b", 0), layer.get("skip", 0)
                x = meta(n, skip or s, skip or s, c_a)
                up = meta(n, s, s, c_b) if c_b else None
                conv.conv3x3(x, meta(9 * (c_a + c_b), c_out), meta(c_out, dt=torch.float32), up=up,
                             pool=layer.get("pool", False), dtype=dtype)
                if layer["kind"] == "head":
                    k, o = layer["classes"], s - 2
                    head.head(meta(n, o, o, c_out), meta(c_out, k), meta(k, dt=torch.float32), dtype=dtype,
                              **{name: meta(n, o, o, dt=torch.uint8) if name == "labels" else
                                 meta(n, k, o, o, dt=torch.float32 if name == "logits" else torch.float16)
                                 for name in outputs})
        out += [(layer["name"], kernel, args, kmeta) for kernel, args, kmeta in rec.calls]
    return out


def kept_configs(kernel, args: dict, meta: dict) -> list:
    """The autotune configs the kernel's prune function keeps on an H200 (all of them: the
    report covers autotuning, not FASTUNET_AUTOTUNE=0, whose one config is the first)."""
    conv, upconv, head, conv_head = _kernels()
    dt = next(a.dtype for a in args.values() if hasattr(a, "dtype"))
    if kernel is conv.conv3x3_kernel:
        return conv.pointer_configs_for(conv_shape_of(kernel, args, meta), dt, meta["PRECISION"],
                                        shared_memory=H200_SHARED_MEMORY)
    rowconv = _rowconv()
    if kernel is rowconv.conv_rowrun_kernel:  # 2D and 3D: the autotuner times the model's best few
        return rowconv.ranked(conv_shape_of(kernel, args, meta))[:rowconv.AUTOTUNE_TOP]
    if kernel is conv_head.conv_head_rowrun_kernel:
        d_in = args["D_OUT"] + 2 if meta.get("KD") == 3 else 0
        s = conv.ConvShape(args["N"], args["H_OUT"] + 2, args["W_OUT"] + 2, args["C_IN"], 0, args["C_MID"], d_in=d_in)
        return conv_head.rowrun_configs_for(s)[:rowconv.AUTOTUNE_TOP]
    if kernel is conv_head.conv3x3_head_kernel:
        return conv_head.configs_for(dt, args["C_MID"], meta["PRECISION"], shared_memory=H200_SHARED_MEMORY)
    if kernel is upconv.upconv2x2_kernel:
        return upconv.configs_for(dt, shared_memory=H200_SHARED_MEMORY, precision=meta["PRECISION"])
    if kernel is head.head_kernel:
        return head.configs_for()
    conv3d, upconv3d = _kernels_3d()
    if kernel is conv3d.conv3x3x3_kernel:
        return conv3d.configs_for(dt, meta["PRECISION"], shared_memory=H200_SHARED_MEMORY, packed=meta["K_PACKED"])
    if kernel is conv3d.conv3x3x3_head_kernel:
        return conv3d.head_configs_for(dt, args["C_MID"], meta["PRECISION"], shared_memory=H200_SHARED_MEMORY)
    if kernel is upconv3d.upconv3d_kernel:
        return upconv3d.configs_for(dt, meta["PRECISION"], shared_memory=H200_SHARED_MEMORY)
    raise ValueError(f"no config rule for {kernel.fn.__name__}")


def conv_shape_of(kernel, args: dict, meta: dict):
    """The :class:`~fastunet.kernels.conv.ConvShape` of a recorded conv launch (either main loop;
    the row-run kernel's 2D or 3D)."""
    conv = _kernels()[0]
    x = args["a_desc"].base if "a_desc" in args else args["a_ptr"]
    d_in = args["D_OUT"] + 2 if meta.get("KD") == 3 else 0
    return conv.ConvShape(x.shape[0], args["H_OUT"] + 2, args["W_OUT"] + 2, args["C_A"], args["C_B"], args["C_OUT"],
                          bool(meta["POOL"]), bool(meta["WRITE_Y"]), args["y_ptr"].element_size(),
                          meta.get("K_PACKED", 0), d_in, meta.get("POOL_D", 1))


def variant_spec(kernel, args: tuple, meta: dict, config) -> dict:
    """What triton compiles for this launch and config: signature, constexprs, attributes
    (divisibility by 16), warps, stages; integers and pointers specialised as the JIT does."""
    import torch
    from triton.runtime.jit import mangle_type

    fn = kernel.fn
    names = fn.arg_names
    if config.pre_hook is not None:  # the descriptors' boxes follow the config (the JIT mangles them)
        config.pre_hook({**dict(zip(names, args)), **meta, **config.kwargs})
    keep_generic = set(getattr(fn, "do_not_specialize", ()) or ())
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(names, args)):
        generic = name in keep_generic or i in keep_generic
        kind = mangle_type(value, not generic)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif not generic and (isinstance(value, torch.Tensor) or (isinstance(value, int) and value % 16 == 0)):
            attrs[str(i)] = [["tt.divisibility", 16]]  # tensors: the caching allocator aligns them
    every = {**meta, **config.kwargs}
    for name in names[len(args):]:
        signature[name] = "constexpr"
        constexprs[name] = every[name]
    return dict(module=fn.__module__, kernel=fn.__name__, signature=signature, constexprs=constexprs,
                attrs=attrs, num_warps=config.num_warps, num_stages=config.num_stages)


def variant_key(spec: dict) -> str:
    return json.dumps([spec[k] for k in ("module", "kernel", "signature", "constexprs", "attrs", "num_warps",
                                         "num_stages")], sort_keys=True, default=str)


def collect_variants(networks: dict, dtypes, outputs, first_only: bool = False) -> list[dict]:
    """Unique variants over networks, tiles, dtype paths and head outputs, each with the layers
    that launch it; ``first_only``: each launch's first kept config (the one it runs with
    ``FASTUNET_AUTOTUNE=0``: the model's first for the row-run conv)."""
    from fastunet import UNetConfig

    found: dict[str, dict] = {}
    for net, (cfg, tiles, batch) in networks.items():
        config = UNetConfig(**cfg)
        launches = record_launches_3d if config.spatial_dims == 3 else record_launches
        for tile in tiles:
            for dtype in dtypes:
                for output in outputs:
                    for layer, kernel, args, meta in launches(config, tile, batch, dtype, OUTPUTS[output]):
                        named = dict(zip(kernel.fn.arg_names, args))
                        kept = kept_configs(kernel, named, meta)
                        for config_ in kept[:1] if first_only else kept:
                            spec = variant_spec(kernel, args, meta, config_)
                            entry = found.setdefault(variant_key(spec), dict(spec=spec, dtype=dtype, layers=[]))
                            where = f"{net}@{'x'.join(map(str, tile)) if isinstance(tile, tuple) else tile}:{layer}"
                            if where not in entry["layers"]:
                                entry["layers"].append(where)
    return list(found.values())


# -- compiling and reading the compiled code -----------------------------------------------------
_OPS = {  # what to count in the TTGIR, by op name
    "async_copies": "ttg.async_copy_global_to_local",
    "tma_loads": "ttng.async_tma_copy_global_to_local",
    "sync_loads": "tt.load",
    "wgmma": "ttng.warp_group_dot",
    "dots": "tt.dot",
    "waits": "ttg.async_wait",
}
_OP_RE = re.compile(r"=\s*([a-z_]+\.[a-z_0-9.]+)\b|^\s*([a-z_]+\.[a-z_0-9.]+)\b")


def inspect_ttgir(ttgir: str) -> dict:
    """Loops and the ops inside them. A K loop is an ``scf.for`` whose body holds a dot
    (``tt.dot`` or a warp-group dot); ops in nested regions count for their innermost loop."""
    loops, outside, stack = [], dict.fromkeys(_OPS, 0), []
    for line in ttgir.splitlines():
        match = _OP_RE.search(line)
        op = (match.group(1) or match.group(2)) if match else None
        opens = line.count("{") - line.count("}")
        if op:
            counts = next((loops[i] for kind, i in reversed(stack) if kind == "for"), outside)
            for name, target in _OPS.items():
                if op == target:
                    counts[name] += 1
        if opens > 0:
            if op == "scf.for":
                loops.append(dict.fromkeys(_OPS, 0))
                stack.append(("for", len(loops) - 1))
            else:
                stack += [("region", -1)] * opens
        elif opens < 0:
            del stack[len(stack) + opens:]
    k_loops = [lp for lp in loops if lp["dots"] or lp["wgmma"]]
    return dict(
        loops=len(loops),
        k_loops=len(k_loops),
        loop_async_copies=sum(lp["async_copies"] for lp in k_loops),
        loop_tma_loads=sum(lp["tma_loads"] for lp in k_loops),
        loop_sync_loads=sum(lp["sync_loads"] for lp in k_loops),
        loop_wgmma=sum(lp["wgmma"] for lp in k_loops),
        loop_dots=sum(lp["dots"] for lp in k_loops),
        wgmma=outside["wgmma"] + sum(lp["wgmma"] for lp in loops),
        dots=outside["dots"] + sum(lp["dots"] for lp in loops),
        async_copies=outside["async_copies"] + sum(lp["async_copies"] for lp in loops),
        tma_loads=outside["tma_loads"] + sum(lp["tma_loads"] for lp in loops),
        waits=outside["waits"] + sum(lp["waits"] for lp in loops),
        per_loop=k_loops,
    )


def parse_ptxas(log: str) -> dict:
    """Registers, spills and stack frame from a ``ptxas -v`` log (one kernel)."""
    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return dict(
        registers=grab(r"Used (\d+) registers"),
        spill_stores=grab(r"(\d+) bytes spill stores"),
        spill_loads=grab(r"(\d+) bytes spill loads"),
        stack_frame=grab(r"(\d+) bytes stack frame"),
    )


def _init_worker() -> None:
    """Each worker compiles without a cache hit (every compile is timed from scratch, and ptxas
    runs, so its log can be read) and warms triton up on a trivial kernel first."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def _warm(x_ptr):
        tl.store(x_ptr, 1.0)

    src = triton.compiler.ASTSource(fn=_warm, signature={"x_ptr": "*fp32"})
    with tempfile.TemporaryDirectory(prefix="fastunet-compile-") as cache, contextlib.redirect_stdout(io.StringIO()):
        os.environ["TRITON_CACHE_DIR"] = cache
        triton.compile(src, target=GPUTarget("cuda", 90, 32))


def compile_variant(spec: dict) -> dict:
    """Compile one variant for sm_90a; its TTGIR facts, ptxas figures, shared memory, seconds."""
    import importlib
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget

    if spec.get("file"):  # a kernel outside the package (the calibration's tutorial kernel)
        module_spec = importlib.util.spec_from_file_location(spec["module"], spec["file"])
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(spec["module"])
    kernel = getattr(module, spec["kernel"])
    from triton.runtime.jit import JITFunction

    fn = kernel if isinstance(kernel, JITFunction) else kernel.fn  # a JITFunction, or the autotuner's
    attrs = {(int(i),): v for i, v in spec["attrs"].items()}
    src = triton.compiler.ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="fastunet-compile-") as cache:  # an empty cache: never a hit
        os.environ["TRITON_CACHE_DIR"] = cache
        wall, cpu = time.perf_counter(), _cpu_seconds()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options=dict(num_warps=spec["num_warps"], num_stages=spec["num_stages"]))
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    from model_report import ptx_loops

    return dict(inspect_ttgir(compiled.asm["ttgir"]), **parse_ptxas(log.getvalue()),
                ptx_loops=ptx_loops(compiled.asm["ptx"], spec["num_warps"]),
                shared_bytes=compiled.metadata.shared, compile_seconds=round(wall, 2), compile_cpu_seconds=round(cpu, 2))


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children (ptxas): unlike wall
    time, not inflated when other work shares the cores."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def compile_all(variants: list[dict], jobs: int) -> list[dict]:
    specs = [v["spec"] for v in variants]
    if jobs <= 1:
        _init_worker()
        results = [compile_variant(s) for s in specs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker) as pool:
            results = list(pool.map(compile_variant, specs))
    return [dict(v, **r) for v, r in zip(variants, results)]


# -- the report ----------------------------------------------------------------------------------
def group_of(spec: dict) -> str:
    """A short name for the code path of a variant (its flags, not its block shapes)."""
    c, kernel = spec["constexprs"], spec["kernel"]
    outputs = "+".join(o for o in ("logits", "probs", "labels") if c.get(f"WRITE_{o.upper()}"))
    if kernel == "conv_rowrun_kernel" and c.get("KD") == 3:
        name = "TMA conv 3x3x3, 2 sources" if c["HAS_B"] else "TMA conv 3x3x3"
        return name + (f", pool {c['POOL_D']}x2x2" if c["POOL"] else "")
    if kernel in ("conv3x3_kernel", "conv_rowrun_kernel"):
        name = "conv, 2 sources" if c["HAS_B"] else "conv"
        name = ("TMA " if kernel == "conv_rowrun_kernel" else "") + name
        name += ", pool" if c["POOL"] else ""
        name += f", packed K {c['K_PACKED']}" if c.get("K_PACKED") else ""
        return name + ("" if c["RELU"] else ", no ReLU") + ("" if c["WRITE_Y"] else ", pooled only")
    if kernel == "conv_head_rowrun_kernel" and c.get("KD") == 3:
        return f"TMA conv 3x3x3 + head ({outputs})"
    if kernel in ("conv3x3_head_kernel", "conv_head_rowrun_kernel"):
        return ("TMA " if "rowrun" in kernel else "") + f"conv + head ({outputs})"
    if kernel == "head_kernel":
        return f"head ({outputs})"
    if kernel == "conv3x3x3_kernel":
        name = "conv 3x3x3, 2 sources" if c["HAS_B"] else "conv 3x3x3"
        name += f", pool {c['POOL_D']}x2x2" if c["POOL"] else ""
        return name + (f", packed K {c['K_PACKED']}" if c.get("K_PACKED") else "")
    if kernel == "conv3x3x3_head_kernel":
        return f"conv 3x3x3 + head ({outputs})" + (f", packed K {c['K_PACKED']}" if c.get("K_PACKED") else "")
    if kernel == "upconv3d_kernel":
        return f"upconv {c['FD']}x2x2"
    return kernel.removesuffix("_kernel")


def config_of(spec: dict) -> str:
    c = spec["constexprs"]
    if "R" in c:
        planes = f"({c['RD']} planes)" if c.get("RD", 1) > 1 else ""
        shape = f"R{c['R']}{planes}x{c['BW']}x{c.get('BN', c.get('BLOCK_N'))}x{c['BK']}"
    elif "BLOCK_D" in c:
        shape = f"{c['BLOCK_D']}x{c['BLOCK_H']}x{c['BLOCK_W']}x{c.get('BLOCK_N', '?')}x{c['BLOCK_K']}"
    elif "BLOCK_H" in c:
        shape = f"{c['BLOCK_H']}x{c['BLOCK_W']}x{c.get('BLOCK_N', '?')}x{c['BLOCK_K']}"
    else:
        shape = f"{c['BLOCK_M']}x{c.get('BLOCK_N', c.get('BLOCK_C'))}x{c['BLOCK_K']}"
    return f"{shape} w{spec['num_warps']} s{spec['num_stages']}"


def record(v: dict) -> dict:
    """One variant as it goes into the JSON file."""
    spec = v["spec"]
    named = list(spec["signature"])
    flags = {k: val for k, val in spec["constexprs"].items()
             if not k.startswith("BLOCK_") and k not in ("R", "RD", "BW", "BN", "BK")}
    return dict(
        kernel=spec["kernel"], dtype=v["dtype"], group=group_of(spec), config=config_of(spec),
        constexprs=flags,
        divisible_by_16=[named[int(i)] for i in spec["attrs"]],
        layers=v["layers"],
        **{k: v[k] for k in ("loops", "k_loops", "loop_async_copies", "loop_tma_loads", "loop_sync_loads", "loop_wgmma",
                             "loop_dots", "wgmma", "dots", "async_copies", "tma_loads", "waits", "registers",
                             "spill_stores", "spill_loads", "stack_frame", "shared_bytes", "compile_seconds",
                             "compile_cpu_seconds", "ptx_loops")},
        num_warps=spec["num_warps"], num_stages=spec["num_stages"],
        blocks={k: val for k, val in spec["constexprs"].items()
                if k.startswith("BLOCK_") or k in ("R", "RD", "BW", "BN", "BK")},
    )


def _span(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _layer_names(layers) -> str:
    names = sorted({w.split(":", 1)[1] for w in layers}, key=lambda n: (n.split(".")[0][:3] != "enc", n))
    return ", ".join(names)


def render_table(records: list[dict]) -> str:
    """One row per (kernel path, dtype), over its variants (configs and specialisations)."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["dtype"], r["group"]), []).append(r)
    lines = [
        "| dtype | kernel path | layers | variants | K loops | cp.async / TMA in loop | plain loads in loop "
        "| wgmma (in loop) | registers | spills (B) | shared KiB | compile CPU s (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {d: i for i, d in enumerate(DTYPE_PATHS)}
    for (dtype, group), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        spills = max((r["spill_stores"] or 0) + (r["spill_loads"] or 0) for r in rs)
        lines.append(
            f"| {dtype} | {group} | {_layer_names(sum((r['layers'] for r in rs), []))} | {len(rs)} "
            f"| {_span(r['k_loops'] for r in rs)} "
            f"| {_span(r['loop_async_copies'] for r in rs)} / {_span(r['loop_tma_loads'] for r in rs)} "
            f"| {_span(r['loop_sync_loads'] for r in rs)} "
            f"| {_span(r['wgmma'] for r in rs)} ({_span(r['loop_wgmma'] for r in rs)}) "
            f"| {_span(r['registers'] for r in rs)} | {spills} "
            f"| {_span(round(r['shared_bytes'] / 1024, 1) for r in rs)} "
            f"| {max(r['compile_cpu_seconds'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


def summary(records: list[dict]) -> dict:
    """The figures of the run (what benchmarks/report.py shows in the results table)."""
    convs = [r for r in records if r["kernel"] in ("conv3x3_kernel", "conv_rowrun_kernel", "conv3x3x3_kernel")
             and not r["constexprs"].get("K_PACKED")]
    sources = lambda r: 2 if r["constexprs"].get("HAS_B") else 1  # noqa: E731
    return dict(
        variants=len(records),
        conv_variants_one_k_loop_per_source=sum(r["k_loops"] == sources(r) for r in convs),
        conv_variants_looped=len(convs),
        variants_with_spills=sum(bool((r["spill_stores"] or 0) + (r["spill_loads"] or 0)) for r in records),
        max_registers=max((r["registers"] or 0) for r in records),
        max_shared_kib=round(max(r["shared_bytes"] for r in records) / 1024, 1),
        variants_step_matches_model=sum(bool((r.get("model") or {}).get("step_matches_formula")) for r in records),
        variants_with_model_formula=sum((r.get("model") or {}).get("step_matches_formula") is not None for r in records),
        compile_cpu_seconds_total=round(sum(r["compile_cpu_seconds"] for r in records), 1),
        compile_cpu_seconds_max=max(r["compile_cpu_seconds"] for r in records),
    )


def to_json(result: dict) -> str:
    """The result as JSON text, one variant a line (compact, and a diff shows what changed)."""
    head = json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=1)
    lines = ",\n".join("  " + json.dumps(v) for v in result["variants"])
    return f'{head[:-2]},\n "variants": [\n{lines}\n ]\n}}\n'


def update_readme(readme: Path, table: str, header: str, *, three_d: bool = False) -> None:
    """The compile table of ``benchmarks/README.md`` (between its own markers; the 3D
    networks' between theirs), through ``report.update_readme``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import update_readme as replace_between

    if three_d:
        replace_between(readme, f"{header}\n\n{table}", begin=BEGIN_3D, end=END_3D,
                        heading="Compiled code of the 3D kernels (sm_90a, from the CPU)")
        return
    replace_between(readme, f"{header}\n\n{table}", begin=BEGIN, end=END, heading="Compiled code (sm_90a, from the CPU)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the bf16 variants of the paper network")
    parser.add_argument("--dtypes", default=None, help=f"comma-separated dtype paths (default: {','.join(DTYPE_PATHS)})")
    parser.add_argument("--networks", default=None, help=f"comma-separated, of {','.join(NETWORKS)}")
    parser.add_argument("--layers", default=None, help="only launches of these layers (e.g. enc0.conv2,dec0.conv1)")
    parser.add_argument("--first-config", action="store_true",
                        help="only each launch's first kept config (the one FASTUNET_AUTOTUNE=0 keeps)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the JSON file")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="README whose table is rewritten")
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="a copy of triton's python/tutorials/09-persistent-matmul.py: compile its persistent TMA "
                             "matmul at 8192^3 bf16 and report what the model predicts for it")
    args = parser.parse_args(argv)

    import torch
    import triton

    dtypes = args.dtypes.split(",") if args.dtypes else (["bf16"] if args.quick else list(DTYPE_PATHS))
    nets = args.networks.split(",") if args.networks else (["paper"] if args.quick else list(NETWORKS))
    variants = collect_variants({k: NETWORKS[k] for k in nets}, dtypes, list(OUTPUTS), args.first_config)
    if args.layers:
        wanted = set(args.layers.split(","))
        variants = [dict(v, layers=[w for w in v["layers"] if w.split(":", 1)[1] in wanted]) for v in variants]
        variants = [v for v in variants if v["layers"]]
    start = time.perf_counter()
    print(f"compiling {len(variants)} variants for sm_90a with {args.jobs} processes ...", file=sys.stderr)
    records = [record(v) for v in compile_all(variants, args.jobs)]
    model = model_sections(records, nets, dtypes, args)
    wall = time.perf_counter() - start
    now = datetime.datetime.now(datetime.timezone.utc)
    mode = "quick" if args.quick else ("full" if not (args.dtypes or args.networks or args.layers or args.first_config)
                                       else "subset")
    result = dict(
        benchmark="compile-sm90a", mode=mode, date=now.strftime("%Y-%m-%dT%H:%M:%S"),
        device="sm_90a, compiled on a CPU (no GPU)", triton=triton.__version__, torch=torch.__version__,
        host=f"{platform.machine()}, {os.cpu_count()} CPUs, {args.jobs} compiling processes",
        networks={k: NETWORKS[k] for k in nets}, dtypes=dtypes, wall_seconds=round(wall, 1),
        figures=summary(records), **model, variants=records,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-{now.strftime('%Y%m%d-%H%M%S')}-{mode}-triton{triton.__version__}.json"
    path.write_text(to_json(result))
    print(f"wrote {path} ({wall:.0f} s)", file=sys.stderr)
    table = render_table(records) + render_model(model)
    if not args.no_readme:
        header = (f"From `{path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}` "
                  f"({mode}, triton {triton.__version__}, {result['date']} UTC; regenerate with "
                  f"`python benchmarks/compile_report.py{' --quick' if args.quick else ''}"
                  f"{' --networks ' + args.networks if args.networks else ''}`). "
                  "Ranges are over the variants of a row (autotune configs and argument specialisations); "
                  "compile CPU seconds include ptxas, on this CPU.")
        three_d = all(NETWORKS[k][0].get("spatial_dims", 2) == 3 for k in nets)
        update_readme(args.readme, table, header, three_d=three_d)
    print(table)
    return 0


def model_sections(records: list[dict], nets, dtypes, args) -> dict:
    """The performance model's part of the report (``model_report``): per variant its K step
    and ceilings; for the bf16 paper network every layer at the engine's batch and the P1/P2
    predictions; with ``--calibration``, the tutorial matmul."""
    import model_report

    from fastunet import UNetConfig

    model_report.attach_models(records)
    out = {}
    if "paper" in nets and "bf16" in dtypes and not args.layers:
        cfg, tiles, batch = NETWORKS["paper"]
        config = UNetConfig(**cfg)
        out["layers"] = model_report.compiled_layer_rows(records, config, tiles, batch)
        out["predictions"] = model_report.network_predictions(config)
    if args.calibration is not None:
        out["calibration"] = model_report.calibrate(args.calibration, compile_all, args.jobs)
    return out


def render_model(model: dict) -> str:
    """The model's tables (per layer, predictions), Markdown, or nothing."""
    import model_report

    parts = []
    if "layers" in model:
        parts.append("\n\nPredicted, per layer of the paper network at the engine's batch (4), bf16, with the config "
                     "launched without autotuning (the model's first); the K step read from the PTX; `low`-`high`: "
                     "the two scenarios of `benchmarks/NOTES.md` v4. Predictions, not measurements.\n\n"
                     + model_report.render_layers(model["layers"]))
    if "predictions" in model:
        parts.append("\n\n" + model_report.render_predictions(model["predictions"], model.get("calibration")))
    return "".join(parts)


if __name__ == "__main__":
    sys.exit(main())
