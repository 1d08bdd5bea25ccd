#!/usr/bin/env python3
"""Replay candidate overfitting rules on recorded training curves.

Reads every ``metrics.jsonl`` (one JSON object per epoch: epoch, train_loss, train_accuracy, val_loss,
val_accuracy) under the folders given on the command line (default: ``bench/results``) and feeds each curve's
val losses, epoch by epoch, to the state machine of ``reslab.train.EarlyStopping.step`` (copied below as the pure
function ``replay``), once per candidate rule. Every rule keeps reslab's stagnation rule (patience 5, min_delta 0);
they differ only in when an epoch counts as "overfitting", best being the lowest val loss before this epoch:

    abs d pN   val_loss > best + d           for N epochs in a row (reslab today: d = 0.02, N = 3)
    rel r pN   val_loss > best * (1 + r)     for N epochs in a row, i.e. Prechelt's generalization loss
                                             GL = 100 (val_loss / best - 1) above 100 r ("Early Stopping - But When?")

Output (Markdown): one row per run (path relative to bench/results, epochs recorded, how the recorded run ended:
``stopped_by`` in the sibling summary.json, the epoch-to-epoch noise of its val loss), and per rule the epoch it
stops at and why, the train accuracy then, and the best-val-loss epoch up to it (the weights that would be
tested) with its val accuracy; "—" when it does not stop within the recorded epochs. Then per rule: overfitting
stops, false alarms, the runs it cannot decide, how it treats the MNIST no-stop MLPs (with the stagnation rule on,
and the overfitting rule alone), and how often its overfitting streaks were noise (beaten later by a new best).
Last, a check that the copied state machine reproduces how every run recorded with reslab's defaults ended.
Every figure comes from the files.

A run that the recorded rule ended early is only known up to that epoch: a rule that would stop it later or
never shows "—" there ("undecided"), and false alarms can only be seen within the recorded epochs.

    .venv/bin/python bench/replay_early_stopping.py [FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
PATIENCE, MIN_DELTA = 5, 0.0          # reslab's stagnation defaults, the same for every rule
DEFAULTS = {"stagnation_stop": True, "patience": 5, "min_delta": 0.0,
            "overfit_stop": True, "overfit_patience": 3, "overfit_delta": 0.02}


@dataclass(frozen=True)
class Rule:
    kind: str                # "abs" or "rel"
    delta: float
    overfit_patience: int = 3

    @property
    def name(self) -> str:
        size = f"{self.delta:g}" if self.kind == "abs" else f"{self.delta:.0%}"
        return f"{self.kind} {size} p{self.overfit_patience}"

    def overfits(self, val_loss: float, best: float) -> bool:
        return val_loss > (best + self.delta if self.kind == "abs" else best * (1 + self.delta))


TODAY = Rule("abs", DEFAULTS["overfit_delta"], DEFAULTS["overfit_patience"])
RULES = [TODAY,                                                                  # (a) reslab today
         Rule("rel", 0.05), Rule("rel", 0.10), Rule("rel", 0.15), Rule("rel", 0.20),   # (b)
         Rule("rel", 0.10, 5)]                                                   # (c) relative, patience 5


def replay(val_losses: list[float], rule: Rule, stagnation: bool = True) -> tuple[int, str] | None:
    """EarlyStopping.step over a whole curve, with the rule's overfitting test: (stop epoch, reason) or None."""
    best, wait, overfit_count = math.inf, 0, 0
    for epoch, val_loss in enumerate(val_losses, start=1):
        if not math.isfinite(val_loss):
            return epoch, "nan"
        overfitting = rule.overfits(val_loss, best)
        improved = val_loss < best - MIN_DELTA
        if improved:
            best, wait = val_loss, 0
        else:
            wait += 1
        overfit_count = overfit_count + 1 if overfitting else 0
        if overfit_count >= rule.overfit_patience:
            return epoch, "overfitting"
        if stagnation and not improved and wait >= PATIENCE:
            return epoch, "stagnation"
    return None


def noise_streaks(val_losses: list[float], rule: Rule) -> list[int]:
    """Lengths of the overfitting streaks (over the whole recorded curve) that a later new best val loss beat."""
    lengths, best, start = [], math.inf, None
    for i, val_loss in enumerate(val_losses):
        if rule.overfits(val_loss, best):
            start = i if start is None else start
        elif start is not None:
            streak_best = min(val_losses[:start])
            if any(v < streak_best for v in val_losses[i:]):
                lengths.append(i - start)
            start = None
        best = min(best, val_loss)
    return lengths


def load_runs(folders: list[Path]) -> list[dict]:
    runs = []
    for folder in folders:
        for path in sorted(folder.rglob("metrics.jsonl")):
            summary, config = path.with_name("summary.json"), path.with_name("config.yaml")
            cfg = yaml.safe_load(config.read_text()) if config.exists() else {}
            try:
                name = str(path.parent.resolve().relative_to(RESULTS))
            except ValueError:
                name = str(path.parent)
            runs.append({"name": name, "short": "/".join(path.parent.parts[-2:]),
                         "epochs": [json.loads(line) for line in path.read_text().splitlines() if line.strip()],
                         "ended": json.loads(summary.read_text()).get("stopped_by", "?") if summary.exists() else "?",
                         "defaults": all(cfg.get(k) == v for k, v in DEFAULTS.items()),
                         "no_stop": cfg.get("model") == "mlp" and cfg.get("dataset") == "mnist"
                                    and cfg.get("stagnation_stop") is False and cfg.get("overfit_stop") is False})
    return runs


