"""How the project words a failure: one line of text, and a failure's root cause.

Every error the CLI prints, every refusal and every failure reason an MLflow run records
names its problem on one line (docs/reliability.md). :func:`one_line` makes that line, with
the one length limit; :func:`root_cause` and :func:`failure_reason` find what to say when a
trial fails, however deep Ray has wrapped the exception.
"""

from __future__ import annotations

import re
from typing import Optional

ONE_LINE_LIMIT = 500  # characters: a reason fits a terminal line or two and an MLflow tag


class TrialFailed(RuntimeError):
    """A trial's training failed; the message carries the root cause (:func:`root_cause`)."""


def one_line(what: object, limit: int = ONE_LINE_LIMIT) -> str:
    """``what`` (an exception or a text) on one line: every run of whitespace, newlines included,
    becomes one space; cut to ``limit`` characters, ``...`` marking the cut. An exception with
    no message gives its type's name."""
    text = " ".join(str(what).split())
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def root_cause(err: BaseException) -> str:
    """``Type: last line`` of the innermost exception behind ``err``, following Ray's ``cause``
    attribute (a worker's exception inside Ray Train's wrappers) and Python's ``__cause__``."""
    seen = err
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    last = text[-1] if text else ""
    return f"{type(seen).__name__}: {last}" if last else type(seen).__name__


def failure_reason(err: BaseException, limit: int = ONE_LINE_LIMIT) -> str:
    """One line saying why a trial failed: a ``reason`` attribute or a :class:`TrialFailed`'s
    message (the root cause, found by the driver) along the exception's chain, else the most
    specific ``SomeError: message`` line of its (possibly remote) traceback text."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        if isinstance(reason, str) and reason.strip():
            return one_line(reason, limit)
        if type(current) is TrialFailed and str(current).strip():  # exactly ours, not Ray's wrapper of it
            return one_line(str(current), limit)
        current = current.__cause__ or current.__context__
    return one_line(_last_error_line(err), limit)


def _last_error_line(err: BaseException) -> str:
    """The most specific ``SomeError: message`` line of a (possibly remote) traceback text."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failed|Interrupt)\b", ln)]
    if errors:
        return errors[-1]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
