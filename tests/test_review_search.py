"""Text and similarity search of the embedded engine (curate/review/search_engine.py) as Argilla on Elasticsearch
answers them.

Over HTTP: the real argilla-server 2.8 (the `review` fixture of test_review_server.py: one server for this module,
two API processes) driven with the real argilla SDK. Text queries follow Elasticsearch's simple_query_string with
the options Argilla sends (`default_operator: AND`, `fuzzy_transpositions: false`, `fuzzy_max_expansions: 10`):
parentheses group, operators bind left to right, `word~N` is fuzzy, `"a phrase"~N` has slop N, and a malformed
query degrades to what can be read instead of failing. Similarity search reads a matrix that each API process keeps
up to date: after an upsert and after a delete, searches on fresh connections (either process) see the change.

In the server's own virtualenv (the engine's only home), the parts no request reaches deterministically: a second
process's matrix caught up from the revisions (also after old deletions were pruned), an index file of the first
schema (vectors as JSON) upgraded in place, and queries nested or long enough to stress the parser.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from curate.review.server_env import LAUNCHER, ensure_server_env
from tests.test_review_server import review  # noqa: F401  (the module's server)

import argilla as rg  # noqa: E402

ENGINE_FILE = LAUNCHER.with_name("search_engine.py")

FRUIT = {
    "red-banana": "a red banana",
    "red-cherry": "a red cherry",
    "green-banana": "a green banana",
    "cherry-pie": "a yellow cherry pie",
    "apple-juice": "red apple juice",
    "fox": "the quick brown fox jumps over the lazy dog",
    "dog": "the dog was quick and brown",
    "patch": "apply the patch",
}

# Query -> the records it finds. Each expectation follows from simple_query_string's rules (see the comments).
QUERIES = {
    # Parentheses take precedence; without them operators bind left to right: `a | b c` is `(a | b) c`.
    "(banana | cherry) red": {"red-banana", "red-cherry"},
    "banana | (cherry red)": {"red-banana", "green-banana", "red-cherry"},
    "banana | cherry red": {"red-banana", "red-cherry"},
    "red -(banana | cherry)": {"apple-juice"},
    "((banana))": {"red-banana", "green-banana"},
    # Fuzzy terms: at most N edits, a bare `~` is 2 ("apply" and "pie" are 2 edits from "aple").
    "aple": set(),
    "aple~1": {"apple-juice"},
    "aple~": {"apple-juice", "patch", "cherry-pie"},
    "aple~2": {"apple-juice", "patch", "cherry-pie"},
    # Argilla turns transpositions off: "ch(eh)rry" is two edits from "cherry", not one.
    "cehrry~1": set(),
    "cehrry~2": {"red-cherry", "cherry-pie"},
    "red~0": {"red-banana", "red-cherry", "apple-juice"},  # no edits: the plain term
    # Phrases with slop: words apart by N positions, or out of order (swapping two adjacent words costs 2).
    '"quick fox"': set(),
    '"quick fox"~1': {"fox"},
    '"fox quick"~2': set(),
    '"fox quick"~3': {"fox"},
    '"quick brown"': {"fox"},
    '"quick brown"~1': {"fox", "dog"},
    # The operators that worked before keep working.
    "banana": {"red-banana", "green-banana"},
    "red banana": {"red-banana"},
    "red +banana": {"red-banana"},
    "-banana red": {"red-cherry", "apple-juice"},
    "banana | patch": {"red-banana", "green-banana", "patch"},
    "ban*": {"red-banana", "green-banana"},
    '"red banana"': {"red-banana"},
    # Malformed: an unclosed "(" or '"' is ignored, `~x` is no fuzziness, stray operators do nothing.
    "(banana | cherry": {"red-banana", "green-banana", "red-cherry", "cherry-pie"},
    '"red banana': {"red-banana"},
    "red~x": {"red-banana", "red-cherry", "apple-juice"},
    "| red": {"red-banana", "red-cherry", "apple-juice"},
    ")))": set(),
    "()": set(),
    '"': set(),
    "|||": set(),
    "-": set(),
}


@pytest.fixture(scope="module")
def workspace(review) -> str:
    rg.Workspace(name="search", client=review.client()).create()
    return "search"


@pytest.fixture(scope="module")
def fruit(review, workspace):
    client = review.client()
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.TextQuestion(name="note")])
    dataset = rg.Dataset(name="fruit", workspace="search", settings=settings, client=client).create()
    dataset.records.log([rg.Record(id=key, fields={"text": text}) for key, text in FRUIT.items()])
    return dataset


def found(dataset, q: str) -> set[str]:
    return {record.id for record in dataset.records(query=rg.Query(query=q))}


@pytest.mark.parametrize("q", sorted(QUERIES))
def test_text_queries_find_what_simple_query_string_finds(fruit, q):
    assert found(fruit, q) == QUERIES[q]


def test_a_query_the_parser_cannot_make_sense_of_is_answered_not_failed(review, fruit):
    """What the web UI sends as typed: every one of these gets a 200 and the records it names, never a 500."""
    url = f"/api/v1/datasets/{fruit.id}/records/search"
    with review.http() as http:
        for q, expected in [("((((", set()), ('"a""', {"red-banana", "red-cherry", "green-banana", "cherry-pie"}),
                            ("\\", set()), ("~~~", set()), ("*", set()),
                            ("red~99999999999", {"red-banana", "red-cherry", "apple-juice"}),
                            ("(" * 500 + "cherry", {"red-cherry", "cherry-pie"}),
                            ("(" * 300 + "cherry" + ")" * 300, {"red-cherry", "cherry-pie"})]:
            answer = http.post(url, json={"query": {"text": {"q": q}}})
            assert answer.status_code == 200, (q, answer.text)
            assert {item["record"]["external_id"] for item in answer.json()["items"]} == expected, q


def test_a_phrase_never_spans_two_fields_and_a_field_can_be_named(review, workspace):
    client = review.client()
    settings = rg.Settings(fields=[rg.TextField(name="title"), rg.TextField(name="body")],
                           questions=[rg.TextQuestion(name="note")])
    dataset = rg.Dataset(name="two-fields", workspace="search", settings=settings, client=client).create()
    dataset.records.log([rg.Record(id="split", fields={"title": "red", "body": "banana split"}),
                         rg.Record(id="whole", fields={"title": "a red banana", "body": "whole"})])
    assert found(dataset, "red banana") == {"split", "whole"}
    assert found(dataset, '"red banana"') == {"whole"}
    assert found(dataset, '"red banana"~1000') == {"whole"}
    with review.http() as http:
        body = {"query": {"text": {"q": "banana", "field": "title"}}}
        answer = http.post(f"/api/v1/datasets/{dataset.id}/records/search", json=body).json()
        assert {item["record"]["external_id"] for item in answer["items"]} == {"whole"}


# --------------------------------------------------------------------------- similarity search

QUERY = [1.0, 0.2, 0.0, 0.1]
VECTORS = {
    "v0": [0.9, 0.1, 0.1, 0.0],
    "v1": [0.0, 1.0, 0.0, 0.0],
    "v2": [0.5, 0.5, 0.5, 0.5],
    "v3": [-1.0, 0.0, 0.2, 0.0],
    "v4": [0.7, 0.0, 0.0, 0.7],
    "v5": [0.1, 0.0, 1.0, 0.0],
}
KINDS = {"v0": "a", "v1": "b", "v2": "a", "v3": "b", "v4": "a", "v5": "b", "new": "a"}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def ranked(vectors: dict[str, list[float]], query: list[float], most_similar: bool = True) -> list[tuple[str, float]]:
    """The answer worked out here: every record by Argilla's score (1 + cos) / 2, or (1 - cos) / 2 for least similar."""
    sign = 1 if most_similar else -1
    scores = {key: (1 + sign * cosine(query, vector)) / 2 for key, vector in vectors.items()}
    return sorted(scores.items(), key=lambda item: -item[1])


