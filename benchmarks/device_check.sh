#!/usr/bin/env bash
# The one prepared call on a lent GPU machine (an H200 or H100: 15 minutes of device time per
# task, machine start included). By default it stays within 285 s of wall time on a bare
# machine, the wheel install and every compile included, so that a rerun still fits.
#
#   bash benchmarks/device_check.sh [--dry] [STAGE ...]     (from the repo root)
#
# Stages, in the order of what they are worth when device time is short (the default list):
#   smoke    the paper network in bf16 (tile 572, batch 1) against the PyTorch reference
#   p2bf16   P2 in bf16 alone (tile 572, batch 2): forward Mpx/s vs eager, fraction of the matmul
#            peak measured in the same run; its JSON is written before anything else runs
#   p1       P1 at tile 572, batch 2: each 3x3 conv shape vs cuDNN, one JSON a shape as measured
#   p3       P3: the fused weighted softmax-CE vs eager and vs a device copy
#   p2rest   P2 in fp16 and tf32
#   p45      P4/P5 at the quick size (8 x 2048^2): segment vs the raw forward, vs MONAI
#   p3d      the 3D U-Net (Cicek et al.'s, 116 x 132 x 132): P2-3D in bf16, then P1-3D shape by shape
#   tests    the GPU tests, one file per pytest call (an import error in one file stops only
#            that file), in the order below, while time remains (the fp32 cases left out)
# Not run unless named:
#   p2full   fastunet bench --only P2 (batch 8, with the torch.compile max-autotune baseline)
#   tuned    P2 --quick with autotuning on (choices kept in $OUT/autotune-cache)
#   fp32     the full-precision fp32 GPU tests (their FMA dots compile slowest)
#
# FASTUNET_AUTOTUNE=0 everywhere but `tuned`: each launch runs the config the performance model
# ranks first (kernels/perfmodel.py), compiled once, never benchmarked.
#
# Each stage has its own time limit, cut to what is left of the budget (DEVICE_CHECK_BUDGET
# seconds, default 285, from the start of this script); a stage with less than 20 s left is
# skipped. Each stage writes, as soon as it ends, its log ($OUT/<stage>.log) and
# $OUT/stage-<stage>.json (exit code, seconds, limit, last log line); the benchmarks write their
# result JSON to $OUT/results/ as they measure. `pip check` and the versions found are in
# $OUT/versions.txt. Copy $OUT/results/*.json to benchmarks/results/, commit them, and
# regenerate the table with `python benchmarks/report.py`.
#
# --dry (or DEVICE_CHECK_DRY=1; no GPU needed, what CI runs): every stage resolves its imports
# and arguments without running (benchmarks/device_stage.py --dry: $OUT/dry-<stage>.json lists
# the third-party modules it loads; the test files are collected), and writes its stage JSON.
#
# The device machine has torch and triton but no dask/zarr: when ./.whl holds the wheels of
# ../shared/device/prep, they are installed first (into /tmp/site).
set -uo pipefail
t0=$(date +%s)
budget=${DEVICE_CHECK_BUDGET:-285}
out=${OUT:-out}
dry=${DEVICE_CHECK_DRY:-0}
stages=()
for a in "$@"; do
    if [ "$a" = "--dry" ]; then dry=1; else stages+=("$a"); fi
