"""Every check a study makes before Ray starts: the one place (this package) to add or change one.

The rule (docs/reliability.md, "Bad input, row by row"): what the command line can check is
checked before Ray starts, as one ``error:`` line with exit code 2, and nothing is created
(no storage folder, no MLflow run); what only a trial can see fails that trial with its
reason. :mod:`study.prepare` runs these checks, in order, on a new study and on a resume.

Each check reuses the code that would otherwise fail later, so its message is the one a
trial would have given: the XTD loader's structure check (:func:`trainables.data.xtd.check_xtd`),
the shard expansion, open_clip's registry and model configs for the model, image size and
text context, and for the metric names the registry (:mod:`trainables.metric_names`) plus
the evaluator itself (:func:`known_metrics` runs it on a few random embeddings, so no name
list is kept here). Storage and the tracking URI are probed by writing (and removing) a
folder or object: ``os.access`` answers yes to root where a write fails.

The checks, by what they look at: :mod:`.flags` (the command line's own values, the Ray
address), :mod:`.paths` (local data, the folders a study writes, the tracking URI, the paths
a space file names), :mod:`.configs` (every trial config a space can produce, the model, the
sizes a trial would hold in memory), :mod:`.metrics` (the metric names a study optimises).
"""

from __future__ import annotations

from typing import Any


class PreflightError(RuntimeError):
    """Bad input found before the study starts. One-line message."""


def is_local_path(value: Any) -> bool:
    """Whether a data field's value names a local file or folder: a non-empty string, neither
    ``synthetic`` nor a URI (``s3://...``, read where the trials run)."""
    return isinstance(value, str) and bool(value) and value != "synthetic" and "://" not in value
