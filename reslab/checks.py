"""The one validator for numbers a user gives (settings, model arguments, command-line counts), and the closest
valid name for one mistyped."""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` if it is an int in [minimum, maximum], else a ConfigError naming `name` (a bool is no int)."""
    if isinstance(value, bool) or not isinstance(value, int) or not _within(value, minimum, maximum):
        raise ConfigError(f"{name} must be an integer{_range(minimum, maximum)}, got {value!r}")
    return value


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None) -> float:
    """`value` if it is a finite number within the bounds (minimum/maximum inclusive, above/below exclusive)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not _within(value, minimum, maximum, above, below)):
        raise ConfigError(f"{name} must be a number{_range(minimum, maximum, above, below)}, got {value!r}")
    return value


def _within(value: float, minimum: float | None, maximum: float | None, above: float | None = None,
            below: float | None = None) -> bool:
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above) and (below is None or value < below))


def _range(minimum: float | None, maximum: float | None, above: float | None = None,
           below: float | None = None) -> str:
    """' >= 1', ' in [0, 1)', ' > 0' ...: the valid values in words."""
    low = (minimum, "[") if minimum is not None else (above, "(") if above is not None else None
    high = (maximum, "]") if maximum is not None else (below, ")") if below is not None else None
    if low and high:
        return f" in {low[1]}{_text(low[0])}, {_text(high[0])}{high[1]}"
    if low:
        return f" {'>=' if low[1] == '[' else '>'} {_text(low[0])}"
    if high:
        return f" {'<=' if high[1] == ']' else '<'} {_text(high[0])}"
    return ""


def _text(bound: float | None) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the valid name closest to a mistyped one, or '' when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
