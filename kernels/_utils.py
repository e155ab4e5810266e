"""Helpers shared by the kernels: interpreter detection, dtypes, autotune under the interpreter."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import autotune_cache, interpreting

__all__ = [
    "INTERPRET",
    "DTYPE_MODES",
    "check_channels_last",
    "check_ndhwc",
    "check_nhwc",
    "check_contiguous",
    "compute_dtype",
    "select",
    "size_class",
    "tuning_configs",
    "launch",
    "prune_by_shared_memory",
    "to_storage",
    "upcast_for_interpreter",
]

# Under TRITON_INTERPRET=1 kernels run on the CPU through numpy (about 1000x slower than a GPU).
# Read as Triton reads it, once: Triton fixes it per kernel when the kernel is defined.
INTERPRET = interpreting()


def _version(text: str) -> tuple[int, int]:
    major, minor = (text.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why this triton's interpreter cannot run the kernels with this numpy, or None.

    Triton 3.6's interpreter turns a loop bound such as ``range(0, C, BLOCK_K)`` into a Python
    int with ``int()`` of a one-element array, which numpy 2.4 refuses (triton-lang/triton#9171,
    fixed in later triton; 3.9 works). Compiling for the GPU is not affected."""
    if _version(triton_version) <= (3, 6) and _version(numpy_version) >= (2, 4):
        return (f"The Triton interpreter of triton {triton_version} cannot run these kernels with numpy "
                f"{numpy_version} (triton-lang/triton#9171): install numpy<2.4, or a newer triton (3.9 works).")
    return None


if INTERPRET:
    import numpy

    _problem = interpreter_problem(triton.__version__, numpy.__version__)
    if _problem:
        raise RuntimeError(_problem)

# Name of a dtype path -> (storage dtype of activations and weights, tl.dot input_precision).
DTYPE_MODES = {
    "fp32": (torch.float32, "ieee"),
    "tf32": (torch.float32, "tf32"),
    "bf16": (torch.bfloat16, "ieee"),
    "fp16": (torch.float16, "ieee"),
}


def compute_dtype(mode: str) -> tuple[torch.dtype, str]:
    """Storage dtype and dot precision for a dtype path ('fp32', 'tf32', 'bf16', 'fp16')."""
    try:
        return DTYPE_MODES[mode]
    except KeyError:
        raise ValueError(f"Expected a dtype path among {sorted(DTYPE_MODES)}; got {mode!r}.") from None


def upcast_for_interpreter(dtype: torch.dtype) -> bool:
    """True when the kernels must work around the interpreter's bf16 arithmetic.

    Only under the interpreter (triton 3.9): its bf16 ``tl.dot`` returns garbage, so bf16
    operands are upcast to fp32 before the dot (its fp16 dot is exact), and its fp32 -> bf16
    cast truncates, so stores round to nearest-even by hand (:func:`to_storage`). On the GPU
    the real bf16 tensor-core dot and the hardware's round-to-nearest cast run.
    """
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def to_storage(x, dtype: tl.constexpr, INTERP_BF16: tl.constexpr):
    """Cast fp32 ``x`` to the storage ``dtype``, rounding to nearest-even.

    Under the interpreter the bf16 cast truncates, so there (``INTERP_BF16``) the rounding
    is done on the bits first: add 0x7FFF plus the lowest kept bit and clear the low 16 bits,
    which leaves a value bf16 holds exactly (so any cast of it is exact).
    """
    if INTERP_BF16 and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


# FASTUNET_AUTOTUNE=0: each launch runs one config, the one the performance model ranks first
# for its shape and dtype (kernels/perfmodel.py; for the fp32 "ieee" FMA paths the quickest to
# compile), through the plain JIT function: nothing is benchmarked (see launch()). Autotuning
# compiles and times several configs for every layer signature, which is what a benchmark
# wants and what a correctness run cannot afford; the GPU tests set it and check every config
# separately (forced configs).
AUTOTUNE = os.environ.get("FASTUNET_AUTOTUNE", "1").lower() not in ("0", "off", "false", "no")