@pytest.fixture(scope="module")
def vectors(review, workspace):
    client = review.client()
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.TextQuestion(name="note")],
                           metadata=[rg.TermsMetadataProperty(name="kind")],
                           vectors=[rg.VectorField(name="emb", dimensions=len(QUERY))])
    dataset = rg.Dataset(name="vectors", workspace="search", settings=settings, client=client).create()
    dataset.records.log([rg.Record(id=key, fields={"text": f"record {key}"}, metadata={"kind": KINDS[key]},
                                   vectors={"emb": vector}) for key, vector in VECTORS.items()])
    return dataset


def similar(review, dataset, most_similar: bool = True, kind: str | None = None) -> list[tuple[str, float]]:
    """A similarity search through the SDK on a fresh client (a new connection: either API process answers)."""
    fresh = review.client().datasets(name=dataset.name, workspace="search")
    query = rg.Query(similar=rg.Similar(name="emb", value=QUERY, most_similar=most_similar),
                     filter=rg.Filter(("metadata.kind", "==", kind)) if kind else None)
    return [(record.id, score) for record, score in fresh.records(query=query)]


def assert_ranked(answer: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [key for key, _ in answer] == [key for key, _ in expected]
    assert [score for _, score in answer] == pytest.approx([score for _, score in expected], abs=1e-6)


def searched_everywhere(review, dataset, expected: dict[str, list[float]]) -> None:
    """Several fresh connections, so that both API processes (each with its own matrix) answer."""
    for _ in range(6):
        assert_ranked(similar(review, dataset), ranked(expected, QUERY))
    assert_ranked(similar(review, dataset, most_similar=False), ranked(expected, QUERY, most_similar=False))
    kind_a = {key: vector for key, vector in expected.items() if KINDS[key] == "a"}
    assert_ranked(similar(review, dataset, kind="a"), ranked(kind_a, QUERY))


def test_similarity_search_sees_upserts_and_deletes(review, vectors):
    current = dict(VECTORS)
    searched_everywhere(review, vectors, current)  # every API process has built its matrix

    # Upsert: a new record on the query itself, and v3 turned from the least to the most similar one but it.
    changed = {"new": list(QUERY), "v3": [1.0, 0.25, 0.0, 0.1]}
    vectors.records.log([rg.Record(id=key, fields={"text": f"record {key}"}, metadata={"kind": KINDS[key]},
                                   vectors={"emb": vector}) for key, vector in changed.items()])
    current.update(changed)
    answer = similar(review, vectors)
    assert [key for key, _ in answer[:2]] == ["new", "v3"] and answer[0][1] == pytest.approx(1.0, abs=1e-6)
    searched_everywhere(review, vectors, current)

    # Delete: the records leave every process's answers.
    vectors.records.delete([record for record in vectors.records if record.id in {"new", "v0"}])
    for key in ("new", "v0"):
        del current[key]
    searched_everywhere(review, vectors, current)


def test_similar_to_a_record_leaves_that_record_out(review, vectors):
    with review.http() as http:
        records = http.get(f"/api/v1/datasets/{vectors.id}/records", params={"include": "vectors"}).json()["items"]
        by_key = {record["external_id"]: record for record in records}
        anchor = by_key["v2"]
        body = {"query": {"vector": {"name": "emb", "record_id": anchor["id"], "order": "most_similar"}}}
        answer = http.post(f"/api/v1/datasets/{vectors.id}/records/search", json=body).json()
    others = {key: record["vectors"]["emb"] for key, record in by_key.items() if key != "v2"}
    expected = ranked(others, anchor["vectors"]["emb"])
    assert_ranked([(item["record"]["external_id"], item["query_score"]) for item in answer["items"]], expected)


# --------------------------------------------------------------------------- inside the server's virtualenv

ENGINE_CHECKS = r"""
import asyncio, importlib.util, json, os, sqlite3, sys, tempfile, uuid

folder = tempfile.mkdtemp()
os.environ["SMALLSET_SEARCH_INDEX"] = path = os.path.join(folder, "index.sqlite3")
spec = importlib.util.spec_from_file_location("smallset_review_search_engine", ENGINE_FILE)
engine_module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = engine_module
spec.loader.exec_module(engine_module)
from argilla_server.models import Dataset, Field, Record, Vector, VectorSettings

report = {}

# 1. An index file written by the first schema (vectors as JSON text) is upgraded in place and searched.
old = sqlite3.connect(path)
old.executescript('''
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL UNIQUE,
                      dataset_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE vectors (record_id TEXT NOT NULL, settings_id TEXT NOT NULL, dataset_id TEXT NOT NULL,
                      value TEXT NOT NULL, PRIMARY KEY (record_id, settings_id));
CREATE INDEX vectors_by_settings ON vectors (settings_id);
CREATE TABLE versions (dataset_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
''')
dataset = Dataset(id=uuid.uuid4(), name="d")
dataset.fields = [Field(name="text", settings={"type": "text"})]
setting = VectorSettings(id=uuid.uuid4(), name="emb", dimensions=3)
old_rows = {str(uuid.uuid4()): [1.0, 0.0, 0.0], str(uuid.uuid4()): [0.0, 1.0, 0.0], str(uuid.uuid4()): [0.6, 0.8, 0.0]}
old.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?)",
                [(key, str(setting.id), str(dataset.id), json.dumps(value)) for key, value in old_rows.items()])
old.commit()
old.close()
store = engine_module._store()
engine = engine_module.SmallsetSearchEngine(path=path)
hits = asyncio.run(engine.similarity_search(dataset, setting, value=[1.0, 0.0, 0.0], max_results=10))
report["upgraded"] = [[str(item.record_id), item.score] for item in hits.items]
report["old_rows"] = old_rows
report["schema"] = store.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
report["blob"] = store.conn.execute("SELECT typeof(value) FROM vectors LIMIT 1").fetchone()[0]

# 2. Another process (a second connection with its own matrix) catches up from the revisions alone, and
#    rebuilds when the deletions it missed were pruned.
def record(key, value):
    made = Record(id=uuid.UUID(key), fields={"text": "t"}, external_id=key)
    made.vectors = [Vector(value=value, vector_settings_id=setting.id)]
    return made

other = engine_module._Store(path)
before = other.vector_index(str(setting.id), 3)
keys = list(old_rows)
new_key = str(uuid.uuid4())
asyncio.run(engine.index_records(dataset, [record(new_key, [0.0, 0.0, 2.0]), record(keys[0], [0.0, 0.0, -1.0])]))
asyncio.run(engine.delete_records(dataset, [record(keys[1], [0.0, 1.0, 0.0])]))
after = other.vector_index(str(setting.id), 3)
report["same_matrix_updated"] = after is before
report["caught_up"] = after.search([0.0, 0.0, 1.0], None, None, 1.0, None, 10)
engine_module._DELETIONS_KEPT = 2
for _ in range(3):
    gone = str(uuid.uuid4())
    asyncio.run(engine.index_records(dataset, [record(gone, [1.0, 1.0, 1.0])]))
    asyncio.run(engine.delete_records(dataset, [record(gone, [1.0, 1.0, 1.0])]))
report["rebuilt"] = other.vector_index(str(setting.id), 3) is not before
report["rebuilt_rows"] = sorted(other.vector_index(str(setting.id), 3).slots)
report["deletions_kept"] = store.conn.execute("SELECT count(*) FROM vector_deletions").fetchone()[0]

# 3. The parser on queries no one types: nesting deeper than Python recurses, thousands of clauses.
def shape(tree):
    if tree is None or not hasattr(tree, "clauses"):
        return repr(tree)
    return [len(tree.clauses), sorted({occur for occur, _ in tree.clauses})]

report["parsed"] = {name: shape(engine_module._parse_query(q)) for name, q in {
    "nested": "(" * 20000 + "t" + ")" * 20000, "long": "t | " * 5000, "quotes": '"' * 5000,
    "tildes": "t~" * 5000}.items()}

# 4. Fuzzy words on real text (the docstrings of the modules loaded here): the arrays' dynamic programme over the
#    whole vocabulary finds what the plain edit distance finds, token by token, with and without transpositions.
import inspect, random
docs = []
for name, loaded in sorted(sys.modules.items()):
    if name.split(".")[0] in {"argilla_server", "sqlalchemy", "asyncio", "json", "sqlite3"}:
        for member in list(vars(loaded).values()):
            if (inspect.isfunction(member) or inspect.isclass(member)) and isinstance(member.__doc__, str):
                docs.append({"id": str(len(docs)), "fields": {"text": member.__doc__}})
rnd = random.Random(7)
checked = agreed = matched = 0
for transpositions in (False, True):
    engine_module._FUZZY_TRANSPOSITIONS = transpositions
    index = engine_module._TextIndex(docs, None)
    for token in rnd.sample(index.vocabulary, 40):
        word = list(token)
        where = rnd.randrange(len(word))
        kind = rnd.choice(["delete", "insert", "swap", "change"])
        if kind == "delete" and len(word) > 1:
            del word[where]
        elif kind == "insert":
            word.insert(where, rnd.choice("aeiourst"))
        elif kind == "swap" and where + 1 < len(word):
            word[where], word[where + 1] = word[where + 1], word[where]
        else:
            word[where] = rnd.choice("aeiourst")
        word = "".join(word)
        for edits in (1, 2):
            fast = sorted(index._within(word, edits))
            plain = sorted((other, distance) for other in index.vocabulary
                           if (distance := engine_module._edit_distance(word, other, edits, transpositions)) <= edits)
            checked += 1
            agreed += fast == plain
            matched += len(plain)
report["fuzzy"] = {"checked": checked, "agreed": agreed, "matched": matched, "vocabulary": len(index.vocabulary)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def engine_checks() -> dict:
    python = str(ensure_server_env().python)
    code = f"ENGINE_FILE = {str(ENGINE_FILE)!r}\n" + ENGINE_CHECKS
    done = subprocess.run([python, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_index_of_the_first_schema_is_upgraded_and_searched(engine_checks):
    rows = engine_checks["old_rows"]
    expected = sorted(((1 + cosine([1.0, 0.0, 0.0], value)) / 2, key) for key, value in rows.items())[::-1]
    assert [key for key, _ in engine_checks["upgraded"]] == [key for _, key in expected]
    assert [score for _, score in engine_checks["upgraded"]] == pytest.approx([score for score, _ in expected])
    assert (engine_checks["schema"], engine_checks["blob"]) == ("2", "blob")


def test_another_process_catches_up_from_revisions_then_rebuilds_after_pruning(engine_checks):
    keys = list(engine_checks["old_rows"])
    assert engine_checks["same_matrix_updated"]  # updated in place, not rebuilt
    caught_up = engine_checks["caught_up"]
    # Toward +z: the new record (on it), then the records orthogonal to it; keys[0] now points away; keys[1] is gone.
    assert caught_up[0][1] != keys[0] and caught_up[0][0] == pytest.approx(1.0)
    assert caught_up[-1][1] == keys[0] and caught_up[-1][0] == pytest.approx(0.0, abs=1e-6)
    assert keys[1] not in {key for _, key in caught_up} and len(caught_up) == 3
    assert engine_checks["rebuilt"] and engine_checks["deletions_kept"] <= 2
    assert len(engine_checks["rebuilt_rows"]) == 3 and keys[1] not in engine_checks["rebuilt_rows"]


def test_the_parser_reads_pathological_queries(engine_checks):
    assert engine_checks["parsed"] == {
        "nested": "_Word(token='t')",  # parentheses this deep are read as characters, which the analyzer drops
        "long": [5000, ["should"]],  # one OR node of 5000 clauses
        "quotes": "None",  # pairs of empty phrases
        "tildes": "_Word(token='t')",  # "t~" then a fuzziness that is not a number: the plain term
    }


def test_fuzzy_words_over_a_whole_vocabulary_find_what_the_edit_distance_finds(engine_checks):
    fuzzy = engine_checks["fuzzy"]
    assert fuzzy["vocabulary"] > 1000 and fuzzy["checked"] == 160
    assert fuzzy["agreed"] == fuzzy["checked"] and fuzzy["matched"] > fuzzy["checked"]
