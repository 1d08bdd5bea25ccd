#!/usr/bin/env bash
# Full-protocol results on one GPU, on the exact data, in priority order and within a hard deadline: the data, the
# speed benchmark, ex1.3 (plain vs residual CNN vs its no-skip twin on CIFAR-10, 9 models), ex2.1 (that rescnn6
# transferred to CIFAR-100: probes and fine-tuning), ex1 and ex1.2 (MLPs on MNIST), more seeds, ex1.3-deep; the
# reports and a timing table. Runs that end print a line at once, so a run cut short still shows what finished.
#
#   bash bench/gpu_lab.sh OUT_DIR           on a CUDA machine (no network needed); data from .device/ (below)
#   bash bench/gpu_lab.sh OUT_DIR --smoke   on the CPU with generated tiny data: every step runs (tested)
#
# THE DATA: MNIST (official files) and the lossless CIFAR packs of ../shared/data (CIFAR-100 exact; CIFAR-10 59,889
# of 60,000 images exact), 202 MiB, more than one device call carries (64 MiB, working tree included). Here, first:
#   python bench/gpu_data.py stage          # parts in .device/ (git-ignored); prints this plan with today's sizes
# then four device calls, back to back (each within ~30 s of the last reply, or the machine and its parts are gone;
# a reply with warm: false after call 1: start again at call 1). stage cuts the packs so that each call is filled
# to 60 MiB before the next begins: four calls while the working tree stays under ~6.5 MiB. Sizes of 2026-12-03
# (working tree 4.6 MiB; weights of an earlier lease in .device/earlier/ add a fifth call, see OUT_DIR below):
#   call 1: 60.0 MiB  timeout_s 120
#     carry [".device/manifest.json", ".device/cifarpack.py", ".device/parts/cifar10.npz.part0"]
#     command: python3 bench/gpu_data.py status .device
#   call 2: 60.0 MiB  timeout_s 120   (completes CIFAR-10 and MNIST: their unpacking starts, setsid, in background)
#     carry [".device/manifest.json", ".device/cifarpack.py", ".device/parts/cifar10.npz.part1", ".device/MNIST", ".device/parts/cifar100.npz.part0"]
#     command: python3 bench/gpu_data.py status .device && python3 bench/gpu_data.py assemble .device
#              /tmp/reslab-gpu-data --background /tmp/reslab-gpu-data.log
#   call 3: 60.0 MiB  timeout_s 120
#     carry [".device/manifest.json", ".device/cifarpack.py", ".device/parts/cifar100.npz.part1"]
#     command: python3 bench/gpu_data.py status .device
#   call 4 (final): 40.8 MiB  timeout_s 600   (this script: waits for CIFAR-10, unpacks CIFAR-100 beside ex1.3)
#     carry [".device/manifest.json", ".device/cifarpack.py", ".device/parts/cifar100.npz.part2"]
#     command: bash bench/gpu_lab.sh $OUT
#     (with less than ~11 minutes of device time left before it: RESLAB_GPU_DEADLINE=<budget_left_s - 120> first)
#
# STEPS, in priority order (results first); from step 3 on, each starts only if the time left before the deadline
# fits it:
#   1. data: bench/gpu_data.py assemble (CIFAR-10 and MNIST now, waiting for the background unpacking of call 2;
#      CIFAR-100 in the background). --smoke: tiny generated data (tests/fakedata.py).
#   2. seed 0 of ex2.1 and ex1.3, full protocol: ex2.1 in the background (once CIFAR-100 is there: it trains its
#      source, ex1.3's rescnn6-seed0, then the three probes and the fine-tuning) beside the other 8 runs of
#      ex1.3 in priority order: noskipcnn6 and rescnn3 one at a time (ex2.1 keeps half the GPU), then noskipcnn3,
#      rescnn2, noskipcnn2, cnn6, cnn3, cnn2, RESLAB_GPU_JOBS at a time (default 3); then `reslab run ex1.3` over
#      all 9 (its report; rescnn6 if ex2.1 did not train it). Always runs; the deadline cuts it where it is (at
#      most jobs + 1 runs lost).
#   3. speed benchmark (unless RESLAB_GPU_BENCH=0; about RESLAB_GPU_EST_BENCH=240 s, at least 60):
#      bench/study_speed.py --device cuda (bench/epoch_speed.py where it is missing), timeout 120; then
#      bench/batched_seeds.py (separate vs vmapped vs grouped seeds, timeout 60) when 90 s are left, into bench.txt.
#   3b. CUDA graphs (unless RESLAB_GPU_GRAPHS=0): bench/graphs_check.py trains the MNIST MLP and the residual CNN
#      (depth 3, width 64) for 3 epochs eager and with --cuda-graphs (timeout 90, into bench.txt); when every
#      graphed run finished, the runs from here on train with --cuda-graphs, else eagerly.
#   4. ex1 and ex1.2 with 3 seeds: if RESLAB_GPU_EST_MNIST seconds are left (default 90: 84 s on an H100 before).
#   5. seed 1, then seed 2, of ex2.1 and ex1.3 as in step 2, each if step 2's wall time is left (--smoke: seed 1).
#   6. ex1.3-deep seed 0 (6 runs, RESLAB_GPU_DEEP_JOBS at a time, default 6): if RESLAB_GPU_EST_DEEP seconds are
#      left (default: step 2's wall time).
# WHAT FITS (bench/results/2026-12-03-cpu/study_flops.txt): one seed of ex1.3 is 38.5 PFLOP at its epoch limits,
# ex2.1's fine-tuning 7.1, the whole lab with 3 seeds 137 PFLOP. ex1.3's six width-64 runs side by side
# did 52-70 TFLOP/s together on the H100 of 2026-11-27 (8.8 PFLOP in 126 s for seed 0); at that, one seed of the
# lab takes 11-15 minutes: more than one lease's call.
# IN INSTALMENTS: one lease is unlikely to hold even one seed of the lab (above).
# RESLAB_GPU_EARLIER=<an earlier lease's runs.tar.gz, committed under bench/results/> takes that lease's finished
# runs in first (bench/earlier_runs.py: runs cut short are trained again, and so is a seed of ex2.1 not finished
# with its source rescnn6, unless that source's weights came along in $RESLAB_GPU_EARLIER_WEIGHTS, default
# .device/earlier); every step then reuses what is there and trains what is missing, and this lease's
# runs.tar.gz holds them all.
# A step left out for lack of time is noted, not counted as a failure. Training stops by RESLAB_GPU_DEADLINE
# seconds after the start (default 540; runs cut there stop politely and say "interrupted", and are resumable);
# a step that would start after it is skipped and counted as failed. --smoke runs every step whatever the estimates.
# Every `reslab run` gets --data-dir DATA --out RUNS --device cuda --wandb disabled (--smoke: --device cpu and
# 1 epoch, width 8, 100 images, 1 thread).
# OUT_DIR, rewritten after every step so that a call cut short still returns it, receives at most 8 files (what
# the device tool brings back): log.txt, bench.txt (+ bench.json from study_speed.py), timing.md (every run folder,
# all seeds, with the data provenance), reports.md (every experiment's report.md, one after another), runs.tar.gz
# (every run's summary.json, metrics.jsonl, config.yaml, the reports and figures; no checkpoints), and while an
# ex2.1 seed has not finished but its source rescnn6 has, that network's weights in two parts (bench/earlier_runs.py
# send): `bench/gpu_data.py stage --earlier <where they came back>` carries them to the next lease, which
# fine-tunes and probes that same network instead of training the source again.
set -uo pipefail
SECONDS=0                              # the deadline counts from here (bash would start from an inherited SECONDS)

