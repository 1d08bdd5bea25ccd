#!/usr/bin/env python3
"""The finished runs of earlier GPU leases, taken into this lease's runs folder so that `reslab run` reuses them.

One lease (15 minutes of device time) holds less than one seed of the full lab; bench/gpu_lab.sh packs every run
folder it has into runs.tar.gz (no checkpoints), and a later lease takes those runs in with this script, so that
each lease adds the runs still missing instead of training the same ones again:

    python bench/earlier_runs.py SOURCE RUNS_DIR     # SOURCE: a runs.tar.gz of gpu_lab.sh, or a runs folder

Taken in: every <experiment>/<run>/ folder whose summary.json says it finished (not interrupted) and that
RUNS_DIR does not hold yet (a run of this lease wins). Left out, and trained again: runs cut short (their
checkpoints did not travel, so they cannot resume), and a seed of ex2.1 that is not complete together with its
source (ex2.1 probes and fine-tunes ex1.3's rescnn6 of the same seed, whose weights did not travel either: the
source and that seed's ex2.1 runs are taken in together once all of them have finished, else all are trained
again, so that every run of the seed comes from the same network).
Prints one line per experiment. Exit status 1 with a one-line error when SOURCE cannot be read.
"""
from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.config import TransferSettings  # noqa: E402
from reslab.experiments import load_experiment  # noqa: E402
from reslab.run import has_result  # noqa: E402

# A network whose weights a transfer loads, and the transfer's runs of the same seed: one unit across leases. Run
# folders are named <label>-seed<k>.
SOURCE = ("ex1.3", "rescnn6")
TRANSFER = ("ex2.1", tuple(TransferSettings.from_dict(load_experiment("ex2.1")["transfer"]).methods))


def incomplete_transfer(root: Path, experiment: str, run: str) -> bool:
    """Whether this run is the source or a run of a transfer seed not all of whose runs have finished."""
    label, _, seed = run.rpartition("-seed")
    if (experiment, label) != SOURCE and experiment != TRANSFER[0]:
        return False
    unit = [root / SOURCE[0] / f"{SOURCE[1]}-seed{seed}"]
    unit += [root / TRANSFER[0] / f"{method}-seed{seed}" for method in TRANSFER[1]]
    return not all(has_result(run_dir) for run_dir in unit)


def take_in(root: Path, runs: Path) -> list[str]:
    """Copy the reusable run folders under `root` into `runs`; one line per experiment saying what was done."""
    lines = []
    for exp in sorted({p.parent.parent for p in root.glob("*/*/config.yaml")}):   # run folders hold config.yaml
        taken, cut, needed, kept = [], [], [], []
        for run in sorted(p.parent for p in exp.glob("*/config.yaml")):
            dest = runs / exp.name / run.name
            if not has_result(run):
                cut.append(run.name)
            elif incomplete_transfer(root, exp.name, run.name):
                needed.append(run.name)
            elif dest.exists():
                kept.append(run.name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.pth", ".reslab.lock"))
                taken.append(run.name)
        parts = [f"{len(taken)} run(s) taken in"]
        parts += [f"cut short, trained again: {', '.join(cut)}"] if cut else []
        parts += [f"transfer seed incomplete, trained again: {', '.join(needed)}"] if needed else []
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
