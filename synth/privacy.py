"""Privacy guard for synthetic data: no PII in the output, no near copies of the private seeds.

A task marked ``sensitive`` (medical, legal, finance) runs every generated record
through :func:`guard` before it is written. Two checks, each with its own drops reason:

1. **PII scan** (``pii:<ENTITY>``) of every message content with
   `presidio-analyzer <https://microsoft.github.io/presidio/>`_ pattern recognizers:

   ============  ==========================================================  ===========================
   entity        what                                                        how
   ============  ==========================================================  ===========================
   EMAIL         e-mail addresses                                            presidio regex + public
                                                                             suffix check (offline list)
   PHONE         phone numbers, international (+44 ...) and national         presidio + ``phonenumbers``
                 formats of `PHONE_REGIONS` (US/CA, UK, DE, FR, ES, IT...)   (number must be valid)
   US_SSN ...    national IDs, see `NATIONAL_IDS`: US SSN and ITIN, UK NI    presidio; checksums where
                 number and NHS number, Canadian SIN, Spanish NIF/NIE,       the ID has one
                 Italian codice fiscale, Polish PESEL, Finnish HETU,
                 Swedish personnummer, Australian TFN, Indian Aadhaar
   CARD          payment card numbers                                        presidio regex + Luhn
   IBAN          IBANs                                                       presidio regex + mod-97
   ADDRESS       street addresses: "221B Baker Street", "42 Elm St.,         patterns here (presidio has
                 Springfield, IL 62704", "Hauptstraße 12", "12 rue de la     none)
                 Paix", "Calle Mayor 5", "P.O. Box 123"
   DOB           a date of birth: a full date or month + year next to        patterns here (presidio's
                 born / DOB / date of birth / birthday ...                   DATE_TIME flags every date)
   PERSON        person names, only with ``ner_model`` (see below)           spaCy NER via presidio
   ============  ==========================================================  ===========================

   Each recognizer gives a confidence; a finding counts at ``pii_min_score`` (0.4) or
   more. Weak patterns (a bare 9-digit number for an SSN, 0.05) only reach it with a
   context word nearby ("SSN", "social security"), which presidio adds (+0.35); checksum
   patterns score 1.0 when the checksum holds and are discarded when it fails, so a
   16-digit number that fails Luhn is not a card. Visit dates, doses ("2 tablets every
   8 hours"), vitals ("120/80") and a bare year of birth (allowed by HIPAA Safe Harbor)
   are not findings. Overlapping findings merge into one (the highest score names it).

   ``pii_action="drop"`` drops the record (reason of its first finding; the detail lists
   entity and character offsets, never the value). ``"redact"`` replaces each finding
   with a typed placeholder (``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<US_SSN>``...),
   keeps the record with a new id (its content changed) and counts the placeholders in
   a ``privacy_redactions`` column.

2. **Seed copy** (``seed_copy``): a record that reproduces one of the task's seeds
   (which may be private). For each record and seed:

   - *n-gram overlap*: the share of the record's word 8-grams (5-grams for a record of
     fewer than ``3 * ngram`` words) found in the seed, and the share of the seed's
     n-grams found in the record (a record that embeds a whole seed inside a longer
     text, as an "evolve" strategy may do, has a low share of its own n-grams in the
     seed); the larger of the two, for seeds with at least 3 such n-grams;
   - *Jaccard* of the word 5-gram shingle sets, as near-duplicate dedup computes it
     (`curate.dedup.near.near_duplicate_pairs` over seeds + records).

   A record at or above ``max_ngram_overlap`` or ``max_jaccard`` against some seed is
   dropped, with the seed it copies (the one with the highest overlap) in the detail.

Offline: presidio's default engine loads the spaCy model ``en_core_web_lg`` (downloaded
on first use, from GitHub). Here the pattern recognizers run on a blank English spaCy
pipeline (``spacy.blank("en")``: a tokenizer, shipped inside the spacy wheel), which is
all they need: tokens for the context words, with the lower-cased token as its lemma.
E-mail validation uses tldextract's bundled public suffix list instead of fetching the
live one. So ``pip install presidio-analyzer`` from PyPI is the whole install. Person
names need a trained NER model, which no PyPI-only install ships: set ``ner_model`` to
an installed spaCy package name or a pipeline directory to turn them on (it is never
downloaded). Importing presidio also imports ``transformers.pipeline`` when transformers
is installed (for an NER pipe we do not use), ~20 s on a small machine; `_presidio`
hides transformers during that import when nothing else has imported it yet.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import polars as pl

from curate.drops import empty_drops, make_drops
from curate.records import MESSAGE, with_ids
from curate.step import StepResult

if TYPE_CHECKING:
    from synth.task import TaskSpec

__all__ = [
    "ADDRESS_PATTERNS",
    "DOB_PATTERNS",
    "NATIONAL_IDS",
    "PHONE_REGIONS",
    "PII_ENTITIES",
    "Finding",
    "PrivacyConfig",
    "PrivacyResult",
    "SeedMatch",
    "guard",
    "redact_text",
    "scan_text",
    "seed_copies",
    "seed_texts",
]

STEP = "privacy"

NATIONAL_IDS: tuple[str, ...] = (
    "US_SSN",
    "US_ITIN",
    "UK_NINO",
    "UK_NHS",
    "CA_SIN",
    "ES_NIF",
    "ES_NIE",
    "IT_FISCAL_CODE",
    "PL_PESEL",
    "FI_PERSONAL_IDENTITY_CODE",
    "SE_PERSONNUMMER",
    "AU_TFN",
    "IN_AADHAAR",
)
"""National ID numbers scanned for, by presidio's entity names (one placeholder each)."""

