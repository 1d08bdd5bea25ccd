"""EarlyStopping on scripted val-loss sequences, and replaying it over a real run's metrics.jsonl."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from reslab.config import TrainConfig
from reslab.run import run_training
from reslab.train import EarlyStopping


def _replay(stopper: EarlyStopping, losses: list[float]) -> list[tuple[bool, str | None]]:
    """Feed losses until a stop; return every (improved, reason)."""
    steps = []
    for loss in losses:
        steps.append(stopper.step(loss))
        if steps[-1][1]:
            break
    return steps


def _stagnation_only(**kwargs) -> EarlyStopping:
    return EarlyStopping(overfit_stop=False, **kwargs)


def _overfitting_only(**kwargs) -> EarlyStopping:
    return EarlyStopping(stagnation_stop=False, **kwargs)


# ---------------------------------------------------------------- stagnation


def test_stagnation_without_min_delta():
    stopper = _stagnation_only(patience=2)
    steps = _replay(stopper, [1.0, 0.9, 0.9, 0.8, 0.85, 0.8, 0.7])
    # 0.9 equal to the best does not improve; 0.8 equal to the best does not either.
    assert steps == [(True, None), (True, None), (False, None), (True, None), (False, None), (False, "stagnation")]
    assert stopper.best_val_loss == 0.8 and stopper.wait == 2


def test_any_strict_improvement_resets_the_wait_without_min_delta():
    stopper = _stagnation_only(patience=2)
    steps = _replay(stopper, [1.0, 1.0, 0.999999, 1.0, 0.999998, 0.999998, 0.999998])
    assert [r for _, r in steps] == [None] * 6 + ["stagnation"]
    assert [i for i, _ in steps] == [True, False, True, False, True, False, False]


def test_stagnation_with_min_delta_needs_improvement_below_best_minus_delta():
    stopper = _stagnation_only(patience=3, min_delta=0.25)
    # Exact binary fractions: 0.75 == 1.0 - 0.25 is not strictly below, so it is no improvement.
    steps = _replay(stopper, [1.0, 0.75, 0.8125, 0.5, 0.125])
    assert steps == [(True, None), (False, None), (False, None), (True, None), (True, None)]
    assert stopper.best_val_loss == 0.125


def test_best_is_the_loss_of_the_last_improving_epoch():
    stopper = _stagnation_only(patience=3, min_delta=0.25)
    # 0.875 and 0.8125 are lower than 1.0 but not by more than min_delta: the best stays 1.0, so the later
    # 0.7 improves (0.7 < 0.75) although it is within min_delta of 0.8125.
    steps = _replay(stopper, [1.0, 0.875, 0.8125, 0.7])
    assert [i for i, _ in steps] == [True, False, False, True]
    assert stopper.best_val_loss == 0.7 and stopper.wait == 0


def test_stagnation_stops_after_patience_epochs_in_a_row():
    stopper = _stagnation_only(patience=3, min_delta=0.25)
    steps = _replay(stopper, [1.0, 0.9, 0.8, 0.5, 0.6, 0.55, 0.45, 0.4, 0.3])
    assert [r for _, r in steps] == [None] * 6 + ["stagnation"]
    assert len(steps) == 7


# ---------------------------------------------------------------- overfitting


def test_overfitting_with_delta_and_consecutive_count():
    stopper = _overfitting_only(overfit_patience=2, overfit_delta=0.25, overfit_ratio=0.0)
    losses = [1.0, 1.5,   # 1.5 > 1.25: overfitting 1
              1.125,      # within delta: the count resets
              1.5,        # overfitting 1 again
              1.25,       # == best + delta is not above it: reset
              1.375, 1.5]  # overfitting 1, 2 -> stop
    steps = _replay(stopper, losses)
    assert [r for _, r in steps] == [None] * 6 + ["overfitting"]
    assert stopper.overfit_count == 2 and stopper.best_val_loss == 1.0


def test_default_overfitting_margin_is_15_percent_of_the_best():
    stopper = _overfitting_only(overfit_patience=2)
    assert (stopper.overfit_ratio, stopper.overfit_delta) == (0.15, 0.0)
    # Exact binary fractions: best 0.5, threshold 0.5 * 1.15 = 0.575.
    losses = [0.5, 0.5625,  # +12.5%: not overfitting (the absolute 0.02 rule would count it)
              0.625,        # +25%: overfitting 1
              0.5625,       # within the margin: the count resets
              0.625, 0.75]  # overfitting 1, 2 -> stop
    steps = _replay(stopper, losses)
    assert [r for _, r in steps] == [None] * 5 + ["overfitting"]
    assert stopper.overfit_count == 2 and stopper.best_val_loss == 0.5


def test_relative_margin_scales_with_the_loss():
    # The same 10% rise is noise at any scale under a 15% margin, and overfitting under a 5% one.
    for best in (0.0625, 1.0, 16.0):
        assert _overfitting_only(overfit_patience=1, overfit_ratio=0.15).step(best) == (True, None)
        loose, tight = (_overfitting_only(overfit_patience=1, overfit_ratio=r) for r in (0.15, 0.05))
        loose.step(best), tight.step(best)
        assert loose.step(best * 1.1) == (False, None)
        assert tight.step(best * 1.1) == (False, "overfitting")


def test_ratio_and_delta_add_up():
    stopper = _overfitting_only(overfit_patience=1, overfit_ratio=0.25, overfit_delta=0.25)
    stopper.step(1.0)
    assert stopper.step(1.5) == (False, None)                     # 1.5 == 1.0 * 1.25 + 0.25 is not above it
    assert stopper.step(1.5625) == (False, "overfitting")


def test_overfitting_compares_with_the_best_before_the_epoch():
    stopper = _overfitting_only(overfit_patience=1, overfit_delta=0.0, overfit_ratio=0.0)
    assert stopper.step(1.0) == (True, None)                      # first epoch: nothing to overfit against
    assert stopper.step(0.5) == (True, None)
    assert stopper.step(0.75) == (False, "overfitting")          # 0.75 > 0.5 + 0


def test_improvement_resets_the_overfitting_count():
    stopper = _overfitting_only(overfit_patience=3, overfit_delta=0.125, overfit_ratio=0.0)
    steps = _replay(stopper, [1.0, 1.5, 1.5, 0.5, 0.75, 0.75, 0.75])
    assert [r for _, r in steps] == [None] * 6 + ["overfitting"]


def test_both_rules_at_once_report_overfitting():
    stopper = EarlyStopping(patience=2, overfit_patience=2, overfit_delta=0.125, overfit_ratio=0.0)
    steps = _replay(stopper, [1.0, 1.5, 1.5])
    assert steps[-1] == (False, "overfitting")
    assert stopper.wait == 2 and stopper.overfit_count == 2     # stagnation fired too


def test_stagnation_wins_when_overfitting_has_not_reached_its_patience():
    stopper = EarlyStopping(patience=2, overfit_patience=3, overfit_delta=0.125, overfit_ratio=0.0)
    assert _replay(stopper, [1.0, 1.5, 1.5])[-1] == (False, "stagnation")


# ---------------------------------------------------------------- switches, NaN, state


def test_stagnation_switched_off_never_stops_on_a_plateau():
    stopper = EarlyStopping(patience=1, stagnation_stop=False, overfit_patience=1, overfit_delta=0.5,
                            overfit_ratio=0.0)
    assert [r for _, r in _replay(stopper, [1.0] * 50)] == [None] * 50
    assert stopper.wait == 49                                    # still counted, just not acted on


def test_overfitting_switched_off_stops_by_stagnation_only():
    losses = [1.0, 2.0, 2.0, 2.0, 2.0]
    assert _replay(EarlyStopping(patience=3, overfit_patience=1), losses)[-1][1] == "overfitting"
    steps = _replay(EarlyStopping(patience=3, overfit_patience=1, overfit_stop=False), losses)
    assert len(steps) == 4 and steps[-1] == (False, "stagnation")


def test_both_switched_off_never_stop():
    stopper = EarlyStopping(patience=1, overfit_patience=1, stagnation_stop=False, overfit_stop=False)
    assert [r for _, r in _replay(stopper, [1.0, 5.0, 9.0, 1.0, 1.0])] == [None] * 5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_with_nan(bad):
    stopper = EarlyStopping()
    stopper.step(1.0)
    before = stopper.state_dict()
    assert stopper.step(bad) == (False, "nan")
    assert stopper.state_dict() == {**before, "stopped": "nan"}  # a NaN does not become the best
    stopper_off = EarlyStopping(stagnation_stop=False, overfit_stop=False)
    assert stopper_off.step(bad) == (False, "nan")              # even with both rules off


def test_state_dict_round_trip_continues_identically():
    losses = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76, 0.95, 0.97, 0.98, 0.99, 1.0]
    settings = dict(patience=6, min_delta=0.01, overfit_patience=3, overfit_delta=0.2, overfit_ratio=0.0)
    uninterrupted = EarlyStopping(**settings)
    expected = _replay(uninterrupted, losses)
    assert expected[-1][1] == "overfitting"

    first = EarlyStopping(**settings)
    head = _replay(first, losses[:6])
    state = json.loads(json.dumps(first.state_dict()))          # as a checkpoint would carry it
    resumed = EarlyStopping(**settings)
    resumed.load_state_dict(state)
    assert head + _replay(resumed, losses[6:]) == expected
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_from_config_takes_every_setting():
    cfg = TrainConfig(patience=7, min_delta=0.5, overfit_patience=4, overfit_delta=0.3, stagnation_stop=False,
                      overfit_stop=False, overfit_ratio=0.25)
    stopper = EarlyStopping.from_config(cfg)
    assert (stopper.patience, stopper.min_delta, stopper.overfit_patience, stopper.overfit_delta,
            stopper.stagnation_stop, stopper.overfit_stop, stopper.overfit_ratio) == (7, 0.5, 4, 0.3, False, False,
                                                                                      0.25)
    assert stopper.best_val_loss == math.inf and stopper.wait == 0 and stopper.overfit_count == 0


def test_patience_zero_does_not_stop_an_improving_run():
    TrainConfig(patience=0)                                      # accepted as a valid setting
    stopper = _stagnation_only(patience=0)
    assert stopper.step(1.0) == (True, None)


# ---------------------------------------------------------------- integration


@pytest.mark.parametrize("settings", [
    dict(patience=2, min_delta=0.05, overfit_patience=3, overfit_delta=0.02, overfit_ratio=0.0),
    dict(patience=20, min_delta=0.0, overfit_patience=1, overfit_delta=0.0, lr=0.05),
], ids=["stagnation", "overfitting"])
def test_replaying_metrics_gives_the_summary(tiny_data, tmp_path, settings, request):
    config = TrainConfig(model="mlp", dataset="mnist", data_dir=str(tiny_data), out=str(tmp_path), epochs=25,
                         batch_size=64, wandb="disabled", device="cpu", seed=1, **settings)
    summary = run_training(config, console=False)
    run_dir = tmp_path / config.run_name

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stopper = EarlyStopping(patience=saved["patience"], min_delta=saved["min_delta"],
                            overfit_patience=saved["overfit_patience"], overfit_delta=saved["overfit_delta"],
                            overfit_ratio=saved["overfit_ratio"],
                            stagnation_stop=saved["stagnation_stop"], overfit_stop=saved["overfit_stop"])
    reason, best_epoch = "max_epochs", 0
    for record in records:
        improved, stop = stopper.step(record["val_loss"])
        best_epoch = record["epoch"] if improved else best_epoch
        if stop:
            reason = stop
            assert record is records[-1], "training went on after a stop"
            break
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert summary["epochs_run"] == len(records)
    assert summary["stopped_by"] == reason
    assert summary["best_epoch"] == best_epoch
    assert summary["best_val_loss"] == pytest.approx(stopper.best_val_loss)
    assert reason == request.node.callspec.id                   # the settings really trigger that stop
    assert json.loads((run_dir / "summary.json").read_text())["stopped_by"] == reason


def test_the_rule_that_fired_is_part_of_the_state():
    """A resumed run must know its last saved epoch was the stopping one; older checkpoints lack the field."""
    stopper = EarlyStopping(patience=1)
    assert _replay(stopper, [1.0, 2.0])[-1][1] == "stagnation"
    resumed = EarlyStopping(patience=1)
    resumed.load_state_dict(json.loads(json.dumps(stopper.state_dict())))
    assert resumed.stopped == "stagnation"
    old = {k: v for k, v in EarlyStopping().state_dict().items() if k != "stopped"}
    resumed.load_state_dict(old)
    assert resumed.stopped is None