out=${1:?usage: bash bench/gpu_lab.sh OUT_DIR [--smoke]}
mode=${2:-full}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
stage=${RESLAB_STAGE:-$root/.device}
deadline=${RESLAB_GPU_DEADLINE:-540}
est_mnist=${RESLAB_GPU_EST_MNIST:-90}
est_bench=${RESLAB_GPU_EST_BENCH:-240}   # study_speed (cut at 120 s), batched seeds (60 s), CUDA graphs check (90 s)
if [ "$mode" = "--smoke" ]; then
  work=${RESLAB_GPU_WORK:-}
  [ -n "$work" ] || { work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; }   # what matters is packed into OUT_DIR
else
  # A fixed folder: ex2.1's runs record their source checkpoint's path, the same in every lease only so, and a
  # later lease reuses them only then (RESLAB_GPU_EARLIER); a rerun on the same warm machine resumes cut runs.
  work=${RESLAB_GPU_WORK:-/tmp/reslab-gpu-work}
fi
mkdir -p "$work"
runs=$work/runs
py=${PYTHON:-python3}                  # the interpreter that has torch
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$out/log.txt") 2>&1
log_pid=$!
failed=0
left_out=()                            # steps left out for lack of time
say() { echo "[gpu_lab +${SECONDS}s] $*"; }
finish() {   # finish STATUS: the log complete in OUT_DIR before the device tool collects it, then exit
  exec >&- 2>&-; wait "$log_pid"
  exit "$1"
}
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
fits() {   # fits LABEL SECONDS [MIN]: whether a step of about SECONDS (of which MIN already give results) starts now
  local left=$((deadline - SECONDS))
  if [ "$left" -le 5 ]; then return 0; fi   # past the deadline: reslab() skips the step and counts it
  if [ "$2" -le "$left" ]; then say "$1: about ${2}s, ${left}s left: starts"; return 0; fi
  if [ "${3:-$2}" -le "$left" ]; then say "$1: about ${2}s, ${left}s left: starts; the deadline may cut its end"
    return 0; fi
  if [ "$smoke" = 1 ]; then say "$1: about ${2}s, ${left}s left: starts anyway (--smoke runs every step)"; return 0; fi
  say "$1: left out, about ${2}s needed and ${left}s left"; left_out+=("$1"); return 1
}
package() {   # (re)write the results in OUT_DIR from whatever has finished so far
  [ -d "$runs" ] || return 0
  "$py" "$root/bench/timing_table.py" "$runs" > "$out/timing.md.tmp" && mv "$out/timing.md.tmp" "$out/timing.md"
  : > "$out/reports.md.tmp"
  for exp in ex1.3 ex2.1 ex1 ex1.2 ex1.3-deep; do
    [ -f "$runs/$exp/report.md" ] && { echo "<!-- $exp/report.md -->"; cat "$runs/$exp/report.md"; echo; } \
      >> "$out/reports.md.tmp"
  done
  mv "$out/reports.md.tmp" "$out/reports.md"
  # The weights of a source rescnn6 whose ex2.1 seed has not finished, so that the next lease goes on from them.
  "$py" "$root/bench/earlier_runs.py" send "$runs" "$out" || say "weights for the next lease: not sent"
  tar czf "$out/runs.tar.gz" -C "$work" --exclude='*.pth' --exclude='wandb' runs
}

