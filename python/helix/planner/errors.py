"""The planner's error type and the "unknown name, did you mean" message every lookup raises."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["PlannerError"]


class PlannerError(ValueError):
    """A bad planner input (unknown preset, layout that does not fit the model or the GPU count...)."""


def _unknown(kind: str, value: str, known: Iterable[str]) -> PlannerError:
    known = sorted(known)
    close = difflib.get_close_matches(value.lower(), known, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return PlannerError(f"unknown {kind} {value!r}{hint} (known: {', '.join(known)})")
