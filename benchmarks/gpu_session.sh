#!/usr/bin/env bash
# Every GPU measurement issue 7 asks for, as one prepared command for a lent GPU (device tool:
# run "bash benchmarks/gpu_session.sh" with timeout_s=560). The device image has torch, rich,
# typer, pandas, tabulate and scikit-learn, which is all these scripts import; each step has its
# own time limit and writes its table under $OUT, so a slow step cannot cost the others.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/lossbench-gpu}"
mkdir -p "$out"
cd benchmarks || exit 1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$out/device.txt"
step gpu_throughput 200 python3 gpu_throughput.py --markdown --packs 1,2,4,8 --repeats 3
step harness_overhead 60 python3 harness_overhead.py --device cuda --repeats 10
step loss_throughput 90 python3 loss_throughput.py --device cuda --repeats 20
step grid_throughput 170 python3 grid_throughput.py --device cuda --epochs 10 --seeds 0 \
    --configs 1x1,1x8,1xauto
