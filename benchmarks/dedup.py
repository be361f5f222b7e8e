"""Near-duplicate detection benchmark: ours vs. the plain datasketch loop (and rensa, if installed).

Builds a synthetic corpus with planted near duplicates, then, in this one process,
times every contender on it and scores it against ground truth:

    python benchmarks/dedup.py                      # 100k docs of ~100 words
    python benchmarks/dedup.py --docs 1000000       # the scale target: <= 3 min, <= 4 GB

Corpus: documents drawn from a ~20k-word vocabulary with Zipf-like frequencies.
A quarter of the documents are variants of another document (groups of 2 to 4),
made with 0 to 5 random edits: word substitutions, insertions, deletions, adjacent
swaps and moved spans, plus case and whitespace noise that normalization must undo.
One edit costs a 100-word text about 0.1 of Jaccard on 5-word shingles, so the
pairs spread over both sides of 0.8.

Ground truth: the exact Jaccard of the 5-word shingle sets (plain Python sets of
strings, independent of the code under test) of every pair within a planted group;
pairs at or above the threshold are the positives. Unrelated documents share
almost no 5-word shingle; a reported pair outside the groups is checked exactly too.

Contenders:
  ours   curate.dedup.near.near_duplicate_pairs, on every document, all cores.
  plain  the datasketch README loop: one MinHash(num_perm=128) per document fed
         shingle by shingle with m.update(s.encode()), MinHashLSH(threshold, 128),
         query then insert; each query hit is reported as a duplicate. On a
         subsample (--plain-docs, whole groups) because it is slow.
  rensa  the same loop with rensa's RMinHash / RMinHashLSH, when importable.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from curate.dedup.near import NearDedupConfig, lsh_params, near_duplicate_pairs


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------


@dataclass
class Corpus:
    texts: list[str]
    group: np.ndarray  # group id per doc; singletons have their own
    members: dict[int, list[int]]  # planted groups (>= 2 docs) -> doc indices
    truth: dict[tuple[int, int], float]  # exact Jaccard of every within-group pair


def make_vocab(size: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < size:
        lengths = rng.integers(2, 11, size=size)
        chars = rng.choice(letters, size=(size, 10))
        words.update("".join(row[:n]) for row, n in zip(chars, lengths))
    return sorted(words)[:size]


def shingle_set(text: str, n: int) -> set[str]:
    words = text.lower().split()
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def edit(words: list[str], n_edits: int, draw, rnd: random.Random) -> list[str]:
    w = list(words)
    for _ in range(n_edits):
        op = rnd.choice(("substitute", "insert", "delete", "swap", "move"))
        k = rnd.randrange(len(w))
        if op == "substitute":
            w[k] = draw()
        elif op == "insert":
            w.insert(k, draw())
        elif op == "delete" and len(w) > 10:
            del w[k]
        elif op == "swap" and k + 1 < len(w):
            w[k], w[k + 1] = w[k + 1], w[k]
        elif op == "move":
            span = rnd.randint(3, 10)
            piece, rest = w[k : k + span], w[:k] + w[k + span :]
            at = rnd.randrange(len(rest) + 1)
            w = rest[:at] + piece + rest[at:]
    return w


def noise(words: list[str], rnd: random.Random) -> str:
    """Case and whitespace changes that normalization removes."""
    if rnd.random() < 0.5:
        return " ".join(words)
    out = []
    for word in words:
        r = rnd.random()
        out.append(word.capitalize() if r < 0.05 else word.upper() if r < 0.06 else word)
        out.append(rnd.choice(("  ", "\n", " \t ")) if rnd.random() < 0.03 else " ")
    return "".join(out).strip()


def build_corpus(n_docs: int, n_words: int, vocab_size: int, dup_fraction: float, ngram: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    rnd = random.Random(seed)
    vocab = make_vocab(vocab_size, rng)
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** 1.0
    cdf = np.cumsum(zipf / zipf.sum())
    pool = iter(())

    def draw() -> str:
        nonlocal pool
        try:
            return next(pool)
        except StopIteration:
            pool = iter([vocab[i] for i in np.searchsorted(cdf, rng.random(65536))])
            return next(pool)

    n_variants = int(n_docs * dup_fraction)
    n_originals = n_docs - n_variants
    lengths = rng.integers(int(n_words * 0.8), int(n_words * 1.2) + 1, size=n_originals)
    docs: list[str] = []
    block = 50_000
    for s in range(0, n_originals, block):
        ls = lengths[s : s + block]
        ids = np.searchsorted(cdf, rng.random(int(ls.sum())))
        words = [vocab[i] for i in ids.tolist()]
        offsets = np.concatenate([[0], np.cumsum(ls)]).tolist()
        docs.extend(" ".join(words[offsets[k] : offsets[k + 1]]) for k in range(len(ls)))
        del words

    # Variants: groups of a base and 1-3 variants of it.
    group = list(range(n_originals))
    remaining = n_variants
    base_ids = iter(rnd.sample(range(n_originals), min(n_originals, max(1, n_variants))))
    while remaining > 0:
        base = next(base_ids)
        base_words = docs[base].split()
        k = min(remaining, rnd.randint(1, 3))
        for _ in range(k):
            docs.append(noise(edit(base_words, rnd.randint(0, 5), draw, rnd), rnd))
            group.append(base)
        remaining -= k

    # Shuffle so that groups are scattered through the corpus.
    order = rng.permutation(len(docs))
    docs = [docs[i] for i in order.tolist()]
    group_arr = np.asarray(group)[order]
    members: dict[int, list[int]] = {}
    for idx, g in enumerate(group_arr.tolist()):
        members.setdefault(g, []).append(idx)
    members = {g: m for g, m in members.items() if len(m) > 1}
    truth = {}
    for m in members.values():
        sets = {i: shingle_set(docs[i], ngram) for i in m}
        for i, j in itertools.combinations(sorted(m), 2):
            truth[(i, j)] = jaccard(sets[i], sets[j])
    release_freed_memory()
    return Corpus(docs, group_arr, members, truth)


def release_freed_memory() -> None:
    """Hand freed heap back to the OS so that RSS measures live data, not build garbage."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def subsample(corpus: Corpus, n: int, seed: int) -> list[int]:
    """Whole groups and singletons, about n docs, in corpus order."""
    rnd = random.Random(f"subsample-{seed}")  # not the corpus generator's stream
    groups = list(set(corpus.group.tolist()))
    rnd.shuffle(groups)
    sizes = np.bincount(corpus.group)
    chosen, total = set(), 0
    for g in groups:
        if total >= n:
            break
        chosen.add(g)
        total += int(sizes[g])
    return [i for i, g in enumerate(corpus.group.tolist()) if g in chosen]


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


