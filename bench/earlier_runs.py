#!/usr/bin/env python3
"""The finished runs of earlier GPU leases, taken into this lease's runs folder so that `reslab run` reuses them.

One lease (15 minutes of device time) holds about one seed of the full lab; bench/gpu_lab.sh packs every run
folder it has into runs.tar.gz (no checkpoints), and a later lease takes those runs in with this script, so that
each lease adds the runs still missing instead of training the same ones again:

    python bench/earlier_runs.py SOURCE RUNS_DIR     # SOURCE: a runs.tar.gz of gpu_lab.sh, or a runs folder

Taken in: every <experiment>/<run>/ folder whose summary.json says it finished (not interrupted) and that
RUNS_DIR does not hold yet (a run of this lease wins). Left out, and trained again: runs cut short (their
checkpoints did not travel, so they cannot resume), and a network whose weights a later step still needs (ex2.1
fine-tunes ex1.3's rescnn6 of the same seed: that source is taken in only once its ex2.1 seed has finished).
Prints one line per experiment. Exit status 1 with a one-line error when SOURCE cannot be read.
"""
from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.errors import ReslabError  # noqa: E402
from reslab.run import is_finished  # noqa: E402

# A run whose weights a later step loads (experiment, label) -> the later step's run (experiment, label) of the same
# seed, which, once finished, no longer needs them. Run folders are named <label>-seed<k>.
NEEDS_WEIGHTS = {("ex1.3", "rescnn6"): ("ex2.1", "finetune")}


def finished(run: Path) -> bool:
    """Whether a run folder holds a result that was not cut short, by reslab's own rule; a damaged one is not."""
    try:
        return is_finished(run)
    except ReslabError:
        return False


def still_needed(root: Path, experiment: str, run: str) -> bool:
    """Whether a later step still needs this run's weights (which did not travel)."""
    label, _, seed = run.rpartition("-seed")
    user = NEEDS_WEIGHTS.get((experiment, label))
    return user is not None and not finished(root / user[0] / f"{user[1]}-seed{seed}")


def take_in(root: Path, runs: Path) -> list[str]:
    """Copy the reusable run folders under `root` into `runs`; one line per experiment saying what was done."""
    lines = []
    for exp in sorted({p.parent.parent for p in root.glob("*/*/config.yaml")}):   # run folders hold config.yaml
        taken, cut, needed, kept = [], [], [], []
        for run in sorted(p.parent for p in exp.glob("*/config.yaml")):
            dest = runs / exp.name / run.name
            if not finished(run):
                cut.append(run.name)
            elif still_needed(root, exp.name, run.name):
                needed.append(run.name)
            elif dest.exists():
                kept.append(run.name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.pth", ".reslab.lock"))
                taken.append(run.name)
        parts = [f"{len(taken)} run(s) taken in"]
        parts += [f"cut short, trained again: {', '.join(cut)}"] if cut else []
        parts += [f"weights needed later, trained again: {', '.join(needed)}"] if needed else []
        parts += [f"this lease's kept: {', '.join(kept)}"] if kept else []
        lines.append(f"{exp.name}: {'; '.join(parts)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    source, runs = Path(args[0]), Path(args[1])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if not source.exists():
                raise OSError("no such file or folder")
            if source.is_file():
                with tarfile.open(source) as tar:
                    tar.extractall(tmp, filter="data")   # no paths outside tmp, no links out of it
                root = Path(tmp) / "runs"
            else:
                root = source
            if not root.is_dir() or not any(root.glob("*/*/config.yaml")):
                raise OSError("it holds no run folders (give a runs.tar.gz of bench/gpu_lab.sh, or a runs folder)")
            runs.mkdir(parents=True, exist_ok=True)
            for line in take_in(root, runs):
                print(line)
    except (OSError, tarfile.TarError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]   # tarfile's own message runs to several lines
        print(f"error: earlier runs from {source}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