# 1. data ------------------------------------------------------------------------------------------------------
c100_pid=
if [ "$mode" = "--smoke" ]; then
  smoke=1 device=cpu data=$work/data
  jobs=${RESLAB_GPU_JOBS:-1}           # two CPU cores: runs side by side only share them (and each imports torch)
  deep_jobs=$jobs
  "$py" -c "import sys; sys.path.insert(0, sys.argv[1]); from fakedata import write_all; write_all(sys.argv[2])" \
    "$root/tests" "$data" || { say "cannot generate the tiny data"; finish 1; }
  # Seconds on a CPU: the point is that every step still runs. 100 images a run (ex2.1's tiny CIFAR-100 has 5 a
  # class: a fifth of them for validation leaves every class in both parts); one torch thread (two threads beside
  # another busy process spin: the 1-epoch runs of ex1.3-deep took 24 s instead of 5).
  shrink=(--epochs 1 --width 8 --train-subset 100 --val-fraction 0.2 --threads 1)
  bench=(--smoke --parts epoch)
  mnist_seeds=1
else
  smoke=0 device=cuda data=${RESLAB_GPU_DATA:-/tmp/reslab-gpu-data}
  # One small model leaves an H100 mostly idle (2026-11-27: ex1.3's width-64 runs, six side by side, did about 70
  # TFLOP/s together against 27 for one alone); ex2.1 runs beside them. ex1.3-deep's nets are small: six at once.
  jobs=${RESLAB_GPU_JOBS:-3}
  deep_jobs=${RESLAB_GPU_DEEP_JOBS:-6}
  "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    || { say "no CUDA device: this is the GPU run (--smoke runs on the CPU)"; finish 1; }
  # CIFAR-100 (needed from step 4 on) unpacks beside steps 2 and 3; CIFAR-10 and MNIST are needed now. A pack
  # that call 2's background assemble is still unpacking is waited for (a lock per pack), then skipped.
  timeout 300 "$py" "$root/bench/gpu_data.py" assemble "$stage" "$data" --pack cifar100 > "$work/cifar100.log" 2>&1 &
  c100_pid=$!
  say "data: CIFAR-10 and MNIST from $stage into $data (CIFAR-100 in the background)"
  step timeout 300 "$py" "$root/bench/gpu_data.py" assemble "$stage" "$data" --pack cifar10 --pack mnist
  [ -f "$data.log" ] && { say "the background assemble started by call 2 ($data.log):"; cat "$data.log"; }
  shrink=()
  bench=()
  mnist_seeds=3
