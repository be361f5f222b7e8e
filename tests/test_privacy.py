"""synth.privacy: the real presidio recognizers (offline, blank spaCy) and the seed-copy check, no mocks."""

from __future__ import annotations

import polars as pl
import pytest

from curate.drops import DROPS_SCHEMA
from curate.records import CORE_SCHEMA, with_ids
from synth.privacy import PrivacyConfig, guard, redact_text, scan_text, seed_copies, seed_texts
from synth.task import parse_task

# (text, entity, the PII value planted in it)
PLANTED = [
    ("You can reach the patient at jane.doe@example.com for results.", "EMAIL", "jane.doe@example.com"),
    ("Please call 415-555-0132 to confirm the appointment.", "PHONE", "415-555-0132"),
    ("Her mobile is +44 20 7946 0958 if the clinic needs her.", "PHONE", "+44 20 7946 0958"),
    ("The claimant's SSN is 536-22-8410 per the intake form.", "US_SSN", "536-22-8410"),
    ("Social security number: 536228410.", "US_SSN", "536228410"),
    ("His NI number is AB 12 34 56 C.", "UK_NINO", "AB 12 34 56 C"),
    ("El DNI del paciente es 12345678Z.", "ES_NIF", "12345678Z"),
    ("Codice fiscale RSSMRA85T10A562S on the referral.", "IT_FISCAL_CODE", "RSSMRA85T10A562S"),
    ("NHS number 943 476 5919 was verified at reception.", "UK_NHS", "943 476 5919"),
    ("The copay was charged to card 4111 1111 1111 1111 yesterday.", "CARD", "4111 1111 1111 1111"),
    ("Refund the deposit to IBAN DE89 3704 0044 0532 0130 00 this week.", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("She lives at 221B Baker Street, London NW1 6XE with her son.", "ADDRESS", "221B Baker Street, London NW1 6XE"),
    ("Mail the records to 42 Elm St., Springfield, IL 62704 by Friday.", "ADDRESS", "42 Elm St., Springfield, IL 62704"),
    ("The tenant's flat is at Hauptstraße 12 on the second floor.", "ADDRESS", "Hauptstraße 12"),
    ("Forward the bill to Flat 3, 5 Kensington Court, London.", "ADDRESS", "5 Kensington Court, London"),
    ("Patient (DOB: 03/04/1985) reports chest pain.", "DOB", "03/04/1985"),
    ("The client was born on 3 April 1985 in Ohio.", "DOB", "3 April 1985"),
    ("Date of birth is April 3, 1985, per the chart.", "DOB", "April 3, 1985"),
]

# Numbers everywhere, no PII: doses, vitals, visit dates, money, citations, statistics.
CLEAN = [
    "Take 2 tablets every 8 hours with food for 10 days.",
    "Blood pressure 120/80 mmHg, heart rate 72 bpm, SpO2 98% on room air, temperature 37.2 C.",
    "Seen in clinic on 03/15/2024; follow-up visit scheduled for April 2, 2024 at 10:30.",
    "Admitted on 2023-11-04 and discharged on 2023-11-09 after 5 days of IV antibiotics.",
    "HbA1c 7.2%, LDL 130 mg/dL, eGFR 58 mL/min/1.73m2, creatinine 1.3 mg/dL.",
    "Metformin 500 mg twice daily, 30-day supply, 3 refills. ICD-10 E11.9; CPT 99213.",
    "A 54-year-old man born in 1969 presents with 3 days of chest pain radiating to the left arm.",
    "He was born prematurely at 32 weeks and spent 3 weeks in the NICU.",
    "Insulin glargine 20 units at bedtime; titrate by 2 units every 3 days to a fasting glucose of 80-130.",
    "The trial enrolled 1,204 patients across 37 sites; HR 0.82 (95% CI 0.71-0.94), p = 0.006.",
    "The court granted the motion on 14 June 2021 in Case No. 2:19-cv-01234 (D. Ariz.).",
    "The debtor filed in Chapter 11 Bankruptcy Court, Delaware, listing 250 creditors.",
    "See 42 U.S.C. § 1983 and Fed. R. Civ. P. 12(b)(6); 550 U.S. 544, 570 (2007).",
    "The lease runs 24 months at $1,850 per month with a 5% annual escalation.",
    "Revenue grew 12.5% year over year to $4.2 billion; EPS of $1.37 beat estimates by $0.05.",
    "Invoice 100234567 totaling $12,480.00 is due within 30 days.",
    "Walk 2 blocks down the road, then take the 3rd exit at the roundabout.",
    "Dr. Patel saw the patient in Ward 5 on Monday; room 312 has 2 beds.",
]

LUHN_INVALID = "The copay was charged to card 4111 1111 1111 1112 yesterday."

SEEDS = [
    "My father, a retired bus driver, was diagnosed with stage three colon cancer last spring after months of "
    "ignoring the bleeding, and he now refuses chemotherapy because he watched his brother suffer through it.",
    "I have been taking sertraline for my panic attacks since the divorce, but the night sweats and the constant "
    "nausea make it impossible to keep my shifts at the warehouse, and my manager keeps asking why I leave early.",
    "Our daughter was born with a hole in her heart and had surgery at six weeks old; she is now eight and the "
    "cardiologist says she can play soccer, but the school nurse still will not let her run during recess.",
]
NEAR_COPY = SEEDS[1].replace("panic attacks", "anxiety attacks")  # one word changed
PARAPHRASE = (
    "Someone on an SSRI for anxiety after a separation reports sweating at night and feeling sick most days, "
    "which makes full shifts hard to get through; their supervisor has started to notice them leaving before the end."
)


def records(*users: str, assistant: str = "noted") -> pl.DataFrame:
    rows = {
        "id": [""] * len(users),
        "messages": [[{"role": "user", "content": u}, {"role": "assistant", "content": assistant}] for u in users],
        "label": [None] * len(users),
        "source": ["synth:test"] * len(users),
        "meta": ["{}"] * len(users),
    }
    return with_ids(pl.DataFrame(rows, schema=CORE_SCHEMA))


@pytest.mark.parametrize("text, entity, value", PLANTED, ids=[f"{e}-{i}" for i, (_, e, _) in enumerate(PLANTED)])
def test_planted_pii_is_found_with_its_span(text, entity, value):
    findings = scan_text(text)
    assert [f.entity for f in findings] == [entity], findings
    found = findings[0]
    assert text[found.start : found.end] == value
    assert 0.4 <= found.score <= 1.0


def test_a_luhn_invalid_card_number_is_not_a_finding():
    assert scan_text(LUHN_INVALID) == []
    assert [f.entity for f in scan_text(LUHN_INVALID.replace("1112", "1111"))] == ["CARD"]


def test_clean_clinical_legal_and_finance_text_is_not_flagged():
    flagged = {text: scan_text(text) for text in CLEAN}
    assert {t: f for t, f in flagged.items() if f} == {}
    result = guard(records(*CLEAN), seeds=[], config=PrivacyConfig())
    assert result.kept.height == len(CLEAN) and result.drops.height == 0
    assert result.counts["findings"] == {} and result.counts["dropped"] == {}


def test_drop_mode_drops_each_planted_record_without_writing_the_value():
    texts = [t for t, _, _ in PLANTED]
    batch = records(*texts, *CLEAN)
    result = guard(batch, seeds=[], config=PrivacyConfig(pii_action="drop"))

    assert result.drops.schema == pl.Schema(DROPS_SCHEMA)
    assert result.drops.height == len(PLANTED)
    assert result.kept.height == len(CLEAN)
    assert result.kept.get_column("privacy_redactions").to_list() == [0] * len(CLEAN)
    assert set(result.drops.get_column("step")) == {"privacy"}
    by_id = dict(zip(batch.get_column("id"), batch.get_column("messages").list.first().struct.field("content")))
    for row in result.drops.iter_rows(named=True):
        text = by_id[row["id"]]
        _, entity, value = next(p for p in PLANTED if p[0] == text)
        assert row["reason"] == f"pii:{entity}"
        assert row["duplicate_of"] is None
        start = text.index(value)
        assert row["detail"] == f"{entity} at chars {start}-{start + len(value)} of messages[0] (user)"
    details = " ".join(result.drops.get_column("detail"))
    for _, _, value in PLANTED:
        assert value not in details
        assert value.replace(" ", "") not in details.replace(" ", "")
    assert sum(result.counts["dropped"].values()) == len(PLANTED)
    assert result.counts["findings"]["PHONE"] == 2 and result.counts["findings"]["DOB"] == 3


def test_redact_mode_replaces_findings_with_placeholders_and_recomputes_ids():
    texts = [t for t, _, _ in PLANTED]
    batch = records(*texts, CLEAN[0])
    result = guard(batch, seeds=[], config=PrivacyConfig(pii_action="redact"))

    assert result.drops.height == 0 and result.kept.height == len(texts) + 1
    contents = result.kept.get_column("messages").list.first().struct.field("content").to_list()
    for (text, entity, value), redacted in zip(PLANTED, contents):
        assert redacted == text.replace(value, f"<{entity}>")
        assert scan_text(redacted) == []
    everything = "\n".join(contents)
    for _, _, value in PLANTED:
        assert value not in everything
    assert contents[-1] == CLEAN[0]  # untouched
    assert result.kept.get_column("privacy_redactions").to_list() == [1] * len(texts) + [0]
    assert result.counts["rows_redacted"] == len(texts) and result.counts["redactions"] == len(texts)
    # content changed -> new id, the same one with_ids gives; the clean row keeps its id
    kept_ids = result.kept.get_column("id").to_list()
    assert kept_ids == with_ids(result.kept).get_column("id").to_list()
    old_ids = batch.get_column("id").to_list()
    assert all(new != old for new, old in zip(kept_ids[:-1], old_ids[:-1])) and kept_ids[-1] == old_ids[-1]


def test_several_findings_in_one_record_and_overlaps_merge():
    text = "Email jane@example.com or call (212) 555-7788; DOB 4/3/85."
    findings = scan_text(text)
    assert [(f.entity, text[f.start : f.end]) for f in findings] == [
        ("EMAIL", "jane@example.com"),
        ("PHONE", "(212) 555-7788"),
        ("DOB", "4/3/85"),
    ]
    assert redact_text(text, findings) == "Email <EMAIL> or call <PHONE>; DOB <DOB>."
    result = guard(records(text), seeds=[], config=PrivacyConfig())
    (row,) = result.drops.iter_rows(named=True)
    assert row["reason"] == "pii:EMAIL"
    assert row["detail"].count(" at chars ") == 3


def test_a_near_copy_of_a_seed_is_dropped_with_that_seed_and_a_paraphrase_is_kept():
    batch = records(NEAR_COPY, PARAPHRASE, SEEDS[2] + " " + SEEDS[0], "Unrelated: the printer on floor 2 jams daily.")
    result = guard(batch, seeds=SEEDS, config=PrivacyConfig())

    dropped = {row["id"]: row for row in result.drops.iter_rows(named=True)}
    ids = batch.get_column("id").to_list()
    assert set(dropped) == {ids[0], ids[2]}
    near = dropped[ids[0]]
    assert near["reason"] == "seed_copy" and near["step"] == "privacy" and near["duplicate_of"] is None
    assert near["detail"].startswith("copies seed 1: 8-gram overlap")
    assert 0.5 <= near["similarity"] < 1.0
    assert dropped[ids[2]]["detail"].startswith("copies seed 0:")  # two seeds pasted together: ties go to the first
    assert result.kept.get_column("id").to_list() == [ids[1], ids[3]]
    assert result.counts["dropped"] == {"seed_copy": 2}

    near_m, para_m, _, other_m = seed_copies(
        [NEAR_COPY + "\nnoted", PARAPHRASE + "\nnoted", "x", "Unrelated: the printer on floor 2 jams daily."], SEEDS
    )
    assert near_m.seed == 1 and near_m.jaccard >= 0.5 and near_m.jaccard_seed == 1
    assert para_m.overlap < 0.1 and para_m.jaccard == 0.0
    assert other_m.overlap == 0.0 and other_m.seed == -1


def test_a_seed_embedded_in_a_longer_record_is_a_copy():
    longer = (
        "Here is what one reader wrote to the advice column this week. "
        + SEEDS[0]
        + " The columnist answered at length about how families can talk about treatment choices, what palliative "
        "care offers, how to find a second opinion, and why refusing treatment is a decision a competent adult may "
        "make even when the family disagrees, before recommending two support groups and a hospice helpline."
    )
    (match,) = seed_copies([longer], SEEDS)
    assert match.seed == 0 and match.overlap >= 0.9  # the seed's share; the record's own share is lower
    result = guard(records(longer), seeds=SEEDS, config=PrivacyConfig())
    assert result.drops.get_column("reason").to_list() == ["seed_copy"]


def test_seed_texts_render_task_seeds_like_records():
    task = parse_task(
        {
            "name": "notes",
            "instructions": "Write one patient message and its topic.",
            "n": 4,
            "sensitive": True,
            "seeds": [{"text": SEEDS[1], "label": "mental_health"}],
            "output": {
                "fields": {"text": {"type": "string"}, "label": {"type": "string"}},
                "system": "You triage patient messages.",
                "user": "{text}",
                "assistant": "{label}",
            },
        }
    )
    assert seed_texts(task) == [SEEDS[1] + "\nmental_health"]


def test_person_names_only_with_an_ner_model(tmp_path):
    import spacy  # installed with presidio-analyzer

    nlp = spacy.blank("en")  # a real pipeline with a rule-based NER, saved like any trained model
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": [{"LOWER": "jane"}, {"LOWER": "roe"}]}])
    nlp.to_disk(tmp_path / "ner")
    text = "Jane Roe was seen for follow-up and feels better."

    assert scan_text(text) == []  # off by default: no model ships offline
    findings = scan_text(text, PrivacyConfig(ner_model=str(tmp_path / "ner")))
    assert [(f.entity, text[f.start : f.end]) for f in findings] == [("PERSON", "Jane Roe")]
    with pytest.raises(ValueError, match="never downloaded"):
        scan_text(text, PrivacyConfig(ner_model="no_such_model_sm"))


def test_config_is_validated_and_switches_work():
    with pytest.raises(ValueError, match="unknown PII entities"):
        PrivacyConfig(pii_entities=("EMAIL", "SOCIAL"))
    with pytest.raises(ValueError, match="pii_action"):
        PrivacyConfig(pii_action="mask")
    with pytest.raises(ValueError, match="max_jaccard"):
        PrivacyConfig(max_jaccard=0)
    text = PLANTED[0][0]
    assert scan_text(text, PrivacyConfig(pii_entities=("PHONE",))) == []
    off = guard(records(text, NEAR_COPY), seeds=SEEDS, config=PrivacyConfig(pii=False, copy_check=False))
    assert off.kept.height == 2 and off.drops.height == 0
    empty = guard(records(), seeds=SEEDS, config=PrivacyConfig())
    assert empty.kept.height == 0 and "privacy_redactions" in empty.kept.columns and empty.drops.height == 0