PII_ENTITIES: tuple[str, ...] = ("EMAIL", "PHONE", *NATIONAL_IDS, "CARD", "IBAN", "ADDRESS", "DOB", "PERSON")
"""Every entity the scan knows. PERSON is looked for only when `PrivacyConfig.ner_model` is set."""

PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "AU", "IN")
"""Regions whose national phone formats are recognized (international "+CC ..." numbers
are recognized whatever the region). US covers Canada (one numbering plan)."""


@dataclass
class PrivacyConfig:
    """Privacy guard settings. The defaults are the ones a sensitive task runs with."""

    pii: bool = True
    """Scan every message content for PII."""
    pii_entities: tuple[str, ...] = PII_ENTITIES
    """Entities to look for (see `PII_ENTITIES`); PERSON only matters with `ner_model`."""
    pii_action: Literal["drop", "redact"] = "drop"
    """"drop" the record, or "redact" each finding with a typed placeholder ("<EMAIL>")."""
    pii_min_score: float = 0.4
    """Minimum recognizer confidence for a finding (presidio scores, 0..1)."""
    copy_check: bool = True
    """Compare each record with the seeds; near copies are dropped."""
    max_ngram_overlap: float = 0.5
    """Word n-gram overlap with a seed at or above which a record is a copy."""
    ngram: int = 8
    """Words per n-gram for the overlap."""
    short_ngram: int = 5
    """Words per n-gram for records shorter than ``3 * ngram`` words."""
    max_jaccard: float = 0.5
    """Jaccard of word 5-gram shingles with a seed at or above which a record is a copy."""
    copy_action: Literal["drop"] = "drop"
    """What happens to a copy: it is dropped (the only choice)."""
    ner_model: str | None = None
    """spaCy model (installed package name or pipeline directory) whose NER finds PERSON
    names; None (the default) scans patterns only. Never downloaded."""
    phone_regions: tuple[str, ...] = PHONE_REGIONS
    """Regions for national phone formats."""

    def __post_init__(self) -> None:
        self.pii_entities = tuple(self.pii_entities)
        unknown = [e for e in self.pii_entities if e not in PII_ENTITIES]
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; choose from {', '.join(PII_ENTITIES)}")
        if self.pii_action not in ("drop", "redact"):
            raise ValueError(f"pii_action must be 'drop' or 'redact', got {self.pii_action!r}")
        if self.copy_action != "drop":
            raise ValueError(f"copy_action must be 'drop', got {self.copy_action!r}")
        for name in ("pii_min_score", "max_ngram_overlap", "max_jaccard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("ngram", "short_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.phone_regions = tuple(r.upper() for r in self.phone_regions)


@dataclass(frozen=True)
class Finding:
    """One piece of PII in a text: entity name, character span [start, end), confidence."""

    entity: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class SeedMatch:
    """How much of a record copies its closest seed."""

    seed: int
    """Index of the seed with the highest n-gram overlap (-1 when there is no seed)."""
    overlap: float
    """Word n-gram overlap with that seed (the larger of the record's and the seed's share)."""
    jaccard: float
    """Highest Jaccard of word 5-gram shingles with any seed, when at or above max_jaccard (else 0)."""
    jaccard_seed: int
    """The seed that Jaccard is with (-1 when none reached max_jaccard)."""
    ngram: int
    """Words per n-gram used for this record."""


PrivacyResult = StepResult
"""The guard's result, a step result: kept (records that passed, redacted ones included, with a
`privacy_redactions` column), drops (step "privacy") and counts (rows_in, rows_kept, findings per
entity, rows_redacted, redactions, dropped per reason)."""


# --------------------------------------------------------------------------------------
# Patterns that presidio has no recognizer for
# --------------------------------------------------------------------------------------

_STREET_SUFFIX = (
    r"(?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Terrace|Crescent"
    r"|Parkway|Pkwy\.?|Highway|Hwy\.?|Way|Close|Mews)"
)
_STREET_SUFFIX_WEAK = r"(?:Court|Ct\.?|Place|Pl\.?|Square|Sq\.?|Circle|Cir\.?|Park|Hill|Row|Walk|Gardens|Grove|Trail)"
# "Chapter 11 Bankruptcy Court, Delaware" / "Title 42 Public Health Way": a number after these is not a house number
_NOT_HOUSE = (
    r"(?<!(?i:chapter|section|sec\.|rule|title|article|art\.|part|no\.|number|ward|room|bed|floor|level"
    r"|page|p\.|pp\.)\s+)"
)
_CAP_WORD = r"(?:[A-Z][A-Za-z'’\-]*\.?|\d{1,3}(?:st|nd|rd|th))"
_UNIT = r"(?:,?\s+(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|\#)\s*[A-Za-z0-9\-]{1,6})?"
_CITY_STATE_ZIP = (
    r"(?:,\s+[A-Z][a-z][A-Za-z\-]*(?:\s+[A-Z][a-z][A-Za-z\-]*){0,2}"  # , Springfield
    r"(?:,?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?"  # , IL 62704
    r"|,?\s+[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2})?)?"  # London NW1 6XE
)
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DATE = (
    r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})(?!\d)"  # 03/04/1985, 3.4.85
    r"|\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}(?!\d)"  # 1985-04-03
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+\d{{4}}(?!\d)"  # 3rd of April 1985
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\d)"  # April 3, 1985
    rf"|{_MONTH}\.?,?\s+\d{{4}}(?!\d))"  # April 1985 (a bare year is not a finding)
)
_DOB_WORDS = (
    r"(?:\bd\.?\s?o\.?\s?b\b\.?|\bdate\s+of\s+birth\b|\bbirth\s*date\b|\bbirthday\b|\bborn\b"
    r"|\bgeboren\b|\bnée?\s+le\b|\bfecha\s+de\s+nacimiento\b|\bdata\s+di\s+nascita\b)"
)