fi
say "data ready in $data"
if [ -n "${RESLAB_GPU_EARLIER:-}" ]; then   # earlier leases' finished runs: reused, not trained again
  # The weights an unfinished ex2.1 seed needs, where they were carried (--smoke: only where named).
  weights=${RESLAB_GPU_EARLIER_WEIGHTS:-}
  [ -n "$weights" ] || [ "$smoke" = 1 ] || weights=$stage/earlier
  with=(); [ -n "$weights" ] && [ -d "$weights" ] && with=(--weights "$weights")
  say "earlier runs from $RESLAB_GPU_EARLIER (bench/earlier_runs.py)${with[*]:+, weights from $weights}"
  step "$py" "$root/bench/earlier_runs.py" take "$RESLAB_GPU_EARLIER" "$runs" ${with[@]+"${with[@]}"}
fi
common=(--data-dir "$data" --out "$runs" --device "$device" --wandb disabled ${shrink[@]+"${shrink[@]}"})

# 2. results first: ex2.1 and ex1.3, seed 0 --------------------------------------------------------------------
# ex2.1 (which trains its source, ex1.3's rescnn6, then probes and fine-tunes it: ~14 PFLOP in one process, and a
# later lease must redo all of it unless all of it finishes here or the source's weights go back with OUT_DIR,
# bench/earlier_runs.py) runs in the background.
# Beside it, ex1.3's deepest skip-connection pair trains one run at a time, so that ex2.1 keeps half the GPU
# (runs in separate processes share it by time slices); then the rest of ex1.3, $jobs at a time, in priority
# order: the pairs deepest first, the Simple CNN last. When the deadline cuts a round, at most jobs + 1 runs are
# lost (a run cut short is trained again by a later lease), where 9 runs side by side, sharing the GPU by time
# slices, would finish the cheap Simple CNNs first and leave the costly pairs cut together (bench/study_flops.py:
# one seed of ex1.3 is ~39 PFLOP, two thirds of it the width-128 residual and no-skip nets).
ex13_first=noskipcnn6,rescnn3
ex13_rest=noskipcnn3,rescnn2,noskipcnn2,cnn6,cnn3,cnn2
round_seconds=0
seed_round() {   # seed_round K: seed K of ex2.1 and ex1.3 (seeds below K are reused); sets round_seconds
  local seeds=$(($1 + 1)) start=$SECONDS rc before
  rm -f "$work/ex2.1.rc"
  (   # a subshell: its count of failures would be lost, so it leaves its exit status in a file
    while [ -n "$c100_pid" ] && kill -0 "$c100_pid" 2>/dev/null; do sleep 1; done   # CIFAR-100 unpacked
    reslab run ex2.1 --seeds "$seeds" "${common[@]}"; rc=$?
    say "ex2.1 seed $1 done (rc $rc)"; echo "$rc" > "$work/ex2.1.rc"
  ) &
  local transfer_pid=$!
  before=$failed   # these two calls' failures are mended by the call over all of ex1.3 below
  reslab run ex1.3 --seeds "$seeds" --only "$ex13_first" --jobs 1 "${common[@]}"
  reslab run ex1.3 --seeds "$seeds" --only "$ex13_rest" --jobs "$jobs" "${common[@]}"
  say "ex1.3 seed $1 without rescnn6 done (rc $?)"; failed=$before
  wait "$transfer_pid"
  [ "$(cat "$work/ex2.1.rc" 2>/dev/null)" = 0 ] || failed=$((failed + 1))
  # All of ex1.3 once more: its report over every run, and rescnn6 if ex2.1 did not get to train it.
  local all="rescnn6,$ex13_first,$ex13_rest"
  reslab run ex1.3 --seeds "$seeds" --only "$all" --jobs "$jobs" "${common[@]}"; rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $rc -ne 130 ] && [ "$jobs" -gt 1 ]; then   # failed, not cut short
    say "ex1.3 failed (rc $rc) with --jobs $jobs; again with --jobs 1 (finished runs are reused)"
    reslab run ex1.3 --seeds "$seeds" --only "$all" --jobs 1 "${common[@]}"; rc=$?
    [ $rc -ne 0 ] || failed=$((failed - 1))   # the retry mended the first try
  fi
  say "ex1.3 seed $1 done (rc $rc)"; package
  round_seconds=$((SECONDS - start))
}
if [ -n "$c100_pid" ]; then say "ex2.1 waits for CIFAR-100, unpacking in the background"; fi
seed_round 0
per_seed=$round_seconds
if [ -n "$c100_pid" ]; then
  wait "$c100_pid"; rc=$?
  say "CIFAR-100 assembled in the background (rc $rc):"; cat "$work/cifar100.log"
  [ $rc -eq 0 ] || failed=$((failed + 1))