class PeakRSS:
    """Peak memory of this process plus its children (the worker pool), sampled every 20 ms.

    `peak` sums RSS, which counts pages shared between processes (the workers' common
    pages from the fork server) once per process: an upper bound. `peak_pss` sums PSS,
    which splits shared pages among their sharers. `processes` is the most seen at once.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.processes = 1
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        rss = pss = 0
        procs = [self._proc, *self._proc.children(recursive=True)]
        self.processes = max(self.processes, len(procs))
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak = max(self.peak, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class Score:
    name: str
    docs: int
    seconds: float
    peak_rss: int
    peak_pss: int
    processes: int
    precision: float
    recall: float
    reported: int
    positives: int

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds


def score(
    name: str, corpus: Corpus, docs: list[int], found: set[tuple[int, int]], seconds: float, mem: PeakRSS,
    threshold: float, ngram: int,
) -> Score:
    """Precision and recall of `found` (pairs of corpus indices) over the docs in `docs`."""
    inside = set(docs)
    positives = {p for p, j in corpus.truth.items() if j >= threshold and p[0] in inside and p[1] in inside}
    tp = 0
    for p in found:
        j = corpus.truth.get(p)
        if j is None:  # outside any planted group: measure it
            j = jaccard(shingle_set(corpus.texts[p[0]], ngram), shingle_set(corpus.texts[p[1]], ngram))
            if j >= threshold:
                positives.add(p)
        tp += j >= threshold
    precision = tp / len(found) if found else 1.0
    recall = len(positives & found) / len(positives) if positives else 1.0
    return Score(name, len(docs), seconds, mem.peak, mem.peak_pss, mem.processes, precision, recall, len(found), len(positives))


def run_ours(corpus: Corpus, docs: list[int], config: NearDedupConfig) -> tuple[set[tuple[int, int]], float, int]:
    texts = [corpus.texts[i] for i in docs]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        pairs = near_duplicate_pairs(texts, config)
        seconds = time.perf_counter() - t0
    found = {(docs[i], docs[j]) for i, j, _ in pairs}
    return found, seconds, mem


def run_plain(corpus: Corpus, docs: list[int], threshold: float, num_perm: int, ngram: int):
    from datasketch import MinHash, MinHashLSH

    found = set()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        for key in docs:
            m = MinHash(num_perm=num_perm)
            for s in shingle_set(corpus.texts[key], ngram):
                m.update(s.encode("utf8"))
            for other in lsh.query(m):
                found.add((min(key, other), max(key, other)))
            lsh.insert(key, m)
        seconds = time.perf_counter() - t0
    return found, seconds, mem


def run_rensa(corpus: Corpus, docs: list[int], threshold: float, num_perm: int, ngram: int):
    from rensa import RMinHash, RMinHashLSH

    found = set()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        bands, _ = lsh_params(threshold, num_perm, (0.5, 0.5))
        lsh = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=bands)
        for key in docs:
            m = RMinHash(num_perm=num_perm, seed=42)
            m.update(list(shingle_set(corpus.texts[key], ngram)))
            for other in lsh.query(m):
                found.add((min(key, other), max(key, other)))
            lsh.insert(key, m)
        seconds = time.perf_counter() - t0
    return found, seconds, mem


# --------------------------------------------------------------------------------------


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=100, help="mean words per document (+-20%%)")
    ap.add_argument("--vocab", type=int, default=20_000)
    ap.add_argument("--dup-fraction", type=float, default=0.25, help="share of documents that are planted variants")
    ap.add_argument("--plain-docs", type=int, default=10_000, help="subsample for the plain datasketch loop and rensa (0: skip)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="processes for ours (default: every core)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    config = NearDedupConfig(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram, workers=args.workers)
    workers = config.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    corpus = build_corpus(args.docs, args.words, args.vocab, args.dup_fraction, args.ngram, args.seed)
    js = np.array(list(corpus.truth.values()))
    positives = int((js >= args.threshold).sum())
    print(f"corpus: {len(corpus.texts):,} docs, {sum(map(len, corpus.texts)) / len(corpus.texts):.0f} chars/doc, "
          f"{len(corpus.members):,} planted groups, {len(corpus.truth):,} within-group pairs "
          f"({positives:,} with J >= {args.threshold}; {int(((js >= args.threshold - 0.1) & (js < args.threshold)).sum()):,} "
          f"in [{args.threshold - 0.1:.1f}, {args.threshold})), built in {time.perf_counter() - t0:.1f}s")
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    print(f"config: threshold {config.threshold}, {config.num_perm} perms, {config.ngram}-{config.shingle} shingles, "
          f"LSH {bands} bands x {rows} rows, verify={config.verify}, {workers} worker process(es); "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print()

    scores: list[Score] = []
    everything = list(range(len(corpus.texts)))
    found, secs, mem = run_ours(corpus, everything, config)
    ours = score("ours (all docs)", corpus, everything, found, secs, mem, args.threshold, args.ngram)
    scores.append(ours)

    plain = None
    if args.plain_docs:
        sample = subsample(corpus, args.plain_docs, args.seed)
        found, secs, mem = run_ours(corpus, sample, config)
        scores.append(score("ours (subsample)", corpus, sample, found, secs, mem, args.threshold, args.ngram))
        found, secs, mem = run_plain(corpus, sample, args.threshold, args.num_perm, args.ngram)
        plain = score("plain datasketch loop (subsample)", corpus, sample, found, secs, mem, args.threshold, args.ngram)
        scores.append(plain)
        try:
            import rensa  # noqa: F401
        except ImportError:
            print("rensa: not installed, skipped")
        else:
            found, secs, mem = run_rensa(corpus, sample, args.threshold, args.num_perm, args.ngram)
            scores.append(score("rensa loop (subsample)", corpus, sample, found, secs, mem, args.threshold, args.ngram))

    print(f"{'contender':36s} {'docs':>9s} {'seconds':>8s} {'docs/s':>10s} {'procs':>5s} {'peak RSS':>10s} "
          f"{'peak PSS':>10s} {'precision':>9s} {'recall':>7s} {'pairs':>8s} {'positives':>9s}")
    for s in scores:
        print(f"{s.name:36s} {s.docs:9,d} {s.seconds:8.2f} {s.docs_per_s:10,.0f} {s.processes:5d} {gib(s.peak_rss):>10s} "
              f"{gib(s.peak_pss):>10s} {s.precision:9.4f} {s.recall:7.4f} {s.reported:8,d} {s.positives:9,d}")
    print("(procs: most processes seen at once, this one included (ours adds its pool and the fork server")
    print(" only when the input pays for them); peak RSS / PSS: summed over those processes, corpus included)")
    print()

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    if plain is not None:
        ratio = ours.docs_per_s / plain.docs_per_s
        print(f"{verdict(ratio >= 15)}  speed: ours {ours.docs_per_s:,.0f} docs/s vs plain loop "
              f"{plain.docs_per_s:,.0f} docs/s = {ratio:.1f}x (target >= 15x)")
    print(f"{verdict(ours.precision >= 0.95)}  precision {ours.precision:.4f} (target >= 0.95)")
    print(f"{verdict(ours.recall >= 0.95)}  recall {ours.recall:.4f} (target >= 0.95)")
    if args.docs >= 1_000_000:
        print(f"{verdict(ours.seconds <= 180)}  {args.docs:,} docs in {ours.seconds:.1f}s (target <= 180s, {workers} workers)")
        print(f"{verdict(ours.peak_rss <= 4 * 2**30)}  peak RSS {gib(ours.peak_rss)} summed over "
              f"{ours.processes} processes, corpus included (target <= 4 GiB)")
    else:
        print("n/a   scale target (<= 3 min, <= 4 GiB): run with --docs 1000000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