def tuning_configs(configs: list[triton.Config], small: triton.Config, *,
                   pruned: bool = False) -> list[triton.Config]:
    """The configs an autotuner gets: ``small`` alone under the interpreter (autotuning would
    time every config there), else all of ``configs``, or with FASTUNET_AUTOTUNE=0 the first
    one. ``pruned``: the kernel's ``early_config_prune`` picks the one config itself (by dtype,
    through :func:`select`), so all are kept here."""
    if INTERPRET:
        return [small]
    return configs if AUTOTUNE or pruned else configs[:1]


def size_class(pixels: int) -> int:
    """The autotune key's size class of a launch over ``pixels`` output pixels: about log4 of
    it (``bit_length // 2``), so that a layer 4x smaller or larger is tuned on its own (tiles
    that fill the GPU at batch 8 x 572^2 leave it idle at 2 x 30^2), nearby sizes share one."""
    return max(int(pixels), 1).bit_length() // 2


def select(configs: list[triton.Config], key=None) -> list[triton.Config]:
    """What a pruning function returns: all ``configs``, or with FASTUNET_AUTOTUNE=0 one of
    them (the first, or the smallest by ``key``)."""
    if AUTOTUNE or len(configs) <= 1:
        return configs
    return [min(configs, key=key)] if key is not None else configs[:1]


def prune_by_shared_memory(configs: list[triton.Config], stage_bytes, device=None, *,
                           limit: int | None = None) -> list[triton.Config]:
    """The configs whose pipelined operand tiles fit the device's shared memory.

    ``stage_bytes(config)`` is what one pipeline stage holds (the A and B tiles of one K
    step); Triton keeps ``num_stages`` of them. On Hopper (227 KiB per block) an fp32/tf32
    256 x 64 x 64 tile at 3 stages needs 240 KiB and fails to launch, while its bf16 twin
    needs 120 KiB: which configs fit depends on the dtype, so the autotuners prune per call.
    ``limit`` (bytes) defaults to the device's; without it nothing is pruned under the
    interpreter. At least one config (the smallest) is kept.
    """
    if limit is None:
        if INTERPRET:
            return configs
        limit = shared_memory_limit(device)
    need = {id(c): stage_bytes(c) * max(c.num_stages, 1) for c in configs}
    return [c for c in configs if need[id(c)] <= limit] or [min(configs, key=lambda c: need[id(c)])]


def shared_memory_limit(device=None) -> int:
    """Bytes of shared memory a block may use on a CUDA ``device`` (the current one by default)."""
    index = torch.device(device).index if device is not None else None
    return triton.runtime.driver.active.utils.get_device_properties(
        torch.cuda.current_device() if index is None else index
    )["max_shared_mem"]


def launch(kernel, grid, args: tuple, meta: dict, config: triton.Config | None = None, *,
           cache: bool = False, choose=None) -> triton.Config | None:
    """Launch an autotuned ``kernel``, or, with ``config``, its plain JIT function with that
    config forced (the GPU tests run every autotune config against the reference).

    Without autotuning (``FASTUNET_AUTOTUNE=0``) the config is ``choose()`` (the kernel's
    ranking by :mod:`fastunet.kernels.perfmodel`; without ``choose`` its first config), and
    under the interpreter the kernel's one interpreter config: both launch the plain JIT
    function, so triton's autotuner never runs and nothing is benchmarked.

    ``cache``: keep the autotuner's choice on disk (:mod:`fastunet.kernels.autotune_cache`)
    and reuse it in later processes instead of benchmarking every config again; only while
    autotuning (not with FASTUNET_AUTOTUNE=0, not under the interpreter). Returns the config
    that ran when known (forced, chosen, cached, or the autotuner's ``best_config``), else None.
    """
    if config is None and (INTERPRET or not AUTOTUNE):
        config = kernel.configs[0] if INTERPRET or choose is None else choose()
    if config is not None:
        _launch_config(kernel, grid, args, meta, config)
        return config
    folder = autotune_cache.cache_dir() if cache and AUTOTUNE and not INTERPRET else None
    if folder is None:
        kernel[grid](*args, **meta)
        return None
    device = next(a.device for a in args if hasattr(a, "dtype"))
    memo = (id(kernel), str(device), *autotuner_key(kernel, args, meta))  # cheap: computed at every launch
    chosen = _CHOSEN.get(memo)
    if chosen is not None:
        _launch_config(kernel, grid, args, meta, chosen)
        return chosen
    fields = tuning_fields(kernel, args, meta)
    chosen = autotune_cache.load(folder, fields, kernel.configs)
    if chosen is not None:
        _CHOSEN[memo] = chosen
        _launch_config(kernel, grid, args, meta, chosen)
        return chosen
    earlier = getattr(kernel, "configs_timings", None)
    kernel[grid](*args, **meta)
    chosen = _CHOSEN[memo] = kernel.best_config
    timings = getattr(kernel, "configs_timings", None)  # this launch's, if it benchmarked
    timings = {str(c): _first_number(t) for c, t in timings.items()} if timings is not earlier and timings else None
    autotune_cache.store(folder, fields, chosen, timings)
    return chosen


