"""report.md for an experiment's or the lab's folder, generated only from the run folders inside it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .analysis import epoch_grad_norms
from .config import TrainConfig, TransferSettings, load_yaml
from .errors import ReslabError
from .experiments import apply_profile
from .runfolder import read_json, read_jsonl, writing

REFERENCE_NOTE = "Reference: the reference lab's figure; Target: what this study sets out to reach (— = none given)."


def write_report(folder: str | Path) -> Path:
    """Write <folder>/report.md (and its figures) for an experiment folder or a lab folder; return its path."""
    folder = Path(folder)
    if (folder / "lab.json").is_file():
        lines = lab_report(folder)
    elif (folder / "study.json").is_file():
        lines = [f"# reslab report: {folder.name}", ""] + experiment_section(folder, "", "##")
    else:
        raise ReslabError(f"{folder} holds no study results (no study.json or lab.json); run `reslab run NAME` or "
                          "`reslab lab` first and give the folder they wrote")
    path = folder / "report.md"
    with writing(path):
        path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def lab_report(folder: Path) -> list[str]:
    """The lab's report: its protocol, then one section per exercise in the order they ran."""
    lab = read_json(folder / "lab.json")
    lines = ["# reslab lab report", "",
             f"The reference lab's exercises, run in order by `reslab lab`: profile **{lab['profile']}**, seeds "
             f"{_seed_text(lab['seeds'])}, total wall time {_duration(lab['wall_seconds'])}.", ""]
    if lab["profile"] == "quick":
        lines += ["> **Quick run.** Every exercise was shrunk to fit a short CPU budget (each section says how); "
                  "its figures show the study's shape, not the full protocol's accuracies.", ""]
    lines += ["| Exercise | Status | Runs | Wall time |", "|---|---|---|---|"]
    for name in lab["exercises"]:
        if (folder / name / "study.json").is_file():
            status = read_json(folder / name / "study.json")
            state = status["status"] + (" (the reason is in its section)" if status["reason"] else "")
            lines.append(f"| [{name}](#{_anchor(status)}) | {state} | {len(status['runs'])} | "
                         f"{_duration(status['wall_seconds'])} |")
        else:
            lines.append(f"| {name} | no results | 0 | — |")
    lines.append("")
    for name in lab["exercises"]:
        sub = folder / name
        if (sub / "study.json").is_file():
            lines += experiment_section(sub, f"{name}/", "##")
        else:
            lines += [f"## {name}", "", "No results: this exercise has not run in this folder.", ""]
    return lines


def _anchor(status: dict[str, Any]) -> str:
    """The Markdown heading anchor of an experiment's section (GitHub's rule: lower case, punctuation dropped)."""
    heading = f"{status['experiment']}: {status['description']}".lower()
    return "".join(c for c in heading if c.isalnum() or c in " -_").replace(" ", "-")


def experiment_section(folder: Path, prefix: str, level: str) -> list[str]:
    """Markdown for one experiment folder; figure links are relative to the report (prefix = path to folder)."""
    status = read_json(folder / "study.json")
    definition = load_yaml(folder / "experiment.yaml")
    lines = [f"{level} {status['experiment']}: {status['description']}", ""]
    if status["status"] != "done":
        return lines + [f"**Not run**: {status['reason']}", ""]
    training = definition.get("kind", "train") == "train"
    _check_definition(definition, folder / "experiment.yaml", training)
    runs = [_read_run(folder / name, training) for name in status["runs"]]
    effective = apply_profile(definition, definition["profile"])
    reference, targets = effective.get("reference", {}), effective.get("targets", {})
    lines += _notes(definition, runs)
    if training:
        lines += _training_table(runs, reference, targets) + [""]
        lines += _comparisons(runs, effective.get("compare", []), level)
        lines += _depth_finding(runs, effective.get("compare", []), definition["profile"])
        lines += _gradient_flow(folder, runs, reference, prefix, level)
        lines += _training_figures(folder, status["experiment"], runs, reference, prefix)
    else:
        lines += _transfer_table(runs, reference, targets) + [""]
        lines += _transfer_finding(runs, definition["profile"])
        lines += _transfer_figures(folder, status["experiment"], runs, reference, prefix)
    lines += _protocol(definition, effective, status, runs, level)
    return lines


