#!/usr/bin/env python3
"""Every speed target of issue 15 in one command, each figure printed beside its peer and its target.

What it measures (each part can be picked with --parts):

study  Target 1 (CPU, 2 cores): ``reslab run ex1 --seeds 3`` plus ``reslab run ex1.2 --seeds 3``, wall time of the
       two together (target <= 30 s), run as a user runs them: fresh processes of
       ``python -m reslab run EX --seeds 3 --data-dir D --out TMP --device DEV --wandb disabled``, --study-repeat
       times (median), then once more with W&B left at its default (``--wandb auto``: online when logged in, else
       offline) to show what W&B costs. The mean test accuracies are printed beside the earlier ones (ex1 MLP
       97.63 +- 0.22 %, ex1.2 residual MLP 97.84 +- 0.19 % at 2 threads; ex1.2's MLP is ex1's, so it must match ex1).
       Then the wall time of the median pass broken down into phases, from the runs' own files (summary.json
       train_seconds, metrics.jsonl seconds, study.json wall_seconds) and from timing each phase apart: interpreter
       start (``python -c pass``), imports (``python -c "import reslab.cli, reslab.study"``, and the largest
       packages from ``python -X importtime``), the first optimizer of a process (it imports torch._dynamo),
       load_dataset, make_loaders, the test pass, gradient flow, write_report (each in a fresh process, as the
       run has it), W&B (the auto pass minus the disabled one), and what is left over.
ttr    Target 2: time to result of ex1 with one seed (load -> early-stopped training -> test), three ways, each a
       fresh process: (a) ``python -m reslab train --model mlp --dataset mnist --data-dir D --wandb disabled``
       (run through a few lines of ``python -c`` that note when its imports end and when it returns); (c) the
       usual hand-written loop, a map-style Dataset with torchvision's per-sample PIL -> ToTensor -> Normalize
       path, DataLoader(batch_size=128, shuffle=True) with num_workers 0, 1 and 2 (--workers); (d) a Lightning
       Trainer with EarlyStopping(monitor="val_loss", patience=5) on the same model and data pipeline, run with
       --lightning-python (a separate venv: Lightning is never a dependency of reslab; without it (d) is skipped
       and the output says why). (c) and (d) are bench/usual_pipeline.py, whose docstring says exactly what they
       do. All three stop by ex1's two rules (stagnation patience 5; overfitting: val_loss > best x 1.15 for 3
       epochs in a row). Printed: process wall, in-process load -> test, epochs, seconds per epoch, test accuracy,
       and c/a, d/a (target >= 10x) on the process wall, in-process and per epoch (epoch counts can differ: the
       splits and initial weights are each pipeline's own; the output says when they do).
epoch  Target 4 (GPU): seconds per epoch of ``reslab train`` alone (run_training in this process, no --jobs, no
       early stop, train + validation + checkpoints every epoch, median of the epochs after the first): the MNIST
       MLP (target <= 0.1 s) and the residual CNN depth 3 width 64 on the 45k CIFAR-10 training images (target
       <= 1.0 s). On the CPU only the MLP is timed (the CNN at width 64 would take many minutes an epoch there);
       the per-epoch comparison against a bare loop and the usual DataLoader stays bench/epoch_speed.py.

The header names the date, CPU model, cores, torch version, GPU, threads and the load average: figures taken while
other processes were busy are rough. On a machine shared with busy processes use --threads 1 (every process then
runs one torch thread): with 2 threads on 2 busy cores, OpenMP's spin-waiting made single epochs take 50-370 s
instead of 0.3-1 s, and the run hours long. --json PATH writes every figure. The exit status is 0 when every part ran (a
missed target is a finding, not a failure), 1 when a part failed.

Run from the repository root:
    python bench/study_speed.py --data-dir ../shared/data
        CPU: all parts. On 2 cores shared with another engineer's busy jobs, with --threads 1, it took 53 minutes
        (2026-12-02: part study 22 min, of which one pass hit 14 min; ttr 31 min, (c) and (d) 95-200 s a run;
        epoch 7 s). On 2 idle cores it should take about 15 minutes (an estimate from the per-epoch figures:
        study ~5 min, ttr ~9 min, epoch ~15 s). --repeat 1 --study-repeat 1 takes about a third of that.
    python bench/study_speed.py --device cuda --data-dir DATA
        GPU: part epoch by default (DATA must hold MNIST/raw and CIFAR-10; about a minute), as bench/gpu_lab.sh
        calls it; --parts study,ttr,epoch runs the other parts on the GPU too.
    python bench/study_speed.py --smoke
        every part on tiny generated data (tests/fakedata.py), 2 epochs, 2 processes at a time: 45 s on 2 cores
        beside one other busy process (2026-12-02); the timings mean nothing there. Tested by
        tests/test_study_speed.py.

Lightning for (d), once, outside the package (.venv-bench/ is git-ignored):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements-lightning.txt
--lightning-python defaults to .venv-bench/bin/python when it exists.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_LIGHTNING = REPO / ".venv-bench" / "bin" / "python"
USUAL = REPO / "bench" / "usual_pipeline.py"
PARTS = ("study", "ttr", "epoch")

# Earlier figures, printed beside today's (source in brackets).
EARLIER_ACCURACY = {"ex1 mlp": (97.63, 0.22), "ex1.2 resmlp": (97.84, 0.19)}   # % over 3 seeds, 2 threads, at e3286b6
# (bench/results/2026-12-03-cpu/study_speed-before.txt: before ex1.2 copied ex1's runs)
EARLIER_EPOCH = {   # seconds per epoch of reslab's train_model (bench/epoch_speed.py (a)), README "Speed"
    ("cpu", "mlp", 2): (0.549, "2 idle CPU cores, 2 threads, 2026-12-03 (bench/results/2026-12-03-cpu)"),
    ("cuda", "mlp", None): (0.662, "H100, 2026-11-27"),
    ("cuda", "rescnn", None): (2.001, "H100, 2026-11-27"),
}
TARGET_STUDY_SECONDS = 30.0
TARGET_TTR_RATIO = 10.0
TARGET_EPOCH = {"mlp": 0.1, "rescnn": 1.0}    # GPU seconds per epoch

# (a): `python -m reslab ...` with two time marks: when the imports `reslab train` needs are done, when it returns.
A_WRAPPER = r"""
import time
t0 = time.perf_counter()
import json, runpy, sys
result = sys.argv[1]
sys.argv = ["reslab", *sys.argv[2:]]
import reslab.cli, reslab.run
t1 = time.perf_counter()
try:
    runpy.run_module("reslab", run_name="__main__", alter_sys=True)
    rc = 0
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
t2 = time.perf_counter()
with open(result, "w") as f:
    json.dump({"rc": rc, "marks": {"imported": t1 - t0, "tested": t2 - t0}}, f)
