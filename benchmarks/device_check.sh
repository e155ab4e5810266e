#!/usr/bin/env bash
# One call on a lent GPU machine (an H200: 15 minutes of device time per task, this script
# stays within 8 minutes of wall time on a bare machine, the wheel install included).
#
#   bash benchmarks/device_check.sh [STAGE ...]     (from the repo root; default: the default stages)
#
# Stages, in the order of what they are worth when device time is short (default ones first):
#   smoke   the paper network in bf16 (tile 572, batch 1) against the PyTorch reference
#   p2      fastunet bench --only P2 --quick: forward Mpx/s of bf16/fp16/tf32 vs eager, and the
#           bf16 fraction of the matmul peak measured in the same run
#   p1      fastunet bench --only P1 --quick: every 3x3 conv shape (tile 572) vs cuDNN
#   p3      fastunet bench --only P3: the fused weighted softmax-CE vs eager, copy bandwidth
#   p45     fastunet bench --only P4,P5 --quick: segment disk to disk (8 x 2048^2) vs the raw
#           forward, and vs MONAI sliding-window inference
#   tests   the remaining GPU tests (kernels, fused head, loss, fused network, training), except
#           the fp32 cases, with the time left
# Not run unless named:
#   p2full  fastunet bench --only P2 (batch 8, with the torch.compile max-autotune baseline)
#   tuned   fastunet bench --only P2 --quick with autotuning on (the chosen configs are kept in
#           $OUT/autotune-cache, see kernels/autotune_cache.py)
#   fp32    the full-precision fp32 GPU tests (their FMA dots compile slowest)
#
# FASTUNET_AUTOTUNE=0 (one config per kernel) everywhere but `tuned`: autotuning compiles every
# config for every layer signature, minutes that the device time cannot spare; the benchmark
# figures of these stages are therefore those of each kernel's first config.
#
# Each stage has its own time limit, cut to what is left of the whole budget
# (DEVICE_CHECK_BUDGET seconds, default 450, counted from the start of this script); a stage
# with less than 20 s left is skipped. Each stage writes, as soon as it ends, its log
# ($OUT/<stage>.log) and $OUT/stage-<stage>.json (exit code, seconds, limit, last log line);
# the benchmarks write their result JSON to $OUT/results/. A timeout keeps what finished.
# Copy $OUT/results/*.json to benchmarks/results/, commit them, and regenerate the table with
# `python benchmarks/report.py`.
#
# The benchmarks run through the CLI (`python -m fastunet bench`) and the tests through pytest
# only, so the modules behind them may move. The device machine has torch and triton but no
# dask/zarr: when ./.whl holds the wheels of ../shared/device/prep, they are installed first
# (into /tmp/site).
set -uo pipefail
t0=$(date +%s)
budget=${DEVICE_CHECK_BUDGET:-450}
out=${OUT:-out}
mkdir -p "$out/results"
summary="$out/summary.txt"
: > "$summary"
export FASTUNET_AUTOTUNE=${FASTUNET_AUTOTUNE:-0}
export FASTUNET_AUTOTUNE_CACHE="$out/autotune-cache"

if ! python3 -c "import dask, zarr, distributed" 2>/dev/null; then
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
if ! python3 -c "$this_tree" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
    python3 -c "$this_tree" 2>/dev/null || ln -sfn ../kernels fastunet/kernels
fi
python3 -c "$this_tree" || { echo "cannot import fastunet.kernels from this tree" | tee -a "$summary"; exit 1; }

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} > "$out/device.txt"
cat "$out/device.txt" >> "$summary"
echo "setup $(( $(date +%s) - t0 )) s" | tee -a "$summary"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc left
    shift 2
    left=$(( budget - ($(date +%s) - t0) ))
    if [ "$left" -lt 20 ]; then
        printf '%-7s skipped: %ss of the %ss budget left\n' "$name" "$left" "$budget" | tee -a "$summary"
        printf '{"stage": "%s", "skipped": true, "left_s": %s}\n' "$name" "$left" > "$out/stage-$name.json"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    start=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - start )) last cmd
    last=$(tail -n 1 "$out/$name.log" | tr -d '"\\' | cut -c1-200)
    cmd=$(printf '%s ' "$@" | tr -d '"\\')
    printf '{"stage": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "command": "%s", "last_line": "%s"}\n' \
        "$name" "$rc" "$secs" "$limit" "${cmd% }" "$last" > "$out/stage-$name.json"
    printf '%-7s rc=%-3s %4ss of %4ss  %s\n' "$name" "$rc" "$secs" "$limit" "$last" | tee -a "$summary"
}

bench=(python3 -m fastunet bench --out "$out/results")
gpu_tests=(python3 -m pytest -q -m gpu -p no:cacheprovider)
smoke_id="test_fused_paper_network_on_gpu and bf16-572-1"

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(smoke p2 p1 p3 p45 tests)
for s in "${stages[@]}"; do
    case $s in
        smoke) stage smoke 150 "${gpu_tests[@]}" -k "$smoke_id" tests/test_fused.py ;;
        p2) stage p2 120 "${bench[@]}" --only P2 --quick ;;
        p1) stage p1 90 "${bench[@]}" --only P1 --quick ;;
        p3) stage p3 60 "${bench[@]}" --only P3 ;;
        p45) stage p45 150 "${bench[@]}" --only P4,P5 --quick ;;
        tests) stage tests 600 "${gpu_tests[@]}" -k "not fp32 and not ($smoke_id)" \
                   tests/test_kernels.py tests/test_conv_head.py tests/test_loss_kernel.py tests/test_fused.py \
                   tests/test_training.py tests/test_augment.py ;;
        p2full) stage p2full 600 "${bench[@]}" --only P2 ;;
        tuned) FASTUNET_AUTOTUNE=1 stage tuned 600 "${bench[@]}" --only P2 --quick ;;
        fp32) stage fp32 600 "${gpu_tests[@]}" -k fp32 tests/test_kernels.py tests/test_conv_head.py tests/test_fused.py ;;
        *) echo "unknown stage $s (smoke p2 p1 p3 p45 tests p2full tuned fp32)" | tee -a "$summary" ;;
    esac
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$summary"
echo "---"
cat "$summary"
