"""Near-duplicate detection (curate.dedup.near): MinHash + LSH on datasketch, verified exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from curate.dedup import near
from curate.dedup.near import (
    NearDedupConfig,
    hashfunc,
    lsh_params,
    near_duplicate_clusters,
    near_duplicate_pairs,
    normalize,
    shingle_jaccard,
    shingles,
    signatures,
)

_VOCAB = [f"w{k}x" for k in range(5000)]


def doc(rnd: random.Random, n: int = 100) -> list[str]:
    return [rnd.choice(_VOCAB) for _ in range(n)]


def substitute(words: list[str], positions: list[int]) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = "changed" + str(p)
    return out


def reference_jaccard(a: str, b: str, n: int = 5) -> float:
    def sh(t: str) -> set[tuple[str, ...]]:
        w = t.lower().split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)} if len(w) > n else {tuple(w)}

    sa, sb = sh(a), sh(b)
    return len(sa & sb) / len(sa | sb)


def test_copy_with_one_word_changed_is_found():
    rnd = random.Random(1)
    base = doc(rnd)
    texts = [" ".join(doc(rnd)), " ".join(base), " ".join(doc(rnd)), " ".join(substitute(base, [50]))]
    pairs = near_duplicate_pairs(texts, NearDedupConfig())
    assert [(i, j) for i, j, _ in pairs] == [(1, 3)]
    jaccard = pairs[0][2]
    assert jaccard > 0.8
    assert jaccard == pytest.approx(reference_jaccard(texts[1], texts[3]))  # (96 - 5) / (96 + 5)
    assert jaccard == pytest.approx(91 / 101)


def test_unrelated_documents_are_not_paired():
    rnd = random.Random(2)
    texts = [" ".join(doc(rnd)) for _ in range(200)]
    assert near_duplicate_pairs(texts) == []
    assert (near_duplicate_clusters(texts) == np.arange(200)).all()


def test_pair_just_below_threshold_is_rejected_by_verification():
    rnd = random.Random(3)
    base = doc(rnd)
    texts = [" ".join(base), " ".join(substitute(base, [20, 50, 80]))]  # 3 edits: J = 81/111 = 0.73
    assert shingle_jaccard(*texts) == pytest.approx(81 / 111)
    # With these weights every pair sharing one MinHash value is an LSH candidate ...
    config = NearDedupConfig(threshold=0.8, lsh_weights=(0.0, 1.0))
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    candidates = near._band_candidates(signatures(texts, config).T.copy(), bands, rows)
    assert candidates.tolist() == [[0, 1]]
    # ... and verification on the exact Jaccard turns it down.
    assert near_duplicate_pairs(texts, config) == []
    found = near_duplicate_pairs(texts, NearDedupConfig(threshold=0.7))
    assert [(i, j) for i, j, _ in found] == [(0, 1)]
    assert found[0][2] == pytest.approx(81 / 111)


def test_without_verification_the_minhash_estimate_is_reported():
    rnd = random.Random(4)
    base = doc(rnd)
    texts = [" ".join(base), " ".join(substitute(base, [50]))]
    (i, j, estimate), = near_duplicate_pairs(texts, NearDedupConfig(verify=False))
    sig = signatures(texts)
    assert (i, j) == (0, 1)
    assert estimate == pytest.approx(float((sig[0] == sig[1]).mean()))


def test_normalization_case_and_whitespace():
    assert normalize("  Hello\t\tWORLD \n ｆｏｏ\u00a0bar ") == "hello world foo bar"
    rnd = random.Random(5)
    words = doc(rnd)
    upper = [w.upper() if k % 7 == 0 else w for k, w in enumerate(words)]
    messy = "\n\n".join(" ".join(upper[i : i + 10]) for i in range(0, 100, 10))
    pairs = near_duplicate_pairs([" ".join(words), messy])
    assert [(i, j, round(s, 6)) for i, j, s in pairs] == [(0, 1, 1.0)]


def test_char_shingles():
    config = NearDedupConfig(shingle="char", ngram=5, threshold=0.7)
    texts = [
        "The quick brown fox jumps over the lazy dog near the river bank today",
        "the quick brown fox jumps over the lazy cat near the river bank today",  # one word changed
        "Completely different sentence about databases and query planners",
        "THE QUICK  BROWN FOX JUMPS OVER THE LAZY DOG NEAR THE RIVER BANK TODAY",  # case + spaces only
    ]
    assert shingles("Ab  Cdef", config) == ["ab cd", "b cde", " cdef"]
    pairs = {(i, j): s for i, j, s in near_duplicate_pairs(texts, config)}
    assert set(pairs) == {(0, 1), (0, 3), (1, 3)}
    assert pairs[(0, 3)] == 1.0
    assert 0.7 <= pairs[(0, 1)] < 1.0
    assert pairs[(0, 1)] == pytest.approx(shingle_jaccard(texts[0], texts[1], config))


@pytest.mark.parametrize("threshold", [0, -0.1, 1.01, 80, float("nan")])
def test_threshold_outside_unit_interval_raises(threshold):
    with pytest.raises(ValueError, match="threshold"):
        NearDedupConfig(threshold=threshold)


def test_threshold_one_means_identical_shingle_sets():
    rnd = random.Random(6)
    base = doc(rnd)
    texts = [" ".join(base), " ".join(base).upper(), " ".join(substitute(base, [10]))]
    pairs = near_duplicate_pairs(texts, NearDedupConfig(threshold=1.0))
    assert [(i, j, s) for i, j, s in pairs] == [(0, 1, 1.0)]


@pytest.mark.parametrize("kind,ngram", [("word", 5), ("char", 5), ("word", 1)])
def test_signatures_equal_datasketch_minhash(kind, ngram):
    """Our bulk signatures are datasketch's MinHash hash values for the same shingles."""
    config = NearDedupConfig(shingle=kind, ngram=ngram, num_perm=64, seed=7)
    rnd = random.Random(7)
    texts = [
        " ".join(doc(rnd, rnd.randint(1, 40))) for _ in range(20)
    ] + ["", "   ", "short", "two words", "Ünïcödé\u2028text ｗｉｄｅ", "tab\tand\nnewline\x1cseparators"]
    sig = signatures(texts, config)
    func = hashfunc(config)
    for k, text in enumerate(texts):
        m = MinHash(num_perm=64, seed=7, hashfunc=func)
        m.update_batch(shingles(text, config))
        assert np.array_equal(sig[k], m.hashvalues), text
        assert LeanMinHash(seed=7, hashvalues=sig[k], scheme=m.scheme) == LeanMinHash(m)