ADDRESS_PATTERNS: tuple[tuple[str, str, float], ...] = (
    # 221B Baker Street / 1600 Pennsylvania Avenue NW / 42 Elm St., Springfield, IL 62704
    (
        "street address (number, name, suffix)",
        rf"{_NOT_HOUSE}\b\d{{1,5}}[A-Za-z]?(?:-\d{{1,5}})?\s+(?:{_CAP_WORD}\s+){{0,3}}{_CAP_WORD}\s+{_STREET_SUFFIX}"
        rf"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?{_UNIT}{_CITY_STATE_ZIP}(?![A-Za-z])",
        0.7,
    ),
    # 5 Kensington Court, London: suffixes that are also common words need a town after them
    (
        "street address (weak suffix, town)",
        rf"{_NOT_HOUSE}\b\d{{1,3}}[A-Za-z]?\s+(?:{_CAP_WORD}\s+){{0,2}}{_CAP_WORD}\s+{_STREET_SUFFIX_WEAK}"
        rf"{_UNIT}(?=,\s+[A-Z][a-z]){_CITY_STATE_ZIP}",
        0.6,
    ),
    # Hauptstraße 12 / Prinsengracht 263a / Storgatan 4
    (
        "street address (compound street name, number)",
        r"\b[A-ZÄÖÜÅØÆ][\wäöüßåøæ\-]*(?i:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|chaussee"
        r"|straat|laan|gracht|plein|kade|vej|gade|gatan|vägen|veien)\s+\d{1,4}[a-z]?\b(?![.,]?\d)",
        0.6,
    ),
    # 12 rue de la Paix / 8, avenue Foch
    (
        "street address (number, French street)",
        r"\b\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?i:rue|avenue|boulevard|bd|chemin|allée|impasse|quai|place|route)"
        r"\s+(?:de\s+la\s+|de\s+l['’]|du\s+|des\s+|de\s+|d['’])?[A-ZÉÈ][\w'’\-]+",
        0.6,
    ),
    # Calle Mayor 5 / Via Roma, 10 / Rua Augusta 27
    (
        "street address (Spanish/Italian/Portuguese street, number)",
        r"\b(?:Calle|C/|Avenida|Avda\.|Plaza|Paseo|Carrer|Via|Viale|Piazza|Corso|Rua|Travessa)\s+"
        r"(?:(?:de|del|de\s+la|de\s+los|dei|della|di|da|do)\s+)?[A-ZÁÉÍÓÚ][\w'’\-]+(?:\s+[A-ZÁÉÍÓÚ][\w'’\-]+){0,2}"
        r",?\s+(?:n\.?\s?[º°]?\s*)?\d{1,4}\b",
        0.6,
    ),
    ("post office box", r"\b(?i:p\.?\s?o\.?\s*box|post\s+office\s+box)\s+\d{1,6}\b", 0.6),
)
"""(name, regex, score): matched case-sensitively (the inline (?i:...) groups excepted),
since a street name is capitalized and "walk 2 blocks down the road" is not an address."""

