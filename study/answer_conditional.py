"""The ratio's effect with the other searched parameters held fixed (no I/O, no text but one line).

When a study searches the temperature or the batch size besides the ratio, each trial differs in
all of them, and the per-ratio answer (:mod:`study.answer_stats`) groups trials whose other
settings differ: the temperature's effect would read as a ratio effect. Here the objective of
every completed trial is fitted with an additive linear model,

    y = b0 + beta * ratio + f_1(x_1) + ... + f_k(x_k) + noise,

where each other searched parameter x_j enters as one level per value when it takes at most
:data:`MAX_LEVELS` values (a batch size), else as a cubic polynomial (fewer terms with fewer
distinct values) of its value scaled to [0, 1], on a log scale when it spans a factor of 4 or more
(a log-uniform temperature). ``beta`` is ratio 1 minus ratio 0 at any fixed setting of the others.

Its interval is conservative on purpose: the larger of the classical standard error and the HC3
sandwich one (robust to noise that differs across settings, and to the model missing some of a
nuisance curve), with Student's t at the residual degrees of freedom. In simulation (tests/
test_answer_conditional.py: a strong temperature and batch effect, TPE-like draws that correlate
the ratio with them, seed noise) a flat ratio truth is called "beyond noise" in 1-3% of studies,
and a true effect is covered at least 95% of the time. The model is additive: where the ratio's
effect changes with the temperature (measured: benchmarks/README.md §9), beta is an average
over the settings tried, which the answer says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats

MAX_LEVELS = 4  # a parameter with at most this many values gets one level each
LOG_SPAN = 4.0  # a positive parameter whose max/min is at least this is taken on a log scale
DEGREE = 3


@dataclass(frozen=True)
class ConditionalEffect:
    """``estimate`` = ratio 1 minus ratio 0 on the objective with the others held fixed, its
    interval [``low``, ``high``], from ``n`` trials with ``df`` residual degrees of freedom;
    ``terms``: how each other parameter entered the model (for the answer's words)."""

    estimate: float
    low: float
    high: float
    n: int
    df: int
    terms: tuple
    # for the figure: each trial's ratio and its value with the other parameters' fitted effect taken
    # out (set to their mean over the trials: a partial residual), and the line's value at the mean ratio
    ratios: tuple = ()
    adjusted: tuple = ()
    center: float = float("nan")

    @property
    def beyond_noise(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def nuisance_columns(name: str, values: Sequence[float]) -> tuple[np.ndarray, str]:
    """The design columns of one other searched parameter (n x m, m may be 0) and how it entered."""
    x = np.asarray(values, dtype=float)
    distinct = np.unique(x)
    if len(distinct) < 2:
        return np.empty((len(x), 0)), f"{name} fixed"
    if len(distinct) <= MAX_LEVELS:
        return np.column_stack([(x == v).astype(float) for v in distinct[1:]]), f"a level per {name}"
    log = distinct[0] > 0 and distinct[-1] / distinct[0] >= LOG_SPAN
    z = np.log(x) if log else x
    z = (z - z.min()) / (z.max() - z.min())
    degree = min(DEGREE, len(distinct) - 1)
    shape = {1: "linear", 2: "quadratic", 3: "cubic"}[degree]
    return np.column_stack([z ** k for k in range(1, degree + 1)]), f"{shape} in {'log ' if log else ''}{name}"


def conditional_ratio_effect(ratios: Sequence[float], others: Mapping[str, Sequence[float]],
                             values: Sequence[float], confidence: float = 0.95) -> Optional[ConditionalEffect]:
    """Ratio 1 minus ratio 0 on ``values`` (one objective value per trial) with the parameters in
    ``others`` (name -> one value per trial) held fixed, under the additive model of the module
    docstring; None when the trials cannot separate it (the ratio never varies, or fewer than 2
    residual degrees of freedom)."""
    r = np.asarray(ratios, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(r) == 0 or len(y) != len(r) or np.ptp(r) == 0:
        return None
    blocks, terms = [np.ones((len(y), 1)), r[:, None]], []
    for name, column in others.items():
        cols, term = nuisance_columns(name, column)
        blocks.append(cols)
        terms.append(term)
    X = np.column_stack(blocks)
    rank = np.linalg.matrix_rank(X)
    df = len(y) - rank
    if df < 2 or np.linalg.matrix_rank(np.delete(X, 1, axis=1)) == rank:  # the ratio is not separable
        return None
    xtx_inv = np.linalg.pinv(X.T @ X)
    coef = xtx_inv @ X.T @ y
    resid = y - X @ coef
    classical = (resid @ resid / df) * xtx_inv[1, 1]
    leverage = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    weights = resid ** 2 / np.clip(1.0 - leverage, 1e-3, None) ** 2
    hc3 = (xtx_inv @ (X.T @ (X * weights[:, None])) @ xtx_inv)[1, 1]
    se = math.sqrt(max(classical, hc3, 0.0))
    q = float(stats.t.ppf(0.5 + confidence / 2, df))
    beta = float(coef[1])
    others_part = X[:, 2:] @ coef[2:]
    adjusted = y - others_part + others_part.mean()
    return ConditionalEffect(beta, beta - q * se, beta + q * se, len(y), int(df), tuple(terms),
                             tuple(float(v) for v in r), tuple(float(v) for v in adjusted), float(adjusted.mean()))


__all__ = ["ConditionalEffect", "conditional_ratio_effect", "nuisance_columns", "MAX_LEVELS", "LOG_SPAN"]
