"""`curate review push/pull/status` against the real argilla-server 2.8 and the real SDK, over HTTP.

One server starts for the module (temporary workspace, free port) and stops at
teardown. Commands run as users run them: the `curate` CLI (click's runner, in
this process, or the installed script where the exit status and stderr matter).
Two annotators are created with `curate review users add`, sign in with their
passwords (as the web UI does) and answer through the SDK with their own API
keys; the owner answers one record too, to make a three-way majority.

Rows of the main dataset (10 rows, chat with a label and a judge_score), by
`meta.n`, and what the annotators do:

=====  =====================================  =========================================
n      alice / bob / owner                    expected outcome (default rule)
=====  =====================================  =========================================
0      accept (rating 4) / accept (rating 4)  accepted, unanimous
1      reject / reject                        rejected
2      discard / reject                       rejected (a discard rejects)
3      accept + same new response, both       corrected: response replaced
4      accept + label billing -> account      corrected: label replaced
5      accept / reject                        tie: rejected (pending with --on-tie pending)
6      (nobody)                               pending
7      accept / reject / owner accept         accepted by majority (conflict)
8      alice draft only                       pending (a draft is no decision)
9      bob accept only                        accepted (one decision; pending with --min-votes 2)
=====  =====================================  =========================================
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest
from click.testing import CliRunner

from curate.records import CORE_SCHEMA, order_columns, with_ids
from curate.review.server import ReviewServer, free_port
from curate.writers import write_records
from conftest import run_curate_many

import argilla as rg  # noqa: E402
from argilla._models._record._response import UserResponseModel  # noqa: E402

LABELS = ("account", "billing", "bug")
SCORES = (1.0, 2.5, 3.0, 3.5, 4.0, 5.0, 2.0, 3.2, 4.5, 1.5)
NEW_RESPONSE = "Open Settings > Billing and press 'Download invoice'."


# --------------------------------------------------------------------------- data


def make_rows(n: int, prefix: str = "ticket", synthetic_every: int = 4) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": f"{prefix} {i}: where is my invoice number {i}?"},
                {"role": "assistant", "content": f"Answer {i}: look in your account page."},
            ],
            "label": ["billing", "bug", "account"][i % 3] if i != 4 else "billing",
            "source": "synth:tickets" if i % synthetic_every == 0 else "helpdesk",
            "meta": json.dumps({"n": i}),
            "judge_score": SCORES[i % len(SCORES)],
        }
        for i in range(n)
    ]


def write_dataset(path: Path, rows: list[dict]) -> Path:
    """Rows as a smallset record set (ids from curate's own hashing), written by curate's writer."""
    df = pl.DataFrame(rows, schema={**{k: v for k, v in CORE_SCHEMA.items() if k != "id"}, "judge_score": pl.Float64})
    df = with_ids(df.with_columns(pl.lit(None, dtype=pl.String).alias("id")))
    write_records(order_columns(df), path)
    return path


def ids_of(path: Path) -> list[str]:
    return pl.read_parquet(path)["id"].to_list()


# --------------------------------------------------------------------------- the server and the CLI


class Review:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "ws"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ReviewServer(workspace=self.workspace, port=self.port)
        self.passwords: dict[str, str] = {}

    @property
    def api_key(self) -> str:
        return json.loads((self.workspace / "owner.json").read_text())["api_key"]

    def owner(self) -> "rg.Argilla":
        return rg.Argilla(api_url=self.url, api_key=self.api_key)

    def curate(self, *args: str | Path, ok: bool = True):
        """`curate review ARGS --workspace WS`, in this process."""
        from curate.cli import main

        result = CliRunner().invoke(main, ["review", *map(str, args), "--workspace", str(self.workspace)],
                                    catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output + (result.stderr or "")
        return result

    def annotator(self, name: str) -> tuple["rg.Argilla", str]:
        """Sign in with the password `users add` printed (as the UI does); the SDK then uses the user's key."""
        token = httpx.post(f"{self.url}/api/v1/token", data={"username": name, "password": self.passwords[name]})
        assert token.status_code == 201, token.text
        me = httpx.get(f"{self.url}/api/v1/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
        me = me.json()
        return rg.Argilla(api_url=self.url, api_key=me["api_key"]), me["id"]


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    for name in ("ARGILLA_API_URL", "ARGILLA_API_KEY"):
        assert name not in os.environ, f"unset {name}: these tests start their own server"
    review = Review(tmp_path_factory.mktemp("review-flow"))
    review.server.start()
    try:
        for name in ("alice", "bob"):
            added = review.curate("users", "add", name)
            review.passwords[name] = added.stdout.strip().splitlines()[-1]
        yield review
    finally:
        review.server.stop()


def records_by_id(dataset: "rg.Dataset") -> dict[str, "rg.Record"]:
    return {record.id: record for record in dataset.records(with_suggestions=True)}


def answer(client: "rg.Argilla", user_id: str, record: "rg.Record", status: str = "submitted", **values) -> None:
    """One annotator's response, through the SDK's endpoint (POST /api/v1/records/{id}/responses, as the UI)."""
    model = UserResponseModel(values={q: {"value": v} for q, v in values.items()}, status=status, user_id=user_id)
    client.api.records.create_record_response(record._server_id, model)


# --------------------------------------------------------------------------- push, answer, pull


@pytest.fixture(scope="module")
def answered(review):
    data = write_dataset(review.root / "tickets.parquet", make_rows(10))
    pushed = review.curate("push", data, "--overlap", "2", "--no-vectors")
    assert "created smallset/tickets: 10 new records" in pushed.stderr

    dataset = review.owner().datasets(name="tickets", workspace="smallset")
    ids = ids_of(data)
    records = records_by_id(dataset)
    rec = {n: records[f"tickets:{ids[n]}"] for n in range(10)}
    alice, alice_id = review.annotator("alice")
    bob, bob_id = review.annotator("bob")
    owner = review.owner()
    owner_id = str(owner.me.id)

    answer(alice, alice_id, rec[0], decision="accept", rating=4)
    answer(bob, bob_id, rec[0], decision="accept", rating=4)
    answer(alice, alice_id, rec[1], decision="reject", rating=1)
    answer(bob, bob_id, rec[1], decision="reject", rating=2)
    answer(alice, alice_id, rec[2], status="discarded")
    answer(bob, bob_id, rec[2], decision="reject")
    for client, uid in ((alice, alice_id), (bob, bob_id)):
        answer(client, uid, rec[3], decision="accept", corrected_response=NEW_RESPONSE)
        answer(client, uid, rec[4], decision="accept", corrected_label="account",
               corrected_response=rec[4].suggestions["corrected_response"].value)  # the pre-filled text, untouched
    answer(alice, alice_id, rec[5], decision="accept")
    answer(bob, bob_id, rec[5], decision="reject")
    answer(owner, owner_id, rec[7], decision="accept")
    answer(alice, alice_id, rec[7], decision="accept")
    answer(bob, bob_id, rec[7], decision="reject")
    answer(alice, alice_id, rec[8], status="draft", decision="reject")
    answer(bob, bob_id, rec[9], decision="accept")
    return data


def pulled(review, data: Path, name: str, *extra: str) -> tuple[pl.DataFrame, dict, str]:
    out = review.root / name
    result = review.curate("pull", data, "-o", out, *extra)
    df = pl.read_parquet(out).with_columns(pl.col("meta").str.json_path_match("$.n").cast(pl.Int64).alias("n"))
    report = json.loads(out.with_name(out.name + ".review.json").read_text())
    return df.sort("n"), report, result.stderr


def test_pushed_records_carry_fields_suggestions_metadata(review, answered):
    dataset = review.owner().datasets(name="tickets", workspace="smallset")
    assert dataset.settings.distribution.min_submitted == 2
    assert {q.name for q in dataset.settings.questions} == {"decision", "rating", "corrected_response",
                                                            "corrected_label"}
    assert list(dataset.settings.questions["corrected_label"].labels) == list(LABELS)
    ids = ids_of(answered)
    record = records_by_id(dataset)[f"tickets:{ids[0]}"]
    assert [m.role for m in record.fields["prompt"]] == ["system", "user"]
    assert record.fields["response"] == "Answer 0: look in your account page."
    assert set(record.fields) == {"prompt", "response"}  # the label is the preselected answer, not a field too
    assert record.metadata == {"dataset": "tickets", "source": "synth:tickets", "origin": "synthetic",
                               "label": "billing", "judge_score": 1.0}
    suggestions = {s.question_name: (s.value, s.agent) for s in record.suggestions}
    assert suggestions == {"rating": (1, "smallset-judge"), "decision": ("reject", "smallset-judge"),
                           "corrected_label": ("billing", "original"),
                           "corrected_response": ("Answer 0: look in your account page.", "original")}


def test_pull_gives_every_row_its_outcome(review, answered):
    original = pl.read_parquet(answered)
    df, report, _ = pulled(review, answered, "reviewed.parquet")
    assert df.height == 10  # nothing dropped
    outcomes = dict(zip(df["n"], df["review_outcome"]))
    assert outcomes == {0: "accepted", 1: "rejected", 2: "rejected", 3: "corrected", 4: "corrected",
                        5: "rejected", 6: "pending", 7: "accepted", 8: "pending", 9: "accepted"}
    assert report["outcomes"] == {"accepted": 3, "rejected": 3, "corrected": 2, "pending": 2}
    rows = {row["n"]: row for row in df.iter_rows(named=True)}
    before = {json.loads(row["meta"])["n"]: row for row in original.iter_rows(named=True)}

    # A corrected response replaces the last assistant turn; the original stays in meta; the id follows the content.
    fixed = rows[3]
    assert fixed["messages"][-1] == {"role": "assistant", "content": NEW_RESPONSE}
    assert fixed["messages"][:2] == before[3]["messages"][:2]
    meta = json.loads(fixed["meta"])
    assert meta["review"]["original"] == {"id": before[3]["id"], "response": "Answer 3: look in your account page.",
                                          "label": "billing"}
    assert fixed["id"] != before[3]["id"]
    assert fixed["id"] == with_ids(pl.DataFrame([fixed]).select(list(CORE_SCHEMA)))["id"][0]

    # A corrected label replaces the label; the response is untouched.
    relabelled = rows[4]
    assert (relabelled["label"], relabelled["messages"]) == ("account", before[4]["messages"])
    assert json.loads(relabelled["meta"])["review"]["original"]["label"] == "billing"
    assert relabelled["id"] != before[4]["id"]

    # Untouched rows keep their content and id; votes and ratings are kept.
    for n in (0, 1, 2, 5, 6, 7, 8, 9):
        assert (rows[n]["id"], rows[n]["messages"], rows[n]["label"]) == (
            before[n]["id"], before[n]["messages"], before[n]["label"])
    assert (rows[0]["review_votes"], rows[0]["review_rating"], rows[0]["review_conflict"]) == (2, 4.0, False)
    assert rows[1]["review_rating"] == 1.5
    votes = json.loads(rows[2]["meta"])["review"]["votes"]
    assert [(v["user"], v["status"]) for v in votes] == [("alice", "discarded"), ("bob", "submitted")]
    assert json.loads(rows[8]["meta"])["review"]["drafts"] == 1 and rows[8]["review_votes"] == 0
    assert json.loads(rows[6]["meta"])["review"]["votes"] == []


def test_majority_tie_and_agreement(review, answered):
    df, report, stderr = pulled(review, answered, "reviewed.parquet")
    rows = {row["n"]: row for row in df.iter_rows(named=True)}
    assert json.loads(rows[7]["meta"])["review"]["rule"] == "majority"
    assert (rows[7]["review_votes"], rows[7]["review_conflict"]) == (3, True)
    assert json.loads(rows[5]["meta"])["review"]["rule"] == "tie" and rows[5]["review_conflict"]
    assert report["conflicts"] == {"records": 2, "resolved_by_majority": 1, "ties": 1}
    assert "tie is rejected" in report["rule"]

    # Decisions on the 7 records with two or more: r0 AA, r1 RR, r2 RR, r3 AA, r4 AA, r5 AR, r7 A(alice) R(bob) A(owner).
    # Pairs: 9, agreeing 6. Krippendorff (nominal), coincidences o_AA=7, o_RR=4, o_AR=o_RA=2, n_A=9, n_R=6, n=15:
    # alpha = 1 - (n-1) * (o_AR+o_RA) / (2 n_A n_R) = 1 - 14*4/108.
    decision = next(a for a in report["agreement"] if a["question"] == "decision")
    assert decision["units"] == 7
    assert decision["pairwise"] == pytest.approx(6 / 9)
    assert decision["alpha"] == pytest.approx(1 - 14 * 4 / 108)
    rating = next(a for a in report["agreement"] if a["question"] == "rating")
    assert rating["level"] == "ordinal" and rating["units"] == 2  # r0 (4, 4) and r1 (1, 2)
    assert report["annotators"]["alice"] == {"submitted": 6, "discarded": 1, "draft": 1}
    assert "Krippendorff" in stderr

    tie_pending, report, _ = pulled(review, answered, "pending.parquet", "--on-tie", "pending", "--min-votes", "2")
    outcomes = dict(zip(tie_pending["n"], tie_pending["review_outcome"]))
    assert (outcomes[5], outcomes[9], outcomes[0], outcomes[7]) == ("pending", "pending", "accepted", "accepted")
    assert report["pending"] == {"awaiting a decision": 3, "tie (left pending)": 1}


def test_status_counts_per_annotator(review, answered):
    result = review.curate("status", "--json", "--name", "tickets")
    [entry] = json.loads(result.stdout)
    assert (entry["workspace"], entry["dataset"], entry["overlap"]) == ("smallset", "tickets", 2)
    # completed: at least 2 submitted responses (r0, r1, r3, r4, r5, r7); a discard does not count.
    assert (entry["total"], entry["completed"], entry["pending"]) == (10, 6, 4)
    assert entry["annotators"] == {
        "alice": {"submitted": 6, "discarded": 1, "draft": 1},
        "bob": {"submitted": 8, "discarded": 0, "draft": 0},
        "owner": {"submitted": 1, "discarded": 0, "draft": 0},
    }
    to_file = review.curate("status", "--name", "tickets", "--json", review.root / "status.json")
    assert to_file.stdout == "" and json.loads((review.root / "status.json").read_text()) == [entry]
    table = review.curate("status", "--name", "tickets")
    assert "6/10 (60%) completed" in table.stdout and "alice" in table.stdout


# --------------------------------------------------------------------------- routing


def pushed_ns(review, name: str) -> set[int]:
    """meta.n of the rows an Argilla dataset holds (through the external ids: <key>:<row id>)."""
    dataset = review.owner().datasets(name=name, workspace="smallset")
    return {review.n_of[record.id.split(":", 1)[1]] for record in dataset.records}


@pytest.fixture(scope="module")
def routing(review):
    data = write_dataset(review.root / "routing.parquet", make_rows(10, prefix="routed"))
    review.n_of = {rid: n for n, rid in enumerate(ids_of(data))}
    return data


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--route", "borderline", "--band", "2.5:3.5"), {1, 2, 3, 7}),  # both ends included
        (("--route", "borderline", "--score-column", "judge_score", "--band", "4:5"), {4, 5, 8}),
        (("--route", "synthetic"), {0, 4, 8}),  # source synth:...
        (("--route", "filter", "--where", "judge_score >= 4 AND origin = 'real'"), {5}),
        (("--route", "synthetic", "--where", "label = 'account'"), {8}),  # --where narrows a policy
    ],
    ids=["borderline", "borderline-high", "synthetic", "filter", "synthetic-where"],
)
def test_routing_policies_push_the_right_rows(review, routing, args, expected):
    name = "route-" + "-".join(a.strip("-").replace(" ", "")[:12] for a in args if a.startswith("--"))
    name += f"-{len(expected)}-{min(expected)}"
    result = review.curate("push", routing, "--name", name, "--no-vectors", *args)
    assert f"{len(expected)} new records" in result.stderr and f"({len(expected)} of 10 rows routed" in result.stderr
    assert pushed_ns(review, name) == expected