DOB_PATTERNS: tuple[tuple[str, str, float], ...] = (
    # "DOB: 03/04/1985", "born on 3 April 1985", "date of birth is April 3, 1985"
    (
        "date after a birth word",
        rf"{_DOB_WORDS}[\s:=,;()\-–—]*(?:(?:is|was|on|in|the|of|am)\s+){{0,3}}\K{_DATE}",
        0.85,
    ),
    # "03/04/1985 (DOB)"
    ("date before a birth word", rf"{_DATE}(?=\s*[(\[,]?\s*{_DOB_WORDS})", 0.85),
)
"""(name, regex, score): case-insensitive; the finding is the date alone (`\\K`)."""

# Our entity names for presidio's generic ones.
_RENAMED = {"EMAIL": "EMAIL_ADDRESS", "PHONE": "PHONE_NUMBER", "CARD": "CREDIT_CARD", "IBAN": "IBAN_CODE"}


# --------------------------------------------------------------------------------------
# The analyzer
# --------------------------------------------------------------------------------------

_import_lock = threading.Lock()


def _presidio():
    """Import presidio_analyzer without its optional (and slow) transformers import.

    presidio's Hugging Face NER pipe does ``try: from transformers import pipeline``
    at import time; with transformers installed that imports transformers' pipelines
    (~20 s). When transformers is not imported yet, it is hidden for the duration, so
    that import fails fast and presidio marks the pipe unavailable. Its device detector
    is pinned to the CPU (``PRESIDIO_DEVICE``, unless set) so that it does not start a
    CUDA context in a process that may hand the GPU to the teacher; only pattern
    recognizers and spaCy run here.
    """
    if "presidio_analyzer" in sys.modules:
        return sys.modules["presidio_analyzer"]
    with _import_lock:
        hide = "transformers" not in sys.modules
        if hide:
            sys.modules["transformers"] = None  # type: ignore[assignment]  # import -> ImportError
        device = os.environ.get("PRESIDIO_DEVICE")
        if device is None:
            os.environ["PRESIDIO_DEVICE"] = "cpu"
        try:
            import presidio_analyzer  # creates its device detector, which reads PRESIDIO_DEVICE
        finally:
            if hide and sys.modules.get("transformers", 0) is None:
                del sys.modules["transformers"]
            if device is None:
                del os.environ["PRESIDIO_DEVICE"]
    return presidio_analyzer


