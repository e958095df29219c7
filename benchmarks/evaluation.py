"""§3 Evaluation from precomputed embeddings: XTD size, big pools, a naive baseline, the matmul limit.

Cases (embeddings are random but correlated, L2-normalised, ``--dim`` wide):

* ``xtd``: :func:`trainables.evaluate.evaluate_embeddings` on 1000 images and 11
  languages, every monolingual, cross-lingual and multilingual setting (264 products of
  1000 x D by D x 1000 in all: 22 monolingual, 110 cross-lingual, 132 against the
  11,000-caption multilingual pool);
* ``pool``: one retrieval setting over a pool of P items (10k and 100k by default) with
  ``min(P, --queries)`` queries, by the project's chunked
  :func:`trainables.metrics.retrieval_metrics` and by a naive version that builds the
  whole score matrix and sorts every row (skipped when its estimated memory exceeds
  ``--naive-budget-gib``);
* ``matmul``: only the score products of the same case, with the same shapes (and the
  same chunking for the project), which is the compute limit; the table gives each
  version's time as a multiple of it.

Every case runs in a fresh process (spawn). Peak memory is the peak resident set size
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the timed call,
so the embeddings themselves and the interpreter are not counted); tracemalloc is not
used, since it does not see torch's tensor memory.

    python -m benchmarks.evaluation                 # XTD + pools of 10k and 100k
    python -m benchmarks.evaluation --tiny          # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing
from typing import Any, Optional

import torch

from benchmarks._common import Clock, load_line, machine_info, median, print_table, save_json

XTD_IMAGES, XTD_LANGUAGES = 1000, 11
NAIVE_BYTES_PER_SCORE = 29  # float32 scores + int64 order + int64 gathered ids + float32 sort values + bool


# --------------------------------------------------------------------------- memory
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn, reps: int) -> dict[str, float]:
    """Median wall and CPU seconds of ``fn`` (after one warm-up) and its peak RSS above the RSS before it.

    A warm-up that took more than 5 s of CPU is used as the only timing (big cases run once).
    CPU time (``time.process_time``) is what the ratios use: on a shared machine the
    wall-clock of single-threaded work mostly measures the other users.
    """
    rss_before = _status_kib("VmRSS") or 0
    reset_peak()
    clock = Clock()
    fn()
    runs = [clock.elapsed()]
    if runs[0]["cpu"] < 5.0:
        runs = []
        for _ in range(reps):
            clock = Clock()
            fn()
            runs.append(clock.elapsed())
    peak = _status_kib("VmHWM") or 0
    return {"seconds": median(r["wall"] for r in runs), "cpu_seconds": median(r["cpu"] for r in runs),
            "reps": len(runs), "peak_mib": max(0, peak - rss_before) / 1024}


# --------------------------------------------------------------------------- data
def embeddings(n: int, dim: int, seed: int, noise: float = 1.0) -> torch.Tensor:
    """[n, dim] float32 unit rows: a shared random base plus ``noise`` times fresh noise."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    base.add_(torch.randn(n, dim, generator=gen), alpha=noise)
    return torch.nn.functional.normalize(base, dim=1)


def naive_metrics(queries: torch.Tensor, pool: torch.Tensor, query_ids: torch.Tensor, pool_ids: torch.Tensor,
                  k: int = 100, ks: tuple = (1, 5, 10)) -> dict[str, float]:
    """mAP@k and Recall@ks the naive way: the full score matrix, every row fully sorted."""
    scores = queries @ pool.T
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    relevant = pool_ids[order] == query_ids[:, None]
    n_relevant = relevant.sum(dim=1).double()
    top = relevant[:, :k].double()
    precision = top.cumsum(dim=1) / torch.arange(1, top.shape[1] + 1, dtype=torch.float64)
    ap = (precision * top).sum(dim=1) / n_relevant.clamp(min=1.0)
    out = {f"map{k}": float(ap.mean())}
    out.update({f"recall{kk}": float(relevant[:, :kk].any(dim=1).double().mean()) for kk in ks})
    return out


def project_pool_metrics(queries, pool, query_ids, pool_ids, k: int = 100) -> dict[str, float]:
    """The same figures through the project's chunked ``retrieval_metrics``."""
    from trainables.metrics import retrieval_metrics

    result = retrieval_metrics(queries, pool, query_ids, pool_ids, k=k, ks=(1, 5, 10))
    out = {f"map{k}": float(result.ap.mean())}
    out.update({f"recall{kk}": float(v.mean()) for kk, v in result.recall.items()})
    return out


