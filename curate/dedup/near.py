"""Near duplicates: MinHash signatures, LSH banding, then exact Jaccard verification.

Pipeline, and why each step is built the way it is:

1. **Normalize** (NFKC, lower case, whitespace runs -> one space), so that case and
   layout differences do not count as edits.
2. **Shingle** into word n-grams (default 5 words) or character n-grams. Each
   shingle gets a 64-bit fingerprint computed with numpy over the UTF-8 bytes of a
   whole chunk at once: the per-shingle Python loop is what makes the textbook
   datasketch loop slow, so there is none.
3. **MinHash** with datasketch's own permutation scheme ("affine32": the
   MurmurHash3 finalizer, then ``a * h + b mod 2**32`` with datasketch's ``a, b``
   for the seed), evaluated for a block of shingles x all permutations in one numpy
   operation. The low 32 bits of a shingle's fingerprint are exactly what
   :func:`hashfunc` returns for it, so ``datasketch.MinHash(hashfunc=hashfunc(config))``
   fed the same shingles has the same hash values (the tests check this).
4. **LSH banding** on the signature matrix: datasketch's optimizer picks the bands
   (b) and rows (r), as ``MinHashLSH(weights=...)`` would; rows whose band is
   identical become candidates. Sorting one band of n rows is much faster than n
   Python inserts into ``MinHashLSH`` and finds the same candidates (tests check it).
5. **Verify** every candidate on the exact Jaccard of the two shingle sets, so that
   ``threshold`` means what it says: MinHash only estimates Jaccard (standard error
   ~0.035 at J=0.8 with 128 permutations). Because verification removes false
   candidates, the bands are tuned for recall (``lsh_weights``).

Hashing and verification run in a process pool (one worker per core) when the
input is big enough to pay for starting it; see `_Runner`.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from datasketch import MinHash

from curate.text import normalize  # the one normalization of compared text (re-exported)

__all__ = [
    "NearDedupConfig",
    "hashfunc",
    "near_duplicate_clusters",
    "near_duplicate_pairs",
    "near_pairs",
    "normalize",
    "shingle_jaccard",
    "shingles",
    "signatures",
]


@dataclass
class NearDedupConfig:
    """Near-duplicate detection parameters."""

    threshold: float = 0.8
    """Jaccard similarity of the shingle sets at or above which two texts are near duplicates."""
    num_perm: int = 128
    """MinHash permutations: more gives tighter estimates and costs proportionally more time."""
    shingle: Literal["word", "char"] = "word"
    """Shingle unit. Words suit prose; characters suit short texts and languages without spaces."""
    ngram: int = 5
    """Units per shingle (5 words; for characters, e.g. 5). A text shorter than that is one shingle."""
    seed: int = 1
    """Seed of datasketch's permutations (1 is datasketch's default)."""
    workers: int | None = None
    """Processes for hashing and verification; None uses every core (os.cpu_count())."""
    verify: bool = True
    """Check candidates on the exact Jaccard of their shingle sets. Without it a pair is kept
    when its MinHash estimate reaches the threshold, and the estimate is what is reported."""
    lsh_weights: tuple[float, float] = (0.02, 0.98)
    """(false positive, false negative) weights for datasketch's band optimizer, as in
    ``MinHashLSH(weights=...)``. Recall-heavy because verification discards false
    positives: datasketch's default (0.5, 0.5) picks 9 bands x 13 rows for 0.8, which
    finds a pair at exactly J=0.8 only 40% of the time; these weights pick 17 x 7 (98%)."""

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold!r}")
        if not isinstance(self.num_perm, int) or self.num_perm < 2:
            raise ValueError(f"num_perm must be an integer >= 2, got {self.num_perm!r}")
        if self.shingle not in ("word", "char"):
            raise ValueError(f"shingle must be 'word' or 'char', got {self.shingle!r}")
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"ngram must be an integer >= 1, got {self.ngram!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be None or an integer >= 1, got {self.workers!r}")
        fp, fn = self.lsh_weights
        if not (0 <= fp <= 1 and 0 <= fn <= 1 and math.isclose(fp + fn, 1.0)):
            raise ValueError(f"lsh_weights must be two numbers in [0, 1] summing to 1, got {self.lsh_weights!r}")
        self.lsh_weights = (float(fp), float(fn))


# --------------------------------------------------------------------------------------
# Normalization and the reference (pure Python) shingles and hash
# --------------------------------------------------------------------------------------


def shingles(text: str, config: NearDedupConfig | None = None) -> list[str]:
    """The shingles of `text` as strings, in order (duplicates kept).

    Reference implementation: the fast path computes fingerprints of exactly these
    strings without building them. Word shingles join words with one space; character
    shingles are substrings. A non-empty text shorter than `ngram` units is one shingle.
    """
    config = config or NearDedupConfig()
    norm = normalize(text)
    if not norm:
        return []
    n = config.ngram
    if config.shingle == "word":
        words = norm.split(" ")
        if len(words) <= n:
            return [norm]
        return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(norm) <= n:
        return [norm]
    return [norm[i : i + n] for i in range(len(norm) - n + 1)]


# Odd multipliers: the polynomial hash of a unit's bytes (P) and of a shingle's units (Q).
_MASK64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15
_Q = 0xBF58476D1CE4E5B9
_P_INV = pow(_P, -1, 1 << 64)
_NP_Q = np.uint64(_Q)

# MurmurHash3's finalizer constants (shift, multiply, shift, multiply, shift) per width.
_FMIX = {
    32: (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16)),
    64: (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)),
}


def _fmix(values: np.ndarray, width: int) -> np.ndarray:
    """MurmurHash3's finalizer (fmix32 / fmix64), element-wise on a uint32 or uint64 array.

    A bijection of [0, 2**width) that spreads every input bit over every output bit.
    datasketch >= 2.0 passes shingle hashes through fmix32 before its affine permutations, so
    signatures built here equal its MinHash's; fmix64 mixes fingerprints and band keys.
    Our own copy of datasketch's private `minhash._fmix` (tests/test_helpers.py checks that
    they agree); multiplications wrap around, which is the intended arithmetic mod 2**width.
    """
    s1, m1, s2, m2, s3 = _FMIX[width]
    values = values ^ (values >> s1)
    values = values * m1
    values = values ^ (values >> s2)
    values = values * m2
    return values ^ (values >> s3)


def _fmix64_int(value: int) -> int:
    return int(_fmix(np.array([value], dtype=np.uint64), 64)[0])


def _unit_hash(unit: bytes) -> int:
    poly = 0
    for byte in unit:
        poly = (poly * _P + byte + 1) & _MASK64
    return _fmix64_int(poly)


def _fingerprint(shingle: str | bytes, shingle_kind: str) -> int:
    """64-bit fingerprint of one shingle: the MurmurHash3 finalizer of a polynomial over its units."""
    if isinstance(shingle, bytes):
        shingle = shingle.decode("utf-8")
    units = shingle.split(" ") if shingle_kind == "word" else list(shingle)
    acc = 0
    for unit in units:
        acc = (acc * _Q + _unit_hash(unit.encode("utf-8"))) & _MASK64
    return _fmix64_int(acc)


def hashfunc(config: NearDedupConfig | None = None) -> Callable[[str | bytes], int]:
    """The 32-bit shingle hash used here, as a `hashfunc` for `datasketch.MinHash`.

    ``MinHash(num_perm, seed=config.seed, hashfunc=hashfunc(config))`` updated with
    ``shingles(text, config)`` has the same hash values as ``signatures([text], config)[0]``.
    Slow (pure Python); it exists to pin the fast path to datasketch.
    """
    kind = (config or NearDedupConfig()).shingle

    def shingle_hash32(shingle: str | bytes) -> int:
        return _fingerprint(shingle, kind) & 0xFFFFFFFF

    return shingle_hash32


# --------------------------------------------------------------------------------------
# Fast fingerprints: numpy over the bytes of a whole chunk
# --------------------------------------------------------------------------------------


def _is_ascii_space(buf: np.ndarray) -> np.ndarray:
    """Bytes Python's str.split() treats as whitespace in the ASCII range: 9-13 and 28-32.
    (Non-ASCII texts are collapsed by Python first, so these are the only ones left.)"""
    low = np.subtract(buf, 9, dtype=np.uint8) < 5  # wraps below 9, so one comparison
    high = np.subtract(buf, 28, dtype=np.uint8) < 5
    return low | high


# P**i and P**-i mod 2**64 for the byte positions of a chunk; grown on demand, per
# process, to 16 bytes per byte of the largest chunk (a chunk is ~1 MB, or one text).
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _power_tables(length: int) -> tuple[np.ndarray, np.ndarray]:
    global _powers
    if len(_powers[0]) < length:
        size = max(length, 2 * len(_powers[0]), 1 << 20)
        pow_, ipow = np.full(size, _P, dtype=np.uint64), np.full(size, _P_INV, dtype=np.uint64)
        pow_[0] = ipow[0] = 1
        _powers = (np.cumprod(pow_), np.cumprod(ipow))  # wraps mod 2**64, as intended
    return _powers


def _prepared(text: str, shingle_kind: str) -> bytes:
    """`normalize(text)` as UTF-8, cheaply: for ASCII word shingles the whitespace is left
    for the byte scanner to skip (same tokens as collapsing it, without a Python split)."""
    t = unicodedata.normalize("NFKC", text).lower()
    if shingle_kind == "char" or not t.isascii():
        t = " ".join(t.split())
    return t.encode("utf-8")


def _fingerprints(texts: Sequence[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints (uint64) of every shingle of every text, flat, and offsets (n + 1).

    Text k's fingerprints are ``fps[offsets[k]:offsets[k + 1]]``, equal to
    ``[_fingerprint(s) for s in shingles(texts[k])]``. Units are found with a byte
    scan; a unit's hash is a polynomial over its bytes taken from one prefix sum
    (``sum b_k P**(e-1-k) = P**(e-1) * (S[e] - S[s])`` with ``S`` the prefix sum of
    ``b_k P**-k``); a shingle's is a polynomial over its units.
    """
    n_texts = len(texts)
    kind = config.shingle
    encoded = [_prepared(t, kind) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n_texts)
    sep = b"\n" if kind == "word" else b""
    buf = np.frombuffer(sep.join(encoded), dtype=np.uint8)
    doc_starts = np.zeros(n_texts, dtype=np.int64)
    np.cumsum(lengths[:-1] + len(sep), out=doc_starts[1:])

    if kind == "word":
        space = _is_ascii_space(buf)
        edges = np.diff(space.view(np.int8), prepend=np.int8(1), append=np.int8(1))
        starts = np.flatnonzero(edges == -1)  # a byte that is not space after one that is
        ends = np.flatnonzero(edges == 1)  # one past the last byte of a word
    else:
        starts = np.flatnonzero((buf & 0xC0) != 0x80)  # every byte that begins a character
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1:] = len(buf)
    pow_, ipow = _power_tables(len(buf) + 1)
    prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
    weighted = np.add(buf, np.uint64(1), dtype=np.uint64)
    weighted *= ipow[: len(buf)]
    np.cumsum(weighted, out=prefix[1:])
    del weighted
    units = prefix[ends]
    units -= prefix[starts]
    units *= pow_[ends - 1]
    units = _fmix(units, 64)

    # units before each text's first byte (units never straddle texts)
    unit_offsets = np.searchsorted(starts, np.append(doc_starts, len(buf)))
    counts = np.diff(unit_offsets)

    n = config.ngram
    per_doc = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    total = int(offsets[-1])
    # Shingle i of text k starts at unit unit_offsets[k] + i.
    first = np.repeat(unit_offsets[:-1] - offsets[:-1], per_doc) + np.arange(total, dtype=np.int64)
    fps = np.empty(total, dtype=np.uint64)
    full = np.repeat(counts >= n, per_doc)
    if len(units) >= n:
        # every window of n units, on contiguous slices; then the windows inside one text
        windows = units[: len(units) - n + 1].copy()
        for k in range(1, n):
            windows *= _NP_Q
            windows += units[k : len(units) - n + 1 + k]
        fps[full] = windows[first[full]]
    short = np.flatnonzero(~full)  # texts with fewer than n units: one shingle of all of them
    if len(short):
        width = np.repeat(counts, per_doc)[short]
        acc = units[first[short]]
        for k in range(1, n):
            take = width > k
            acc[take] = acc[take] * _NP_Q + units[first[short][take] + k]
        fps[short] = acc
    return _fmix(fps, 64), offsets