@lru_cache(maxsize=8)
def _analyzer(entities: tuple[str, ...], ner_model: str | None, regions: tuple[str, ...]):
    """A presidio AnalyzerEngine with only the recognizers for `entities` (cached)."""
    import regex

    presidio = _presidio()
    from presidio_analyzer import Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer import predefined_recognizers as pr
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class OfflineEmailRecognizer(pr.EmailRecognizer):
        """presidio's e-mail recognizer, validated with the public suffix list bundled
        in tldextract (its default fetches the live list over the network)."""

        _extract = None

        def validate_result(self, pattern_text: str):
            import tldextract

            cls = type(self)
            if cls._extract is None:
                cls._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
            return cls._extract(pattern_text).fqdn != ""

    class PhoneRecognizer(pr.PhoneRecognizer):
        """presidio's phone recognizer (python-phonenumbers, numbers valid for a region)
        without its two kinds of false positive in reports: fewer than 7 digits, and a
        range of decimals ("95% CI 0.71-0.94")."""

        def analyze(self, text, entities, nlp_artifacts=None):
            if not any(_plausible_phone(m.group()) for m in _DIGIT_RUN.finditer(text)):
                return []  # phonenumbers' matcher (once per region) is most of the scan's time
            results = super().analyze(text, entities, nlp_artifacts)
            return [r for r in results if _plausible_phone(text[r.start : r.end])]

    class OfflineSpacyEngine(SpacyNlpEngine):
        """A spaCy engine that never downloads: a blank English tokenizer, or the
        given installed model / pipeline directory for NER; every token has a lemma
        (`_fill_lemmas`)."""

        def __init__(self, model: str | None):
            super().__init__(models=[{"lang_code": "en", "model_name": model or "blank:en"}])
            self._model = model

        def load(self) -> None:
            import spacy

            if self._model is None:
                nlp = spacy.blank("en")
            else:
                try:
                    nlp = spacy.load(self._model)
                except OSError as exc:
                    raise ValueError(
                        f"ner_model {self._model!r} is neither an installed spaCy package nor a pipeline "
                        f"directory (models are never downloaded here): {exc}"
                    ) from None
            nlp.add_pipe(_lemma_component(), last=True)
            self.nlp = {"en": nlp}

    wanted = set(entities)
    recognizers = []
    if "EMAIL" in wanted:
        recognizers.append(OfflineEmailRecognizer(supported_entity="EMAIL"))
    if "PHONE" in wanted:
        recognizers.append(PhoneRecognizer(supported_entity="PHONE", supported_regions=regions, leniency=1))
    if "CARD" in wanted:
        recognizers.append(pr.CreditCardRecognizer(supported_entity="CARD"))
    if "IBAN" in wanted:
        recognizers.append(pr.IbanRecognizer(supported_entity="IBAN"))
    id_classes = {
        "US_SSN": pr.UsSsnRecognizer,
        "US_ITIN": pr.UsItinRecognizer,
        "UK_NINO": pr.UkNinoRecognizer,
        "UK_NHS": pr.NhsRecognizer,
        "CA_SIN": pr.CaSinRecognizer,
        "ES_NIF": pr.EsNifRecognizer,
        "ES_NIE": pr.EsNieRecognizer,
        "IT_FISCAL_CODE": pr.ItFiscalCodeRecognizer,
        "PL_PESEL": pr.PlPeselRecognizer,
        "FI_PERSONAL_IDENTITY_CODE": pr.FiPersonalIdentityCodeRecognizer,
        "SE_PERSONNUMMER": pr.SePersonnummerRecognizer,
        "AU_TFN": pr.AuTfnRecognizer,
        "IN_AADHAAR": pr.InAadhaarRecognizer,
    }
    for entity in NATIONAL_IDS:
        if entity in wanted:
            # the text is scanned as English whatever language the ID's country speaks
            recognizers.append(id_classes[entity](supported_entity=entity, supported_language="en"))
    if "ADDRESS" in wanted:
        recognizers.append(
            PatternRecognizer(
                supported_entity="ADDRESS",
                name="StreetAddressRecognizer",
                patterns=[Pattern(n, p, s) for n, p, s in ADDRESS_PATTERNS],
                global_regex_flags=regex.MULTILINE | regex.VERSION0,
            )
        )
    if "DOB" in wanted:
        recognizers.append(
            PatternRecognizer(
                supported_entity="DOB",
                name="DateOfBirthRecognizer",
                patterns=[Pattern(n, p, s) for n, p, s in DOB_PATTERNS],
                global_regex_flags=regex.MULTILINE | regex.IGNORECASE,
            )
        )
    if "PERSON" in wanted and ner_model is not None:
        recognizers.append(pr.SpacyRecognizer(supported_entities=["PERSON"]))

    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    engine = presidio.AnalyzerEngine(
        registry=registry, nlp_engine=OfflineSpacyEngine(ner_model), supported_languages=["en"]
    )
    return engine, [r.supported_entities[0] for r in recognizers]


