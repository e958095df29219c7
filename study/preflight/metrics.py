"""Checks of metric names: a study's objective must be a name its trials report."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Any, Collection

from study.preflight import PreflightError
from trainables.config import TrialConfig
from trainables.languages import LANGUAGES
from trainables.metric_names import HEADLINES, source_name

_PROBE_K = 100  # the evaluator's names for k=100; map100/... stands for map{k}/... of any eval_k
_MAP_K = re.compile(r"^map(\d+)/(.+)$")
_EXAMPLE = "map100/multilingual/family/sinitic"  # named in the message


@lru_cache(maxsize=1)
def _evaluation_names() -> frozenset:
    """Every name :func:`trainables.evaluate.evaluate_embeddings` reports for the XTD languages (k=100)."""
    import torch  # only a study that names its metrics pays it, after the cheap checks

    from trainables.evaluate import evaluate_embeddings  # imports torch: see above

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 4, generator=gen)
    texts = {lang: torch.randn(3, 4, generator=gen) for lang in LANGUAGES}
    return frozenset(evaluate_embeddings(images, texts, k=_PROBE_K))


def known_metrics(eval_k: int = _PROBE_K) -> list[str]:
    """The (source) metric names a trial with ``eval_k`` reports at an evaluated epoch, sorted:
    every evaluation name, and the registry's headlines (training, composition, bookkeeping)."""
    names = {_with_k(name, eval_k) for name in _evaluation_names()}
    return sorted(names | {h.source for h in HEADLINES if not _MAP_K.match(h.source)})


def _with_k(name: str, k: int) -> str:
    match = _MAP_K.match(name)
    return f"map{k}/{match.group(2)}" if match and int(match.group(1)) == _PROBE_K else name


def check_metric(metric: str, eval_ks: Collection[int], where: str) -> None:
    """PreflightError unless some trial of the study reports ``metric`` (``eval_ks``: its possible eval_k).

    ``metric`` is a source name (``map100/multilingual``) or a registry headline's logged name
    (``multi``); the message lists the registry's headlines, which name the rest.
    """
    source = source_name(metric)
    match = _MAP_K.match(source)
    if match and int(match.group(1)) in eval_ks and f"map{_PROBE_K}/{match.group(2)}" in _evaluation_names():
        return
    first = next(iter(eval_ks), _PROBE_K)
    if not match and source in known_metrics(first):
        return
    names = known_metrics(first)
    close = difflib.get_close_matches(metric, names + [h.logged for h in HEADLINES], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    k_note = f" with eval_k={first}" if len(eval_ks) == 1 else ""
    headline = [_with_k(h.source, first) for h in HEADLINES if h.source.count("/") <= 1]
    raise PreflightError(
        f"{where}: metric {metric!r} is not reported by the trials{k_note}; known: {', '.join(headline)}; "
        f"per family, language and pair too (e.g. {_with_k(_EXAMPLE, first)}), or by the short names of "
        f"trainables/metric_names.py (multi, multi/sinitic, ...): {len(names)} in all{hint}"
    )


def eval_ks(base: dict, space: Any) -> Collection[int]:
    """The eval_k values the study's trials can have: the fixed one, or those the space searches."""
    param = next((p for p in space.params if p.name == "eval_k"), None)
    if param is None:
        return (base.get("eval_k", TrialConfig().eval_k),)
    if param.values:
        return tuple(v for v in param.values if isinstance(v, int) and not isinstance(v, bool)) or (_PROBE_K,)
    return range(int(param.low), int(param.high) + 1)  # a range: membership without listing it