# --------------------------------------------------------------------------------------
# MinHash with datasketch's scheme
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) for `num_perm` and `seed`, taken from a datasketch MinHash."""
    m = MinHash(num_perm=num_perm, seed=seed)
    if getattr(m, "scheme", None) != "affine32":
        raise RuntimeError(
            "near-duplicate detection needs datasketch >= 2.0 (its 'affine32' MinHash scheme); "
            f"the installed datasketch uses {getattr(m, 'scheme', 'legacy')!r}"
        )
    a, b = m.permutations
    return a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None]


_BLOCK_SHINGLES = 4096  # shingles per numpy call; measured fastest (smaller: call overhead, larger: cache)


def _minhash(fps: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures, (num_perm, n) uint32: column k is datasketch's hash values for text k.

    ``min over shingles of (a * fmix32(h) + b) mod 2**32``: the MinHash.update_batch
    arithmetic, for a block of shingles x all permutations per numpy call. Texts with
    no shingle keep datasketch's empty value (all 0xFFFFFFFF).
    """
    a, b = _permutations(num_perm, seed)
    n = len(offsets) - 1
    sig = np.full((num_perm, n), np.iinfo(np.uint32).max, dtype=np.uint32)
    hv = _fmix(fps.astype(np.uint32), 32)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if len(nonempty) == 0:
        return sig
    starts = offsets[nonempty]
    ends = offsets[nonempty + 1]
    buf = np.empty((num_perm, _BLOCK_SHINGLES), dtype=np.uint32)
    lo = 0
    while lo < len(nonempty):
        # as many whole texts as fit in a block (at least one)
        hi = int(np.searchsorted(ends, starts[lo] + _BLOCK_SHINGLES, side="right"))
        hi = max(hi, lo + 1)
        s0, s1 = int(starts[lo]), int(ends[hi - 1])
        width = s1 - s0
        out = buf[:, :width] if width <= _BLOCK_SHINGLES else np.empty((num_perm, width), dtype=np.uint32)
        np.multiply(a, hv[None, s0:s1], out=out)
        out += b
        sig[:, nonempty[lo:hi]] = np.minimum.reduceat(out, starts[lo:hi] - s0, axis=1)
        lo = hi
    return sig