sys.exit(rc)
"""
# Phases timed in one fresh process: when it starts (wall clock), the setup's seconds, each statement's seconds in
# turn, and when it is about to exit (wall clock); the parent adds when it spawned the process and saw it end.
TIMED_STATEMENTS = r"""
import time
print("BEGIN", time.time())
import sys
sys.path.insert(0, sys.argv[1])
t = time.perf_counter()
exec(sys.argv[2])
print("SECONDS", time.perf_counter() - t)
print("SETUP DONE", file=sys.stderr, flush=True)   # -X importtime: the setup's imports are the lines above this
for statement in sys.argv[3:]:
    t = time.perf_counter()
    exec(statement)
    print("SECONDS", time.perf_counter() - t)
print("END", time.time(), flush=True)
"""


class BenchError(Exception):
    """A step of the benchmark that did not work; its part is reported as failed and the others go on."""


# ---------------------------------------------------------------- helpers

def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], digits: int = 2) -> str:
    """'median [min-max]' (or the value alone for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def mean_std(values: list[float]) -> str:
    """'mean ± std' in percent (sample std over seeds), or the value alone for one seed."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}%"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}%"


def verdict(value: float, op: str, bound: float, unit: str = "") -> str:
    met = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound:g}{unit}: {'met' if met else 'MISSED'}"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_process(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command to its end; return its wall seconds and the finished process (a failure raises BenchError)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env(),
                              cwd=cwd or REPO)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f} s: {shown(cmd)}") from None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BenchError(f"exit {proc.returncode}: {shown(cmd)}\n{tail}")
    return wall, proc


def shown(cmd: list[str]) -> str:
    """A command as a person would type it (long inline code shortened)."""
    parts = []
    for c in cmd:
        c = c if "\n" not in c else "<code>"
        parts.append(c if c and all(ch.isalnum() or ch in "-_./=:,+" for ch in c) else repr(c))
    return " ".join(parts).replace(sys.executable, "python")


def time_statements(setup: str, statements: list[str], timeout: float, importtime: bool = False) -> dict[str, Any]:
    """A fresh process runs `setup`, then each statement in turn (sys.path holds the repository). Returns its
    wall seconds, 'start' (spawn to its first line), 'setup' and each statement's seconds ('each'), 'exit' (its
    last line to its end: the interpreter's teardown) and, with `importtime`, the -X importtime profile."""
    spawned = time.time()
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", TIMED_STATEMENTS, str(REPO), setup,
           *statements]
    wall, proc = run_process(cmd, timeout)
    ended = time.time()
    marks: dict[str, list[float]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("BEGIN", "SECONDS", "END"):
            marks.setdefault(key, []).append(float(value))
    if len(marks.get("SECONDS", [])) != len(statements) + 1 or "BEGIN" not in marks or "END" not in marks:
        raise BenchError(f"no timing from: {setup}; {'; '.join(statements)}")
    return {"wall": wall, "start": max(marks["BEGIN"][0] - spawned, 0.0), "setup": marks["SECONDS"][0],
            "each": marks["SECONDS"][1:], "exit": max(ended - marks["END"][0], 0.0),
            "profile": import_profile(proc.stderr.split("SETUP DONE")[0]) if importtime else None}


def run_jobs(jobs: list[Callable[[], Any]], parallel: int) -> list[Any]:
    """Call each job (each runs processes), `parallel` at a time, in the order given; their results in that order."""
    if parallel <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: job(), jobs))