def best_epoch(epochs: list[dict], upto: int) -> dict:
    """The epoch with the lowest val loss among the first ``upto`` (the first one on ties, as reslab keeps)."""
    return min(epochs[:upto], key=lambda e: e["val_loss"])


def noise(epochs: list[dict]) -> str:
    """Median |epoch-to-epoch change| of the val loss, absolute and as a share of the run's best val loss."""
    losses = [e["val_loss"] for e in epochs]
    if len(losses) < 2:
        return "—"
    med = statistics.median(abs(b - a) for a, b in zip(losses, losses[1:]))
    return f"{med:.3f} ({med / min(losses):.0%})"


def cell(run: dict, stop: tuple[int, str] | None) -> str:
    if stop is None:
        return "—"
    epoch, reason = stop
    best = best_epoch(run["epochs"], epoch)
    return (f"{epoch} {reason[:4]} · tr {run['epochs'][epoch - 1]['train_accuracy']:.1%} · "
            f"best {best['epoch']}: {best['val_accuracy']:.1%}")


def stop_text(run: dict, stop: tuple[int, str] | None) -> str:
    return "—" if stop is None else f"{stop[0]} ({stop[1][:4]}, best {best_epoch(run['epochs'], stop[0])['epoch']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[RESULTS])
    runs = load_runs(parser.parse_args().folders)
    curves = [[e["val_loss"] for e in run["epochs"]] for run in runs]
    stops = {rule: [replay(c, rule) for c in curves] for rule in RULES}

    print("Cells: stop epoch and reason (over = overfitting, stag = stagnation) · train accuracy at that epoch · "
          "best-val-loss epoch up to it (the weights tested): its val accuracy. — = no stop within the recorded "
          "epochs. Noise = median |epoch-to-epoch change| of val loss (and as a share of the run's best).\n")
    print("| run | epochs | ended by | noise | " + " | ".join(r.name for r in RULES) + " |")
    print("|---|---:|---|---:|" + "---|" * len(RULES))
    for i, run in enumerate(runs):
        print(f"| {run['name']} | {len(run['epochs'])} | {run['ended']} | {noise(run['epochs'])} | "
              + " | ".join(cell(run, stops[rule][i]) for rule in RULES) + " |")

    print("\n## Summary per rule\n")
    print("- *False alarm*: an overfitting stop after which the recorded curve reaches a val loss below the best up "
          "to the stop.\n- *Undecided*: no stop within the recorded epochs of a run that reslab's rule ended early "
          "(the curve past it is unknown).\n- *MNIST no-stop*: the stop epoch (reason, best epoch) on each MNIST MLP "
          "trained with both stops off, with stagnation on / with the overfitting rule alone.\n- *Noise streaks*: "
          f"overfitting streaks anywhere in the {len(runs)} recorded curves that a later new best beat, by "
          "length (length x count); one as long as the patience, met with stagnation off, is a false alarm.\n")
    for rule in RULES:
        over = [(run, s[0]) for run, s in zip(runs, stops[rule]) if s and s[1] == "overfitting"]
        over_list = ", ".join(f"{run['short']} {epoch}" for run, epoch in over)
        false = [f"{run['short']} (stop {epoch}, new best at {later[0]['epoch']})" for run, epoch in over
                 if (later := [e for e in run["epochs"][epoch:]
                               if e["val_loss"] < best_epoch(run["epochs"], epoch)["val_loss"]])]
        stag = sum(1 for s in stops[rule] if s and s[1] == "stagnation")
        undecided = [run["short"] for run, s in zip(runs, stops[rule]) if s is None and run["ended"] != "max_epochs"]
        mnist = [f"{run['short'].split('/')[-1]} {stop_text(run, s)} / {stop_text(run, replay(c, rule, False))}"
                 for run, c, s in zip(runs, curves, stops[rule]) if run["no_stop"]]
        streaks = Counter(n for c in curves for n in noise_streaks(c, rule))
        print(f"- **{rule.name}**: {len(over)} of {len(runs)} runs stopped by overfitting"
              f"{': ' + over_list if over else ''}; "
              f"{len(false)} false alarm{'s' * (len(false) != 1)}{': ' + '; '.join(false) if false else ''}. "
              f"{stag} stopped by stagnation, {sum(s is None for s in stops[rule])} not stopped, of which "
              f"{len(undecided)} undecided{': ' + ', '.join(undecided) if undecided else ''}. "
              f"MNIST no-stop: {'; '.join(mnist) if mnist else 'none found'}. "
              f"Noise streaks: {', '.join(f'{n}x{k}' for n, k in sorted(streaks.items())) or 'none'}.")

    checked = [(run, replay(c, TODAY)) for run, c in zip(runs, curves) if run["defaults"]]
    agree = [run for run, s in checked if (s is None and run["ended"] == "max_epochs")
             or (s is not None and s == (len(run["epochs"]), run["ended"]))]
    if checked:
        print(f"\nCheck: {TODAY.name} reproduces how {len(agree)} of the {len(checked)} runs recorded with reslab's "
              "default early stopping ended (epoch and reason)"
              + ("." if len(agree) == len(checked) else
                 ": not " + ", ".join(run["short"] for run, _ in checked if run not in agree) + "."))


if __name__ == "__main__":
    main()
