#!/usr/bin/env bash
# Full-fidelity results on one GPU, in one go: the speed benchmark, then exercises 1.3 (plain vs residual CNN on
# CIFAR-10 at depths 2/3/6), 1 and 1.2 (MLP and residual MLP on MNIST) at the shipped experiments' full protocol,
# the reports and a timing table. Runs that end print a line at once, so a run cut short still shows what finished.
#
#   bash bench/gpu_lab.sh OUT_DIR           on a CUDA machine (no network needed); reads the data from .device/
#   bash bench/gpu_lab.sh OUT_DIR --smoke   on the CPU with generated tiny data, in about a minute (tested)
#
# Stage the data first, here (.device/ is git-ignored; 29 MB, under the device tool's 64 MiB):
#   mkdir -p .device/MNIST/raw && cp ../shared/data/MNIST/raw/*.gz .device/MNIST/raw/ \
#     && cp -r ../shared/data/cifar10-jpeg .device/
# then, with the device tool: command `bash bench/gpu_lab.sh $OUT`, carry [".device"], timeout_s 600.
#
# Order: ex1.3 seed 0 (six models, the most valuable), ex1 and ex1.2 with 3 seeds, then ex1.3 seeds 1 and 2 only
# if the time left (RESLAB_GPU_BUDGET seconds in all, default 480) fits them at seed 0's pace. Runs train
# RESLAB_GPU_JOBS at a time (default 6, `reslab run --jobs`): one small model leaves an H100 mostly idle.
# Whatever happens, training stops by RESLAB_GPU_DEADLINE seconds (default 540; runs cut there stop politely and
# say "interrupted") and the results are packed after every step, so a call cut short still returns them.
# OUT_DIR receives at most 8 files: bench.txt, timing.md, report-<experiment>.md, runs.tar.gz (every run's
# summary.json, metrics.jsonl, config.yaml, the reports and figures; no checkpoints) and log.txt.
set -uo pipefail

out=${1:?usage: bash bench/gpu_lab.sh OUT_DIR [--smoke]}
mode=${2:-full}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
stage=${RESLAB_STAGE:-$root/.device}
budget=${RESLAB_GPU_BUDGET:-480}
deadline=${RESLAB_GPU_DEADLINE:-540}
jobs=${RESLAB_GPU_JOBS:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT              # runs and checkpoints: what matters is packed into OUT_DIR
data=$work/data
runs=$work/runs
py=${PYTHON:-python3}                  # the interpreter that has torch
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$out/log.txt") 2>&1
log_pid=$!
failed=0
say() { echo "[gpu_lab +${SECONDS}s] $*"; }
step() {   # run one step; note its failure and go on, so one broken run does not cost the others
  "$@"; local rc=$?
  [ $rc -eq 0 ] || failed=$((failed + 1))
  return $rc
}
reslab() {   # a reslab command that stops politely at the deadline (SIGTERM reaches its worker processes too)
  local left=$((deadline - SECONDS))
  [ "$left" -gt 5 ] || { say "deadline reached: skipped reslab $*"; failed=$((failed + 1)); return 124; }
  step timeout --kill-after=30 "$left" "$py" -m reslab "$@"
}
package() {   # (re)write the results in OUT_DIR from whatever has finished so far
  [ -d "$runs" ] || return 0
  "$py" "$root/bench/timing_table.py" "$runs" > "$out/timing.md.tmp" && mv "$out/timing.md.tmp" "$out/timing.md"
  for exp in ex1.3 ex1 ex1.2; do
    [ -f "$runs/$exp/report.md" ] && cp "$runs/$exp/report.md" "$out/report-$exp.md"
  done
  tar czf "$out/runs.tar.gz" -C "$work" --exclude='*.pth' --exclude='wandb' runs
}

if [ "$mode" = "--smoke" ]; then
  device=cpu
  "$py" -c "import sys; sys.path.insert(0, sys.argv[1]); from fakedata import write_all; write_all(sys.argv[2])" \
    "$root/tests" "$data" || exit 1
  shrink=(--epochs 1 --width 8)        # seconds on a CPU: the point is that every step still runs
  bench=(--smoke)
  mnist_seeds=1 budget=0
else
  device=cuda
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    || exit 1
  mkdir -p "$data/MNIST/raw" && cp "$stage"/MNIST/raw/*.gz "$data/MNIST/raw/" || { say "no MNIST in $stage"; exit 1; }
  "$py" "$stage/cifar10-jpeg/unpack.py" "$data" || { say "cannot unpack CIFAR-10 from $stage"; exit 1; }
  shrink=()
  bench=()
  mnist_seeds=3
fi
say "data ready in $data"
common=(--data-dir "$data" --out "$runs" --device "$device" --wandb disabled ${shrink[@]+"${shrink[@]}"})

say "speed benchmark"
# Not through step(): a pipeline's left side runs in a subshell, where its count of failures would be lost.
timeout 120 "$py" "$root/bench/epoch_speed.py" --device "$device" --data-dir "$data" ${bench[@]+"${bench[@]}"} \
  | tee "$out/bench.txt" || failed=$((failed + 1))

start=$SECONDS
reslab run ex1.3 --seeds 1 --jobs "$jobs" "${common[@]}"; rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 130 ]; then   # failed, not cut short: once more, one at a time
  say "ex1.3 seed 0 failed (rc $rc) with --jobs $jobs; again with --jobs 1 (finished runs are reused)"
  reslab run ex1.3 --seeds 1 --jobs 1 "${common[@]}"; rc=$?
  [ $rc -ne 0 ] || failed=$((failed - 1))   # the retry mended the first try
fi
say "ex1.3 seed 0 done (rc $rc)"; package
per_seed=$((SECONDS - start))
reslab run ex1 --seeds "$mnist_seeds" --jobs "$jobs" "${common[@]}"; say "ex1 done (rc $?)"; package
reslab run ex1.2 --seeds "$mnist_seeds" --jobs "$jobs" "${common[@]}"; say "ex1.2 done (rc $?)"; package
left=$((budget - SECONDS))
if [ "$left" -gt $((per_seed * 23 / 10)) ]; then more=3
elif [ "$left" -gt $((per_seed * 12 / 10)) ]; then more=2
else more=1; fi
if [ "$more" -gt 1 ]; then
  reslab run ex1.3 --seeds "$more" --jobs "$jobs" "${common[@]}"; say "ex1.3 seeds 0..$((more - 1)) done (rc $?)"
  package
else
  say "ex1.3 stays at 1 seed: ${left}s left, one seed took ${per_seed}s"
fi

cat "$out/timing.md"
say "finished with $failed failed step(s); results in $out"
exec >&- 2>&-; wait "$log_pid"          # log.txt complete before OUT_DIR is collected
[ "$failed" -eq 0 ]
