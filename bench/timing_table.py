#!/usr/bin/env python3
"""A Markdown table of wall times from run folders: epochs, seconds per epoch and per run, test accuracy.

    python bench/timing_table.py runs/           # every <experiment>/<run>/summary.json below the folder
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def timing_rows(folder: Path) -> list[str]:
    """One Markdown row per finished run below `folder`."""
    rows = []
    for summary_path in sorted(folder.glob("*/*/summary.json")):
        s = json.loads(summary_path.read_text())
        if "epochs_run" not in s or "train_seconds" not in s:
            continue   # a transfer probe: no epochs to time
        run = summary_path.parent
        per_epoch = s["train_seconds"] / s["epochs_run"] if s["epochs_run"] else float("nan")
        rows.append(f"| {run.parent.name} | {run.name} | {s.get('hardware', '?')} | {s['epochs_run']} | "
                    f"{per_epoch:.2f} | {s['train_seconds']:.1f} | {100 * s['test_accuracy']:.2f} | "
                    f"{s['stopped_by']} |")
    return rows


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    print("| experiment | run | device | epochs | s/epoch | train s | test acc % | stopped by |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    print("\n".join(timing_rows(folder)))


if __name__ == "__main__":
    main()