fi

# 3. speed benchmark -------------------------------------------------------------------------------------------
left=$((deadline - SECONDS))
if [ "${RESLAB_GPU_BENCH:-1}" = 0 ]; then
  say "speed benchmark: left out (RESLAB_GPU_BENCH=0)"
elif ! fits "speed benchmark" "$est_bench" 60; then
  :
elif [ "$left" -le 5 ]; then
  say "deadline reached: skipped the speed benchmark"; failed=$((failed + 1))
else
  if [ -f "$root/bench/study_speed.py" ]; then
    say "speed benchmark: bench/study_speed.py"
    speed=("$root/bench/study_speed.py" --device "$device" --data-dir "$data" --json "$out/bench.json")
  else
    say "speed benchmark: bench/study_speed.py is not there; bench/epoch_speed.py instead"
    speed=("$root/bench/epoch_speed.py" --device "$device" --data-dir "$data")
    [ "$smoke" = 1 ] && bench=(--smoke)
  fi
  # Not through step(): a pipeline's left side runs in a subshell, where its count of failures would be lost.
  timeout --kill-after=10 $((left < 120 ? left : 120)) "$py" "${speed[@]}" ${bench[@]+"${bench[@]}"} \
    | tee "$out/bench.txt" || { say "speed benchmark failed or cut (rc ${PIPESTATUS[0]})"; failed=$((failed + 1)); }
  # Would a study's seeds train faster as one batched model? (separate vs vmapped, same arithmetic; about 25 s)
  left=$((deadline - SECONDS))
  if [ -f "$root/bench/batched_seeds.py" ] && [ "$left" -gt 90 ]; then
    size=(); [ "$smoke" = 1 ] && size=(--steps 3 --repeat 1)
    timeout --kill-after=10 60 "$py" "$root/bench/batched_seeds.py" --device "$device" ${size[@]+"${size[@]}"} \
      | tee -a "$out/bench.txt" || { say "batched-seeds benchmark failed or cut (rc ${PIPESTATUS[0]})"; failed=$((failed + 1)); }
  fi