def test_audit_sample_is_seeded(review, routing):
    review.curate("push", routing, "--name", "audit-a", "--route", "audit", "--fraction", "0.3", "--seed", "7",
                  "--no-vectors")
    first = pushed_ns(review, "audit-a")
    assert len(first) == 3  # ceil(0.3 x 10)
    again = review.curate("push", routing, "--name", "audit-a", "--route", "audit", "--fraction", "0.3", "--seed", "7",
                          "--no-vectors")
    assert "0 new records, 3 already there" in again.stderr  # the same seed picks the same rows
    assert pushed_ns(review, "audit-a") == first
    review.curate("push", routing, "--name", "audit-b", "--route", "audit", "--fraction", "0.3", "--seed", "8",
                  "--no-vectors")
    assert len(pushed_ns(review, "audit-b")) == 3 and pushed_ns(review, "audit-b") != first


def test_routing_errors_name_the_problem(review, routing):
    missing = review.curate("push", routing, "--name", "nope", "--route", "borderline", "--score-column", "quality",
                            ok=False)
    assert missing.exit_code == 1 and "'quality'" in missing.stderr and "--score-column" in missing.stderr
    bad_where = review.curate("push", routing, "--name", "nope", "--where", "no_such_column > 1", ok=False)
    assert bad_where.exit_code == 1 and "no_such_column" in bad_where.stderr
    none = review.curate("push", routing, "--name", "nope", "--where", "judge_score > 99", ok=False)
    assert none.exit_code == 1 and "selected none" in none.stderr
    assert review.owner().datasets(name="nope", workspace="smallset") is None