def _check_definition(definition: dict[str, Any], path: Path, training: bool) -> None:
    """experiment.yaml must say what the report reads from it: the profile, and the models (or the source)."""
    needed = {"profile": str, **({"models": list} if training else {"source": dict})}
    wrong = [key for key, kind in needed.items() if not isinstance(definition.get(key), kind)]
    if wrong:
        raise ReslabError(f"{path} is damaged ({', '.join(wrong)} missing or of the wrong type); rerun, with "
                          "--overwrite to replace it")


def _read_run(run_dir: Path, training: bool) -> dict[str, Any]:
    """A run folder's summary, per-epoch records and label (the folder name without -seedK)."""
    summary = read_json(run_dir / "summary.json", needs=("epochs_run",) if training else ("method",))
    records = read_jsonl(run_dir / "metrics.jsonl")
    config = run_dir / "config.yaml"
    copied = load_yaml(config).get("copied_from") if config.is_file() else None
    return {"dir": run_dir, "label": run_dir.name.rsplit("-seed", 1)[0], "summary": summary, "records": records,
            "copied_from": copied}


def _by_label(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["label"], []).append(run)
    return grouped


def _mean_std(values: list[float], digits: int) -> str:
    """'mean ± std' (sample std over seeds), or the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _ref(table: dict[str, dict[str, float]], label: str, metric: str) -> str:
    value = table.get(label, {}).get(metric)
    return "—" if value is None else f"{value:g}"


def _stopped(runs: list[dict[str, Any]]) -> str:
    reasons = [r["summary"].get("stopped_by", "") for r in runs]
    return ", ".join(f"{reason} ×{reasons.count(reason)}" if reasons.count(reason) > 1 else reason
                     for reason in dict.fromkeys(reasons))


def _training_table(runs: list[dict[str, Any]], reference: dict, targets: dict) -> list[str]:
    """The reference lab's table (Model | Depth | Epochs | Test Loss | Test Accuracy | Test Precision), mean ± std."""
    lines = ["| Model | Depth | Parameters | Epochs | Test Loss | Test Accuracy (%) | Test Precision (%) | "
             "Reference (%) | Target (%) | Stopped by | Train time (s) |", "|" + "---|" * 11]
    for label, group in _by_label(runs).items():
        s = [r["summary"] for r in group]
        depth = s[0].get("model_args", {}).get("depth", "—")
        lines.append(f"| {label} | {depth} | {_millions(s[0].get('num_parameters'))} | "
                     f"{_mean_std([x['epochs_run'] for x in s], 1)} | "
                     f"{_mean_std([x['test_loss'] for x in s], 4)} | "
                     f"{_mean_std([100 * x['test_accuracy'] for x in s], 2)} | "
                     f"{_mean_std([100 * x['test_precision'] for x in s], 2)} | "
                     f"{_ref(reference, label, 'test_accuracy')} | "
                     f"{_ref(targets, label, 'test_accuracy')} | {_stopped(group)} | "
                     f"{_mean_std([x['train_seconds'] for x in s], 1)} |")
    n = len(next(iter(_by_label(runs).values())))
    return lines + ["", f"Mean ± sample std over {n} seed(s). {REFERENCE_NOTE}"]


def _millions(count: int | None) -> str:
    """A parameter count as '1.22 M' ('—' when unknown)."""
    return "—" if count is None else f"{count / 1e6:.2f} M"