def _fill_lemmas(doc):
    """Give each token without a lemma its lower-cased text.

    presidio's context words ("ssn", "phone", "card" near a number raise its score) are
    matched against the lemmas, and a blank pipeline has no lemmatizer: without this every
    lemma is empty and no context word is ever found. A spaCy pipeline component, public
    API on both sides, where an override of presidio's private `_doc_to_nlp_artifact` did
    this before and would have stopped working, silently, the day presidio renamed it.
    """
    for token in doc:
        if not token.lemma_:
            token.lemma_ = token.lower_
    return doc


def _lemma_component() -> str:
    """The registered name of `_fill_lemmas` as a spaCy component (registered once per process)."""
    from spacy.language import Language

    name = "smallset_fill_lemmas"
    if not Language.has_factory(name):
        Language.component(name, func=_fill_lemmas)
    return name


_DIGIT_RUN = re.compile(r"\+?\(?\d[\d\s().\-/]{5,}\d")
_DECIMAL_RANGE = re.compile(r"\d+[.,]\d+\s*[-–]\s*\d+[.,]\d+")


def _plausible_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    return digits >= 7 and not _DECIMAL_RANGE.fullmatch(candidate.strip())


def _active_entities(config: PrivacyConfig) -> tuple[str, ...]:
    return tuple(e for e in config.pii_entities if e != "PERSON" or config.ner_model is not None)


_MAYBE_PII = re.compile(r"[0-9@]")


def scan_text(text: str, config: PrivacyConfig | None = None) -> list[Finding]:
    """PII in `text`, sorted by position, overlapping findings merged.

    A merged finding spans the union of what overlapped and is named after the
    highest-scoring one (so a number that is both a valid phone number and a valid NHS
    number is one finding). Texts with no digit and no "@" have nothing the patterns
    can match and are skipped unless an NER model is configured.
    """
    config = config or PrivacyConfig()
    entities = _active_entities(config)
    if not text or not entities:
        return []
    if config.ner_model is None and not _MAYBE_PII.search(text):
        return []
    engine, supported = _analyzer(entities, config.ner_model, config.phone_regions)
    results = engine.analyze(text=text, language="en", entities=supported, score_threshold=config.pii_min_score)
    return _merge(Finding(r.entity_type, r.start, r.end, float(r.score)) for r in results)


def _merge(findings: Iterable[Finding]) -> list[Finding]:
    ordered = sorted(findings, key=lambda f: (f.start, -f.end))
    merged: list[Finding] = []
    for f in ordered:
        if merged and f.start < merged[-1].end:
            last = merged[-1]
            best = last if last.score >= f.score else f
            merged[-1] = Finding(best.entity, last.start, max(last.end, f.end), max(last.score, f.score))
        else:
            merged.append(f)
    return merged


def redact_text(text: str, findings: Sequence[Finding]) -> str:
    """`text` with each finding replaced by its placeholder, ``<ENTITY>``."""
    out, pos = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[pos : f.start])
        out.append(f"<{f.entity}>")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------
