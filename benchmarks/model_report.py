"""The performance model applied to the compiled code (CPU only; every figure a prediction).

Used by ``compile_report.py``: it reads each variant's K loops in the PTX (the warp-group
dots and their operand sources, the TMA bytes a step expects, the cp.async copies), turns
them into the bytes and FLOPs of a step, and with :mod:`fastunet.kernels.perfmodel` into
the ceiling of each limit; then the time of every layer of the paper network with the
config the engine launches (``FASTUNET_AUTOTUNE=0``: the model's first), the P1 and P2
predictions, and the calibration on triton's persistent TMA matmul tutorial.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
_WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m(\d+)n(\d+)k(\d+)\.f32\.(\w+)\.\w+\s+\{[^}]*\},\s*(\{|%rd)")
_EXPECT = re.compile(r"mbarrier\.arrive\.expect_tx\.\S+\s+_,\s*\[[^\]]*\],\s*(\d+);")
_CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.shared\.global(?:\.\w+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
_ELEMENT = {"bf16": 2, "f16": 2, "tf32": 4, "e4m3": 1, "e5m2": 1}


def ptx_loops(ptx: str, num_warps: int) -> list[dict]:
    """The loops of a kernel's PTX that hold warp-group dots (a loop: a label and a later
    branch back to it), innermost first, with what one iteration (a K step) does: its wgmma
    instructions (shape, A from shared memory or registers), the TMA bytes it expects
    (``mbarrier.arrive.expect_tx``), its cp.async bytes (all threads), and from them the
    step's FLOPs, bytes from L2 and operand bytes read from shared memory (every warp group
    runs every instruction: ``num_warps / 4`` of them)."""
    lines = ptx.splitlines()
    where = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line.strip()))}
    spans = {}
    for j, line in enumerate(lines):
        for target in _BRANCH.findall(line):
            i = where.get(target)
            if i is not None and i < j:
                spans[target] = (i, max(j, spans.get(target, (i, j))[1]))
    groups = max(num_warps // 4, 1)
    threads = 32 * num_warps
    loops = []
    for start, end in sorted(spans.values(), key=lambda s: s[1] - s[0]):
        body = "\n".join(lines[start:end + 1])
        dots = [(int(m), int(n), int(k), kind, a == "%rd") for m, n, k, kind, a in _WGMMA.findall(body)]
        if not dots or any(s <= start <= end <= e and (s, e) != (start, end) for s, e in
                           [(lp["start"], lp["end"]) for lp in loops]):
            continue
        flops = sum(2.0 * m * n * k for m, n, k, _, _ in dots) * groups
        smem_read = sum((m * k if a_smem else 0) * _ELEMENT.get(kind, 2) + k * n * _ELEMENT.get(kind, 2)
                        for m, n, k, kind, a_smem in dots) * groups
        tma = sum(int(b) for b in _EXPECT.findall(body))
        cp_async = sum(int(b, 0) for b in _CP_ASYNC.findall(body)) * threads
        loops.append(dict(start=start, end=end, wgmma=len(dots),
                          shapes=sorted({f"m{m}n{n}k{k}" + ("" if a else " A:regs") for m, n, k, _, a in dots}),
                          tma_bytes=tma, cp_async_bytes=cp_async, flops=flops, l2_bytes=tma + cp_async,
                          smem_read=smem_read))
    return [{k: v for k, v in lp.items() if k not in ("start", "end")} for lp in loops]


def step_of(loop: dict):
    """The :class:`~fastunet.kernels.perfmodel.Step` a PTX loop does."""
    from fastunet.kernels import perfmodel

    return perfmodel.Step(flops=loop["flops"], l2_bytes=loop["l2_bytes"], smem_read=loop["smem_read"])


def step_ceilings(step, scenario: str) -> dict:
    """TFLOP/s of the whole GPU if every SM ran this step back to back, under each limit."""
    from fastunet.kernels import perfmodel

    dev = perfmodel.device(scenario)
    out = dict(tensor=dev.matmul_flops / 1e12)
    out["smem"] = step.flops / (step.smem_bytes / dev.smem_bytes_per_s_per_sm) * dev.sms / 1e12
    out["l2"] = step.flops / (step.l2_bytes / dev.l2_bytes_per_s_per_sm) * dev.sms / 1e12 if step.l2_bytes else math.inf
    return {k: round(v, 1) for k, v in out.items()}


def formula_step(record: dict):
    """The model's step for a compiled variant from its config alone (what the launchers rank
    with), or None where the model has no formula (the head kernel's plain weight loads)."""
    from fastunet.kernels import perfmodel

    c, kernel, warps = record.get("constexprs", {}), record.get("kernel"), record.get("num_warps")
    blocks = record.get("blocks") or {}
    e = 4 if record.get("dtype") in ("fp32", "tf32") else 2
    if kernel in ("conv_rowrun_kernel", "conv_head_rowrun_kernel"):
        return perfmodel.rowrun_step(blocks["R"], blocks["BW"], blocks.get("BN", blocks.get("BLOCK_N")), blocks["BK"], warps, e,
                                     blocks.get("RD", 1))
    if kernel in ("conv3x3_kernel", "conv3x3_head_kernel") and not c.get("K_PACKED"):
        return perfmodel.pointer_step(blocks["BLOCK_H"] * blocks["BLOCK_W"], blocks["BLOCK_N"],
                                      blocks["BLOCK_K"], warps, e)
    if kernel in ("conv3x3x3_kernel", "conv3x3x3_head_kernel") and not c.get("K_PACKED"):
        return perfmodel.pointer_step(blocks["BLOCK_D"] * blocks["BLOCK_H"] * blocks["BLOCK_W"], blocks["BLOCK_N"],
                                      blocks["BLOCK_K"], warps, e)
    if kernel in ("upconv2x2_kernel", "upconv3d_kernel"):
        return perfmodel.pointer_step(blocks["BLOCK_M"], blocks["BLOCK_N"], blocks["BLOCK_K"], warps, e)
    return None


def variant_model(record: dict) -> dict | None:
    """The model columns of a compiled variant: its K step (FLOPs, bytes from L2 and through
    shared memory, FLOP per byte), each limit's ceiling in both scenarios and which binds."""
    loops = record.get("ptx_loops") or []
    if not loops:
        return None
    step = step_of(loops[0])
    low, high = step_ceilings(step, "low"), step_ceilings(step, "high")
    formula = formula_step(record) if record.get("blocks") else None
    matches = None if formula is None else all(math.isclose(getattr(step, k), getattr(formula, k), rel_tol=1e-6)
                                               for k in ("flops", "l2_bytes", "smem_read"))
    return dict(
        step_matches_formula=matches,
        step_mflop=round(step.flops / 1e6, 3), step_l2_kb=round(step.l2_bytes / 1024, 1),
        step_smem_kb=round(step.smem_bytes / 1024, 1),
        flop_per_l2_byte=round(step.flops / step.l2_bytes, 1) if step.l2_bytes else None,
        flop_per_smem_byte=round(step.flops / step.smem_bytes, 1),
        ceilings_low=low, ceilings_high=high,
        bound_low=min(low, key=low.get), bound_high=min(high, key=high.get),
    )


# -- the network, layer by layer --------------------------------------------------------------
ENGINE_BATCH = 4  # the Segmenter's default batch on CUDA (fastunet/segmentation/segmenter.py)


def _conv_shape(layer, batch: int):
    from fastunet.kernels import conv

    c_a, c_b = (layer.c_skip, layer.c_in - layer.c_skip) if layer.c_skip else (layer.c_in, 0)
    return conv.ConvShape(batch, layer.in_size[0], layer.in_size[1], c_a, c_b, layer.c_out, bool(layer.pool), True, 2,
                          conv.packed_k(c_a, c_b))


def engine_config(layer, batch: int):
    """(kernel name, config, model shape) the engine launches for a conv layer without
    autotuning: the row-run loop with the model's first config, or the pointer loop for the
    packed first layer; the last decoder conv runs fused with the head."""
    import torch

    from fastunet.kernels import conv, conv_head

    s = _conv_shape(layer, batch)
    if s.packed:
        return "conv3x3_kernel", conv.pointer_configs_for(s, torch.bfloat16, "tf32", shared_memory=232448)[0], s
    if layer.name == "dec0.conv2":
        head = conv_head.rowrun_configs_for(s)[0]
        return "conv_head_rowrun_kernel", conv_head.as_conv_config(head, conv_head._block_n(s.c_out)), s
    return "conv_rowrun_kernel", conv.rowrun_configs_for(s)[0], s


def _config_text(config) -> str:
    kw = config.kwargs
    if "R" in kw:
        return f"R{kw['R']}x{kw['BW']}x{kw['BN']}x{kw['BK']} w{config.num_warps} s{config.num_stages}"
    return (f"{kw['BLOCK_H']}x{kw['BLOCK_W']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} "
            f"s{config.num_stages}")


def layer_rows(config_net, tiles=(572, 1052), batch: int = ENGINE_BATCH) -> list[dict]:
    """Per 3x3 conv layer and tile: the engine's config and the predicted time, TFLOP/s,
    fraction of the matmul rate and binding limit, in both scenarios."""
    from fastunet import geometry
    from fastunet.kernels import conv

    rows = []
    for tile in tiles:
        for layer in geometry.layer_shapes(config_net, tile, "conv3x3"):
            kernel, cfg, s = engine_config(layer, batch)
            low, high = conv.predict(cfg, s, "low"), conv.predict(cfg, s, "high")
            rows.append(dict(
                tile=tile, batch=batch, layer=layer.name, kernel=kernel, config=_config_text(cfg),
                c_in=s.c_a + s.c_b, c_out=s.c_out, gflop=round(s.useful_flops() / 1e9, 1),
                us_low=round(low["seconds"] * 1e6, 1), us_high=round(high["seconds"] * 1e6, 1),
                tflops_low=round(low["tflops"], 1), tflops_high=round(high["tflops"], 1),
                fraction_low=round(low["fraction"], 3), fraction_high=round(high["fraction"], 3),
                bound_low=low["bound"], bound_high=high["bound"], waves=low["waves"],
                wave_efficiency=round(low["wave_efficiency"], 2), ctas_per_sm=low["ctas_per_sm"],
            ))
    return rows


def split_what_if(config_net, tile: int = 572, batch: int = ENGINE_BATCH, splits=(2, 3, 4)) -> list[dict]:
    """Per 3x3 conv layer: the predicted fraction of the matmul rate with the engine's config,
    and with its last wave's tiles split over K in 2-4 parts (stream-K of the last wave: each
    part's fp32 partials stored, the last part adds them and runs the epilogue), the best split
    per layer (:func:`fastunet.kernels.perfmodel.split_rem`). A what-if of the model: no kernel
    runs the split; every figure a prediction."""
    import dataclasses

    from fastunet import geometry
    from fastunet.kernels import conv, perfmodel

    rows = []
    for layer in geometry.layer_shapes(config_net, tile, "conv3x3"):
        kernel, cfg, s = engine_config(layer, batch)
        if "R" not in cfg.kwargs:
            continue
        base = conv.model_layer(cfg, s)
        row = dict(layer=layer.name, config=_config_text(cfg), split=1)
        for scenario in ("low", "high"):
            t = perfmodel.launch_time(base, perfmodel.device(scenario))
            row[f"before_{scenario}"] = row[f"after_{scenario}"] = round(t["fraction"], 3)
            row["waves"], row["wave_efficiency"] = t["waves"], round(t["wave_efficiency"], 2)
        c = perfmodel.occupancy(perfmodel.H200, base.smem_bytes, base.num_warps, base.registers)
        kw = cfg.kwargs
        for split in splits:
            rem = perfmodel.split_rem(base.tiles, perfmodel.H200.sms * c, base.steps, split)
            if not rem:
                continue
            layer_split = dataclasses.replace(base, split=split, split_tiles=rem,
                                              partial_bytes=4.0 * kw["R"] * kw["BW"] * kw["BN"])
            low = perfmodel.launch_time(layer_split, perfmodel.device("low"))["fraction"]
            if low > row["after_low"]:
                row.update(split=split, after_low=round(low, 3), after_high=round(
                    perfmodel.launch_time(layer_split, perfmodel.device("high"))["fraction"], 3))
        rows.append(row)
    return rows


def forward_prediction(config_net, tile: int, batch: int, scenario: str) -> dict:
    """Seconds of one fused bf16 forward (convs with the engine's configs, up-convs with the
    model's first, the input copy), and the fraction of the FLOP bound (P2's figure)."""
    from fastunet import geometry
    from fastunet.kernels import conv, perfmodel, upconv
    from fastunet.model import forward_flops

    dev = perfmodel.device(scenario)
    seconds = 0.0
    for layer in geometry.layer_shapes(config_net, tile):
        if layer.kind == "conv3x3":
            _, cfg, s = engine_config(layer, batch)
            seconds += conv.predict(cfg, s, scenario)["seconds"]
        elif layer.kind == "upconv":
            import torch

            m = batch * layer.in_size[0] * layer.in_size[1]
            cfg = upconv.ranked_configs(m, layer.c_in, layer.c_out, torch.bfloat16, shared_memory=232448)[0]
            seconds += upconv.predict(cfg, m, layer.c_in, layer.c_out, 2, scenario)["seconds"]
    seconds += batch * tile * tile * (4 + 2) / dev.hbm_bytes_per_s + dev.launch_s  # NCHW fp32 -> NHWC bf16 copy
    flops = forward_flops(config_net, tile, tile) * batch
    return dict(seconds=seconds, fraction=flops / seconds / dev.matmul_flops)


def p1_prediction(config_net, tiles, batches, scenario: str, e_cudnn: float) -> float:
    """Geometric mean over P1's conv shapes of eager/fused time: the fused conv with the
    engine's config; eager as ``benchmarks/roofline.py`` models it (cuDNN's conv at
    ``e_cudnn`` of the matmul rate, or its memory time, plus the bias/ReLU/pool/cat passes)
    and one launch gap for each of its kernels."""
    from roofline import conv_rows

    from fastunet import geometry
    from fastunet.kernels import conv, perfmodel

    dev = perfmodel.device(scenario)
    logs = []
    for tile, batch in zip(tiles, batches):
        eager_rows = {r["name"]: r for r in conv_rows(config_net, tile, batch)}
        for layer in geometry.layer_shapes(config_net, tile, "conv3x3"):
            _, cfg, s = engine_config(layer, batch)
            if layer.name == "dec0.conv2":  # P1 times the plain conv of this shape, not the head
                cfg = conv.rowrun_configs_for(s)[0]
            fused = conv.predict(cfg, s, scenario)["seconds"]
            r = eager_rows[layer.name]
            kernels = 3 + bool(layer.pool) + bool(layer.c_skip)  # conv, bias add, ReLU, (+ pool, + cat)
            eager = (max(r["flops"] / (e_cudnn * dev.matmul_flops), r["conv"] / dev.hbm_bytes_per_s)
                     + r["eager_extra"] / dev.hbm_bytes_per_s + kernels * dev.launch_s)
            logs.append(math.log(eager / fused))
    return math.exp(sum(logs) / len(logs))


def network_predictions(config_net) -> dict:
    """P2 (bf16, its full and quick batches) and P1 (full and quick), both scenarios; with
    cuDNN at 60-75 % of the matmul rate for P1 (an assumption, ``roofline.E_CUDNN`` = 0.7)."""
    out = {}
    for name, tile, batch in (("P2.batch8", 572, 8), ("P2.quick.batch2", 572, 2), ("engine.572.batch4", 572, 4),
                              ("engine.1052.batch4", 1052, 4)):
        for scenario in ("low", "high"):
            f = forward_prediction(config_net, tile, batch, scenario)
            out[f"{name}.fraction_{scenario}"] = round(f["fraction"], 3)
            out[f"{name}.ms_{scenario}"] = round(f["seconds"] * 1e3, 3)
    for name, tiles, batches in (("P1", (572, 1052), (8, 2)), ("P1.quick", (572,), (2,))):
        out[f"{name}.geomean_low"] = round(p1_prediction(config_net, tiles, batches, "low", 0.75), 3)
        out[f"{name}.geomean_high"] = round(p1_prediction(config_net, tiles, batches, "high", 0.60), 3)
    return out


# -- calibration: triton's persistent TMA matmul tutorial at 8192^3 bf16 ------------------------
CALIBRATION_KERNEL = "matmul_kernel_descriptor_persistent"
CALIBRATION_HELPERS = ("_compute_pid",)


def load_tutorial_kernel(path: Path):
    """The persistent TMA matmul kernel of triton's tutorial ``09-persistent-matmul.py``
    (``path``: a copy of that file, which this repository does not hold): its function and
    helper definitions are taken out of the file as they are (the rest of the tutorial
    imports modules a given triton may lack) and jitted from a temporary module."""
    source = path.read_text()
    tree = ast.parse(source)
    wanted = {CALIBRATION_KERNEL, *CALIBRATION_HELPERS}
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {d.name for d in defs} != wanted:
        raise ValueError(f"{path} does not define {sorted(wanted)}: expected triton's 09-persistent-matmul.py.")
    for d in defs:
        d.decorator_list = [ast.parse("triton.jit").body[0].value]
    module_text = "import triton\nimport triton.language as tl\n\n" + "\n\n".join(ast.unparse(d) for d in defs) + "\n"
    folder = Path(tempfile.mkdtemp(prefix="fastunet-calibration-"))
    file = folder / "tutorial_persistent_matmul.py"
    file.write_text(module_text)
    spec = importlib.util.spec_from_file_location("tutorial_persistent_matmul", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, CALIBRATION_KERNEL), hashlib.sha256(source.encode()).hexdigest()


def calibration_specs(path: Path, size: int = 8192) -> tuple[list[dict], str]:
    """The compile specs of the tutorial's kernel at ``size``^3 bf16, one per config of its
    autotune list (BLOCK_M 128, BLOCK_N 128/256, BLOCK_K 64/128, 3/4 stages, 4/8 warps; no
    epilogue subtiling, no warp specialization: Hopper)."""
    kernel, digest = load_tutorial_kernel(path)
    specs = []
    for bn in (128, 256):
        for bk in (64, 128):
            for stages in (3, 4):
                for warps in (4, 8):
                    sig = dict(a_ptr="*bf16", b_ptr="*bf16", c_ptr="*bf16", M="i32", N="i32", K="i32",
                               BLOCK_SIZE_M="constexpr", BLOCK_SIZE_N="constexpr", BLOCK_SIZE_K="constexpr",
                               GROUP_SIZE_M="constexpr", EPILOGUE_SUBTILE="constexpr", NUM_SMS="constexpr",
                               WARP_SPECIALIZE="constexpr")
                    constexprs = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=8,
                                      EPILOGUE_SUBTILE=False, NUM_SMS=132, WARP_SPECIALIZE=False)
                    attrs = {str(i): [["tt.divisibility", 16]] for i in range(6)}
                    specs.append(dict(module=kernel.__module__, kernel=CALIBRATION_KERNEL, signature=sig,
                                      constexprs=constexprs, attrs=attrs, num_warps=warps, num_stages=stages,
                                      file=str(kernel.__globals__["__file__"])))
    return specs, digest


