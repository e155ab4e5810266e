#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU correctness tests first, then the quick benchmarks.
#
#   bash benchmarks/device_check.sh [STAGE ...]     (from the repo root; default: every stage)
#
# Stages, in the order of what they are worth when device time is short:
#   kernels  the kernel tests marked gpu (conv/up-conv/head at the paper's shapes, every kept
#            autotune config of every dtype path, the loss kernel)
#   fused    the whole paper network at tiles 572/1052, batch 1-8, every dtype; CUDA graphs
#   train    training and augmentation on CUDA
#   bench    fastunet bench --quick (P1-P6), one JSON per benchmark
#   fp32     the full-precision fp32 cases of kernels and fused, last: its FMA dots compile
#            slowest (tens of seconds per kernel variant in ptxas)
# Each stage has its own time limit; logs, a summary and the JSON results go under $OUT (or
# ./out when $OUT is unset). Copy $OUT/results/*.json to benchmarks/results/, commit them, and
# regenerate the table with `python benchmarks/report.py`.
#
# The device machine has torch and triton but no dask/zarr: when ./.whl holds the wheels of
# ../shared/device/prep, they are installed first (into /tmp/site, as prep prints).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out/results"
summary="$out/summary.txt"
: > "$summary"

if ! python3 -c "import dask, zarr, distributed" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "installing .whl failed" | tee -a "$summary"; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "dask/zarr missing and no .whl: run ../shared/device/prep and carry .whl" | tee -a "$summary"
    fi
fi
python3 -c "import fastunet" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} > "$out/device.txt"
cat "$out/device.txt" >> "$summary"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    printf '%-8s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$(tail -n 1 "$out/$name.log")" | tee -a "$summary"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(kernels fused train bench fp32)
for s in "${stages[@]}"; do
    case $s in
        kernels) stage kernels 300 python3 -m pytest -q -m gpu -k "not fp32" -p no:cacheprovider tests/test_kernels.py tests/test_loss_kernel.py ;;
        fused) stage fused 300 python3 -m pytest -q -m gpu -k "not fp32" -p no:cacheprovider tests/test_fused.py ;;
        train) stage train 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_training.py tests/test_augment.py ;;
        bench) stage bench 420 python3 -m fastunet bench --quick --out "$out/results" ;;
        fp32) stage fp32 540 python3 -m pytest -q -m gpu -k fp32 -p no:cacheprovider tests/test_kernels.py tests/test_fused.py ;;
        *) echo "unknown stage $s (kernels, fused, train, bench, fp32)" | tee -a "$summary" ;;
    esac
done
echo "---"
cat "$summary"
