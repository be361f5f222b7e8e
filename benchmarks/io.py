"""I/O throughput: JSONL and Parquet in and out of the record model, against raw polars.

Generates N synthetic chat records as a JSONL file, then, in this one process,
times each step of the round trip and checks the scale targets:

    python benchmarks/io.py                 # 1,000,000 records, every step run 3 times
    python benchmarks/io.py --rows 100000 --repeat 1

Steps (ours):
  JSONL -> records     curate.readers.read_records on the synthetic file (layout
                       mapping, meta JSON, id hashing, validation)
  records -> Parquet   curate.writers.write_records
  Parquet -> records   curate.readers.read_records on that Parquet file
  records -> JSONL     curate.writers.write_records
  JSONL (ours) -> records  read_records on the JSONL just written (a round-trip check, no target)

Reference contenders: polars' read_ndjson / read_parquet alone on the same files,
so that what the mapping, the id hashing and the validation cost is visible;
pyarrow's JSON reader alone, a faster parser than polars' for the same file; and our
whole-file JSONL reader (the one blocks replaced: every block larger than the file),
run after our steps so that its memory does not count toward their peak.

Targets: Parquet -> records >= 500k records/s, JSONL -> records >= 150k records/s,
peak RSS of this process <= 3 GB (the synthetic file is generated in a child process
so that its build does not count).

Synthetic records: the `messages` layout; a system turn on ~30% of rows, then a user
and an assistant turn of 20 to 80 words each (made of shared fragments plus a row
number, so that every row is distinct, with some whitespace noise for normalization
to undo); a label on ~25% of rows; two extra columns (`topic`, `difficulty`) that
the reader keeps in `meta`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pyarrow.json as pj
from rich.console import Console
from rich.table import Table

from curate import readers
from curate.readers import read_records
from curate.writers import write_records

GB = 1000**3
TARGET_PARQUET = 500_000
TARGET_JSONL = 150_000
TARGET_RSS = 3 * GB


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------


def _fragments(n: int, rng: np.random.Generator, lo: int, hi: int) -> list[str]:
    """`n` pieces of text of `lo` to `hi` words from a Zipf-ish vocabulary, some with noise."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab_size = 5_000
    lengths = rng.integers(2, 10, size=vocab_size)
    chars = rng.choice(letters, size=(vocab_size, 9))
    vocab = np.array(["".join(row[:k]) for row, k in zip(chars, lengths)], dtype=object)
    weights = 1.0 / np.arange(1, vocab_size + 1)
    weights /= weights.sum()
    out = []
    for k in rng.integers(lo, hi + 1, size=n):
        words = vocab[rng.choice(vocab_size, size=k, p=weights)]
        text = " ".join(words)
        r = rng.random()
        if r < 0.1:
            text = text.replace(" ", "  ", 3)  # whitespace runs
        elif r < 0.15:
            text = text.capitalize() + ".\n\nThanks!"
        elif r < 0.18:
            text = " " + text + " café ﬁne"  # leading space, a ligature NFKC folds
        out.append(text)
    return out


