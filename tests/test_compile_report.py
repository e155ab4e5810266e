"""What the kernels compile to for sm_90a (no GPU needed): the conv main loop is one pipelined
loop per source, on warp-group dots, without spills, within an H200's shared memory.

Compiles a few variants of the paper network through ``benchmarks/compile_report.py`` in a
subprocess (triton compiles only in a process where it was imported without the interpreter).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
H200_SHARED_MEMORY = 227 * 1024


def _report_module():
    spec = importlib.util.spec_from_file_location("compile_report", ROOT / "benchmarks" / "compile_report.py")
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TRITON_INTERPRET")
    spec.loader.exec_module(module)  # it drops TRITON_INTERPRET from the environment: put it back
    if saved is not None:
        os.environ["TRITON_INTERPRET"] = saved
    return module


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """bf16 and fp16: the first layer (packed K), an encoder conv with pooling, a decoder conv
    with two sources, the last conv fused with the head; each launch's first kept config."""
    out = tmp_path_factory.mktemp("compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--networks", "paper",
           "--dtypes", "bf16,fp16", "--layers", "enc0.conv1,enc0.conv2,dec0.conv1,dec0.conv2", "--first-config",
           "--no-readme", "--jobs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = out.glob("compile-*.json")
    return json.loads(path.read_text())


def _convs(result, group_start):
    return [v for v in result["variants"] if v["kernel"] == "conv3x3_kernel" and v["group"].startswith(group_start)]


def test_conv_main_loop_is_one_pipelined_loop_per_source(compiled):
    """The row-run convs: one K loop per source, every load in it a TMA box (no cp.async, no
    plain load), warp-group dots reading both operands from shared memory, and the step the
    PTX does is the one the model ranks configs with."""
    looped = [v for v in compiled["variants"] if v["kernel"] == "conv_rowrun_kernel"]
    assert {v["dtype"] for v in looped} == {"bf16", "fp16"}
    assert {v["group"] for v in looped} == {"TMA conv, pool", "TMA conv, 2 sources"}
    for v in looped:
        sources = 2 if v["constexprs"]["HAS_B"] else 1
        assert v["k_loops"] == sources, v
        assert v["loop_wgmma"] >= sources and v["loop_tma_loads"] >= 2 * sources, v  # A and weight boxes
        assert v["loop_async_copies"] == 0 and v["loop_sync_loads"] == 0, v
        assert v["tma_loads"] > v["loop_tma_loads"], v  # the pipeline's prologue
        [loop] = {json.dumps(lp) for lp in v["ptx_loops"]}  # the sources' loops do the same step
        loop = json.loads(loop)
        assert loop["tma_bytes"] > 0 and loop["cp_async_bytes"] == 0 and "A:regs" not in " ".join(loop["shapes"])
        assert v["model"]["step_matches_formula"], v["model"]


def test_small_channel_count_is_one_dot(compiled):
    [bf16, fp16] = sorted(_convs(compiled, "conv, packed K 16"), key=lambda v: v["dtype"])
    for v in (bf16, fp16):
        assert v["k_loops"] == 0 and v["wgmma"] == 1, v  # K = 9 * 1 channel packed into one dot
        assert v["layers"] == ["paper@572:enc0.conv1", "paper@1052:enc0.conv1"]


def test_fused_head_runs_the_conv_loop_and_the_head_dot(compiled):
    heads = [v for v in compiled["variants"] if v["kernel"] == "conv_head_rowrun_kernel"]
    assert heads and all(v["layers"][0].endswith("dec0.conv2") for v in heads)
    for v in heads:
        assert v["k_loops"] == 1 and v["loop_tma_loads"] >= 2 and v["loop_sync_loads"] == 0, v
        assert v["wgmma"] > v["loop_wgmma"] >= 1, v  # the conv's dots, and the 1x1 head's after the loop
        assert v["model"]["step_matches_formula"], v["model"]


def test_no_spills_and_shared_memory_fits_an_h200(compiled):
    for v in compiled["variants"]:
        assert v["spill_stores"] == 0 and v["spill_loads"] == 0, v
        assert v["registers"] is not None and v["registers"] <= 255, v
        assert 0 < v["shared_bytes"] <= H200_SHARED_MEMORY, v
        assert v["compile_cpu_seconds"] > 0


def test_summary_figures(compiled):
    figures = compiled["figures"]
    assert figures["variants"] == len(compiled["variants"])
    assert figures["conv_variants_one_k_loop_per_source"] == figures["conv_variants_looped"] > 0
    assert figures["variants_with_spills"] == 0
    assert compiled["device"].startswith("sm_90a")


def test_ttgir_loop_census():
    """The TTGIR reader counts ops in the loop that holds a dot, nested regions included."""
    report = _report_module()
    ttgir = """
    %a = ttg.async_copy_global_to_local %p, %s : x
    %r:2 = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %z) -> (tensor<1xf32>) {
      %w = ttg.async_wait %t {num = 2 : i32}
      %c = ttg.async_copy_global_to_local %p, %s {contiguity = 8 : i32} : x
      %v = tt.load %q : x
      %d = ttng.warp_group_dot %x, %y, %acc {inputPrecision = 0 : i32, isAsync = true} : x
      %e = ttng.warp_group_dot_wait %d {pendings = 1 : i32} : x
      %m = scf.if %cond -> (i32) {
        %f = ttg.async_copy_global_to_local %p, %s : x
        scf.yield %f : i32
      } else {
        scf.yield %g : i32
      }
      scf.yield %e : x
    }
    scf.for %j = %c0 to %n step %c1 {
      %h = tt.load %q : x
    }
    %o = ttng.warp_group_dot %x, %y, %z : x
    """
    facts = report.inspect_ttgir(ttgir)
    assert (facts["loops"], facts["k_loops"]) == (2, 1)
    assert facts["loop_async_copies"] == 2 and facts["loop_sync_loads"] == 1 and facts["loop_wgmma"] == 1
    assert facts["wgmma"] == 2 and facts["async_copies"] == 3 and facts["waits"] == 1


def test_ptx_loop_reader():
    """A K loop of the PTX (a label and a later branch back to it): its wgmma (A from shared
    memory or registers), the TMA bytes it expects and its cp.async bytes, and the step's
    FLOPs and bytes over all warp groups; a loop without dots is ignored."""
    report = _report_module()
    import model_report

    ptx = """
    mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r1], 4096;
$L__BB0_1:
    add.s32 %r2, %r2, 1;
    @%p1 bra $L__BB0_1;
$L__BB0_2:                              // =>This Inner Loop Header: Depth=1
    @%p5 mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r11], 32768;
    @%p6 cp.async.bulk.tensor.2d.shared::cta.global.mbarrier::complete_tx::bytes [%r15], [%rd2, {%r1, %r2}], [%r11];
    cp.async.cg.shared.global [ %r20 + 0 ], [ %rd9 + 0 ], 0x10, %r21;
    wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r1,%r2}, %rd6, %rd15, %p36, 1, 1, 0, 1;
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1,%r2}, {%r3,%r4,%r5,%r6}, %rd15, %p36, 1, 1, 1;
    @%p18 bra $L__BB0_2;
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1,%r2}, %rd6, %rd15, %p36, 1, 1, 0, 1;
    """
    [loop] = model_report.ptx_loops(ptx, num_warps=8)
    assert loop["wgmma"] == 2 and loop["shapes"] == ["m64n128k16", "m64n64k16 A:regs"]
    assert loop["tma_bytes"] == 32768 and loop["cp_async_bytes"] == 16 * 256
    assert loop["flops"] == 2 * (2 * 64 * 128 * 16 + 2 * 64 * 64 * 16)  # two warp groups
    assert loop["smem_read"] == 2 * (64 * 16 * 2 + 16 * 128 * 2 + 16 * 64 * 2)  # the second's A is in registers
    assert loop["l2_bytes"] == 32768 + 16 * 256
    assert report.parse_ptxas("")["registers"] is None


def test_ptxas_log_parsing():
    report = _report_module()
    log = ("ptxas info    : Function properties for conv3x3_kernel\n"
           "    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size\n")
    assert report.parse_ptxas(log) == dict(registers=255, spill_stores=8, spill_loads=12, stack_frame=16)
    assert report.parse_ptxas("")["registers"] is None


def test_layers_follow_the_network():
    """The launches of a FusedUNet forward of the paper network at tile 572, with its sizes."""
    from fastunet import UNetConfig

    report = _report_module()
    layers = report.network_layers(UNetConfig(), 572)
    assert len(layers) == 22  # 18 3x3 convs (the last one with the head) and 4 up-convs
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["enc0.conv1"]["size"] == 572 and by_name["bottom.conv2"]["size"] == 30
    assert by_name["dec0.conv1"] == dict(kind="conv", name="dec0.conv1", size=392, c_a=64, c_b=64, c_out=64, skip=568)
    assert by_name["dec0.conv2"]["kind"] == "head" and by_name["up3"]["c_a"] == 1024


def test_split_k_what_if_is_a_prediction_for_short_last_waves():
    """The model's what-if of a K split over the last wave (no kernel runs it): a last wave is
    split only when its parts fit the GPU at once; at tile 572, batch 4 it lifts the layers
    whose last wave is short and leaves those of whole waves alone."""
    _report_module()  # puts benchmarks/ on sys.path
    import model_report

    from fastunet import UNetConfig
    from fastunet.kernels import perfmodel

    assert perfmodel.split_rem(200, 132, 20, 2) == 0  # 68 tiles in 2 parts each: more than one wave
    assert perfmodel.split_rem(180, 132, 20, 2) == 48
    assert perfmodel.split_rem(180, 132, 3, 2) == 0  # parts of fewer than 2 K steps
    rows = {r["layer"]: r for r in model_report.split_what_if(UNetConfig(), 572, 4)}
    assert all(r["after_low"] >= r["before_low"] and r["after_high"] >= r["before_high"] for r in rows.values())
    assert rows["dec2.conv1"]["split"] > 1 and rows["dec2.conv1"]["after_low"] > rows["dec2.conv1"]["before_low"]
    assert rows["enc0.conv2"]["split"] == 1  # 20 waves of whole tiles: nothing to split