# --------------------------------------------------------------------------- cases
def xtd_embeddings(dim: int, n: int = XTD_IMAGES, languages: int = XTD_LANGUAGES):
    """Image embeddings [n, dim] and {language: caption embeddings [n, dim]} for the XTD case."""
    from trainables.languages import LANGUAGES

    images = embeddings(n, dim, seed=100)
    return images, {lang: embeddings(n, dim, seed=i + 1) for i, lang in enumerate(LANGUAGES[:languages])}


def xtd_products(images: torch.Tensor, texts: dict[str, torch.Tensor]) -> None:
    """Exactly the score products of a full XTD evaluation (no ranking): the compute limit."""
    for caps in texts.values():  # monolingual t2i and i2t
        caps @ images.T
        images @ caps.T
    for a, ta in texts.items():  # cross-lingual, every ordered pair
        for b, tb in texts.items():
            if a != b:
                ta @ tb.T
    pool = torch.cat(list(texts.values()))
    images @ pool.T  # multilingual i2t
    for caps in texts.values():  # multilingual t2t
        caps @ pool.T


def pool_data(pool_size: int, queries: int, dim: int):
    """Pool [P, dim], queries [Q, dim] (noisy copies of the first Q pool rows) and their ids."""
    pool = embeddings(pool_size, dim, seed=1, noise=0.0)
    noisy = pool[:queries] + 1.0 * torch.randn(queries, dim, generator=torch.Generator().manual_seed(2)) / dim ** 0.5
    query = torch.nn.functional.normalize(noisy, dim=1)
    return query, pool, torch.arange(queries), torch.arange(pool_size)