def calibration_prediction(record: dict, size: int = 8192) -> dict:
    """The model's time for one compiled config of the tutorial at ``size``^3: its K step read
    from the PTX, ``(size / BM) (size / BN)`` tiles over 132 persistent programs (the tile
    loop is flattened into the K loop: one pipeline fill a program), the compulsory HBM
    traffic (A, B read once, C written once)."""
    from fastunet.kernels import perfmodel

    c = record["constexprs"]
    bm, bn, bk = c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"]
    tiles = (size // bm) * (size // bn)
    out = {}
    for scenario in ("low", "high"):
        dev = perfmodel.device(scenario)
        layer = perfmodel.Layer(
            tiles=tiles, steps=size // bk, step=step_of(record["ptx_loops"][0]), out_bytes_per_tile=bm * bn * 2,
            hbm_bytes=3 * size * size * 2, useful_flops=2.0 * size**3, smem_bytes=record["shared_bytes"],
            num_warps=record["num_warps"], num_stages=record["num_stages"], registers=record["registers"] or 255,
            fills_per_tile=dev.sms / tiles)
        t = perfmodel.launch_time(layer, dev)
        if t["ctas_per_sm"] == 0:
            return None  # more shared memory than a block may have: cannot launch
        out[scenario] = dict(tflops=round(t["tflops"], 1), bound=t["bound"], fraction=round(t["fraction"], 3))
    return out


# -- the tables of the compile report -----------------------------------------------------------
def attach_models(records: list[dict]) -> None:
    """Add each variant's model columns (``model``) to its record."""
    for r in records:
        r["model"] = variant_model(r)


def _find_record(records: list[dict], kernel: str, config: str, where: str) -> dict | None:
    for r in records:
        if r["kernel"] == kernel and r["config"] == config and where in r["layers"]:
            return r
    return None


def compiled_layer_rows(records: list[dict], config_net, tiles, batch: int) -> list[dict]:
    """:func:`layer_rows` joined with the compiled variant each layer launches: its registers,
    spills, shared memory, K loops, and the prediction redone with the K step read from its
    PTX (and its ptxas registers and shared memory); ``step_matches_model`` says whether the
    PTX's step equals the model's formula for the config."""
    import dataclasses

    from fastunet import geometry
    from fastunet.kernels import conv, perfmodel

    rows = layer_rows(config_net, tiles, batch)
    layers = {(t, s.name): s for t in tiles for s in geometry.layer_shapes(config_net, t, "conv3x3")}
    for row in rows:
        layer = layers[(row["tile"], row["layer"])]
        kernel, cfg, s = engine_config(layer, batch)
        rec = _find_record(records, kernel, row["config"], f"paper@{row['tile']}:{row['layer']}")
        row["compiled"] = rec is not None
        if rec is None:
            continue
        sources = 2 if rec["constexprs"].get("HAS_B") else 1
        row.update(registers=rec["registers"], spills=(rec["spill_stores"] or 0) + (rec["spill_loads"] or 0),
                   shared_kib=round(rec["shared_bytes"] / 1024, 1), k_loops=rec["k_loops"],
                   one_k_loop_per_source=rec["k_loops"] == sources or bool(rec["constexprs"].get("K_PACKED")),
                   flop_per_l2_byte=rec["model"]["flop_per_l2_byte"] if rec.get("model") else None)
        if not rec.get("ptx_loops"):
            continue
        model = conv.model_layer(cfg, s)
        ptx_step = step_of(rec["ptx_loops"][0])
        row["step_matches_model"] = all(math.isclose(getattr(ptx_step, k), getattr(model.step, k), rel_tol=1e-6)
                                        for k in ("flops", "l2_bytes", "smem_read"))
        from_ptx = dataclasses.replace(model, step=ptx_step, registers=rec["registers"] or model.registers,
                                       smem_bytes=rec["shared_bytes"])
        for scenario in ("low", "high"):
            t = perfmodel.launch_time(from_ptx, perfmodel.device(scenario))
            row[f"fraction_{scenario}"] = round(t["fraction"], 3)
            row[f"tflops_{scenario}"] = round(t["tflops"], 1)
            row[f"us_{scenario}"] = round(t["seconds"] * 1e6, 1)
            row[f"bound_{scenario}"] = t["bound"]
    return rows


def _target(row: dict) -> float | None:
    """The issue's goal for a layer: 60 % of the matmul rate with C_out >= 128, 45 % with 64
    channels; none for the first layer (one input channel: bound by writing its output)."""
    if row["c_in"] < 8:
        return None
    return 0.60 if row["c_out"] >= 128 else 0.45


def render_layers(rows: list[dict]) -> str:
    lines = [
        "| tile | layer | C in -> out | GFLOP | config (engine, no autotuning) | regs | spills | smem KiB | K loops "
        "| FLOP/B (L2) | predicted TFLOP/s | fraction of 790 | goal | bound (low / high) | waves |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        goal = _target(r)
        verdict = "—" if goal is None else (f"{goal:.0%} " + ("met" if r["fraction_low"] >= goal else
                                                               "high end only" if r["fraction_high"] >= goal else "missed"))
        lines.append(
            f"| {r['tile']} | {r['layer']} | {r['c_in']} -> {r['c_out']} | {r['gflop']} | {r['config']} "
            f"| {r.get('registers', '?')} | {r.get('spills', '?')} | {r.get('shared_kib', '?')} | {r.get('k_loops', '?')} "
            f"| {r.get('flop_per_l2_byte', '?')} | {r['tflops_low']:.0f}-{r['tflops_high']:.0f} "
            f"| {r['fraction_low']:.2f}-{r['fraction_high']:.2f} | {verdict} | {r['bound_low']} / {r['bound_high']} "
            f"| {r['waves']} ({r['wave_efficiency']:.2f}) |")
    return "\n".join(lines)


def render_predictions(pred: dict, calibration: dict | None) -> str:
    lines = ["| prediction (model, not measured) | low | high |", "| --- | --- | --- |"]
    for key, label in (("P2.batch8", "P2 bf16, tile 572, batch 8: fraction of the FLOP bound"),
                       ("P2.quick.batch2", "P2 --quick (batch 2)"),
                       ("engine.572.batch4", "forward, tile 572, engine batch 4"),
                       ("engine.1052.batch4", "forward, tile 1052, engine batch 4")):
        lines.append(f"| {label} | {pred[f'{key}.fraction_low']:.2f} | {pred[f'{key}.fraction_high']:.2f} |")
    lines.append(f"| P1 geomean vs cuDNN (tiles 572 / 1052, batches 8 / 2) | {pred['P1.geomean_low']:.2f} "
                 f"| {pred['P1.geomean_high']:.2f} |")
    lines.append(f"| P1 --quick (572, batch 2) | {pred['P1.quick.geomean_low']:.2f} | {pred['P1.quick.geomean_high']:.2f} |")
    if calibration:
        best = calibration["best"]
        lines.append(f"| calibration: triton's persistent TMA matmul tutorial, 8192^3 bf16, best of its "
                     f"{calibration['configs']} configs ({best['config']}), TFLOP/s (an H200 reaches ~790 with cuBLAS) "
                     f"| {best['low']['tflops']:.0f} ({best['low']['bound']}) | {best['high']['tflops']:.0f} "
                     f"({best['high']['bound']}) |")
    return "\n".join(lines)


def calibrate(path: Path, compile_all, jobs: int) -> dict:
    """Compile the tutorial's configs (``compile_all``: the report's compiler) and predict each;
    ``best``: the one the model puts fastest (what its autotuner would pick if the model were
    right)."""
    specs, digest = calibration_specs(path)
    compiled = compile_all([dict(spec=s) for s in specs], jobs)
    rows = []
    for spec, rec in zip(specs, compiled):
        rec = dict(rec, constexprs=spec["constexprs"], num_warps=spec["num_warps"], num_stages=spec["num_stages"])
        if not rec.get("ptx_loops"):
            continue
        c = spec["constexprs"]
        pred = calibration_prediction(rec)
        if pred is None:
            continue
        rows.append(dict(config=f"{c['BLOCK_SIZE_M']}x{c['BLOCK_SIZE_N']}x{c['BLOCK_SIZE_K']} w{spec['num_warps']} "
                                f"s{spec['num_stages']}",
                         registers=rec["registers"], spills=(rec["spill_stores"] or 0) + (rec["spill_loads"] or 0),
                         shared_kib=round(rec["shared_bytes"] / 1024, 1), model=variant_model(rec), **pred))
    fitting = [r for r in rows if r["shared_kib"] <= 227 and not r["spills"]] or rows
    best = max(fitting, key=lambda r: r["low"]["tflops"])
    return dict(source=f"{path.name} (triton-lang/triton python/tutorials), kernel {CALIBRATION_KERNEL}",
                sha256=digest, size=8192, configs=len(rows), best=best, all=rows)
