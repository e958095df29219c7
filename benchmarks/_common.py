"""Small helpers shared by the benchmark scripts: timing, machine facts, tables, JSON.

Every benchmark follows the same rules (see ``benchmarks/README.md``): warm up first,
repeat, report medians, compare variants only as ratios measured in the same run with
their repetitions interleaved, and print the load average next to the figures, since
the machines these run on are often shared.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (NaN when empty)."""
    items = list(values)
    return statistics.median(items) if items else float("nan")


def time_call(fn: Callable[[], Any], reps: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls.

    ``clock``: ``time.perf_counter`` (wall-clock, the default) or ``time.process_time``
    (this process's CPU time: steadier on a shared machine for single-threaded work).
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        start = clock()
        fn()
        out.append(clock() - start)
    return out


def time_both(fn: Callable[[], Any], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median wall and CPU seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(reps):
        clock = Clock()
        fn()
        runs.append(clock.elapsed())
    return {"wall": median(r["wall"] for r in runs), "cpu": median(r["cpu"] for r in runs)}


def interleaved(variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[Any]]:
    """Run every variant once per round (A, B, C, A, B, C, ...) and collect what each returns.

    Each callable returns its own measurement (e.g. seconds per step of one block), so a
    variant can exclude its own set-up from the figure. ``warmup`` rounds are discarded.
    Interleaving makes a change of machine load hit every variant alike.
    """
    out: dict[str, list[Any]] = {name: [] for name in variants}
    for round_index in range(warmup + reps):
        for name, fn in variants.items():
            value = fn()
            if round_index >= warmup:
                out[name].append(value)
    return out


class Clock:
    """Wall-clock and this process's CPU time, read together.

    On a shared machine the wall-clock of a single-threaded loop grows with other users'
    load, while its CPU time (``time.process_time``) counts only the work it did, so a
    ratio of CPU times is the steadier comparison; both are reported.
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self, per: float = 1.0) -> dict[str, float]:
        """{"wall": s, "cpu": s} since construction, divided by ``per`` (e.g. steps)."""
        return {"wall": (time.perf_counter() - self.wall) / per, "cpu": (time.process_time() - self.cpu) / per}


def machine_info(threads: Optional[int] = None) -> dict[str, Any]:
    """Facts to print next to the figures: CPU count, load average, torch threads, Python."""
    import torch

    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def load_line() -> str:
    """One line with the current load average (1, 5, 15 min) and the CPU count."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Print (and return) a plain aligned text table; floats get 3 significant decimals."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for row in text_rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save_json(path: Optional[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` (no-op when ``path`` is None)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nfigures saved to {path}", flush=True)


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (1 = what a 1-CPU Ray Train worker gets); returns it."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def add_run_args(parser, tiny_help: str, jobs_help: str = "runs trained at once (one thread each)") -> None:
    """The flags every training benchmark takes: --jobs, --data-cache, --json and --tiny."""
    parser.add_argument("--jobs", type=int, default=2, help=jobs_help)
    parser.add_argument("--data-cache", default=None, help="data cache folder (default ~/.cache/mlclip-study)")
    parser.add_argument("--json", help="save the results here")
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