# --------------------------------------------------------------------------- idempotence


def test_interrupted_push_finishes_without_duplicates(review):
    data = write_dataset(review.root / "resume.parquet", make_rows(12, prefix="resume"))
    first = review.curate("push", data, "--where", "judge_score < 3", "--no-vectors", "--batch-size", "2")
    assert "6 new records" in first.stderr  # n = 0, 1, 6, 9, 10, 11 (scores 1.0 2.5 2.0 1.5 1.0 2.5)
    rest = review.curate("push", data, "--no-vectors", "--batch-size", "5")
    assert "reused smallset/resume: 6 new records, 6 already there" in rest.stderr
    again = review.curate("push", data, "--no-vectors")
    assert "0 new records, 12 already there" in again.stderr
    dataset = review.owner().datasets(name="resume", workspace="smallset")
    external = [record.id for record in dataset.records]
    assert sorted(external) == sorted(f"resume:{rid}" for rid in ids_of(data))  # 12, each once


def test_concurrent_pushes_of_the_same_rows_both_succeed(review):
    """Two pushes of one file at once race on the records' unique key; the loser must not fail (issue #17)."""
    data = write_dataset(review.root / "race.parquet", make_rows(40, prefix="race"))
    curate_bin = Path(sys.executable).parent / "curate"
    for trial in range(4):
        name = f"race-{trial}"
        procs = [subprocess.Popen([str(curate_bin), "review", "push", str(data), "--name", name, "--no-vectors",
                                   "--batch-size", "4", "--workspace", str(review.workspace)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(300), *p.communicate()) for p in procs]
        for code, out, err in results:
            assert code == 0, f"trial {trial}: {err}"
            assert "Traceback" not in err
        dataset = review.owner().datasets(name=name, workspace="smallset")
        external = [record.id for record in dataset.records]
        assert sorted(external) == sorted(f"race:{rid}" for rid in ids_of(data)), trial  # each once


def test_simultaneous_creations_of_one_dataset_all_get_it(review):
    """Creations that race past the server's name check: the losers' POSTs fail on the database's unique
    constraint (a 500, not a 409; CI of stop 25); each must get the winner's dataset, and none may delete it."""
    from curate.review.client import Connection
    from curate.review.settings import TaskShape, build_settings
    from curate.review.push import _create

    shape = TaskShape(overlap=1)
    for trial in range(3):
        name, start = f"created-{trial}", threading.Barrier(6)

        def create(_: int):
            client = review.owner()
            conn = Connection(client, review.url)
            mine = rg.Dataset(name=name, workspace=conn.workspace("smallset", create=True),
                              settings=build_settings(shape), client=client)
            start.wait()
            theirs = _create(conn, mine)
            return (mine if theirs is None else theirs).id

        with ThreadPoolExecutor(6) as pool:
            ids = list(pool.map(create, range(6)))  # a failed creation raises here
        assert len(set(ids)) == 1, trial
        assert review.owner().datasets(name=name, workspace="smallset").id == ids[0]


def test_two_datasets_in_one_argilla_dataset_keep_their_records(review):
    shared = make_rows(4, prefix="shared")
    a = write_dataset(review.root / "team_a.parquet", shared[:3])
    b = write_dataset(review.root / "team_b.parquet", [shared[2], *make_rows(2, prefix="other")])
    assert ids_of(a)[2] == ids_of(b)[0]  # one row, same content and id, in both files
    review.curate("push", a, "--name", "pooled", "--no-vectors")
    second = review.curate("push", b, "--name", "pooled", "--no-vectors")
    assert "3 new records, 0 already there" in second.stderr  # b's copy of the shared row is its own record
    dataset = review.owner().datasets(name="pooled", workspace="smallset")
    records = records_by_id(dataset)
    assert len(records) == 6
    common = ids_of(a)[2]
    assert records[f"team_a:{common}"].metadata["dataset"] == "team_a"  # not overwritten by b
    assert records[f"team_b:{common}"].metadata["dataset"] == "team_b"

    owner = review.owner()
    answer(owner, str(owner.me.id), records[f"team_a:{common}"], decision="reject")
    answer(owner, str(owner.me.id), records[f"team_b:{common}"], decision="accept")
    out_a, out_b = review.root / "team_a.reviewed.parquet", review.root / "team_b.reviewed.parquet"
    review.curate("pull", a, "-o", out_a, "--name", "pooled")
    review.curate("pull", b, "-o", out_b, "--name", "pooled")
    assert pl.read_parquet(out_a)["review_outcome"].to_list() == ["pending", "pending", "rejected"]
    assert pl.read_parquet(out_b)["review_outcome"].to_list() == ["accepted", "pending", "pending"]
    report = json.loads((review.root / "team_a.reviewed.parquet.review.json").read_text())
    assert report["unmatched_records"] == 0 and not any("match no row" in note for note in report["notes"])
    # A wrong --key names the keys the rows are under; rows never pushed get no advice about keys.
    _, wrong, _ = pulled(review, a, "wrong_key.parquet", "--name", "pooled", "--key", "nope")
    assert any("but some are under 'team_a', 'team_b': pass the --key" in note for note in wrong["notes"]), wrong["notes"]
    never = write_dataset(review.root / "never.parquet", make_rows(2, prefix="never"))
    _, fresh, _ = pulled(review, never, "never.reviewed.parquet", "--name", "pooled")
    assert not any("--key" in note for note in fresh["notes"]), fresh["notes"]


# --------------------------------------------------------------------------- settings changed by hand


def test_a_metadata_property_deleted_by_hand_is_added_back(review):
    data = write_dataset(review.root / "meta.parquet", make_rows(3, prefix="meta"))
    review.curate("push", data, "--no-vectors")
    dataset = review.owner().datasets(name="meta", workspace="smallset")
    dataset.settings.metadata["judge_score"].delete()
    grown = write_dataset(review.root / "meta.parquet", make_rows(4, prefix="meta"))
    result = review.curate("push", grown, "--no-vectors")
    assert "changed: added the metadata property 'judge_score'" in result.stderr
    assert "1 new records, 3 already there" in result.stderr
    dataset = review.owner().datasets(name="meta", workspace="smallset")
    filtered = dataset.records(query=rg.Query(filter=rg.Filter(("metadata.judge_score", ">=", 3.5))))
    assert [record.metadata["judge_score"] for record in filtered] == [3.5]  # the new row carries it again


def test_pull_maps_a_hand_made_dataset_and_reports_the_rest(review):
    """A dataset set up by hand in Argilla: other question names, a question smallset has no meaning for."""
    data = write_dataset(review.root / "handmade.parquet", make_rows(4, prefix="hand"))
    owner = review.owner()
    settings = rg.Settings(
        fields=[rg.TextField(name="response")],
        questions=[
            rg.LabelQuestion(name="keep", labels=["yes", "no"]),
            rg.RatingQuestion(name="stars", values=[1, 2, 3, 4, 5], required=False),
            rg.TextQuestion(name="fix", required=False),
            rg.LabelQuestion(name="tone", labels=["polite", "rude"], required=False),
        ],
    )
    rg.Dataset(name="handmade", workspace="smallset", settings=settings, client=owner).create()
    pushed = review.curate("push", data, "--no-vectors")
    assert "note: the Argilla dataset has no field 'prompt': it is not sent" in pushed.stderr
    assert "note: the Argilla dataset has no question 'decision': no suggestion for it" in pushed.stderr
    assert "4 new records" in pushed.stderr

    dataset = owner.datasets(name="handmade", workspace="smallset")
    records = records_by_id(dataset)
    ids = ids_of(data)
    me = str(owner.me.id)
    answer(owner, me, records[f"handmade:{ids[0]}"], keep="no", stars=1)
    answer(owner, me, records[f"handmade:{ids[1]}"], keep="yes", fix="A better answer.", tone="polite")
    answer(owner, me, records[f"handmade:{ids[2]}"], keep="yes", stars=5)
    df, report, stderr = pulled(review, data, "handmade.reviewed.parquet")
    assert df["review_outcome"].to_list() == ["rejected", "corrected", "accepted", "pending"]
    assert df["messages"][1][-1]["content"] == "A better answer."
    assert df["label"].to_list() == pl.read_parquet(data)["label"].to_list()  # 'tone' is not a label question
    assert df["review_rating"].to_list()[:3] == [1.0, None, 5.0]
    notes = "\n".join(report["notes"])
    assert "'keep' is read as the accept/reject decision" in notes
    assert "'stars' is read as the rating" in notes and "'fix' is read as the corrected response" in notes
    assert "'tone' has no meaning for smallset" in notes and "'tone' has no meaning for smallset" in stderr
    vote = json.loads(df["meta"][1])["review"]["votes"][0]
    assert vote["other"] == {"tone": "polite"}


# --------------------------------------------------------------------------- faults


def test_wrong_key_unreachable_server_and_no_server_are_clear(review, tmp_path):
    from curate.cli import main

    runner = CliRunner()
    wrong = runner.invoke(main, ["review", "status"], env={"ARGILLA_API_URL": review.url, "ARGILLA_API_KEY": "nope"})
    assert wrong.exit_code == 1
    assert f"Argilla at {review.url} refused the API key" in wrong.stderr and "Traceback" not in wrong.output

    closed = f"http://127.0.0.1:{free_port()}"
    down = runner.invoke(main, ["review", "push", str(review.root / "tickets.parquet"), "--no-vectors"],
                         env={"ARGILLA_API_URL": closed, "ARGILLA_API_KEY": "k"})
    assert down.exit_code == 1 and f"cannot reach Argilla at {closed}" in down.stderr

    idle = runner.invoke(main, ["review", "pull", str(review.root / "tickets.parquet"), "-o", str(tmp_path / "o.parquet"),
                                "--workspace", str(tmp_path / "nothing")])
    assert idle.exit_code == 1 and "no review server runs for" in idle.stderr and "curate review serve" in idle.stderr

    unknown = review.curate("pull", review.root / "tickets.parquet", "-o", tmp_path / "o.parquet", "--name", "ghost",
                            ok=False)
    assert unknown.exit_code == 1 and "no dataset 'ghost'" in unknown.stderr and review.url in unknown.stderr


# --------------------------------------------------------------------------- layouts by task


def write_mixed(path: Path, chat_rows: bool = True) -> Path:
    """Text + label rows with check-labels' columns (n 0-2) and, unless told not, chat rows without labels (n 3-4)."""
    texts = [("My card was charged twice.", "billing", False, None, 0.9),
             ("The app crashes on start.", "billing", True, "technical", 0.1),
             ("I cannot log in.", "account", False, None, 0.8)]
    rows = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": label}], "label": label,
             "source": "tickets", "meta": json.dumps({"n": n}), "label_issue": issue, "label_suggested": suggested,
             "label_quality": quality} for n, (t, label, issue, suggested, quality) in enumerate(texts)]
    if chat_rows:
        rows += [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"Hi {n}?"},
                               {"role": "assistant", "content": f"Hello {n}."}], "label": None, "source": "synth:chat",
                  "meta": json.dumps({"n": n}), "label_issue": None, "label_suggested": None, "label_quality": None}
                 for n in (3, 4)]
    schema = {**{k: v for k, v in CORE_SCHEMA.items() if k != "id"}, "label_issue": pl.Boolean,
              "label_suggested": pl.String, "label_quality": pl.Float64}
    df = with_ids(pl.DataFrame(rows, schema=schema).with_columns(pl.lit(None, dtype=pl.String).alias("id")))
    write_records(order_columns(df), path)
    return path