def _comparisons(runs: list[dict[str, Any]], pairs: list[list[str]], level: str) -> list[str]:
    """Per depth, model A minus model B in test accuracy, paired by seed, against the seed-to-seed spread."""
    if not pairs:
        return []
    accuracy: dict[tuple[str, Any], dict[int, float]] = {}
    params: dict[tuple[str, Any], int | None] = {}
    for run in runs:
        s = run["summary"]
        key = (s["model"], s.get("model_args", {}).get("depth"))
        accuracy.setdefault(key, {})[s["seed"]] = 100 * s["test_accuracy"]
        params[key] = s.get("num_parameters")
    lines = [f"{level}# Does the difference exceed the seed spread?", "",
             "Test accuracy of A minus B, seed by seed (same seed: same split, batches and augmentation), as mean ± "
             "sample std over seeds. It *exceeds the spread* when |mean difference| is larger than the larger of "
             "the two models' sample std over seeds.", "",
             "| A | B | Depth | Parameters A / B | A − B (points) | Spread (larger std) | Exceeds the spread? |",
             "|" + "---|" * 7]
    for a, b in pairs:
        depths = sorted({d for m, d in accuracy if m == a} & {d for m, d in accuracy if m == b},
                        key=lambda d: (d is None, d))
        for depth in depths:
            acc_a, acc_b = accuracy[(a, depth)], accuracy[(b, depth)]
            seeds = sorted(set(acc_a) & set(acc_b))
            diffs = [acc_a[k] - acc_b[k] for k in seeds]
            spread = max(_std([acc_a[k] for k in seeds]), _std([acc_b[k] for k in seeds]))
            if len(seeds) < 2:
                verdict = "cannot tell (one seed)"
            else:
                verdict = ("yes, A ahead" if np.mean(diffs) > 0 else "yes, B ahead") \
                    if abs(np.mean(diffs)) > spread else "no"
            lines.append(f"| {a} | {b} | {'—' if depth is None else depth} | {_millions(params[(a, depth)])} / "
                         f"{_millions(params[(b, depth)])} | {_mean_std(diffs, 2) if diffs else '—'} | "
                         f"{spread:.2f} | {verdict} |")
    return lines + [""]


QUICK_CANNOT = ("At the quick profile's scale this cannot show the lab's finding; the full protocol "
                "(`reslab run NAME` without `--profile quick`, on a GPU) is where to look.")


def _mean_accuracy(runs: list[dict[str, Any]], keep: Any) -> tuple[float, int] | None:
    """Mean test accuracy (percent) and seed count of the runs whose summary `keep` accepts."""
    values = [100 * r["summary"]["test_accuracy"] for r in runs if keep(r["summary"])]
    return (float(np.mean(values)), len(values)) if values else None


def _depth_finding(runs: list[dict[str, Any]], pairs: list[list[str]], profile: str) -> list[str]:
    """One sentence on the first comparison at its deepest depth: is model A at least as good as model B?"""
    if not pairs:
        return []
    a, b = pairs[0]

    def depth(summary: dict[str, Any]) -> Any:
        return summary.get("model_args", {}).get("depth")
    depths = {depth(r["summary"]) for r in runs if r["summary"]["model"] == a} & \
        {depth(r["summary"]) for r in runs if r["summary"]["model"] == b}
    depths.discard(None)
    if not depths:
        return []
    deepest = max(depths)
    found_a = _mean_accuracy(runs, lambda s: s["model"] == a and depth(s) == deepest)
    found_b = _mean_accuracy(runs, lambda s: s["model"] == b and depth(s) == deepest)
    if found_a is None or found_b is None:
        return []
    (mean_a, n), (mean_b, _) = found_a, found_b
    holds = mean_a >= mean_b
    line = (f"**Finding at the deepest depth ({deepest})**: {a} {mean_a:.2f}% against {b} {mean_b:.2f}% (mean of "
            f"{n} seed(s)): {a} is {'at least as good as' if holds else 'below'} {b}"
            f"{', as the lab expects' if holds else ''}.")
    return _finding(line, holds, profile)


