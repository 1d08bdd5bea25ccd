"""The two early-stopping rules and the reasons a training run ends (plain Python: no torch needed)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any


class StopReason(str, Enum):
    """Why training ended; a plain string in JSON and YAML files (``StopReason.NAN == "nan"``)."""

    MAX_EPOCHS = "max_epochs"
    STAGNATION = "stagnation"
    OVERFITTING = "overfitting"
    NAN = "nan"                  # a non-finite loss
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: the run can be resumed

    def __str__(self) -> str:
        return self.value


@dataclass
class EarlyStopping:
    """The stagnation and overfitting rules; state is saved with the checkpoint so a resumed run stops alike.

    stagnation: an epoch improves when ``val_loss < best_val_loss - min_delta`` (best_val_loss is the val loss of
    the last improving epoch); otherwise ``wait += 1`` and stop when ``wait >= patience`` (so patience 0 stops at
    the first epoch that does not improve).
    overfitting: an epoch overfits when ``val_loss > best_val_loss * (1 + overfit_ratio) + overfit_delta`` (best
    before this epoch); stop after ``overfit_patience`` overfitting epochs in a row. The default margin is
    relative (ratio 0.15, delta 0: Prechelt's generalization loss above 15%), so it scales with the loss; ratio 0
    with delta 0.02 is the older absolute rule. If both rules fire together the reason is overfitting.
    """

    patience: int = 5
    min_delta: float = 0.0
    overfit_patience: int = 3
    overfit_delta: float = 0.0
    stagnation_stop: bool = True
    overfit_stop: bool = True
    overfit_ratio: float = 0.15
    best_val_loss: float = math.inf
    wait: int = 0
    overfit_count: int = 0
    stopped: StopReason | None = None   # the rule that fired: a run resumed after it trains no further epoch

    @classmethod
    def from_config(cls, config: Any) -> EarlyStopping:
        """The rules as a TrainConfig sets them."""
        return cls(config.patience, config.min_delta, config.overfit_patience, config.overfit_delta,
                   config.stagnation_stop, config.overfit_stop, config.overfit_ratio)

    def step(self, val_loss: float) -> tuple[bool, StopReason | None]:
        """Feed one epoch's val loss; return (improved, stop reason or None)."""
        improved, self.stopped = self._judge(val_loss)
        return improved, self.stopped

    def _judge(self, val_loss: float) -> tuple[bool, StopReason | None]:
        """Both rules applied to one epoch's val loss (the counters updated)."""
        if not math.isfinite(val_loss):
            return False, StopReason.NAN
        overfitting = val_loss > self.best_val_loss * (1 + self.overfit_ratio) + self.overfit_delta
        improved = val_loss < self.best_val_loss - self.min_delta
        if improved:
            self.best_val_loss, self.wait = val_loss, 0
        else:
            self.wait += 1
        self.overfit_count = self.overfit_count + 1 if overfitting else 0
        if self.overfit_stop and self.overfit_count >= self.overfit_patience:
            return improved, StopReason.OVERFITTING
        if self.stagnation_stop and not improved and self.wait >= self.patience:
            return improved, StopReason.STAGNATION
        return improved, None

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "wait": self.wait, "overfit_count": self.overfit_count,
                "stopped": None if self.stopped is None else self.stopped.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss, self.wait, self.overfit_count = state["best_val_loss"], int(state["wait"]), \
            int(state["overfit_count"])
        # Checkpoints written before this field existed come from runs that had not stopped, or from a kill
        # between the stopping epoch and the test: the rule fires again at the next epoch then.
        self.stopped = StopReason(state["stopped"]) if state.get("stopped") else None