def time_in_process(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """A finished run folder's summary and per-epoch seconds."""
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = [json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {"name": run_dir.name, "test_accuracy": summary["test_accuracy"], "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"], "stopped_by": summary["stopped_by"],
            "train_seconds": summary["train_seconds"], "epoch_seconds": seconds,
            "copied": "copied_from:" in (run_dir / "config.yaml").read_text()}   # a twin's run, not trained again


def machine(device: torch.device) -> dict[str, Any]:
    from reslab.device import _cpu_model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": f"{_cpu_model()} ({platform.machine()})", "cores": cores, "cpu_count": os.cpu_count(),
            "torch": str(torch.__version__), "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_start": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of the child processes it has waited for."""
    import resource
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------- target 1: ex1 + ex1.2 as a user runs them

def study_command(args: argparse.Namespace, experiment: str, out: Path, wandb: bool) -> list[str]:
    cmd = [sys.executable, "-m", "reslab", "run", experiment, "--seeds", str(args.seeds), "--data-dir",
           str(args.data_dir), "--out", str(out), "--device", args.device]
    if not wandb:
        cmd += ["--wandb", "disabled"]
    if args.smoke:
        cmd += ["--epochs", "2"]
    return cmd


def study_pass(args: argparse.Namespace, out: Path, wandb: bool) -> dict[str, Any]:
    """ex1 then ex1.2, each a fresh `python -m reslab run` process; their walls and their runs' files."""
    result: dict[str, Any] = {"wall": {}, "in_process": {}, "runs": {}, "commands": {}}
    for experiment in ("ex1", "ex1.2"):
        cmd = study_command(args, experiment, out, wandb)
        result["commands"][experiment] = shown(cmd)
        wall, _ = run_process(cmd, args.timeout)
        study = json.loads((out / experiment / "study.json").read_text())
        if study["status"] != "done":
            raise BenchError(f"{experiment}: {study['status']}: {study.get('reason')}")
        result["wall"][experiment] = wall
        result["in_process"][experiment] = study["wall_seconds"]
        result["runs"][experiment] = [read_run(out / experiment / name) for name in study["runs"]]
    result["total"] = sum(result["wall"].values())
    result["folder"] = out
    return result


def accuracies(runs: list[dict[str, Any]], prefix: str) -> list[float]:
    return [r["test_accuracy"] for r in runs if r["name"].startswith(prefix + "-seed")]


def part_study(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from reslab.tracking import resolve_wandb_mode
    print(f"\n== Target 1: `reslab run ex1 --seeds {args.seeds}` + `reslab run ex1.2 --seeds {args.seeds}`, "
          f"fresh processes, device {args.device} ==", flush=True)
    wandb_mode = resolve_wandb_mode("auto")
    env_mode = os.environ.get("WANDB_MODE")

    def one_pass(i: int | None) -> dict[str, Any]:
        """Pass i with W&B disabled, or (None) the pass with W&B at its default."""
        result = study_pass(args, work / (f"study-{i}" if i is not None else "study-wandb"), wandb=i is None)
        what = (f"pass {i + 1}/{args.study_repeat} (--wandb disabled)" if i is not None else
                f"pass with W&B at its default (--wandb auto -> {wandb_mode}"
                f"{f', WANDB_MODE={env_mode} in the environment' if env_mode else ''})")
        print(f"  {what}: ex1 {result['wall']['ex1']:.1f} s + ex1.2 {result['wall']['ex1.2']:.1f} s", flush=True)
        return result

    *passes, auto = run_jobs([lambda i=i: one_pass(i) for i in range(args.study_repeat)] + [lambda: one_pass(None)],
                             args.parallel)
    totals = [p["total"] for p in passes]
    chosen = sorted(passes, key=lambda p: p["total"])[(len(passes) - 1) // 2]     # the median pass (lower middle)

    runs1, runs12 = chosen["runs"]["ex1"], chosen["runs"]["ex1.2"]
    acc = {"ex1 mlp": accuracies(runs1, "mlp"), "ex1.2 mlp": accuracies(runs12, "mlp"),
           "ex1.2 resmlp": accuracies(runs12, "resmlp")}
    same = sum(a == b for a, b in zip(acc["ex1 mlp"], acc["ex1.2 mlp"]))
    every = [[r["test_accuracy"] for e in ("ex1", "ex1.2") for r in p["runs"][e]] for p in passes + [auto]]
    stable = all(x == every[0] for x in every)
    wall = median(totals)
    repeated = f"median of {len(totals)} [{min(totals):.1f}-{max(totals):.1f}]" if len(totals) > 1 else "1 pass"
    rows = [("figure", "this run", "peer", "target"),
            ("wall, ex1 + ex1.2, --wandb disabled", f"{wall:.1f} s ({repeated})", "(the target)",
             verdict(wall, "<=", TARGET_STUDY_SECONDS, " s"))]
    for experiment in ("ex1", "ex1.2"):
        walls = [p["wall"][experiment] for p in passes]
        rows.append((f"  {experiment} alone", f"{spread(walls, 1)} s",
                     f"in-process {chosen['in_process'][experiment]:.1f} s (study.json)", ""))
    rows.append((f"wall, ex1 + ex1.2, --wandb auto ({wandb_mode})", f"{auto['total']:.1f} s (1 pass)",
                 f"{wall:.1f} s with W&B disabled ({auto['total'] - wall:+.1f} s)", ""))
    rows.append(("ex1 MLP test accuracy", mean_std(acc["ex1 mlp"]),
                 "{:.2f} ± {:.2f}% earlier".format(*EARLIER_ACCURACY["ex1 mlp"]), ""))
    mlps = [r for r in runs12 if r["name"].startswith("mlp-seed")]
    again = sum(r["train_seconds"] for r in mlps if not r["copied"])
    reuse = (f"{sum(r['copied'] for r in mlps)} copied from ex1, not trained again" if not again
             else f"{again:.1f} s of epochs spent again")
    rows.append(("ex1.2 MLP test accuracy", mean_std(acc["ex1.2 mlp"]),
                 f"ex1 MLP {mean_std(acc['ex1 mlp'])} ({same}/{len(acc['ex1 mlp'])} seeds identical; {reuse})", ""))
    rows.append(("ex1.2 residual MLP test accuracy", mean_std(acc["ex1.2 resmlp"]),
                 "{:.2f} ± {:.2f}% earlier".format(*EARLIER_ACCURACY["ex1.2 resmlp"]), ""))
    epochs = {label: [r["epochs_run"] for r in runs if r["name"].startswith(model + "-seed")]
              for label, runs, model in (("ex1 mlp", runs1, "mlp"), ("ex1.2 mlp", runs12, "mlp"),
                                         ("ex1.2 resmlp", runs12, "resmlp"))}
    rows.append(("epochs run (ex1 MLP | ex1.2 MLP | resMLP)",
                 " | ".join(",".join(map(str, v)) for v in epochs.values()),
                 f"test accuracies {'the same' if stable else 'NOT the same'} in every pass", ""))
    for row in rows:
        print(f"  {row[0]:<44} {row[1]:<34} {row[2]:<52} {row[3]}".rstrip())
    for experiment in ("ex1", "ex1.2"):
        print(f"  command: {passes[0]['commands'][experiment]}")
    print(f"  W&B pass: the same without --wandb; accuracies with W&B: ex1 MLP "
          f"{mean_std(accuracies(auto['runs']['ex1'], 'mlp'))}", flush=True)
    breakdown = study_breakdown(args, chosen, auto["total"] - chosen["total"], work)
    return {"passes": passes, "wandb_pass": auto, "ex12_mlp_epoch_seconds": again, "wandb_mode": wandb_mode,
            "wall_disabled_median": median(totals),
            "wall_disabled_all": totals, "wall_wandb_auto": auto["total"], "accuracy": acc, "epochs": epochs,
            "ex12_mlp_identical_seeds": same, "accuracies_same_every_pass": stable, "breakdown": breakdown,
            "target_seconds": TARGET_STUDY_SECONDS, "target_met": median(totals) <= TARGET_STUDY_SECONDS}


def import_profile(stderr: str) -> list[tuple[str, float]]:
    """Import time by top-level package, largest first, from `python -X importtime`'s lines: the sums of every
    module's own (self) time, so that no package's time is counted twice."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line[len("import time:"):].split("|", 2)
        root = name.strip().split(".")[0]
        totals[root] = totals.get(root, 0.0) + int(own) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])


def study_breakdown(args: argparse.Namespace, chosen: dict[str, Any], wandb_extra: float,
                    work: Path) -> dict[str, Any]:
    """Where the median pass's wall time went, phase by phase; printed as a table."""
    from reslab.analysis import gradient_flow_at_init
    from reslab.config import TrainConfig
    from reslab.datasets import clear_dataset_cache, load_dataset
    from reslab.evaluate import evaluate
    from reslab.experiments import load_experiment, train_configs
    from reslab.loader import make_loaders
    from reslab.models import build_model

    t = args.timeout
    n = args.phase_repeat
    processes = 2
    # Runs that ex1.2 copied from ex1 (same settings) were not trained again: their seconds are ex1's.
    runs = [r for r in chosen["runs"]["ex1"] + chosen["runs"]["ex1.2"] if not r["copied"]]
    n_runs = len(runs)
    loads = processes                    # load_dataset reads a dataset once per process (then it is cached)
    phases: list[tuple[str, float, str]] = []

    # A fresh process does what a `reslab run` process does outside its runs: import reslab.cli and reslab.study,
    # build its first optimizer (torch.optim imports torch._dynamo on first use), write the experiment's report and
    # figures (the process's first figures), and exit; then `import wandb`, which the W&B pass adds. --phase-repeat
    # such processes write ex1's report; one more, under -X importtime (which names the packages the imports spend
    # their time in), writes ex1.2's.
    copies = {}
    for experiment in ("ex1", "ex1.2"):
        copies[experiment] = work / f"report-{experiment}"
        shutil.copytree(chosen["folder"] / experiment, copies[experiment],
                        ignore=shutil.ignore_patterns("*.pth", "wandb"))

    def statements(experiment: str) -> list[str]:
        return ["torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), fused=True)",
                f"write_report({str(copies[experiment])!r})"] + (["import wandb"] if has_wandb() else [])

    setup = "import reslab.cli, reslab.study, torch; from reslab.report import write_report"
    *timed, profiled = run_jobs([lambda: time_statements(setup, statements("ex1"), t)] * n +
                                [lambda: time_statements(setup, statements("ex1.2"), t, importtime=True)],
                                args.parallel)
    start = median([x["start"] for x in timed])
    imported = median([x["setup"] for x in timed])
    optimizer = median([x["each"][0] for x in timed])
    report = median([x["each"][1] for x in timed]) + profiled["each"][1]
    wandb_import = median([x["each"][2] for x in timed]) if has_wandb() else None
    exit_ = median([x["exit"] for x in timed])
    largest = profiled["profile"][:5]
    how = f"a fresh process, median of {n}, x {processes} processes"
    phases.append(("interpreter start", start * processes, f"{how}: spawn to its first line"))
    phases.append(("imports (reslab.cli, reslab.study)", imported * processes,
                   f"{how}; by package (-X importtime, own times): " +
                   ", ".join(f"{name} {s:.2f} s" for name, s in largest)))
    phases.append(("first optimizer of a process", optimizer * processes,
                   f"{how}: torch.optim imports torch._dynamo on first use"))
    phases.append(("interpreter exit (teardown)", exit_ * processes, f"{how}: its last line to its end"))

    data_dir = str(args.data_dir)
    def read_again() -> None:   # the files themselves, as a process's first load reads them (not the cache)
        clear_dataset_cache()
        load_dataset("mnist", data_dir)

    load = median(time_in_process(read_again, n))
    phases.append(("data loading (load_dataset mnist)", load * loads,
                   f"in-process, median of {n} ({load:.2f} s), x {loads} loads (once per process)"))
    data = load_dataset("mnist", data_dir)
    config = TrainConfig(model="mlp", dataset="mnist", data_dir=data_dir, device=args.device, wandb="disabled")
    device = torch.device(args.device)
    split = median(time_in_process(lambda: make_loaders(data, config, device), n))
    phases.append(("split + loaders (make_loaders)", split * n_runs,
                   f"in-process, median of {n} ({split:.2f} s), x {n_runs} runs"))

    epoch_total = sum(r["train_seconds"] for r in runs)
    first = sum(r["epoch_seconds"][0] for r in runs if r["epoch_seconds"])
    later = [s for r in runs for s in r["epoch_seconds"][1:]]
    later_text = f", later epochs {sum(later):.1f} s ({len(later)}, median {median(later):.3f} s)" if later else ""
    phases.append(("training epochs (train+val+checkpoints)", epoch_total,
                   f"summary.json train_seconds over the {n_runs} runs trained (copies left out), "
                   f"{sum(r['epochs_run'] for r in runs)} epochs: "
                   f"first epochs {first:.1f} s{later_text}"))

    loaders = make_loaders(data, config, device)
    model = build_model("mlp", data.input_shape, data.num_classes).to(device)
    evaluate(model, loaders.test, data.num_classes)     # warm: in a run the test follows the validation passes
    test = median(time_in_process(lambda: evaluate(model, loaders.test, data.num_classes), n))
    phases.append(("testing (evaluate, test split)", test * n_runs,
                   f"in-process, median of {n} ({test:.3f} s), x {n_runs} runs"))

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        experiment = load_experiment("ex1.2")
        overrides = {"data_dir": data_dir, "device": args.device}
        pairs = dict(train_configs(experiment, 0, overrides, Path(tmp)))
        flow = median(time_in_process(lambda: gradient_flow_at_init(pairs, data), n))
    phases.append(("gradient flow at init (ex1.2)", flow * args.seeds,
                   f"in-process, median of {n} ({flow:.3f} s), x {args.seeds} seeds"))

    phases.append(("report + figures (write_report)", report,
                   f"in those processes after the imports: ex1's (median of {n}) + ex1.2's (1)"))
    accounted = sum(s for _, s, _ in phases)
    total = chosen["total"]
    other = total - accounted
    phases.append(("other (run folders, model builds, ...)", other, "the wall time minus the above" + (
        " (below 0: the phases timed apart took longer than in the pass: other processes' load)" if other < 0
        else "")))

    print(f"\n  Breakdown of the median --wandb disabled pass: {total:.1f} s in {processes} processes, {n_runs} runs")
    print(f"  {'phase':<42} {'seconds':>8} {'share':>6}  how measured")
    for name, seconds, how in phases:
        print(f"  {name:<42} {seconds:8.1f} {100 * seconds / total:5.0f}%  {how}")
    print(f"  {'total (the wall time of the pass)':<42} {total:8.1f} {100:5.0f}%")
    print(f"  {'W&B at its default (--wandb auto), extra':<42} {wandb_extra:8.1f} {100 * wandb_extra / total:5.0f}%  "
          f"the W&B pass minus this pass, {n_runs} runs"
          + (f"; `import wandb` alone {wandb_import:.2f} s a process" if wandb_import is not None else
             "; wandb is not installed (reslab then logs without it)"))
    in_process = sum(chosen["in_process"].values())
    print(f"  cross-check: study.json wall_seconds (in-process, runs + analyses) {in_process:.1f} s; outside them "
          f"(start, imports, report, exit) {total - in_process:.1f} s; non-epoch time inside them "
          f"{in_process - epoch_total:.1f} s", flush=True)
    biggest = max(phases, key=lambda p: p[1])
    print(f"  largest phase: {biggest[0]} ({100 * biggest[1] / total:.0f}% of the wall time)")
    return {"phases": [{"phase": name, "seconds": seconds, "how": how} for name, seconds, how in phases],
            "total": total, "wandb_extra": wandb_extra, "wandb_import_seconds": wandb_import,
            "imports_largest": largest, "in_process": in_process, "epoch_seconds_total": epoch_total}


def has_wandb() -> bool:
    import importlib.util
    return importlib.util.find_spec("wandb") is not None


# ---------------------------------------------------------------- target 2: time to result, three ways

def ttr_pipelines(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The commands of (a), (c) for each worker count, and (d) when there is a Lightning python."""
    epochs = ["--max-epochs", "2"] if args.smoke else []
    pipelines = [{"key": "a", "name": "(a) reslab train", "python": sys.executable,
                  "command": lambda r, result: [sys.executable, "-c", A_WRAPPER, str(result), "train", "--model",
                                                "mlp", "--dataset", "mnist", "--data-dir", str(args.data_dir),
                                                "--out", str(work / "ttr"), "--name", f"a-{r}", "--wandb",
                                                "disabled", "--device", args.device]
                  + (["--epochs", "2"] if args.smoke else [])}]
    for w in args.workers:
        pipelines.append({"key": f"c-w{w}", "name": f"(c) plain loop, w={w}", "python": sys.executable,
                          "command": lambda r, result, w=w: [sys.executable, str(USUAL), "plain", "--data-dir",
                                                             str(args.data_dir), "--result", str(result),
                                                             "--workers", str(w), "--device", args.device, *epochs]})
    if args.lightning_python:
        lp = str(args.lightning_python)
        pipelines.append({"key": "d", "name": f"(d) Lightning, w={args.lightning_workers}", "python": lp,
                          "command": lambda r, result: [lp, str(USUAL), "lightning", "--data-dir", str(args.data_dir),
                                                        "--result", str(result), "--workers",
                                                        str(args.lightning_workers), "--device", args.device,
                                                        *epochs]})
    return pipelines


def run_ttr_once(pipeline: dict[str, Any], r: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result_path = work / f"ttr-{pipeline['key']}-{r}.json"
    cmd = pipeline["command"](r, result_path)
    # The Lightning venv has no reslab: it gets the environment as it is, reslab's pipelines the repository too.
    env = child_env() if pipeline["key"] != "d" else dict(os.environ, PYTHONUNBUFFERED="1")
    wall, _ = run_process(cmd, args.timeout, env=env)
    child = json.loads(result_path.read_text())
    marks = child["marks"]
    out = {"wall": wall, "command": shown(cmd), "start_exit": wall - marks["tested"], "imports": marks["imported"],
           "in_process": marks["tested"] - marks["imported"]}
    if pipeline["key"] == "a":
        run = read_run(work / "ttr" / f"a-{r}")
        out.update(epochs_run=run["epochs_run"], test_accuracy=run["test_accuracy"], stopped_by=run["stopped_by"],
                   epoch_seconds=run["epoch_seconds"], epochs_total=run["train_seconds"],
                   tested_weights="best epoch")
    else:
        out.update(epochs_run=child["epochs_run"], test_accuracy=child["test_accuracy"],
                   stopped_by=child["stopped_by"], epoch_seconds=child["epoch_seconds"],
                   epochs_total=sum(child["epoch_seconds"]), tested_weights=child["tested_weights"],
                   load=marks["data_ready"] - marks["imported"], train=marks["trained"] - marks["data_ready"],
                   test=marks["tested"] - marks["trained"], lightning_version=child.get("lightning_version"))
    return out


def part_ttr(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"\n== Target 2: time to result of ex1, one seed (load -> early-stopped training -> test), device "
          f"{args.device}, {args.repeat} repeat(s), pipelines taking turns ==", flush=True)
    pipelines = ttr_pipelines(args, work)
    if not args.lightning_python:
        print(f"  (d) Lightning: skipped: {args.lightning_missing}")
    order = [(r, p) for r in range(args.repeat)
             for p in pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]]   # taking turns

    def one_run(r: int, p: dict[str, Any]) -> dict[str, Any]:
        out = run_ttr_once(p, r, args, work)
        print(f"  repeat {r + 1}: {p['name']}: {out['wall']:.1f} s, {out['epochs_run']} epochs", flush=True)
        return out

    outs = run_jobs([lambda r=r, p=p: one_run(r, p) for r, p in order], args.parallel)
    results: dict[str, list[dict[str, Any]]] = {p["key"]: [] for p in pipelines}
    for (_, p), out in zip(order, outs):
        results[p["key"]].append(out)

    def med(key: str, field: str) -> float:
        return median([x[field] for x in results[key]])

    lightning_version = next((x["lightning_version"] for x in results.get("d", []) if x.get("lightning_version")),
                             None)
    print(f"  {'pipeline':<26} {'process wall s':>22} {'start+exit':>10} {'imports':>8} {'load->test':>11} "
          f"{'epochs':>7} {'s/epoch':>8} {'test acc':>9}  stopped by (weights tested)")
    summary: dict[str, Any] = {}
    for p in pipelines:
        rs = results[p["key"]]
        per_epoch = [x["epochs_total"] / max(x["epochs_run"], 1) for x in rs]
        name = p["name"] if p["key"] != "d" else f"(d) Lightning {lightning_version}, w={args.lightning_workers}"
        epochs = sorted({x["epochs_run"] for x in rs})
        print(f"  {name:<26} {spread([x['wall'] for x in rs]):>22} {med(p['key'], 'start_exit'):10.2f} "
              f"{med(p['key'], 'imports'):8.2f} {med(p['key'], 'in_process'):11.2f} "
              f"{','.join(map(str, epochs)):>7} {median(per_epoch):8.3f} "
              f"{100 * median([x['test_accuracy'] for x in rs]):8.2f}%  "
              f"{rs[0]['stopped_by']} ({rs[0]['tested_weights']})")
        summary[p["key"]] = {"name": name, "command": rs[0]["command"], "runs": rs,
                             "wall_median": med(p["key"], "wall"), "in_process_median": med(p["key"], "in_process"),
                             "seconds_per_epoch_median": median(per_epoch), "epochs_run": epochs}
    a = summary["a"]
    ratios: dict[str, dict[str, float]] = {}
    c_keys = [k for k in summary if k.startswith("c-")]
    best_c = min(c_keys, key=lambda k: summary[k]["wall_median"]) if c_keys else None
    rows = [(f"c/a ({summary[k]['name'][4:]})", k) for k in c_keys]
    if best_c and len(c_keys) > 1:
        rows.append((f"c/a (best of w={','.join(k[3:] for k in c_keys)}: w={best_c[3:]})", best_c))
    if "d" in summary:
        rows.append(("d/a (Lightning)", "d"))
    print(f"  {'ratio':<32} {'process wall':>12} {'in-process':>11} {'per epoch':>10}  target (process wall)")
    for label, key in rows:
        x = summary[key]
        ratio = {"wall": x["wall_median"] / a["wall_median"], "in_process": x["in_process_median"] /
                 a["in_process_median"], "per_epoch": x["seconds_per_epoch_median"] / a["seconds_per_epoch_median"]}
        ratios[label] = ratio
        print(f"  {label:<32} {ratio['wall']:11.2f}x {ratio['in_process']:10.2f}x {ratio['per_epoch']:9.2f}x  "
              f">= {TARGET_TTR_RATIO:g}x: {'met' if ratio['wall'] >= TARGET_TTR_RATIO else 'MISSED'}")
    epochs = {summary[k]["name"]: summary[k]["epochs_run"] for k in summary}
    if len({tuple(v) for v in epochs.values()}) > 1:
        print("  epochs differ: " + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in epochs.items()) +
              " (own split and initial weights each; the per-epoch ratio compares at equal epochs)")
    else:
        print(f"  every pipeline ran the same epochs ({','.join(map(str, next(iter(epochs.values()))))})")
    print("  (a) is `python -m reslab train` through a `python -c` wrapper that marks the end of its imports; "
          "load->test is in-process from then to the end of the test; start+exit is the process wall minus that")
    print(f"  command (a): {a['command']}")
    for key in c_keys[:1] + (["d"] if "d" in summary else []):
        print(f"  command ({key[0]}): {summary[key]['command']}")
    return {"pipelines": summary, "ratios": ratios, "lightning_version": lightning_version,
            "lightning_skipped": None if args.lightning_python else args.lightning_missing,
            "target_ratio": TARGET_TTR_RATIO}


# ---------------------------------------------------------------- target 4: seconds per epoch (GPU)

def epoch_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    width = 8 if args.smoke else 64
    return [{"key": "mlp", "title": "MNIST MLP 784-128-64-10", "dataset": "mnist", "model": "mlp", "model_args": {}},
            {"key": "rescnn", "title": f"CIFAR-10 rescnn depth 3 width {width}", "dataset": "cifar10",
             "model": "rescnn", "model_args": {"depth": 3, "width": width}}]


def part_epoch(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from reslab.config import TrainConfig
    from reslab.run import run_training
    device = torch.device(args.device)
    print(f"\n== Target 4: seconds per epoch of `reslab train` alone (run_training in-process, train + validation + "
          f"checkpoints), device {args.device}, {args.epoch_epochs} epochs, median of epochs 2-{args.epoch_epochs} ==",
          flush=True)
    print(f"  {'model':<40} {'s/epoch median [min-max]':>26} {'first':>7} {'train img/s':>12}  "
          f"{'peer':<48} target")
    results: dict[str, Any] = {}
    failures: list[str] = []
    for m in epoch_models(args):
        if m["key"] == "rescnn" and device.type == "cpu" and not args.smoke:
            print(f"  {m['title'] + ', 45k images':<40} {'skipped on the CPU':>26}  the GPU target; "
                  "on the CPU see bench/epoch_speed.py (width 16, 5k images)")
            results[m["key"]] = {"skipped": "CPU"}
            continue
        config = TrainConfig(model=m["model"], dataset=m["dataset"], model_args=m["model_args"],
                             epochs=args.epoch_epochs, stagnation_stop=False, overfit_stop=False, seed=0,
                             device=args.device, wandb="disabled", data_dir=str(args.data_dir),
                             out=str(work / "epoch"), name=m["key"])
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                summary = run_training(config, console=False)
        except Exception as exc:   # a missing dataset, a CUDA error: say so, and go on with the other model
            print(f"  {m['title']:<40} FAILED: {type(exc).__name__}: {exc}", flush=True)
            failures.append(f"{m['title']}: {type(exc).__name__}: {exc}")
            results[m["key"]] = {"failed": f"{type(exc).__name__}: {exc}"}
            continue
        run = read_run(work / "epoch" / m["key"])
        seconds = run["epoch_seconds"][1:] or run["epoch_seconds"]
        n_train = _num_train(work / "epoch" / m["key"])
        peer = EARLIER_EPOCH.get((device.type, m["key"], torch.get_num_threads() if device.type == "cpu" else None))
        peer_text = f"{peer[0]:.3f} s ({peer[1]})" if peer else "—"
        target = TARGET_EPOCH[m["key"]]
        target_text = (verdict(median(seconds), "<=", target, " s") if device.type == "cuda"
                       else f"<= {target:g} s on a GPU (not judged here)")
        title = f"{m['title']}, {f'{n_train / 1000:.0f}k' if n_train >= 1000 else n_train} images"
        print(f"  {title:<40} {spread(seconds, 3):>26} {run['epoch_seconds'][0]:7.2f} "
              f"{n_train / median(seconds):12,.0f}  {peer_text:<48} {target_text}", flush=True)
        results[m["key"]] = {"title": title, "seconds_per_epoch": run["epoch_seconds"], "median": median(seconds),
                             "train_images": n_train, "peer": peer, "target": target,
                             "test_accuracy": summary["test_accuracy"], "hardware": summary.get("hardware")}
    print("  the per-epoch comparison with a bare loop and the usual DataLoader: python bench/epoch_speed.py "
          "[--device cuda]")
    if failures:
        results["failures"] = failures
    return results


def _num_train(run_dir: Path) -> int:
    from reslab.config import load_yaml
    return int(load_yaml(run_dir / "config.yaml")["num_train"])


# ---------------------------------------------------------------- main

def write_smoke_data(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from fakedata import write_all
    return write_all(root)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The module docstring (head -60 bench/study_speed.py) says what each part "
                                       "measures and how long it takes.")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--parts", default=None,
                   help=f"comma list of {', '.join(PARTS)} (default: all on the CPU, epoch on CUDA)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder holding MNIST/raw (and CIFAR-10 for part epoch on CUDA) (default ../shared/data)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of ex1 and ex1.2 in part study (default 3)")
    p.add_argument("--study-repeat", type=int, default=3,
                   help="passes of ex1 + ex1.2 with W&B disabled; the wall is their median (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each time-to-result pipeline (default 3)")
    p.add_argument("--phase-repeat", type=int, default=3, help="timings of each phase in the breakdown (default 3)")
    p.add_argument("--workers", default=None,
                   help="DataLoader num_workers of (c), a comma list (default 0,1,2; 0,2 with --smoke)")
    p.add_argument("--lightning-python", type=Path, default=None,
                   help=f"python of a venv with lightning for (d) (default {DEFAULT_LIGHTNING.relative_to(REPO)} "
                        "when it exists; none: (d) is skipped)")
    p.add_argument("--lightning-workers", type=int, default=0, help="DataLoader num_workers of (d) (default 0)")
    p.add_argument("--epoch-epochs", type=int, default=None,
                   help="epochs of each model in part epoch; the first is not counted (default 5; 3 with --smoke)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in every process the benchmark starts and in its own (sets OMP_NUM_THREADS "
                        "for them; default: torch's choice, one per core). --threads 1 is steadier on a machine "
                        "shared with other busy processes: 2 threads spin-wait for each other there and an epoch "
                        "can take 100x longer")
    p.add_argument("--parallel", type=int, default=None,
                   help="benchmark processes run at a time (default 1; 2 with --smoke, whose timings mean nothing): "
                        "more than 1 makes them compete for the cores")
    p.add_argument("--timeout", type=float, default=1800, help="seconds any one process may take (default 1800)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny generated data, 1-2 epochs, one repeat: every part in well under a minute")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    default_parts = "epoch" if args.device.startswith("cuda") else ",".join(PARTS)
    args.parts = [x.strip() for x in (args.parts or default_parts).split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    try:
        workers = args.workers or ("0,2" if args.smoke else "0,1,2")
        args.workers = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers takes a comma list of integers")
    if not args.workers:
        p.error("--workers needs at least one worker count")
    if any(w < 0 for w in args.workers) or args.lightning_workers < 0:
        p.error("worker counts must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if min(args.seeds, args.study_repeat, args.repeat, args.phase_repeat) < 1:
        p.error("--seeds, --study-repeat, --repeat and --phase-repeat must be at least 1")
    if args.smoke:
        args.seeds = args.study_repeat = args.repeat = args.phase_repeat = 1
    args.epoch_epochs = args.epoch_epochs or (3 if args.smoke else 5)
    args.parallel = args.parallel or (2 if args.smoke else 1)
    if args.epoch_epochs < 2:
        p.error("--epoch-epochs must be at least 2 (the first epoch is a warm-up)")
    args.lightning_missing = None
    if args.lightning_python is None:
        if DEFAULT_LIGHTNING.is_file():
            args.lightning_python = DEFAULT_LIGHTNING
        else:
            args.lightning_missing = (f"no --lightning-python and no {DEFAULT_LIGHTNING.relative_to(REPO)}; create "
                                      "it with `python3 -m venv .venv-bench && .venv-bench/bin/pip install -r "
                                      "bench/requirements-lightning.txt`")
    elif not args.lightning_python.is_file():
        args.lightning_missing = f"--lightning-python {args.lightning_python} does not exist"
        args.lightning_python = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("study_speed: --device cuda but torch.cuda.is_available() is False")
    started = time.perf_counter()
    os.environ["RESLAB_OFFLINE"] = "1"     # a benchmark never downloads: a missing dataset is an error at once
    if args.threads is not None:           # every process started from here on inherits it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    info = machine(device)
    figures: dict[str, Any] = {"machine": info, "smoke": args.smoke, "parts": args.parts, "failures": {}}
    with tempfile.TemporaryDirectory(prefix="reslab-study-speed-") as tmp:
        work = Path(tmp)
        if args.smoke:
            args.data_dir = write_smoke_data(work / "data")
        args.data_dir = args.data_dir.resolve()
        print(f"reslab study speed, {info['date']}: {info['cpu']}, {info['cores']} cores usable "
              f"({info['cpu_count']} in all), torch {info['torch']}, Python {info['python']}, device {device}"
              f"{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, {info['torch_threads']} torch thread(s)"
              f"{', OMP_NUM_THREADS=' + info['omp_num_threads'] if info['omp_num_threads'] else ''}")
        print(f"load average at start: {info['load_average_start']} (other processes on {info['cores']} cores make "
              f"the figures rough); data {args.data_dir}{' (generated, --smoke)' if args.smoke else ''}"
              f"{f'; {args.parallel} processes at a time: timings mean nothing' if args.parallel > 1 else ''}",
              flush=True)
        for part, fn in (("study", part_study), ("ttr", part_ttr), ("epoch", part_epoch)):
            if part not in args.parts:
                continue
            began, cpu = time.perf_counter(), cpu_seconds()
            try:
                figures[part] = fn(args, work)
                if figures[part].get("failures"):
                    figures["failures"][part] = "; ".join(figures[part]["failures"])
            except BenchError as exc:
                figures["failures"][part] = str(exc)
                print(f"  part {part} FAILED: {exc}", flush=True)
            figures.setdefault("part_seconds", {})[part] = time.perf_counter() - began
            figures.setdefault("part_cpu_seconds", {})[part] = cpu_seconds() - cpu
            print(f"  (part {part}: {figures['part_seconds'][part]:.0f} s, {figures['part_cpu_seconds'][part]:.0f} s "
                  "of CPU time in this process and the finished ones it started)", flush=True)
    figures["total_seconds"] = time.perf_counter() - started
    figures["load_average_end"] = load_average()
    print(f"\ntotal {figures['total_seconds']:.0f} s; load average at the end: {figures['load_average_end']}"
          f"{'; FAILED parts: ' + ', '.join(figures['failures']) if figures['failures'] else ''}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