def test_banding_finds_the_same_candidates_as_minhashlsh():
    """Numpy banding == datasketch MinHashLSH (insertion_session + LeanMinHash) with the same (b, r)."""
    rnd = random.Random(8)
    bases = [doc(rnd) for _ in range(40)]
    texts = [" ".join(b) for b in bases]
    for b in bases[:20]:
        texts.append(" ".join(substitute(b, rnd.sample(range(100), rnd.randint(1, 5)))))
    config = NearDedupConfig()
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    sig = signatures(texts, config)
    ours = near._band_candidates(sig.T.copy(), bands, rows)

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=(bands, rows))
    lean = [LeanMinHash(seed=config.seed, hashvalues=row, scheme="affine32") for row in sig]
    with lsh.insertion_session() as session:
        for k, m in enumerate(lean):
            session.insert(k, m)
    theirs = {(min(k, o), max(k, o)) for k, m in enumerate(lean) for o in lsh.query(m) if o != k}
    assert {tuple(p) for p in ours.tolist()} == theirs
    assert len(theirs) >= 10  # most planted variants (J 0.5 to 0.9) share a band


def test_clusters_and_empty_texts():
    rnd = random.Random(9)
    a = doc(rnd)
    b = doc(rnd)
    texts = ["", " ".join(a), " ".join(b), " ".join(substitute(a, [5])), "  ", " ".join(substitute(a, [95])), ""]
    roots = near_duplicate_clusters(texts)
    assert roots.tolist() == [0, 1, 2, 1, 4, 1, 6]  # empty texts are never duplicates
    assert near_duplicate_clusters([]).tolist() == []
    assert near_duplicate_pairs([]) == []


def test_worker_processes_give_the_same_answer(monkeypatch):
    rnd = random.Random(10)
    bases = [doc(rnd) for _ in range(300)]
    texts = [" ".join(b) for b in bases] + [" ".join(substitute(b, [rnd.randrange(100)])) for b in bases[:100]]
    inline = near_duplicate_pairs(texts, NearDedupConfig(workers=1))
    assert len(inline) == 100
    monkeypatch.setattr(near, "_CHUNK_BYTES", 4096)  # many small tasks
    monkeypatch.setattr(near, "_POOL_START_S", 0.0)  # a pool even for this small input
    runner = near._Runner(NearDedupConfig(workers=2), texts)
    assert runner.pool is not None
    runner.close()
    assert near_duplicate_pairs(texts, NearDedupConfig(workers=2)) == inline  # forkserver
    monkeypatch.setattr(near, "_start_method", lambda: "spawn")  # what Windows gets
    assert near_duplicate_pairs(texts, NearDedupConfig(workers=2)) == inline


def test_shingle_jaccard_matches_python_sets():
    rnd = random.Random(11)
    for _ in range(20):
        a = doc(rnd, rnd.randint(3, 60))
        b = substitute(a, rnd.sample(range(len(a)), min(len(a), rnd.randint(0, 4))))
        ta, tb = " ".join(a), " ".join(b)
        assert shingle_jaccard(ta, tb) == pytest.approx(reference_jaccard(ta, tb))
    assert shingle_jaccard("", "") == 0.0


def test_workers_that_cannot_start_fall_back_to_one_process(tmp_path):
    """A main module the workers cannot import (a script piped to python) breaks the pool;
    the work finishes in the calling process with a warning instead of hanging."""
    import subprocess
    import sys

    script = (
        "import random, warnings\n"
        "from curate.dedup import near\n"
        "rnd = random.Random(0)\n"
        "texts = [' '.join(f'w{rnd.randrange(5000)}' for _ in range(100)) for _ in range(300)]\n"
        "texts.append(texts[0])\n"
        "near._POOL_START_S = 0.0\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    print(near.near_duplicate_pairs(texts, near.NearDedupConfig(workers=2)))\n"
        "print(any('continuing in one process' in str(w.message) for w in caught))\n"
    )
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[(0, 300, 1.0)]", "True"]