def chunked_products(query: torch.Tensor, pool: torch.Tensor) -> None:
    """The score products of ``retrieval_metrics``, chunk by chunk, as it makes them."""
    from trainables.metrics import _auto_chunk

    step = _auto_chunk(query.shape[0], pool.shape[0], None)
    for start in range(0, query.shape[0], step):
        query[start:start + step] @ pool.T


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process: ``job['method']`` on its data (called in a fresh process)."""
    from trainables.evaluate import evaluate_embeddings

    torch.set_num_threads(job["threads"])
    method, reps, dim = job["method"], job["reps"], job["dim"]
    if method.startswith("xtd"):
        images, texts = xtd_embeddings(dim, job.get("n", XTD_IMAGES))
        fn = (lambda: evaluate_embeddings(images, texts, k=100)) if method == "xtd_project" else \
            (lambda: xtd_products(images, texts))
        return measure(fn, reps)
    query, pool, qid, pid = pool_data(job["pool"], job["queries"], dim)
    found: dict[str, Any] = {}

    def keep(fn):
        return lambda: found.update(fn(query, pool, qid, pid))

    fns = {"pool_project": keep(project_pool_metrics), "pool_naive": keep(naive_metrics),
           "pool_matmul_chunked": lambda: chunked_products(query, pool), "pool_matmul_full": lambda: query @ pool.T}
    out = measure(fns[method], reps)
    out["metrics"] = found
    return out


def in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_job` in a new (spawned) process, so its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_job, (job,))


def _mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def _row(case: str, queries: int, flops: float, project: dict, matmul: dict) -> dict[str, Any]:
    """Common columns: the project's wall and CPU time, its peak, the products' CPU time and ratio."""
    return {"case": case, "queries": queries, "project_wall_s": project["seconds"], "project_s": project["cpu_seconds"],
            "project_peak_mib": project["peak_mib"], "matmul_s": matmul["cpu_seconds"],
            "matmul_gflops": flops / matmul["cpu_seconds"] / 1e9,
            "project_x_matmul": project["cpu_seconds"] / matmul["cpu_seconds"],
            "naive_s": float("nan"), "naive_peak_mib": float("nan")}


def xtd_rows(args: argparse.Namespace) -> dict[str, Any]:
    """The full XTD-size evaluation and its products alone."""
    base = {"threads": args.threads, "reps": args.reps, "dim": args.dim, "n": args.xtd_images}
    project = in_fresh_process({**base, "method": "xtd_project"})
    matmul = in_fresh_process({**base, "method": "xtd_matmul"})
    products = 2 * XTD_LANGUAGES ** 2 + 2 * XTD_LANGUAGES  # 22 mono + 110 cross + 132 multilingual (N x N each)
    flops = 2 * products * args.xtd_images ** 2 * args.dim
    row = _row(f"XTD full ({args.xtd_images} images x 11 languages)", args.xtd_images, flops, project, matmul)
    row["naive_note"] = "not built (the naive baseline is compared per setting, below)"
    return row


def pool_row(args: argparse.Namespace, pool: int) -> dict[str, Any]:
    """One pool size: project vs naive vs the products alone."""
    queries = min(pool, args.queries)
    base = {"threads": args.threads, "reps": args.reps, "dim": args.dim, "pool": pool, "queries": queries}
    project = in_fresh_process({**base, "method": "pool_project"})
    chunked = in_fresh_process({**base, "method": "pool_matmul_chunked"})
    row = _row(f"pool {pool:,}", queries, 2 * queries * pool * args.dim, project, chunked)
    need_gib = queries * pool * NAIVE_BYTES_PER_SCORE / 2**30
    budget = args.naive_budget_gib if args.naive_budget_gib is not None else 0.5 * _mem_available_gib()
    row.update({"pool": pool, "naive_est_gib": need_gib, "metrics": project["metrics"]})
    if need_gib > budget:
        row["naive_note"] = f"skipped: needs ~{need_gib:.0f} GiB > budget {budget:.1f} GiB"
        return row
    naive = in_fresh_process({**base, "method": "pool_naive"})
    full = in_fresh_process({**base, "method": "pool_matmul_full"})
    gap = max(abs(project["metrics"][k] - naive["metrics"][k]) for k in project["metrics"])
    row.update({"naive_s": naive["cpu_seconds"], "naive_peak_mib": naive["peak_mib"],
                "naive_matmul_s": full["cpu_seconds"], "naive_x_matmul": naive["cpu_seconds"] / full["cpu_seconds"],
                "naive_note": f"same metrics as the project's (largest difference {gap:.1e}); its own product "
                              f"alone {full['cpu_seconds']:.3f} s, so naive = {naive['cpu_seconds'] / full['cpu_seconds']:.1f}"
                              " x matmul"})
    return row


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (``--tiny`` shrinks every size for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128, help="embedding width (default 128, the tiny model; ViT-B-32: 512)")
    p.add_argument("--pools", default="10000,100000", help="pool sizes, comma-separated (default 10000,100000)")
    p.add_argument("--queries", type=int, default=10000, help="queries per pool case: min(pool, this) (default 10000)")
    p.add_argument("--xtd-images", type=int, default=XTD_IMAGES, help="images of the XTD case (default 1000)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up (cases over 5 s run once)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: rank 0 of a 1-CPU worker)")
    p.add_argument("--naive-budget-gib", type=float, default=None,
                   help="skip the naive version above this estimated memory (default: half of MemAvailable)")
    p.add_argument("--tiny", action="store_true", help="smoke run: 100 images, a pool of 2000")
    p.add_argument("--json", help="save the figures to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.xtd_images, args.pools, args.queries, args.reps, args.dim = 100, "2000", 200, 1, 32
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print its table, return (and optionally save) the figures."""
    args = parse_args(argv)
    rows = [xtd_rows(args)] + [pool_row(args, int(p)) for p in args.pools.split(",") if p.strip()]
    print(f"\nEvaluation from embeddings (D={args.dim}, k=100, {args.threads} thread(s); CPU seconds, median of up "
          f"to {args.reps} runs after a warm-up; peak = RSS high-water above the RSS before the call; "
          f"{load_line()})\n")
    print_table(["case", "queries", "wall s", "CPU s", "peak MiB", "matmul CPU s", "x matmul", "GFLOP/s",
                 "naive CPU s", "naive MiB", "naive x project"],
                [[r["case"], r["queries"], r["project_wall_s"], r["project_s"], r["project_peak_mib"], r["matmul_s"],
                  r["project_x_matmul"], r["matmul_gflops"], r["naive_s"], r["naive_peak_mib"],
                  r["naive_s"] / r["project_s"]] for r in rows])
    print()
    for r in rows:
        print(f"  {r['case']}: naive {r['naive_note']}")
    result = {"benchmark": "evaluation", "machine": machine_info(args.threads), "args": vars(args), "cases": rows}
    save_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
