#!/usr/bin/env python3
"""A Markdown table of every run folder: wall times, epochs, test accuracy, how it ended and on which data.

    python bench/timing_table.py runs/           # every <experiment>/<run>/ below the folder, all seeds

One row per run folder (a folder holding summary.json, config.yaml or metrics.jsonl), in the order experiment, run
name, seed (the device column adds "(CUDA graph)" for a run whose steps were replayed from a captured graph):
trained runs with their epochs, seconds per epoch and in all; transfer probes (svm, knn, logreg) with
their fitting seconds (the feature extraction beside) and no epochs; runs that never wrote summary.json (killed,
or still running) as "unfinished" with the epochs metrics.jsonl holds. The data column is the run's
`data_provenance` (summary.json, else config.yaml): whether the files were the official release, and how they
differ where not.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HEADER = ("| experiment | run | device | epochs | s/epoch | train s | test acc % | stopped by | data |\n"
          "|---|---|---|---:|---:|---:|---:|---|---|")


def _natural(name: str) -> list[Any]:
    """Sort key: rescnn6-seed2 before rescnn6-seed10, cnn2 before cnn10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _config_value(run: Path, key: str) -> str | None:
    """One top-level scalar of config.yaml, read without a YAML parser (the table runs where PyYAML may not)."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(f"{key}:"):
            value = line.split(":", 1)[1].strip()
            return value.strip("'\"") or None
    return None


def _epochs_logged(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut short by a kill
            if isinstance(record, dict) and "epoch" in record:
                records.append(record)
    return records


def run_folders(folder: Path) -> list[Path]:
    """Every run folder below `folder` (<experiment>/<run>/, or <run>/ when given one experiment's folder)."""
    marks = ("summary.json", "config.yaml", "metrics.jsonl")
    found = {p.parent for mark in marks for pattern in (f"*/*/{mark}", f"*/{mark}") for p in folder.glob(pattern)}
    return sorted(found, key=lambda run: (_natural(run.parent.name), _natural(run.name)))


def timing_row(run: Path) -> str:
    """One Markdown row for a run folder."""
    summary_path = run / "summary.json"
    s: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    provenance = s.get("data_provenance") or _config_value(run, "data_provenance")
    if not provenance:   # runs older than the provenance field
        official = s.get("data_official", _config_value(run, "data_official"))
        provenance = {True: "official", "true": "official", False: "not official", "false": "not official"}.get(
            official, "?")
    hardware = s.get("hardware") or _config_value(run, "hardware") or "?"
    if s.get("cuda_graph"):
        hardware += " (CUDA graph)"   # full batches replayed from a captured graph (--cuda-graphs)
    accuracy = f"{100 * s['test_accuracy']:.2f}" if isinstance(s.get("test_accuracy"), (int, float)) else "–"
    if not s:   # killed before its summary, or still running: what metrics.jsonl logged
        epochs = _epochs_logged(run)
        seconds = sum(float(r.get("seconds", 0)) for r in epochs)
        per_epoch = f"{seconds / len(epochs):.2f}" if epochs else "–"
        cells = [str(len(epochs)), per_epoch, f"{seconds:.1f}", accuracy, "unfinished (no summary.json)"]
    elif "epochs_run" not in s:   # a transfer probe: fitted once, no epochs
        cells = ["–", "–", f"{s.get('train_seconds', 0):.1f}", accuracy,
                 f"{s.get('method', '?')} probe: fit (features {s.get('extract_seconds', 0):.1f} s)"]
    else:
        per_epoch = f"{s['train_seconds'] / s['epochs_run']:.2f}" if s["epochs_run"] else "–"
        cells = [str(s["epochs_run"]), per_epoch, f"{s['train_seconds']:.1f}", accuracy, str(s.get("stopped_by"))]
    return f"| {run.parent.name} | {run.name} | {hardware} | " + " | ".join(cells) + f" | {provenance} |"


def timing_rows(folder: Path) -> list[str]:
    """One Markdown row per run folder below `folder`."""
    return [timing_row(run) for run in run_folders(folder)]


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    rows = timing_rows(folder)
    print(HEADER)
    print("\n".join(rows))
    by_experiment: dict[str, int] = {}
    for row in rows:
        name = row.split(" | ")[0].lstrip("| ")
        by_experiment[name] = by_experiment.get(name, 0) + 1
    print(f"\n{len(rows)} run folder(s): " + ", ".join(f"{k} {v}" for k, v in by_experiment.items()))


if __name__ == "__main__":
    main()