fi

# 3b. CUDA graphs: checked here, then used by the runs that follow if they work ----------------------------------
if [ "${RESLAB_GPU_GRAPHS:-1}" = 0 ]; then
  say "CUDA graphs: left out (RESLAB_GPU_GRAPHS=0); the runs train eagerly"
elif [ $((deadline - SECONDS)) -le 60 ]; then
  say "CUDA graphs: not checked (under 60 s left); the runs train eagerly"
else
  say "CUDA graphs check: bench/graphs_check.py"
  check=(--data-dir "$data" --device "$device"); [ "$smoke" = 1 ] && check=(--data-dir "$data" --smoke)
  timeout --kill-after=10 90 "$py" "$root/bench/graphs_check.py" "${check[@]}" | tee -a "$out/bench.txt"
  if [ "${PIPESTATUS[0]}" -eq 0 ]; then
    common+=(--cuda-graphs); say "CUDA graphs work here: the runs train with --cuda-graphs"
  else
    say "CUDA graphs check failed or cut: the runs train eagerly"
  fi
fi

# 4. ex1 and ex1.2 ---------------------------------------------------------------------------------------------
if fits "ex1 and ex1.2 ($mnist_seeds seed(s))" "$est_mnist"; then
  reslab run ex1 --seeds "$mnist_seeds" --jobs "$jobs" "${common[@]}"; say "ex1 done (rc $?)"; package
  reslab run ex1.2 --seeds "$mnist_seeds" --jobs "$jobs" "${common[@]}"; say "ex1.2 done (rc $?)"; package
fi

# 5. seeds 1 and 2 of ex1.3 and ex2.1, each if a round like seed 0's fits ------------------------------------------
last_seed=2; [ "$smoke" = 1 ] && last_seed=1
for k in $(seq 1 "$last_seed"); do
  if [ $((deadline - SECONDS)) -le 5 ]; then say "seed $k of ex1.3 and ex2.1: past the deadline"
    seed_round "$k"   # skipped there, and counted
  elif fits "seed $k of ex1.3 and ex2.1" "$per_seed"; then seed_round "$k"
  else left_out+=("seeds $k..2 of ex1.3 and ex2.1"); break; fi
done

# 6. ex1.3-deep ------------------------------------------------------------------------------------------------
if fits "ex1.3-deep seed 0" "${RESLAB_GPU_EST_DEEP:-$per_seed}"; then
  reslab run ex1.3-deep --seeds 1 --jobs "$deep_jobs" "${common[@]}"; say "ex1.3-deep done (rc $?)"; package
fi

package
[ -f "$out/timing.md" ] && cat "$out/timing.md"
if [ ${#left_out[@]} -gt 0 ]; then joined=$(printf '%s; ' "${left_out[@]}"); say "left out for lack of time: ${joined%; }"; fi
say "finished with $failed failed step(s); results in $out"
if [ "$failed" -eq 0 ]; then finish 0; else finish 1; fi