def _transfer_finding(runs: list[dict[str, Any]], profile: str) -> list[str]:
    """One sentence: is fine-tuning above both frozen-feature probes (linear SVM and KNN), and by how much?"""
    found = {m: _mean_accuracy(runs, lambda s, m=m: s.get("method") == m) for m in ("finetune", "svm", "knn")}
    means = {m: v[0] for m, v in found.items() if v is not None}
    if len(means) < len(found):
        return []
    tuned = means["finetune"]
    best = max(("svm", "knn"), key=means.__getitem__)
    gap = tuned - means[best]
    holds = gap > 0
    line = (f"**Finding**: fine-tuning {tuned:.2f}% against the better frozen-feature probe ({best} "
            f"{means[best]:.2f}%): {gap:+.2f} points, fine-tuning "
            f"{'above both probes, as in the lab' if holds else 'not above both probes'}.")
    return _finding(line, holds, profile)


def _finding(line: str, holds: bool, profile: str) -> list[str]:
    """A finding's line, with what it means when the lab's finding does not hold."""
    if not holds:
        line += " " + (QUICK_CANNOT if profile == "quick" else "The lab's finding does not hold in these runs.")
    return [line, ""]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _transfer_table(runs: list[dict[str, Any]], reference: dict, targets: dict) -> list[str]:
    """The reference lab's layout (Method | Accuracy), ours as mean ± std over seeds."""
    lines = ["| Method | Accuracy (%) | Reference (%) | Target (%) | Epochs | Time (s) |", "|" + "---|" * 6]
    for label, group in _by_label(runs).items():
        s = [r["summary"] for r in group]
        epochs = _mean_std([x["epochs_run"] for x in s], 1) if "epochs_run" in s[0] else "—"
        lines.append(f"| {METHOD_NAMES.get(label, label)} | {_mean_std([100 * x['test_accuracy'] for x in s], 2)} | "
                     f"{_ref(reference, label, 'test_accuracy')} | {_ref(targets, label, 'test_accuracy')} | "
                     f"{epochs} | "
                     f"{_mean_std([x['train_seconds'] for x in s], 1)} |")
    first = runs[0]["summary"]
    n = len(next(iter(_by_label(runs).values())))
    source_accuracy = [100 * r["summary"]["source_test_accuracy"] for r in runs if r["label"] == runs[0]["label"]
                       and r["summary"].get("source_test_accuracy") is not None]
    on_source = f" (test accuracy there {_mean_std(source_accuracy, 2)}%)" if source_accuracy else ""
    return lines + ["", f"Mean ± sample std over {n} seed(s). Source network: {first['model']} "
                    f"{_args(first['model_args'])} trained on {first['source_dataset']}{on_source}; target: "
                    f"{first['dataset']}. "
                    "Probes are fitted on standardized frozen features (the input of the classifier); "
                    "time is the probe's fit + predict, or the fine-tuning's training time. " + REFERENCE_NOTE]


METHOD_NAMES = {"svm": "svm (linear SVM, frozen features)", "knn": "knn (k nearest neighbours, frozen features)",
                "logreg": "logreg (logistic regression, frozen features)",
                "finetune": "finetune (all layers, fresh head)", "staged": "staged (head alone, then all layers)"}


def _args(model_args: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in model_args.items()) + ")"


def _figure(lines: list[str], title: str, path: Path, prefix: str) -> None:
    lines += [f"![{title}]({prefix}figures/{path.name})", ""]


def _training_figures(folder: Path, name: str, runs: list[dict[str, Any]], reference: dict, prefix: str) -> list[str]:
    """Loss curves, learning curves and (for several depths) accuracy against depth."""
    histories = {label: [r["records"] for r in group] for label, group in _by_label(runs).items()}
    figures = folder / "figures"
    lines = ["Figures:", ""]
    for key, title in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        path = plots.loss_curves(histories, key, f"{name}: {title} per epoch", figures / f"{key}.png")
        _figure(lines, title, path, prefix)
    path = plots.learning_curves(histories, f"{name}: train vs validation accuracy", figures / "learning_curves.png")
    _figure(lines, "learning curves", path, prefix)
    by_model: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        depth = run["summary"].get("model_args", {}).get("depth")
        if depth is not None:
            by_model.setdefault(run["summary"]["model"], {}).setdefault(depth, []).append(
                100 * run["summary"]["test_accuracy"])
    if any(len(d) > 1 for d in by_model.values()):
        ref = {m: {d: reference[f"{m}{d}"]["test_accuracy"] for d in by_model[m] if "test_accuracy" in
                   reference.get(f"{m}{d}", {})} for m in by_model}
        path = plots.accuracy_vs_depth(by_model, ref, f"{name}: test accuracy vs depth",
                                       figures / "accuracy_vs_depth.png")
        _figure(lines, "accuracy vs depth", path, prefix)
    return lines