# Seed copies
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    from curate.dedup.near import normalize

    return _WORD.findall(normalize(text))


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _seed_overlap(records: Sequence[str], seeds: Sequence[str], config: PrivacyConfig) -> list[tuple[int, float, int]]:
    """Per record: (closest seed, its n-gram overlap, n)."""
    seed_words = [_words(s) for s in seeds]
    index: dict[int, dict[tuple[str, ...], list[int]]] = {}
    seed_sizes: dict[int, list[int]] = {}

    def seed_index(n: int):
        if n not in index:
            table: dict[tuple[str, ...], list[int]] = defaultdict(list)
            sizes = []
            for j, words in enumerate(seed_words):
                grams = _grams(words, n)
                sizes.append(len(grams))
                for g in grams:
                    table[g].append(j)
            index[n], seed_sizes[n] = table, sizes
        return index[n], seed_sizes[n]

    out = []
    for text in records:
        words = _words(text)
        n = config.ngram if len(words) >= 3 * config.ngram else min(config.short_ngram, config.ngram)
        grams = _grams(words, n)
        if not grams:
            out.append((-1, 0.0, n))
            continue
        table, sizes = seed_index(n)
        shared: Counter[int] = Counter()
        for g in grams:
            for j in table.get(g, ()):
                shared[j] += 1
        best, best_overlap = -1, 0.0
        for j, k in sorted(shared.items()):
            overlap = k / len(grams)
            if sizes[j] >= 3:  # the seed's share, for seeds long enough to have one
                overlap = max(overlap, k / sizes[j])
            if overlap > best_overlap:  # ties: the lowest seed index
                best, best_overlap = j, overlap
        out.append((best, best_overlap, n))
    return out


def seed_copies(records: Sequence[str], seeds: Sequence[str], config: PrivacyConfig | None = None) -> list[SeedMatch]:
    """For each record text, its closest seed: n-gram overlap and (at or above
    ``max_jaccard``) shingle Jaccard. Flag a record when either reaches its threshold."""
    from curate.dedup.near import NearDedupConfig, near_duplicate_pairs

    config = config or PrivacyConfig()
    records, seeds = list(records), list(seeds)
    if not seeds:
        return [SeedMatch(-1, 0.0, 0.0, -1, config.ngram) for _ in records]
    overlaps = _seed_overlap(records, seeds, config)
    jaccard: dict[int, tuple[float, int]] = {}
    if records:
        s = len(seeds)
        for i, j, sim in near_duplicate_pairs(seeds + records, NearDedupConfig(threshold=config.max_jaccard)):
            if i < s <= j and sim > jaccard.get(j - s, (-1.0, -1))[0]:
                jaccard[j - s] = (sim, i)
    return [
        SeedMatch(seed, overlap, *jaccard.get(k, (0.0, -1)), n)
        for k, (seed, overlap, n) in enumerate(overlaps)
    ]


def seed_texts(task: TaskSpec) -> list[str]:
    """The task's seeds rendered the way generated samples are (user, assistant, label),
    so they compare like for like with `guard`'s record texts."""
    texts = []
    for seed in task.seeds:
        rendered = task.output.render(seed)
        parts = [m["content"] for m in rendered["messages"] if m["role"] != "system"]
        texts.append("\n".join(parts))
    return texts


def _record_text(messages: list[dict] | None) -> str:
    return "\n".join((m.get("content") or "") for m in (messages or []) if m.get("role") != "system")


# --------------------------------------------------------------------------------------
# The guard
# --------------------------------------------------------------------------------------

_MAX_LISTED = 5


def _describe(found: list[tuple[int, str, Finding]]) -> str:
    """"EMAIL at chars 10-25 of messages[1] (user); ..." — positions only, never values."""
    parts = [f"{f.entity} at chars {f.start}-{f.end} of messages[{i}] ({role})" for i, role, f in found[:_MAX_LISTED]]
    if len(found) > _MAX_LISTED:
        parts.append(f"and {len(found) - _MAX_LISTED} more")
    return "; ".join(parts)


