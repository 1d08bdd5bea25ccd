#!/usr/bin/env python3
"""The finished runs of earlier GPU leases, taken into this lease's runs folder so that `reslab run` reuses them.

One lease (15 minutes of device time) holds less than one seed of the full lab; bench/gpu_lab.sh packs every run
folder it has into runs.tar.gz (no checkpoints), and a later lease takes those runs in with this script, so that
each lease adds the runs still missing instead of training the same ones again:

    python bench/earlier_runs.py take SOURCE RUNS_DIR [--weights DIR]   # SOURCE: a runs.tar.gz, or a runs folder
    python bench/earlier_runs.py send RUNS_DIR OUT_DIR                  # bench/gpu_lab.sh, before it packs

take: every <experiment>/<run>/ folder whose summary.json says it finished (not interrupted) and that RUNS_DIR
does not hold yet (a run of this lease wins). Left out, and trained again: runs cut short (their checkpoints did
not travel, so they cannot resume). A seed of ex2.1 probes and fine-tunes ex1.3's rescnn6 of the same seed, so
that source and the seed's ex2.1 runs are one unit: all of them are taken in once all have finished; before that,
only when the source's weights travelled too (below), the source with its weights and the finished ex2.1 runs of
its seed (the missing ones then start from the same network); else all of them are trained again, so that every
run of a seed comes from one network.
send: the weights that let an unfinished unit go on in the next lease instead of starting again: the
best_model.pth of the lowest seed's finished source whose ex2.1 runs are not all finished, written to OUT_DIR in
parts of at most 15 MiB (weights-<experiment>-<run>.partN; the device tool brings back files of up to 16 MiB, 8 in
all, and bench/gpu_lab.sh's other files are 6: two parts, 30 MiB at most) and named, with their md5, in
RUNS_DIR/weights.json, which travels in runs.tar.gz. Parts no longer needed are removed from OUT_DIR. The next
lease carries the parts in a folder (bench/gpu_data.py stage puts .device/earlier/ in its carry plan) and gives it
to `take --weights`, which joins them and checks the md5 before anything is taken in with them.
Prints one line per experiment (take) or per weights file (send). Exit status 1 with a one-line error when
SOURCE cannot be read or OUT_DIR written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.config import TransferSettings  # noqa: E402
from reslab.download import md5sum  # noqa: E402
from reslab.experiments import load_experiment  # noqa: E402
from reslab.run import has_result  # noqa: E402

# A network whose weights a transfer loads, and the transfer's runs of the same seed: one unit across leases. Run
# folders are named <label>-seed<k>.
SOURCE = ("ex1.3", "rescnn6")
TRANSFER = ("ex2.1", tuple(TransferSettings.from_dict(load_experiment("ex2.1")["transfer"]).methods))
WEIGHTS_JSON = "weights.json"   # in the runs folder: which weights travelled beside runs.tar.gz, in which parts
PART_BYTES = 15 << 20           # under the device tool's 16 MiB a file
MAX_PARTS = 2                   # its 8 files a call, less gpu_lab.sh's 6


def unit(root: Path, seed: str) -> tuple[Path, list[Path]]:
    """A transfer seed's source run folder and its transfer run folders."""
    return (root / SOURCE[0] / f"{SOURCE[1]}-seed{seed}",
            [root / TRANSFER[0] / f"{method}-seed{seed}" for method in TRANSFER[1]])


def in_unit(experiment: str, run: str) -> str | None:
    """The seed of the transfer unit this run belongs to, or None."""
    label, _, seed = run.rpartition("-seed")
    return seed if (experiment, label) == SOURCE or experiment == TRANSFER[0] else None


def incomplete_unit(root: Path, seed: str | None) -> bool:
    """Whether the transfer unit of this seed (None: no unit) has a run that has not finished."""
    if seed is None:
        return False
    source, transfers = unit(root, seed)
    return not all(has_result(run_dir) for run_dir in [source, *transfers])


def restore_weights(root: Path, weights_dir: Path | None, scratch: Path) -> tuple[dict[str, Path], list[str]]:
    """The weights that travelled and arrived whole, joined in `scratch`: {'<experiment>/<run>': file}, and a line
    per weights file that did not."""
    listed = root / WEIGHTS_JSON
    if not listed.is_file():
        return {}, []
    restored, problems = {}, []
    for run, entry in sorted(json.loads(listed.read_text())["runs"].items()):
        parts = [weights_dir / name for name in entry["parts"]] if weights_dir is not None else []
        missing = [p.name for p in parts if not p.is_file()] if parts else entry["parts"]
        if missing:
            problems.append(f"weights of {run}: missing {', '.join(missing)}; its transfer seed starts again")
            continue
        joined = scratch / f"{run.replace('/', '-')}.pth"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        got = md5sum(joined)
        if got != entry["md5"]:
            problems.append(f"weights of {run}: md5 {got}, {WEIGHTS_JSON} says {entry['md5']}; "
                            "its transfer seed starts again")
            continue
        restored[run] = joined
    return restored, problems