def _gradient_flow(folder: Path, runs: list[dict[str, Any]], reference: dict, prefix: str, level: str) -> list[str]:
    """The init gradient-norm table and its two figures, when the experiment ran the gradient-flow analysis."""
    path = folder / "gradient_flow.json"
    if not path.is_file():
        return []
    flows = read_json(path, list)
    labels = list(flows[0]["models"])
    norms: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    for flow in flows:
        for label in labels:
            for layer, value in flow["models"][label]["norms"].items():
                norms[label].setdefault(layer, []).append(value)
    layers = sorted({layer for per in norms.values() for layer in per}, key=lambda s: int(s[2:]))
    lines = [f"{level}# Gradient flow at initialization", "",
             f"L2 norm of each linear layer's weight gradient after one forward/backward pass on the same fixed "
             f"training batch ({flows[0]['batch_size']} images of {flows[0]['dataset']}), models freshly initialized; "
             f"mean ± sample std over {len(flows)} seed(s).", "",
             "| Layer | " + " | ".join(labels) + " | Reference |", "|" + "---|" * (len(labels) + 2)]
    for layer in layers:
        cells = [_mean_std(norms[label][layer], 3) if layer in norms[label] else "—" for label in labels]
        refs = [f"{label} {reference[label]['init_grad_' + layer]:g}" for label in labels
                if "init_grad_" + layer in reference.get(label, {})]
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {', '.join(refs) or '—'} |")
    lines.append("")
    figures = folder / "figures"
    bar = plots.grad_norm_bars(norms, "gradient L2 norm per layer at initialization", figures / "grad_norms_init.png")
    _figure(lines, "gradient norms at initialization", bar, prefix)
    seed0 = {run["label"]: run for run in runs if run["summary"].get("seed") == 0}
    per_epoch = {label: epoch_grad_norms(seed0[label]["records"], flows[0]["models"][label]["layers"])
                 for label in labels if label in seed0}
    if any(values for per in per_epoch.values() for values in per.values()):
        lines += ["Per-epoch mean gradient norm during training (seed 0, `grad_2.0_norm/<param>` in "
                  "metrics.jsonl):", ""]
        path = plots.grad_norm_epochs(per_epoch, "gradient L2 norm per epoch (mean over batches)",
                                      figures / "grad_norms_epochs.png")
        _figure(lines, "gradient norms per epoch", path, prefix)
    return lines


def _transfer_figures(folder: Path, name: str, runs: list[dict[str, Any]], reference: dict, prefix: str) -> list[str]:
    """The transfer bar chart, and loss and learning curves of the fine-tuning runs."""
    figures = folder / "figures"
    accuracies = {label: [100 * r["summary"]["test_accuracy"] for r in group]
                  for label, group in _by_label(runs).items()}
    ref = {m: v["test_accuracy"] for m, v in reference.items() if "test_accuracy" in v}
    lines = ["Figures:", ""]
    path = plots.transfer_bars(accuracies, ref, f"{name}: test accuracy by transfer method", figures / "transfer.png")
    _figure(lines, "transfer methods", path, prefix)
    histories = {label: [r["records"] for r in group] for label, group in _by_label(runs).items()
                 if group[0]["records"]}
    if histories:
        for key, title in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            path = plots.loss_curves(histories, key, f"{name}: fine-tuning {title} per epoch", figures / f"{key}.png")
            _figure(lines, f"fine-tuning {title}", path, prefix)
        path = plots.learning_curves(histories, f"{name}: fine-tuning accuracy", figures / "learning_curves.png")
        _figure(lines, "fine-tuning learning curves", path, prefix)
    return lines