done
[ ${#stages[@]} -gt 0 ] || stages=(smoke p2bf16 p1 p3 p2rest p45 p3d tests)
mkdir -p "$out/results"
summary="$out/summary.txt"
: > "$summary"
export FASTUNET_AUTOTUNE=${FASTUNET_AUTOTUNE:-0}
export FASTUNET_AUTOTUNE_CACHE="$out/autotune-cache"
gpu_files=(tests/test_kernels.py tests/test_conv_head.py tests/test_fused.py tests/test_loss_kernel.py
           tests/test_training.py tests/test_augment.py)
smoke_id="test_fused_paper_network_on_gpu and bf16-572-1"

# -- set-up: wheels, this tree, versions -------------------------------------------------------
if [ "$dry" != 1 ] && ! python3 -c "import dask, zarr, distributed" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "installing .whl failed" | tee -a "$summary"; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "dask/zarr missing and no .whl: run ../shared/device/prep and carry .whl" | tee -a "$summary"
    fi
fi
# fastunet from this tree: installed in place, or where that cannot build (no build backend
# offline) laid out as the package is (fastunet/kernels -> ../kernels, in this copy only).
this_tree='import os, sys, fastunet.kernels as k; sys.exit(not os.path.samefile(os.path.dirname(k.__file__), "kernels"))'
if [ "$dry" != 1 ] && ! python3 -c "$this_tree" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
    python3 -c "$this_tree" 2>/dev/null || ln -sfn ../kernels fastunet/kernels
fi
{
    [ "$dry" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    python3 - <<'EOF'
import importlib, os, sys
import fastunet.kernels as k
if not os.path.samefile(os.path.dirname(k.__file__), "kernels"):
    print("cannot import fastunet.kernels from this tree")
print("python", sys.version.split()[0])
for name in ("torch", "triton", "numpy", "dask", "distributed", "zarr", "numcodecs", "monai", "pytest"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001 (a missing or broken package is what this logs)
        print(name, "missing:", type(exc).__name__)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
EOF
    echo "--- pip check"
    python3 -m pip check 2>&1 | tail -n 20
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt" >> "$summary"
if grep -q "cannot import fastunet.kernels" "$out/versions.txt"; then
    echo "stopped: fastunet.kernels is not this tree's" | tee -a "$summary"
    exit 1
fi
echo "setup $(( $(date +%s) - t0 )) s (dry=$dry)" | tee -a "$summary"

if [ "$dry" = 1 ]; then  # resolve every stage in one process: the benchmark stages, then the test files
    bench_stages=()
    for s in "${stages[@]}"; do case $s in p2bf16|p1|p3|p2rest|p45|p3d) bench_stages+=("$s") ;; esac; done
    python3 benchmarks/device_stage.py --dry --out "$out" "${bench_stages[@]}" --collect "${gpu_files[@]}" \
        > "$out/dry-stages.log" 2>&1
fi

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc left
    shift 2
    left=$(( budget - ($(date +%s) - t0) ))
    if [ "$left" -lt 20 ]; then
        printf '%-12s skipped: %ss of the %ss budget left\n' "$name" "$left" "$budget" | tee -a "$summary"
        printf '{"stage": "%s", "skipped": true, "left_s": %s}\n' "$name" "$left" > "$out/stage-$name.json"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    start=$(date +%s)
    timeout --signal=INT --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - start )) last cmd
    last=$(tail -n 1 "$out/$name.log" | tr -d '"\\' | cut -c1-200)
    cmd=$(printf '%s ' "$@" | tr -d '"\\')
    printf '{"stage": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "dry": %s, "command": "%s", "last_line": "%s"}\n' \
        "$name" "$rc" "$secs" "$limit" "$([ "$dry" = 1 ] && echo true || echo false)" "${cmd% }" "$last" \
        > "$out/stage-$name.json"
    printf '%-12s rc=%-3s %4ss of %4ss  %s\n' "$name" "$rc" "$secs" "$limit" "$last" | tee -a "$summary"
}

# dry stages: a benchmark stage passes when its dry JSON was written, a test file when it was
# collected without an error (run through `bash -c`: `timeout` cannot run a shell function)
dry_bench='test -s "$0/dry-$1.json" && echo "resolved: $(tr -d "\n" < "$0/dry-$1.json" | cut -c1-180)"'
dry_tests='grep -q "^$1::" "$0/dry-collect.log" && ! grep -q "ERROR $1" "$0/dry-collect.log" && echo "collected $1"'

bench=(python3 benchmarks/device_stage.py --out "$out")
gpu_tests=(python3 -m pytest -q -m gpu -p no:cacheprovider)
for s in "${stages[@]}"; do
    if [ "$dry" = 1 ]; then
        case $s in
            smoke) stage smoke 30 bash -c "$dry_tests" "$out" tests/test_fused.py ;;
            p2bf16|p1|p3|p2rest|p45|p3d) stage "$s" 30 bash -c "$dry_bench" "$out" "$s" ;;
            tests) for f in "${gpu_files[@]}"; do stage "tests-$(basename "$f" .py)" 30 bash -c "$dry_tests" "$out" "$f"; done ;;
            p2full|tuned|fp32) stage "$s" 30 python3 -c "import fastunet.bench" ;;
            *) echo "unknown stage $s (smoke p2bf16 p1 p3 p2rest p45 p3d tests p2full tuned fp32)" | tee -a "$summary" ;;
        esac
        continue
    fi
    case $s in
        smoke) stage smoke 70 "${gpu_tests[@]}" -k "$smoke_id" tests/test_fused.py ;;
        p2bf16) stage p2bf16 50 "${bench[@]}" p2bf16 ;;
        p1) stage p1 60 "${bench[@]}" p1 ;;
        p3) stage p3 30 "${bench[@]}" p3 ;;
        p2rest) stage p2rest 60 "${bench[@]}" p2rest ;;
        p45) stage p45 80 "${bench[@]}" p45 ;;
        p3d) stage p3d 60 "${bench[@]}" p3d ;;
        tests) for f in "${gpu_files[@]}"; do
                   stage "tests-$(basename "$f" .py)" 120 "${gpu_tests[@]}" -k "not fp32 and not ($smoke_id)" "$f"
               done ;;
        p2full) stage p2full 600 python3 -m fastunet bench --out "$out/results" --only P2 ;;
        tuned) FASTUNET_AUTOTUNE=1 stage tuned 600 python3 -m fastunet bench --out "$out/results" --only P2 --quick ;;
        fp32) stage fp32 600 "${gpu_tests[@]}" -k fp32 tests/test_kernels.py tests/test_conv_head.py tests/test_fused.py ;;
        *) echo "unknown stage $s (smoke p2bf16 p1 p3 p2rest p45 p3d tests p2full tuned fp32)" | tee -a "$summary" ;;
    esac
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$summary"
echo "---"
cat "$summary"