def guard(records: pl.DataFrame, seeds: Sequence[str], config: PrivacyConfig | None = None) -> PrivacyResult:
    """Scan `records` for PII and for copies of `seeds` (texts, see `seed_texts`).

    Returns the records that pass (redacted ones included, re-identified), one drops row
    per dropped record, and counts. PII comes first: a record dropped for PII is not
    also reported as a copy. The copy check compares the user/assistant turns (system
    turns are the task's template) with the seeds; in redact mode the seeds are
    redacted the same way first, so placeholders do not hide a copy.
    """
    config = config or PrivacyConfig()
    n_in = records.height
    messages = records.get_column("messages").to_list() if n_in else []
    findings_count: Counter[str] = Counter()
    dropped_reason: list[str | None] = [None] * n_in
    detail: list[str | None] = [None] * n_in
    similarity: list[float | None] = [None] * n_in
    redactions = [0] * n_in
    changed = [False] * n_in

    if config.pii and _active_entities(config):
        for k, msgs in enumerate(messages):
            found: list[tuple[int, str, Finding]] = []
            new_msgs = []
            for i, m in enumerate(msgs or []):
                content = m.get("content") or ""
                hits = scan_text(content, config)
                found.extend((i, m.get("role") or "?", f) for f in hits)
                if hits and config.pii_action == "redact":
                    new_msgs.append({**m, "content": redact_text(content, hits)})
                else:
                    new_msgs.append(m)
            findings_count.update(f.entity for _, _, f in found)
            if not found:
                continue
            if config.pii_action == "drop":
                dropped_reason[k] = f"pii:{found[0][2].entity}"
                detail[k] = _describe(found)
            else:
                messages[k] = new_msgs
                redactions[k] = len(found)
                changed[k] = True

    if config.copy_check and seeds:
        live = [k for k in range(n_in) if dropped_reason[k] is None]
        seed_list = list(seeds)
        if config.pii and config.pii_action == "redact":
            seed_list = [redact_text(s, scan_text(s, config)) for s in seed_list]
        matches = seed_copies([_record_text(messages[k]) for k in live], seed_list, config)
        for k, m in zip(live, matches):
            by_overlap = m.overlap >= config.max_ngram_overlap
            by_jaccard = m.jaccard >= config.max_jaccard
            if not (by_overlap or by_jaccard):
                continue
            seed = m.seed if by_overlap else m.jaccard_seed
            dropped_reason[k] = "seed_copy"
            similarity[k] = m.overlap
            detail[k] = (
                f"copies seed {seed}: {m.ngram}-gram overlap {m.overlap:.2f}"
                + (f", shingle Jaccard {m.jaccard:.2f} with seed {m.jaccard_seed}" if by_jaccard else "")
            )

    kept_mask = [r is None for r in dropped_reason]
    out = records
    if any(changed):
        out = out.with_columns(pl.Series("messages", messages, dtype=pl.List(MESSAGE)))
    out = out.with_columns(pl.Series("privacy_redactions", redactions, dtype=pl.Int64))
    if any(changed):
        flag = pl.Series("__changed", changed)
        reid = with_ids(out.filter(flag)).get_column("id")
        ids = out.get_column("id").to_list()
        for k, new_id in zip([k for k in range(n_in) if changed[k]], reid.to_list()):
            ids[k] = new_id
        out = out.with_columns(pl.Series("id", ids, dtype=pl.String))
    kept = out.filter(pl.Series(kept_mask, dtype=pl.Boolean)) if n_in else out
    drop_idx = [k for k in range(n_in) if not kept_mask[k]]
    if drop_idx:
        ids = records.get_column("id").to_list()
        drops = make_drops(
            id=[ids[k] for k in drop_idx],
            step=STEP,
            reason=[dropped_reason[k] for k in drop_idx],
            duplicate_of=None,
            similarity=[similarity[k] for k in drop_idx],
            detail=[detail[k] for k in drop_idx],
        )
    else:
        drops = empty_drops()
    counts = {
        "rows_in": n_in,
        "rows_kept": kept.height,
        "findings": dict(sorted(findings_count.items())),
        "rows_redacted": sum(changed),
        "redactions": sum(redactions),
        "dropped": dict(sorted(Counter(r for r in dropped_reason if r is not None).items())),
    }
    return PrivacyResult(kept=kept, drops=drops, counts=counts)
