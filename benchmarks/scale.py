"""Scale-out: `curate dedup` on the local executor against the Ray executor, side by side in one run.

    python benchmarks/scale.py                                 # 1M rows exact + near, 100k semantic
    python benchmarks/scale.py --rows 200000 --semantic-rows 10000

Contenders, each on the same rows, each checked to give the same kept ids and drops:

  local            this process (near dedup's own process pool over every core)
  ray, one node    a local Ray instance with every core (the "Ray on one node" target)
  ray, 1 x 1 CPU   a Ray cluster of one node with one CPU (ray.cluster_utils.Cluster)
  ray, 2 x 1 CPU   a Ray cluster of two nodes with one CPU each

Targets (issue #16): Ray on one node within 1.3x of local at 1M rows; 2 workers of 1 CPU
>= 1.7x one worker of 1 CPU. The semantic rows are embedded without the embedding cache
(SMALLSET_EMBED_CACHE=off) so that every contender really encodes them.

Rows: sentences drawn from the first paragraphs of standard-library and numpy docstrings
(tests/corpus.py), four per row, with 10% near copies (one word changed) and 5% exact copies.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["SMALLSET_EMBED_CACHE"] = "off"


def make_rows(n: int, seed: int = 0) -> pl.DataFrame:
    from corpus import docstring_corpus


    rng = random.Random(seed)
    paragraphs = [r["text"] for r in docstring_corpus()]
    texts = []
    for k in range(n):
        roll = rng.random()
        if texts and roll < 0.05:
            texts.append(texts[rng.randrange(len(texts))])
        elif texts and roll < 0.15:
            words = texts[rng.randrange(len(texts))].split()
            words[rng.randrange(len(words))] = f"changed{k}"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(paragraphs) for _ in range(4)) + f" (row {k})")
    return _records(texts)


def _records(texts: list[str]) -> pl.DataFrame:
    """The record model's columns, as `curate ingest` writes them."""
    import tempfile

    from curate.readers import read_records

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        pl.DataFrame({"prompt": texts, "completion": ["ok"] * len(texts)}).write_parquet(path)
        return read_records(path).records


def run(executor, df: pl.DataFrame, methods: tuple[str, ...]):
    from curate.dedup.pipeline import DedupConfig, dedup
    from curate.executor import using

    t0 = time.perf_counter()
    with using(executor):
        result = dedup(df, DedupConfig(methods=methods), progress=False)
    return time.perf_counter() - t0, result


def outcome(result) -> tuple:
    return (result.kept["id"].to_list(), result.drops.select("id", "reason", "duplicate_of").rows())


def contenders():
    """(name, make executor, stop) for each contender, one at a time (one Ray runtime per process)."""
    import ray
    import ray.cluster_utils

    from curate.executor import LOCAL
    from curate.ray_cluster import RayOptions
    from curate.ray_executor import RayExecutor

    yield "local", lambda: LOCAL, lambda: None
    yield "ray, one node", lambda: RayExecutor(RayOptions(num_cpus=os.cpu_count())), ray.shutdown
    for nodes in (1, 2):
        holder = {}

        def start(nodes=nodes):
            cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            for _ in range(nodes - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            holder["cluster"] = cluster
            return RayExecutor(RayOptions(address=cluster.address))

        def stop():
            ray.shutdown()
            holder.pop("cluster").shutdown()

        yield f"ray, {nodes} x 1 CPU", start, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for exact + near dedup")
    parser.add_argument("--semantic-rows", type=int, default=100_000, help="rows for semantic dedup (0: skip)")
    args = parser.parse_args()

    jobs = [("exact + near", make_rows(args.rows), ("exact", "near"))]
    if args.semantic_rows:
        jobs.append(("semantic", make_rows(args.semantic_rows, seed=1), ("semantic",)))
    times: dict[tuple[str, str], float] = {}
    reference: dict[str, tuple] = {}
    for name, start, stop in contenders():
        executor = start()
        try:
            for job, df, methods in jobs:
                seconds, result = run(executor, df, methods)
                times[(name, job)] = seconds
                got = outcome(result)
                same = reference.setdefault(job, got) == got
                print(f"{name:16s} {job:13s} {df.height:>9,} rows  {seconds:8.1f} s  kept {result.kept.height:,}  "
                      f"{'identical to local' if same else 'DIFFERENT FROM LOCAL'}", flush=True)
        finally:
            stop()
    print()
    for job, _, _ in jobs:
        local, one_node = times[("local", job)], times[("ray, one node", job)]
        w1, w2 = times[("ray, 1 x 1 CPU", job)], times[("ray, 2 x 1 CPU", job)]
        print(f"{job}: ray one node / local = {one_node / local:.2f}x (target <= 1.3x); "
              f"2 workers vs 1 = {w1 / w2:.2f}x faster (target >= 1.7x)")


if __name__ == "__main__":
    main()