def test_each_task_gets_its_layout_and_pull_maps_its_answers(review):
    """Mixed data: one dataset per layout; classification answers the label, chat the decision and response."""
    data = write_mixed(review.root / "mixed.parquet")
    pushed = review.curate("push", data, "--no-vectors")
    assert "created smallset/mixed-classification: 3 new records" in pushed.stderr
    assert "created smallset/mixed-chat: 2 new records" in pushed.stderr
    owner = review.owner()
    cls = owner.datasets(name="mixed-classification", workspace="smallset")
    chat = owner.datasets(name="mixed-chat", workspace="smallset")
    assert [f.name for f in cls.settings.fields] == ["text"]
    assert [(q.name, q.title) for q in cls.settings.questions] == [("corrected_label", "Label")]
    assert list(cls.settings.questions["corrected_label"].labels) == ["account", "billing", "technical"]
    assert [f.name for f in chat.settings.fields] == ["prompt", "response"]
    assert [q.name for q in chat.settings.questions] == ["decision", "rating", "corrected_response"]  # no label
    for dataset in (cls, chat):  # the guidelines name the questions as the UI does
        guidelines = dataset.settings.guidelines
        assert all(f"**{q.title}**" in guidelines for q in dataset.settings.questions)
        assert "corrected_" not in guidelines and "**decision**" not in guidelines

    ids = ids_of(data)
    records = {**records_by_id(cls), **records_by_id(chat)}
    rec = {n: records[f"mixed:{ids[n]}"] for n in range(5)}
    doubted = rec[1]
    assert doubted.fields["text"] == "The app crashes on start."
    assert [(s.question_name, s.value, s.agent, s.score) for s in doubted.suggestions] == [
        ("corrected_label", "billing", "check-labels", 0.1)]  # the given label, preselected
    assert (doubted.metadata["label_issue"], doubted.metadata["label_suggested"]) == ("true", "technical")
    assert [m.role for m in rec[3].fields["prompt"]] == ["system", "user"] and rec[3].fields["response"] == "Hello 3."

    me = str(owner.me.id)
    answer(owner, me, rec[0], corrected_label="billing")  # submitted as preselected
    answer(owner, me, rec[1], corrected_label="technical")
    answer(owner, me, rec[2], status="discarded")
    answer(owner, me, rec[3], decision="accept", corrected_response="Hello, 3!")
    answer(owner, me, rec[4], decision="reject")
    df, report, stderr = pulled(review, data, "mixed.reviewed.parquet")
    assert df["review_outcome"].to_list() == ["accepted", "corrected", "rejected", "corrected", "rejected"]
    relabelled = df.row(1, named=True)
    assert relabelled["label"] == "technical"
    assert relabelled["messages"][-1] == {"role": "assistant", "content": "technical"}  # the reply is the label
    assert df["messages"][3][-1]["content"] == "Hello, 3!"
    assert report["dataset"] == "mixed-classification, mixed-chat"
    assert not any("accept/reject" in note for note in report["notes"])


def test_classification_asks_accept_reject_when_told(review):
    data = write_mixed(review.root / "labelled.parquet", chat_rows=False)
    review.curate("push", data, "--no-vectors", "--ask-decision")
    owner = review.owner()
    dataset = owner.datasets(name="labelled", workspace="smallset")
    assert [q.name for q in dataset.settings.questions] == ["corrected_label", "decision"]
    records = records_by_id(dataset)
    first = records[f"labelled:{ids_of(data)[0]}"]
    answer(owner, str(owner.me.id), first, corrected_label="billing", decision="reject")
    df, _, _ = pulled(review, data, "labelled.reviewed.parquet")
    assert df["review_outcome"].to_list() == ["rejected", "pending", "pending"]