def _notes(definition: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """Plain warnings: a quick run, and data that is not the official release."""
    lines = []
    if definition["profile"] == "quick":
        lines += [f"> **Quick run** (`--profile quick`): shrunk from the full protocol: "
                  f"{_profile_changes(definition)}. Figures are far from full-protocol accuracies.", ""]
    unofficial = {r["summary"]["dataset"]: r["summary"].get("data_provenance") for r in runs
                  if r["summary"].get("data_official") is False}
    if unofficial:
        what = "; ".join(f"{name}: {text}" if text else name for name, text in sorted(unofficial.items()))
        lines += [f"> **Data is not the official release** ({what}): the files used here do not match the official "
                  "checksums; accuracies are close to, not equal to, figures on the official data.", ""]
    return lines


def _profile_changes(definition: dict[str, Any]) -> str:
    """'train.epochs 30 → 2, ...' for the settings the profile changed."""
    defaults = {"train": TrainConfig().to_dict(), "transfer": dataclasses.asdict(TransferSettings())}
    changes = []
    for section, values in definition.get("profiles", {}).get(definition["profile"], {}).items():
        for key, value in values.items():
            before = definition.get(section, {}).get(key, defaults.get(section, {}).get(key))
            changes.append(f"{section}.{key} {_plain(before)} → {_plain(value)}")
    return "; ".join(changes) or "nothing"


def _plain(value: Any) -> str:
    return "all" if value is None else str(value)


def _protocol(definition: dict[str, Any], effective: dict[str, Any], status: dict[str, Any],
              runs: list[dict[str, Any]], level: str) -> list[str]:
    """Settings, seeds, profile, command-line overrides, hardware and wall time."""
    overrides = {k: v for k, v in definition.get("overrides", {}).items() if k != "model_args"}
    train = {**effective.get("train", {}), **overrides}
    settings = ", ".join(f"{k}={_plain(v)}" for k, v in train.items())
    lines = [f"{level}# Protocol", "", f"- Settings of every run: {settings}"]
    if effective.get("kind", "train") == "train":
        models = "; ".join(f"{m['model']} {_args(m.get('model_args', {}))}"
                           + (f" at depths {m['depths']}" if m.get("depths") else "") for m in effective["models"])
        lines.append(f"- Models: {models}")
    else:
        source = ", ".join(f"{k}={v}" for k, v in effective["source"].items())
        lines.append(f"- Source: {source}; transfer settings: "
                     + ", ".join(f"{k}={_plain(v)}" for k, v in effective.get("transfer", {}).items()))
    if definition.get("overrides"):
        lines.append("- Command-line overrides: " + ", ".join(f"{k}={v}" for k, v in definition["overrides"].items()))
    lines.append(f"- Seeds: {_seed_text(status['seeds'])}; profile: {definition['profile']}"
                 + (f" ({_profile_changes(definition)})" if definition["profile"] == "quick" else
                    " (the experiment file's protocol)"))
    hardware = sorted({f"{r['summary'].get('hardware')} ({r['summary'].get('device')})" for r in runs})
    lines.append(f"- Hardware: {'; '.join(hardware)}")
    lines.append(f"- Wall time of the command that ran this experiment: {_duration(status['wall_seconds'])} "
                 "(runs reused from an earlier command count as 0); train time per run is in the table above")
    lines.append(f"- Run folders: {', '.join(r['dir'].name for r in runs)}")
    copies = [f"{r['dir'].name} from ../{Path(r['copied_from']).parent.name}/{Path(r['copied_from']).name}"
              for r in runs if r.get("copied_from")]
    if copies:
        lines.append("- Copied, not trained again (another experiment's finished runs with the same settings): "
                     + ", ".join(copies))
    return lines + [""]


def _seed_text(seeds: int) -> str:
    return "0" if seeds == 1 else f"0..{seeds - 1}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