def generate_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` synthetic chat records as JSONL; vectorized with polars."""
    rng = np.random.default_rng(seed)
    pool = pl.Series(_fragments(20_000, rng, 9, 39))  # two fragments + a row tag: ~20 to 80 words
    systems = pl.Series(
        [
            "You are a helpful assistant.",
            "You are a support agent for a software company. Be brief and polite.",
            "Answer as a careful tutor: explain each step.",
            "You classify customer tickets.",
        ]
    )
    labels = pl.Series(["billing", "technical", "account", "shipping", "other"])
    topics = pl.Series(["support", "math", "code", "travel", "cooking", "health"])

    def pick(series: pl.Series, size: int) -> pl.Series:
        return series.gather(rng.integers(0, len(series), size=size))

    row = pl.Series("row", np.arange(rows)).cast(pl.String)
    df = pl.DataFrame(
        {
            "row": row,
            "u1": pick(pool, rows),
            "u2": pick(pool, rows),
            "a1": pick(pool, rows),
            "a2": pick(pool, rows),
            "sys": pick(systems, rows),
            "has_sys": rng.random(rows) < 0.3,
            "lab": pick(labels, rows),
            "has_lab": rng.random(rows) < 0.25,
            "topic": pick(topics, rows),
            "difficulty": rng.integers(1, 6, size=rows),
        }
    )

    def turn(role: str, content: pl.Expr) -> pl.Expr:
        return pl.struct(pl.lit(role).alias("role"), content.alias("content"))

    user_turn = turn("user", pl.concat_str([pl.col("u1"), pl.lit(" (case "), pl.col("row"), pl.lit(") "), pl.col("u2")]))
    asst_turn = turn("assistant", pl.concat_str([pl.col("a1"), pl.lit(" "), pl.col("a2"), pl.lit(" #"), pl.col("row")]))
    sys_turn = turn("system", pl.col("sys"))
    messages = (
        pl.when(pl.col("has_sys"))
        .then(pl.concat_list([sys_turn, user_turn, asst_turn]))
        .otherwise(pl.concat_list([user_turn, asst_turn]))
    )
    out = df.select(
        messages.alias("messages"),
        pl.when(pl.col("has_lab")).then(pl.col("lab")).alias("label"),
        "topic",
        "difficulty",
    )
    out.write_ndjson(path)


def _generate_in_child(path: Path, rows: int, seed: int) -> None:
    """Build the file in a child process, so that its memory does not count toward our peak RSS."""
    proc = mp.get_context("spawn").Process(target=generate_jsonl, args=(path, rows, seed))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"generating the synthetic file failed (exit code {proc.exitcode})")


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def release_freed_memory() -> None:
    """Hand freed heap back to the OS so that the next step's peak measures that step."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak RSS of this process while the block runs, sampled every 10 ms."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.start = self.peak = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class Step:
    name: str
    rows: int
    seconds: float  # the median of the repeats
    rss_before: int
    rss_peak: int
    cpu_seconds: float  # the median of the repeats
    lifetime_peak: int = 0
    reference: bool = False
    best_seconds: float = 0.0

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    @property
    def best_per_s(self) -> float:
        return self.rows / self.best_seconds if self.best_seconds else float("inf")


# How many times each step runs (--repeat). This machine's speed drifts by +-15% from
# one minute to the next (raw pyarrow alone read the same file at 289k to 409k
# records/s), so one run says little; the table shows the median and the best.
REPEAT = 3


def timed(name: str, fn, *, reference: bool = False):
    """Run `fn` REPEAT times (the previous result freed first); the last result, and the step's figures."""
    seconds, cpu, peak, start = [], [], 0, None
    result = None
    for _ in range(REPEAT):
        result = None
        release_freed_memory()
        with PeakRSS() as mem:
            c0, t0 = time.process_time(), time.perf_counter()
            result = fn()
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        start = mem.start if start is None else start
        peak = max(peak, mem.peak)
    rows = result.height if isinstance(result, pl.DataFrame) else result
    step = Step(name, rows, statistics.median(seconds), start, peak, statistics.median(cpu),
                lifetime_peak=ru_maxrss(), reference=reference, best_seconds=min(seconds))
    return result, step


def fingerprint(df: pl.DataFrame) -> pl.Series:
    """A hash per row, over every column (stable within this process); in slices, to stay small in memory."""
    return pl.concat([part.hash_rows() for part in df.iter_slices(65_536)])


def ru_maxrss() -> int:
    """Lifetime peak RSS of this process, in bytes (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def gb(n: int) -> str:
    return f"{n / GB:.2f} GB"


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the files go (default: a temporary folder, removed at the end); kept, and its "
                         "synthetic file reused by a later run with the same --rows and --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=REPEAT, help="runs of each step; the table shows the median and the best")
    args = ap.parse_args(argv)
    globals()["REPEAT"] = max(1, args.repeat)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: room for the whole table

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="smallset-io-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir, console)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, workdir: Path, console: Console) -> int:
    src = workdir / "synthetic.jsonl"
    pq = workdir / "records.parquet"
    out = workdir / "records.jsonl"

    stamp = workdir / "synthetic.stamp"
    wanted = f"rows={args.rows} seed={args.seed}"
    t0 = time.perf_counter()
    if src.exists() and stamp.exists() and stamp.read_text() == wanted:
        how = "reused from the workdir"
    else:
        stamp.unlink(missing_ok=True)
        _generate_in_child(src, args.rows, args.seed)
        stamp.write_text(wanted)
        # Flush the new file to disk now: otherwise the kernel writes its ~0.8 GB back while
        # the first step runs, and that step is charged for it (141k instead of 169k records/s
        # measured at 1M rows on 2 cores).
        os.sync()
        how = f"built in {time.perf_counter() - t0:.1f}s (child process)"
    console.print(
        f"synthetic JSONL: {args.rows:,} records, {src.stat().st_size / 1e6:,.0f} MB, {how}; workdir {workdir}; "
        f"polars {pl.__version__} ({pl.thread_pool_size()} threads), python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    steps: list[Step] = []

    # Ours. Only the ids and a per-row content hash of the first read are kept for the
    # final check, so that no step pays for an extra copy of the data set.
    recs, step = timed("JSONL -> records", lambda: read_records(src).records)
    steps.append(step)
    first_ids = recs["id"]
    first_rows = fingerprint(recs)
    _, step = timed("records -> Parquet", lambda: (write_records(recs, pq), recs.height)[1])
    steps.append(step)
    del recs
    recs, step = timed("Parquet -> records", lambda: read_records(pq).records)
    steps.append(step)
    parquet_ids = recs["id"]
    parquet_rows = fingerprint(recs)
    _, step = timed("records -> JSONL", lambda: (write_records(recs, out), recs.height)[1])
    steps.append(step)
    del recs
    recs, step = timed("JSONL (ours) -> records", lambda: read_records(out).records)
    steps.append(step)
    roundtrip_ids = recs["id"]
    roundtrip_rows = fingerprint(recs)
    del recs
    pipeline_peak = ru_maxrss()

    # The whole-file JSONL reader (what the block reader replaced), then the raw readers alone, on the same files.
    def whole_file_read() -> pl.DataFrame:
        saved = os.environ.get(readers.BLOCK_BYTES_ENV)
        os.environ[readers.BLOCK_BYTES_ENV] = str(src.stat().st_size)
        try:
            return read_records(src).records
        finally:
            os.environ.pop(readers.BLOCK_BYTES_ENV)
            if saved is not None:
                os.environ[readers.BLOCK_BYTES_ENV] = saved

    whole, step = timed("JSONL -> records, whole file", whole_file_read, reference=True)
    steps.append(step)
    same_whole = first_ids.equals(whole["id"]) and first_rows.equals(fingerprint(whole))
    del whole
    ref_jsonl, step = timed("raw pl.read_ndjson (synthetic)", lambda: pl.read_ndjson(src, infer_schema_length=None), reference=True)
    steps.append(step)
    del ref_jsonl
    ref_arrow, step = timed("raw pyarrow.json.read_json (synthetic)", lambda: pj.read_json(src).num_rows, reference=True)
    steps.append(step)
    del ref_arrow
    ref_pq, step = timed("raw pl.read_parquet", lambda: pl.read_parquet(pq), reference=True)
    steps.append(step)
    del ref_pq
    release_freed_memory()

    by_name = {s.name: s for s in steps}
    table = Table(title=f"smallset I/O, {args.rows:,} records")
    table.add_column("step")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("best", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("RSS before", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_column("ru_maxrss after", justify="right")
    table.add_column("speed (CPU) vs", justify="right")
    ratio_of = {  # step -> the references it is compared with
        "JSONL -> records": ["JSONL -> records, whole file", "raw pl.read_ndjson (synthetic)"],
        "Parquet -> records": ["raw pl.read_parquet"],
    }
    short = {"JSONL -> records, whole file": "whole-file reader", "raw pl.read_ndjson (synthetic)": "raw polars",
             "raw pl.read_parquet": "raw polars"}
    for s in steps:
        refs = [by_name[r] for r in ratio_of.get(s.name, []) if r in by_name]
        ratio = "\n".join(f"{s.per_s / r.per_s:.2f}x ({r.cpu_seconds / s.cpu_seconds:.2f}x) {short[r.name]}" for r in refs)
        table.add_row(
            f"[dim]{s.name}[/dim]" if s.reference else s.name,
            f"{s.rows:,}",
            f"{s.seconds:.2f}",
            f"{s.per_s:,.0f}",
            f"{s.best_per_s:,.0f}",
            f"{s.cpu_seconds:.2f}",
            gb(s.rss_before),
            gb(s.rss_peak),
            gb(s.lifetime_peak),
            ratio,
        )
    console.print(table)
    console.print(
        f"file sizes: synthetic JSONL {src.stat().st_size / 1e6:,.0f} MB, Parquet {pq.stat().st_size / 1e6:,.0f} MB, "
        f"our JSONL {out.stat().st_size / 1e6:,.0f} MB; lifetime peak RSS (ru_maxrss) after our steps {gb(pipeline_peak)}, "
        f"after the raw readers {gb(ru_maxrss())}"
    )
    console.print(
        f"(each step run {REPEAT} times; seconds, records/s, CPU s: the median run; best: the fastest run's records/s; "
        "seconds: wall clock; CPU s: CPU time of this process, all threads, in the step; RSS before / peak RSS: "
        "this process's RSS when the step starts / its highest sample (10 ms) during the step, which includes memory "
        "the allocator kept from earlier steps; ru_maxrss after: the lifetime peak once the step is done; "
        f"load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores)"
    )
    console.print()

    def verdict(ok: bool) -> str:
        return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"

    pq_rate = by_name["Parquet -> records"].per_s
    js_rate = by_name["JSONL -> records"].per_s
    ok = [
        pq_rate >= TARGET_PARQUET,
        js_rate >= TARGET_JSONL,
        pipeline_peak <= TARGET_RSS,
    ]
    console.print(f"{verdict(ok[0])}  Parquet -> records {pq_rate:,.0f} records/s, median of {REPEAT} (target >= {TARGET_PARQUET:,})")
    console.print(f"{verdict(ok[1])}  JSONL -> records {js_rate:,.0f} records/s, median of {REPEAT} (target >= {TARGET_JSONL:,})")
    console.print(f"{verdict(ok[2])}  peak RSS {gb(pipeline_peak)} over our steps (ru_maxrss; target <= {gb(TARGET_RSS)})")

    same_ids = first_ids.equals(parquet_ids)
    same_rows = first_rows.equals(parquet_rows)
    same_roundtrip = first_ids.equals(roundtrip_ids) and first_rows.equals(roundtrip_rows)
    unique = first_ids.n_unique() == len(first_ids)
    checks = [same_ids, same_rows, same_roundtrip, same_whole]
    console.print(f"{verdict(same_ids and same_rows)}  Parquet read back equals the JSONL read "
                  f"(ids equal: {same_ids}, every column equal: {same_rows})")
    console.print(f"{verdict(same_whole)}  the whole-file JSONL reader reads the same records (ids and every column, in order)")
    console.print(f"{verdict(same_roundtrip)}  our JSONL read back equals the first read (ids and every column, in order)")
    console.print(f"{'[green]ok[/green]' if unique else '[yellow]note[/yellow]'}    "
                  f"{first_ids.n_unique():,} distinct ids for {len(first_ids):,} records")
    return 0 if all(ok) and all(checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