# --------------------------------------------------------------------------------------
# Work split across processes
# --------------------------------------------------------------------------------------

_worker_config: NearDedupConfig | None = None


def _init_worker(config: NearDedupConfig | None) -> None:
    global _worker_config
    _worker_config = config


def _sign_task(texts: list[str]) -> np.ndarray:
    config = _worker_config
    fps, offsets = _fingerprints(texts, config)
    return _minhash(fps, offsets, config.num_perm, config.seed)


def _verify_task(task: tuple[list[str], np.ndarray]) -> np.ndarray:
    """Exact Jaccard of each (i, j) row of `pairs`, indices into `texts`."""
    texts, pairs = task
    parts = [_fingerprints(texts[s:e], _worker_config) for s, e in _chunks(texts)]
    fps = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([np.diff(p[1]) for p in parts])
    return _pair_jaccard(fps, counts, pairs)


def _pair_jaccard(fps: np.ndarray, counts: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Jaccard of the fingerprint sets of texts i and j for each row (i, j) of `pairs`.

    Vectorized: every (text, fingerprint) becomes one sortable uint64 key, the text in
    the high bits and the fingerprint's top bits below it (>= 44 of 64 bits up to a
    million texts per call: two different shingles of a pair share a key with odds
    ~1e-9), sorted and deduplicated once; then each pair looks the smaller set's keys
    up in the other text's range. Pairs are ordered so that the lookups walk the
    sorted keys forward, which keeps `searchsorted` in cache.
    """
    n_docs = len(counts)
    doc_bits = max(1, (n_docs - 1).bit_length())
    shift = np.uint64(64 - doc_bits)
    low_mask = np.uint64((1 << (64 - doc_bits)) - 1)
    keys = np.repeat(np.arange(n_docs, dtype=np.uint64), counts) << shift
    keys |= fps >> np.uint64(doc_bits)
    keys.sort()
    if len(keys):
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # sets: drop repeats
    seg = np.searchsorted(keys >> shift, np.arange(n_docs + 1, dtype=np.uint64))
    size = np.diff(seg)
    i, j = pairs[:, 0], pairs[:, 1]
    small, big = np.where(size[i] <= size[j], i, j), np.where(size[i] <= size[j], j, i)
    order = np.lexsort((small, big))
    small, big = small[order], big[order]
    n_q = size[small]
    total = int(n_q.sum())
    pair_of_q = np.repeat(np.arange(len(order)), n_q)
    q_index = np.repeat(seg[small] - (np.cumsum(n_q) - n_q), n_q) + np.arange(total)
    queries = (big.astype(np.uint64)[pair_of_q] << shift) | (keys[q_index] & low_mask)
    found = np.searchsorted(keys, queries)
    hit = keys[np.minimum(found, len(keys) - 1)] == queries if len(keys) else np.zeros(0, dtype=bool)
    inter = np.bincount(pair_of_q[hit], minlength=len(order)).astype(np.float64)
    union = size[small] + size[big] - inter
    out = np.empty(len(order), dtype=np.float64)
    out[order] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


_CHUNK_BYTES = 1 << 20  # text per task: big enough to amortize numpy calls, small enough to balance
# When a pool pays for itself (measured on word shingles): one process hashes ~35 MB of
# text a second, a pool of w workers ~0.7 w times that on free cores, and starting one
# takes ~1-2 s (the fork server imports numpy and datasketch; each worker re-imports the
# program's main module, e.g. the CLI).
_INLINE_BYTES_PER_S = 35e6
_POOL_EFFICIENCY = 0.7
_POOL_START_S = 2.0


def _chunks(texts: Sequence[str], budget: int | None = None) -> list[tuple[int, int]]:
    budget = budget or _CHUNK_BYTES
    bounds, start, size = [], 0, 0
    for k, t in enumerate(texts):
        size += len(t) + 1
        if size >= budget:
            bounds.append((start, k + 1))
            start, size = k + 1, 0
    if start < len(texts):
        bounds.append((start, len(texts)))
    return bounds


def _start_method() -> str:
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Runner:
    """Maps tasks inline or over a process pool, with the same task functions.

    The pool is started with "forkserver" (POSIX) or "spawn", not "fork": forked
    workers would share the caller's pages, and every text the parent then touches
    (pickling bumps refcounts) would be copied while the children keep the old page,
    doubling the memory held by the texts; forking a process that runs threads
    (polars, BLAS) is also unsafe in general. The fork server imports this module
    once (~1 s, once per program) and forks workers from that small single-threaded
    process. Tasks carry their texts and return their results. If the workers cannot
    start (a main module they cannot import, e.g. a script read from stdin), the
    pool breaks instead of hanging, and the rest runs in this process.
    """

    def __init__(self, config: NearDedupConfig, texts: Sequence[str]) -> None:
        self.texts = texts
        self.pool = None
        self.workers = 1
        workers = config.workers or os.cpu_count() or 1
        inline_s = sum(map(len, texts)) / _INLINE_BYTES_PER_S
        speedup = max(1.0, _POOL_EFFICIENCY * workers)
        if workers > 1 and inline_s * (1 - 1 / speedup) > _POOL_START_S:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = _start_method()
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload([__name__])  # no effect if the server already runs
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(config,))
            self.workers = workers
        _init_worker(config)

    def map(self, fn, tasks: list) -> Iterator:
        """`fn` over `tasks`, results in order, streamed."""
        done = 0
        if self.pool is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                for result in self.pool.map(fn, tasks):
                    yield result
                    done += 1
                return
            except BrokenProcessPool as err:
                import warnings

                warnings.warn(f"near-duplicate worker processes failed ({err}); continuing in one process", stacklevel=2)
                self.close()
        for task in tasks[done:]:
            yield fn(task)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _signatures(config: NearDedupConfig, runner: _Runner) -> np.ndarray:
    """(num_perm, n) uint32 signatures of `runner.texts`."""
    texts = runner.texts
    sig = np.empty((config.num_perm, len(texts)), dtype=np.uint32)
    bounds = _chunks(texts)
    for (s, e), part in zip(bounds, runner.map(_sign_task, [list(texts[s:e]) for s, e in bounds])):
        sig[:, s:e] = part
    return sig


def signatures(texts: Sequence[str], config: NearDedupConfig | None = None) -> np.ndarray:
    """MinHash signatures, (len(texts), num_perm) uint32, row k equal to the hash values of
    ``datasketch.MinHash(num_perm, seed=seed, hashfunc=hashfunc(config))`` updated with
    ``shingles(texts[k], config)``."""
    config = config or NearDedupConfig()
    runner = _Runner(config, texts)
    try:
        return _signatures(config, runner).T.copy()
    finally:
        runner.close()


# --------------------------------------------------------------------------------------
# LSH banding, verification, clusters
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float]) -> tuple[int, int]:
    """(bands, rows) that ``MinHashLSH(threshold, num_perm, weights)`` would use.

    With b bands of r rows, two texts of Jaccard similarity s become candidates with
    probability 1 - (1 - s**r)**b. Of every b * r <= num_perm, this takes the first (b, r)
    that minimizes the weighted sum of the false-positive area (that curve from 0 to the
    threshold) and the false-negative area (one minus it, from the threshold to 1): the
    computation of datasketch's private `lsh._optimal_param`, term for term, so that ties
    fall the same way (tests/test_helpers.py compares it with `MinHashLSH.b` and `.r`).
    """
    from scipy.integrate import quad

    fp_weight, fn_weight = weights
    best, least = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, int(num_perm / b) + 1):
            fp, _ = quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)
            fn, _ = quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)
            error = fp * fp_weight + fn * fn_weight
            if error < least:
                best, least = (b, r), error
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(live, keys): the columns that have shingles, and a 64-bit key per band and live column ((bands, live) uint64).

    A band's key is a polynomial over its rows, mixed; two columns share a band when their keys
    are equal (a collision can only add a candidate, which verification then rejects). A column
    is computed from its own signature alone, so shards of the columns get the same keys.
    """
    n = sig.shape[1]
    empty = np.ones(n, dtype=bool)  # no shingles (every value still datasketch's empty value)
    for row in sig:
        empty &= row == np.iinfo(np.uint32).max
        if not empty.any():
            break
    live = np.flatnonzero(~empty)
    sub = sig if len(live) == n else sig[:, live]
    keys = np.empty((bands, len(live)), dtype=np.uint64)
    for band in range(bands):
        block = sub[band * rows : (band + 1) * rows]
        key = block[0].astype(np.uint64)
        for row in block[1:]:
            key *= _NP_Q
            key += row
        keys[band] = _fmix(key, 64)
    return live, keys


