"""Review benchmark: `curate review push` of 10k records end to end, then list and search latencies.

Targets (issue 5), on this machine: push >= 500 records/s end to end; p95 of list and
search requests <= 300 ms at 10k records.

    python benchmarks/review.py                  # starts a server in a temporary workspace
    python benchmarks/review.py --rows 2000      # a quick look
    python benchmarks/review.py --vectors        # push embeddings too (the embedder's time counts)

Push: `curate.review.push.push` on a 10k-row Parquet file (chat turns, a label, a judge
score; rows from templates), the same code `curate review push` runs: read, route,
list the ids already there, settings, records built with the SDK and sent in batches of
500 to Argilla's bulk upsert endpoint, two in flight, which the server (two API
processes by default) writes to SQLite and indexes in the embedded search engine.
Records/s = pushed rows / wall time of that call.

Requests, each repeated (--repeat, default 40) after two warm-up calls, timed one by one:
  sdk list             the SDK's record listing, 100 per page at a random offset
                       (GET /api/v1/datasets/{id}/records)
  ui queue             the annotator's pending queue as the web UI asks for it: one
                       record with responses and suggestions (POST /api/v1/me/datasets/
                       {id}/records/search, response status = pending)
  ui metadata filter   the same, filtered on a metadata term (source) and a score range
  ui text search       a word searched in the fields, 10 per page
  sdk text search      rg.Query(query=word) through the SDK, first 100 records
  ui sort              a page of 10 sorted by judge_score, descending
Printed: p50 and p95 per request and whether the targets hold. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

PUSH_TARGET = 500.0  # records/s
P95_TARGET_MS = 300.0

SUBJECTS = ["my invoice", "the mobile app", "my password", "the parcel", "the export", "our workspace", "the API",
            "my subscription", "the dashboard", "the refund", "two-factor login", "the webhook", "the CSV import"]
PROBLEMS = ["fails with an error", "was charged twice", "never arrives", "is stuck", "crashes on start",
            "shows the wrong amount", "is very slow today", "does not load", "keeps logging me out"]
ANSWERS = ["Please clear the cache and try again.", "I have refunded the charge.", "A new parcel is on its way.",
           "Reset it from the sign-in page.", "Our team is on it; expect a fix today.", "Update to the latest version."]
LABELS = ["billing", "bug", "account", "shipping"]
SOURCES = ["helpdesk", "email", "synth:tickets"]


def make_dataset(path: Path, rows: int, seed: int = 0) -> Path:
    from curate.records import CORE_SCHEMA, order_columns, with_ids
    from curate.writers import write_records

    rnd = random.Random(seed)
    records = []
    for i in range(rows):
        question = f"{rnd.choice(SUBJECTS).capitalize()} {rnd.choice(PROBLEMS)} (ticket {i})."
        records.append({
            "messages": [{"role": "system", "content": "You are a helpful support agent."},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": rnd.choice(ANSWERS)}],
            "label": rnd.choice(LABELS),
            "source": rnd.choice(SOURCES),
            "meta": json.dumps({"n": i}),
            "judge_score": round(rnd.uniform(1, 5), 2),
        })
    schema = {**{k: v for k, v in CORE_SCHEMA.items() if k != "id"}, "judge_score": pl.Float64}
    df = pl.DataFrame(records, schema=schema).with_columns(pl.lit(None, dtype=pl.String).alias("id"))
    return write_records(order_columns(with_ids(df)), path)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def timed(fn, repeat: int) -> list[float]:
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def terms(entity: dict, values: list[str]) -> dict:
    return {"type": "terms", "scope": entity, "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--vectors", action="store_true", help="push embeddings (the embedder's time counts)")
    parser.add_argument("--workspace", type=Path, help="server workspace (default: a temporary folder)")
    args = parser.parse_args()

    import argilla as rg

    from curate.review.client import connect
    from curate.review.push import PushOptions, push
    from curate.review.server import ReviewServer, free_port

    console = Console()
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "bench_tickets.parquet", args.rows)
        workspace = args.workspace or root / "ws"
        server = ReviewServer(workspace=workspace, port=free_port(), progress=lambda m: console.print(m, style="dim"))
        started = time.perf_counter()
        server.start()
        console.print(f"server up in {time.perf_counter() - started:.1f} s at {server.url}")
        try:
            conn = connect(workspace)
            start = time.perf_counter()
            [report] = push(data, conn, PushOptions(vectors=args.vectors), progress=lambda m: None)
            push_s = time.perf_counter() - start
            rate = report.pushed / push_s
            again = time.perf_counter()
            [repeat_report] = push(data, conn, PushOptions(vectors=False), progress=lambda m: None)
            again_s = time.perf_counter() - again
            assert repeat_report.pushed == 0 and repeat_report.already == args.rows

            dataset = conn.dataset(report.dataset, report.workspace)
            key = json.loads((workspace / "owner.json").read_text())["api_key"]
            http = httpx.Client(base_url=server.url, headers={"X-Argilla-Api-Key": key}, timeout=60)
            me_search = f"/api/v1/me/datasets/{dataset.id}/records/search"
            include = {"include": ["responses", "suggestions"]}
            pending = terms({"entity": "response", "property": "status"}, ["pending"])
            rnd = random.Random(1)

            def sdk_list():
                conn.client.api.records.list(dataset_id=dataset.id, limit=100, offset=rnd.randrange(args.rows - 100))

            def ui_queue():
                body = {"filters": {"and": [pending]}}
                r = http.post(me_search, params={**include, "offset": rnd.randrange(50), "limit": 1}, json=body)
                r.raise_for_status()

            def ui_metadata():
                body = {"filters": {"and": [pending,
                                            terms({"entity": "metadata", "metadata_property": "source"}, ["email"]),
                                            {"type": "range", "scope": {"entity": "metadata",
                                                                        "metadata_property": "judge_score"},
                                             "ge": 2.5, "le": 3.5}]}}
                r = http.post(me_search, params={**include, "offset": 0, "limit": 1}, json=body)
                r.raise_for_status()
                assert r.json()["total"] > 0

            def ui_text():
                word = rnd.choice(["invoice", "parcel", "refund", "password", "webhook", "crashes"])
                body = {"query": {"text": {"q": word}}, "filters": {"and": [pending]}}
                r = http.post(me_search, params={**include, "offset": 0, "limit": 10}, json=body)
                r.raise_for_status()
                assert r.json()["total"] > 0

            def sdk_text():
                word = rnd.choice(["invoice", "parcel", "refund", "password"])
                records = dataset.records(query=rg.Query(query=word), batch_size=100)
                for i, _ in enumerate(records):
                    if i == 99:
                        break

            def ui_sort():
                body = {"filters": {"and": [pending]},
                        "sort": [{"scope": {"entity": "metadata", "metadata_property": "judge_score"},
                                  "order": "desc"}]}
                r = http.post(me_search, params={**include, "offset": rnd.randrange(200), "limit": 10}, json=body)
                r.raise_for_status()

            requests = {"sdk list (100)": sdk_list, "ui queue (1)": ui_queue, "ui metadata filter": ui_metadata,
                        "ui text search (10)": ui_text, "sdk text search (100)": sdk_text, "ui sort (10)": ui_sort}
            timings = {name: timed(fn, args.repeat) for name, fn in requests.items()}
            http.close()
        finally:
            server.stop()

    table = Table(title=f"review benchmark: {args.rows} records{' with vectors' if args.vectors else ''}",
                  title_justify="left")
    for column in ("measure", "value", "target", "met"):
        table.add_column(column)
    table.add_row("push, end to end", f"{rate:,.0f} records/s ({push_s:.1f} s)", f">= {PUSH_TARGET:.0f} records/s",
                  "yes" if rate >= PUSH_TARGET else "NO")
    table.add_row("push again (nothing new)", f"{again_s:.1f} s", "", "")
    for name, values in timings.items():
        p50, p95 = statistics.median(values), percentile(values, 95)
        table.add_row(f"{name}: p50 / p95", f"{p50:.0f} / {p95:.0f} ms", f"p95 <= {P95_TARGET_MS:.0f} ms",
                      "yes" if p95 <= P95_TARGET_MS else "NO")
    console.print(table)


if __name__ == "__main__":
    main()
