"""Language rule: keep only the languages asked for, identified offline with py3langid.

Identification walks py3langid's byte automaton for all rows at once in numpy (the same
model and scores as ``py3langid.classify``, checked by the tests); it reads a few private
attributes of py3langid's model, and falls back to py3langid's own loop when they are not
what it expects (tested too).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import polars as pl

from curate.rules import Batch, Outcome, Rule, as_tuple, csv
from curate.step import option
from curate.text import field_text

LANGUAGE_COLUMN = "filter_language"


class Language(Rule):
    """The identified language of the user and assistant text is not an allowed one, or too uncertain."""

    reasons = {"wrong_language": "the identified language is not an allowed one, or was identified with too little "
                                 "confidence"}
    order = 110
    survivors_only = True
    measures = {LANGUAGE_COLUMN: pl.String}

    @dataclass
    class Options:
        languages: tuple[str, ...] | None = option(None, "Comma-separated ISO 639-1 codes to keep, e.g. en,fr "
                                                   "(py3langid, offline). [default: any]", type=str, parse=csv)
        """Keep only these languages (ISO 639-1 codes, e.g. ("en", "fr")) of the user and assistant text,
        identified offline with py3langid (langid.py's model, 97 languages). None: no language check."""
        min_language_confidence: float = option(0.5, "Least probability of the identified language.")
        """Minimum probability of the identified language. Default 0.5 (FineWeb and datatrove use 0.65
        with fastText on long web documents; chat turns are shorter, so the score is lower)."""

    def enabled(self) -> bool:
        return self.config.languages is not None

    def validate(self) -> None:
        c = self.config
        c.languages = as_tuple(c.languages)
        if not (isinstance(c.min_language_confidence, (int, float)) and 0 <= c.min_language_confidence <= 1):
            raise ValueError(f"min_language_confidence must be in [0, 1], got {c.min_language_confidence!r}")
        if c.languages is not None:
            bad = [code for code in c.languages if not (isinstance(code, str) and re.fullmatch(r"[a-z]{2,3}", code))]
            if bad or not c.languages:
                raise ValueError(f"languages must be ISO 639-1 codes like 'en', got {list(c.languages)}")

    def prepare(self, df: pl.DataFrame) -> None:
        unknown = sorted(set(self.config.languages) - set(language_codes()))
        if unknown:
            raise ValueError(f"languages: unknown code(s) {unknown}; py3langid knows {', '.join(language_codes())}")

    def check(self, batch: Batch) -> Outcome:
        c = self.config
        texts = batch.df.select(field_text(("user", "assistant"))).to_series().to_list()
        langs, confidence = identify_languages(texts) if texts else ([], [])
        language = pl.Series(LANGUAGE_COLUMN, langs, dtype=pl.String)
        conf = pl.Series(confidence, dtype=pl.Float64)
        allowed = ", ".join(c.languages)
        wrong = ~language.is_in(list(c.languages))
        unsure = conf < c.min_language_confidence
        detail = pl.select(
            pl.when(wrong)
            .then(pl.format("{} ({}) not in {}", language, conf.round(2), pl.lit(allowed)))
            .otherwise(pl.format("{} at confidence {} < min {}", language, conf.round(2), pl.lit(c.min_language_confidence)))
        ).to_series()
        return Outcome([("wrong_language", wrong | unsure, detail)], {LANGUAGE_COLUMN: language})


LANGID_MAX_CHARS = 2000
"""Language identification reads the first this many characters of a record (enough for langid)."""


class _LanguageIdentifier:
    """py3langid's naive Bayes model, run on many texts at once.

    `py3langid.classify` walks a byte automaton in a Python loop, about a millisecond per
    row; here the automaton advances every text by one byte per numpy step, and the
    feature counts meet the model in one sparse product. Same model, same scores.
    Falls back to py3langid's own loop if its internals are not what this expects.
    """

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        m = self.model
        try:
            self.nextmove = np.asarray(m.tk_nextmove, dtype=np.int64)
            self.rowbase = np.asarray(m._rowbase, dtype=np.int64)
            self.output = np.asarray(m.tk_output, dtype=np.int64)
            self.ptc = np.asarray(m.nb_ptc, dtype=np.float32)
            self.pc = np.asarray(m.nb_pc, dtype=np.float32)
            self.classes = list(m.nb_classes)
            self.alias = list(m._alias_pairs)
            self.fast = self.ptc.shape == (self.output.max() + 1, len(self.classes))
        except (AttributeError, TypeError, ValueError):
            self.fast = False

    @staticmethod
    def encode(text: str) -> bytes:
        """py3langid's preprocessing: all-caps text lower-cased, NFC, UTF-8."""
        text = text[:LANGID_MAX_CHARS]
        if text.isupper():
            text = text.lower()
        return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")

    def classify(self, texts: list[str], chunk: int = 4096) -> tuple[list[str], np.ndarray]:
        if not self.fast:
            pairs = [self.model.classify(t[:LANGID_MAX_CHARS]) for t in texts]
            return [p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float64)
        encoded = [self.encode(t) for t in texts]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        scores = np.zeros((len(texts), len(self.classes)), dtype=np.float32)
        for start in range(0, len(texts), chunk):
            rows = order[start : start + chunk]
            scores[rows] = self._raw_scores([encoded[i] for i in rows], lengths[rows])
        scores *= (1.0 / np.sqrt(np.maximum(lengths, 1)))[:, None].astype(np.float32)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self.alias:  # a label listed twice: fold the second column into the first
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        best = scores.argmax(axis=1)
        return [self.classes[b] for b in best], scores[np.arange(len(texts)), best].astype(np.float64)

    def _raw_scores(self, encoded: list[bytes], lengths: np.ndarray) -> np.ndarray:
        """Naive Bayes log scores for texts sorted by decreasing length (0 for texts with no feature)."""
        from scipy.sparse import csr_matrix

        m, width = len(encoded), int(lengths[0]) if len(lengths) else 0
        grid = np.zeros((m, max(width, 1)), dtype=np.uint8)
        if width:
            flat = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            row_of = np.repeat(np.arange(m), lengths)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            grid[row_of, np.arange(flat.size) - starts] = flat
        active = np.searchsorted(-lengths, -np.arange(width), side="left")  # rows longer than each position
        state = np.zeros(m, dtype=np.int64)
        hit_rows, hit_features = [], []
        for pos in range(width):
            k = active[pos]
            s = self.nextmove[self.rowbase[state[:k]] + grid[:k, pos]]
            state[:k] = s
            feature = self.output[s]
            found = np.flatnonzero(feature >= 0)
            if found.size:
                hit_rows.append(found)
                hit_features.append(feature[found])
        out = np.zeros((m, len(self.classes)), dtype=np.float32)
        if not hit_rows:
            return out
        n_features = self.ptc.shape[0]
        keys = np.concatenate(hit_rows) * n_features + np.concatenate(hit_features)
        keys, counts = np.unique(keys, return_counts=True)
        counts_matrix = csr_matrix(
            (np.log1p(counts.astype(np.float32)), (keys // n_features, keys % n_features)), shape=(m, n_features)
        )
        has_features = np.diff(counts_matrix.indptr) > 0
        out[has_features] = (counts_matrix[has_features] @ self.ptc) + self.pc
        return out


@functools.lru_cache(maxsize=1)
def _language_identifier() -> _LanguageIdentifier:
    try:
        return _LanguageIdentifier()
    except ImportError:
        raise ValueError("language filtering needs py3langid: pip install py3langid") from None


def identify_languages(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(ISO 639-1 code, probability) per text, with py3langid's model (first LANGID_MAX_CHARS characters)."""
    if not texts:
        return [], np.zeros(0)
    return _language_identifier().classify(texts)


def language_codes() -> list[str]:
    """The language codes the identifier knows."""
    return sorted(set(_language_identifier().model.nb_classes))