# Configs chosen in this process (from the disk cache or by tuning), by kernel, device and
# the autotuner's key.
_CHOSEN: dict[tuple, triton.Config] = {}


def _launch_config(kernel, grid, args, meta, config: triton.Config) -> None:
    if config.pre_hook is not None:  # e.g. the TMA descriptors' boxes follow the block sizes
        config.pre_hook({**dict(zip(kernel.fn.arg_names, args)), **meta, **config.kwargs})
    kernel.fn[grid](*args, **meta, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _first_number(t):
    t = t[0] if isinstance(t, (list, tuple)) and t else t
    return float(t) if isinstance(t, (int, float)) else None


def device_name(device) -> str:
    """The name of a CUDA device (the disk cache keys tuning results by it)."""
    return torch.cuda.get_device_name(device)


def autotuner_key(kernel, args: tuple, meta: dict) -> tuple:
    """The autotuner's own key of a launch, as triton builds it: the values of its ``key``
    arguments (which include a size class), then the dtypes of the tensor arguments."""
    named = {**dict(zip(kernel.fn.arg_names, args)), **meta}
    return (*(named[k] for k in kernel.keys if k in named), *(str(a.dtype) for a in args if hasattr(a, "dtype")))


def tuning_fields(kernel, args: tuple, meta: dict) -> dict:
    """The disk-cache key of a launch: device name, triton version, kernel name and source
    hash, and the autotuner's own key (:func:`autotuner_key`)."""
    return dict(
        kernel=kernel.fn.__name__,
        source=kernel.fn.cache_key,
        device=device_name(next(a.device for a in args if hasattr(a, "dtype"))),
        triton=triton.__version__,
        key=list(autotuner_key(kernel, args, meta)),
    )


def check_channels_last(x: torch.Tensor, name: str, channels: int | None = None, *, dims: int = 2) -> None:
    """Check a channels-last activation with unit channel stride: (N, H, W, C) for ``dims=2``,
    (N, D, H, W, C) for ``dims=3``."""
    if x.ndim != dims + 2:
        axes = "N, H, W, C" if dims == 2 else "N, D, H, W, C"
        raise ValueError(f"Expected {name} as ({axes}); got shape {tuple(x.shape)}.")
    if x.stride(-1) != 1 and x.shape[-1] != 1:  # the kernels assume channel stride 1
        raise ValueError(f"Expected {name} with contiguous channels (stride 1); got strides {x.stride()}.")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"Expected {name} with {channels} channels; got {x.shape[-1]}.")


def check_nhwc(x: torch.Tensor, name: str, channels: int | None = None) -> None:
    """Check a 4-D channels-last activation (N, H, W, C) with unit channel stride."""
    check_channels_last(x, name, channels, dims=2)


def check_ndhwc(x: torch.Tensor, name: str, channels: int | None = None) -> None:
    """Check a 5-D channels-last activation (N, D, H, W, C) with unit channel stride."""
    check_channels_last(x, name, channels, dims=3)


def check_contiguous(**tensors: torch.Tensor) -> None:
    """Packed weights and biases are indexed as dense row-major arrays by the kernels."""
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"Expected a contiguous {name}; got strides {t.stride()}. Use pack_weight() / .contiguous().")