def _band_candidates(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(k, 2) int64 pairs i < j, sorted, of columns identical in at least one band: per band, sort the
    keys and take every pair inside a run of equal keys."""
    n = sig.shape[1]
    live, keys = band_keys(sig, bands, rows)
    found = []
    for key in keys:
        order = np.argsort(key)
        ordered = key[order]
        same = ordered[1:] == ordered[:-1]
        if not same.any():
            continue
        found.append(_run_pairs(order, same))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    i, j = np.divmod(codes, np.int64(len(live)))
    pairs = np.stack([live[i], live[j]], axis=1) if len(live) != n else np.stack([i, j], axis=1)
    return pairs.astype(np.int64)


def _run_pairs(order: np.ndarray, same: np.ndarray, n: int | None = None) -> np.ndarray:
    """Every pair within each run of equal sorted keys, as i * n + j codes with i < j (`order`'s values
    are the row numbers; `n` defaults to their count)."""
    n = len(order) if n is None else n
    runs = len(order)
    head = np.concatenate([[True], ~same])
    run_start = np.flatnonzero(head)
    run_len = np.diff(np.append(run_start, runs))
    keep = run_len > 1
    run_start, run_len = run_start[keep], run_len[keep]
    # position p at offset t in a run of length L pairs with the L - 1 - t positions after it
    pos = np.repeat(run_start, run_len) + (np.arange(run_len.sum()) - np.repeat(np.cumsum(run_len) - run_len, run_len))
    after = np.repeat(run_start + run_len, run_len) - pos - 1
    left = np.repeat(pos, after)
    step = np.arange(after.sum()) - np.repeat(np.cumsum(after) - after, after) + 1
    a, b = order[left], order[left + step]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    return lo * np.int64(n) + hi


def _estimated_jaccard(sig: np.ndarray, pairs: np.ndarray, block: int = 65536) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), block):
        p = pairs[s : s + block]
        out[s : s + block] = (sig[:, p[:, 0]] == sig[:, p[:, 1]]).mean(axis=0)
    return out


def _verify(pairs: np.ndarray, runner: _Runner) -> np.ndarray:
    """Exact Jaccard per candidate; the texts involved are shingled again in the workers
    (cheaper than keeping every shingle of every text in memory)."""
    per_task = min(20_000, max(2_000, -(-len(pairs) // (4 * runner.workers))))

    tasks = []
    for s in range(0, len(pairs), per_task):
        involved, local = np.unique(pairs[s : s + per_task], return_inverse=True)
        tasks.append(([runner.texts[k] for k in involved.tolist()], local.reshape(-1, 2).astype(np.int64)))
    results = list(runner.map(_verify_task, tasks))
    return np.concatenate(results) if results else np.empty(0, dtype=np.float64)


def near_pairs(texts: Sequence[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (k, 2) sorted with i < j, jaccard (k,)) of the near duplicates, as `near_duplicate_pairs` lists them."""
    runner = _Runner(config, texts)
    try:
        sig = _signatures(config, runner)
        bands, rows = lsh_params(float(config.threshold), config.num_perm, config.lsh_weights)
        candidates = _band_candidates(sig, bands, rows)
        if config.verify:
            similarity = _verify(candidates, runner)
        else:
            similarity = _estimated_jaccard(sig, candidates)
    finally:
        runner.close()
    keep = similarity >= config.threshold
    return candidates[keep], similarity[keep]


def near_duplicate_pairs(texts: Sequence[str], config: NearDedupConfig | None = None) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) with i < j for every pair judged a near duplicate, sorted by (i, j).

    With ``verify`` (the default) ``jaccard`` is the exact Jaccard of the two shingle
    sets and is >= ``threshold``; a pair can be missed only if LSH never made it a
    candidate (about 2% of pairs at exactly J=0.8 with the default weights, far fewer
    above). Pairs are every pair among rows sharing a band, so k copies of one text give
    k(k-1)/2 pairs: run exact dedup first. Texts with no shingle (empty after
    normalization) are never paired.
    """
    config = config or NearDedupConfig()
    pairs, similarity = near_pairs(texts, config)
    return [(i, j, s) for (i, j), s in zip(pairs.tolist(), similarity.tolist())]


def near_duplicate_clusters(texts: Sequence[str], config: NearDedupConfig | None = None) -> np.ndarray:
    """Per text, the smallest index in its cluster (itself when it has no near duplicate).

    Clusters are connected components of the pair graph: matching is transitive, so a
    chain of near copies ends up in one cluster even if its ends are less similar than
    the threshold. Keep ``roots == np.arange(len(texts))`` to drop all but one per cluster.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    config = config or NearDedupConfig()
    n = len(texts)
    pairs, _ = near_pairs(texts, config)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    root = np.full(label.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(root, label, np.arange(n, dtype=np.int64))
    return root[label]


def shingle_jaccard(a: str, b: str, config: NearDedupConfig | None = None) -> float:
    """Exact Jaccard of the shingle sets of two texts (0.0 when both are empty), as verified."""
    config = config or NearDedupConfig()
    fps, offsets = _fingerprints([a, b], config)
    sa = set(fps[offsets[0] : offsets[1]].tolist())
    sb = set(fps[offsets[1] : offsets[2]].tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0