def take_in(root: Path, runs: Path, weights_dir: Path | None, scratch: Path) -> list[str]:
    """Copy the reusable run folders under `root` into `runs`; one line per experiment saying what was done."""
    restored, lines = restore_weights(root, weights_dir, scratch)
    for exp in sorted({p.parent.parent for p in root.glob("*/*/config.yaml")}):   # run folders hold config.yaml
        taken, weighted, cut, needed, kept = [], [], [], [], []
        for run in sorted(p.parent for p in exp.glob("*/config.yaml")):
            dest = runs / exp.name / run.name
            seed = in_unit(exp.name, run.name)
            source = unit(root, seed)[0] if seed is not None else None
            weights = restored.get(f"{SOURCE[0]}/{source.name}") if source is not None else None
            if not has_result(run):
                cut.append(run.name)
            elif incomplete_unit(root, seed) and not (weights and has_result(source)):
                needed.append(run.name)
            elif dest.exists():
                kept.append(run.name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.pth", ".reslab.lock"))
                taken.append(run.name)
                if weights is not None and run == source:
                    shutil.copyfile(weights, dest / "best_model.pth")
                    weighted.append(run.name)
        parts = [f"{len(taken)} run(s) taken in"]
        parts += [f"with their weights: {', '.join(weighted)}"] if weighted else []
        parts += [f"cut short, trained again: {', '.join(cut)}"] if cut else []
        parts += [f"transfer seed incomplete, trained again: {', '.join(needed)}"] if needed else []
        parts += [f"this lease's kept: {', '.join(kept)}"] if kept else []
        lines.append(f"{exp.name}: {'; '.join(parts)}")
    return lines


def seed_number(run_dir: Path) -> int:
    seed = run_dir.name.rpartition("-seed")[2]
    return int(seed) if seed.isdigit() else 1 << 30


def send_weights(runs: Path, out: Path) -> list[str]:
    """Write the weights of the lowest seed's unfinished transfer unit into `out` in parts (see the docstring)."""
    for folder, what in ((runs, "RUNS_DIR"), (out, "OUT_DIR")):
        if not folder.is_dir():
            raise OSError(f"{what} is not a folder")
    lines, listed = [], {}
    for run in sorted((p.parent for p in runs.glob(f"{SOURCE[0]}/{SOURCE[1]}-seed*/best_model.pth")),
                      key=seed_number):
        if not has_result(run) or not incomplete_unit(runs, in_unit(SOURCE[0], run.name)):
            continue
        name, data = f"{SOURCE[0]}/{run.name}", (run / "best_model.pth").read_bytes()
        if len(data) > PART_BYTES * MAX_PARTS:
            lines.append(f"weights of {name}: {len(data) / 2**20:.1f} MiB, more than {MAX_PARTS} parts of "
                         f"{PART_BYTES >> 20} MiB: not sent")
            continue
        parts = []
        for index, start in enumerate(range(0, len(data), PART_BYTES)):
            parts.append(f"weights-{name.replace('/', '-')}.part{index}")
            (out / parts[-1]).write_bytes(data[start:start + PART_BYTES])
        listed[name] = {"file": "best_model.pth", "bytes": len(data), "md5": hashlib.md5(data).hexdigest(),
                        "parts": parts}
        lines.append(f"weights of {name} sent for the next lease: {len(data) / 2**20:.1f} MiB in {len(parts)} "
                     f"part(s); its ex2.1 seed has not finished")
        break   # the device tool's file count leaves room for one network's parts
    wanted = {part for entry in listed.values() for part in entry["parts"]}
    for stale in out.glob("weights-*.part*"):
        if stale.name not in wanted:
            stale.unlink()
    if listed:
        (runs / WEIGHTS_JSON).write_text(json.dumps({"runs": listed}, indent=1) + "\n")
    else:
        (runs / WEIGHTS_JSON).unlink(missing_ok=True)
    return lines


def take(source: Path, runs: Path, weights_dir: Path | None) -> None:
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
        if weights_dir is not None and not weights_dir.is_dir():
            raise OSError(f"--weights {weights_dir} is not a folder")
        runs.mkdir(parents=True, exist_ok=True)
        scratch = Path(tmp) / "weights"
        scratch.mkdir()
        for line in take_in(root, runs, weights_dir, scratch):
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("take", help="take an earlier lease's finished runs into RUNS_DIR")
    p.add_argument("source", type=Path, help="an earlier lease's runs.tar.gz, or a runs folder")
    p.add_argument("runs", type=Path, help="this lease's runs folder")
    p.add_argument("--weights", type=Path, help="the folder holding the parts that weights.json names")
    p = sub.add_parser("send", help="write the weights an unfinished transfer seed needs into OUT_DIR")
    p.add_argument("runs", type=Path, help="this lease's runs folder")
    p.add_argument("out", type=Path, help="the folder the device tool brings back")
    args = parser.parse_args(argv)
    try:
        if args.command == "take":
            take(args.source, args.runs, args.weights)
        else:
            for line in send_weights(args.runs, args.out):
                print(line)
    except (OSError, tarfile.TarError, ValueError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]   # tarfile's own message runs to several lines
        what = f"earlier runs from {args.source}" if args.command == "take" else \
            f"weights from {args.runs} into {args.out}"
        print(f"error: {what}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
