"""`curate review serve`: the real argilla-server 2.8 on 127.0.0.1, driven with the real argilla SDK.

One server starts for the whole module (session fixture, temporary workspace,
free port) through the same `ReviewServer` code the CLI uses. The last test
stops it, starts it again with the CLI (`serve` in a subprocess) on the same
workspace, checks that the records survived, adds an annotator, and stops it
with `curate review stop`, leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from curate.review.server import ReviewServer, ReviewServerError, free_port

import argilla as rg  # noqa: E402

TEXTS = [
    ("I want a refund for my broken headphones", "forum", 8),
    ("The app crashes when I open settings", "email", 7),
    ("Refund please, the order arrived late", "email", 6),
    ("How do I reset my password?", "chat", 6),
    ("Great support, thanks a lot", "forum", 5),
]
VECTORS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]
CLI = [sys.executable, "-m", "curate.review.cli"]


class Review:
    """The module's server: where it runs and how to talk to it."""

    def __init__(self, workspace: Path, port: int) -> None:
        self.workspace, self.port = workspace, port
        self.server: ReviewServer | None = ReviewServer(workspace=workspace, port=port)
        self.url = f"http://127.0.0.1:{port}"

    @property
    def api_key(self) -> str:
        return json.loads((self.workspace / "owner.json").read_text())["api_key"]

    def client(self) -> "rg.Argilla":
        return rg.Argilla(api_url=self.url, api_key=self.api_key)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Argilla-Api-Key": self.api_key}, timeout=30)


@pytest.fixture(scope="session")
def review(tmp_path_factory):
    review = Review(tmp_path_factory.mktemp("review") / "ws", free_port())
    review.server.start()
    try:
        yield review
    finally:
        if review.server is not None:
            review.server.stop()


@pytest.fixture(scope="session")
def dataset(review):
    client = review.client()
    workspace = rg.Workspace(name="tests", client=client).create()
    settings = rg.Settings(
        fields=[rg.TextField(name="text")],
        questions=[rg.LabelQuestion(name="label", labels=["refund", "bug", "other"])],
        metadata=[rg.TermsMetadataProperty(name="source"), rg.IntegerMetadataProperty(name="words")],
        vectors=[rg.VectorField(name="emb", dimensions=3)],
    )
    dataset = rg.Dataset(name="tickets", workspace=workspace, settings=settings, client=client).create()
    dataset.records.log(
        [
            rg.Record(fields={"text": text}, metadata={"source": source, "words": words}, vectors={"emb": vector})
            for (text, source, words), vector in zip(TEXTS, VECTORS)
        ]
    )
    return dataset


def texts(records) -> set[str]:
    return {record.fields["text"] for record in records}


def test_sdk_lists_filters_and_searches(dataset):
    assert texts(dataset.records) == {text for text, _, _ in TEXTS}

    email = dataset.records(query=rg.Query(filter=rg.Filter(("metadata.source", "==", "email"))))
    assert texts(email) == {TEXTS[1][0], TEXTS[2][0]}
    some = dataset.records(query=rg.Query(filter=rg.Filter(("metadata.source", "in", ["chat", "forum"]))))
    assert len(list(some)) == 3
    long = dataset.records(query=rg.Query(filter=rg.Filter([("metadata.words", ">=", 7)])))
    assert texts(long) == {TEXTS[0][0], TEXTS[1][0]}

    refund = list(dataset.records(query=rg.Query(query="refund")))
    assert texts(refund) == {TEXTS[0][0], TEXTS[2][0]}
    assert texts(dataset.records(query=rg.Query(query="refund", filter=("metadata.source", "==", "forum")))) == {
        TEXTS[0][0]
    }
    assert texts(dataset.records(query=rg.Query(query='"order arrived"'))) == {TEXTS[2][0]}
    assert not list(dataset.records(query=rg.Query(query="nonexistentword")))

    pending = dataset.records(query=rg.Query(filter=rg.Filter(("status", "==", "pending"))))
    assert len(list(pending)) == 5


def test_sort_pagination_and_ui_queries(review, dataset):
    """What the web UI asks: sorted pages, the user's pending queue, metadata metrics, progress."""
    with review.http() as http:
        url = f"/api/v1/datasets/{dataset.id}/records/search"
        body = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "words"}, "order": "desc"}]}
        page = http.post(url, params={"offset": 1, "limit": 2}, json=body).json()
        assert page["total"] == 5
        assert [item["record"]["metadata"]["words"] for item in page["items"]] == [7, 6]

        me = f"/api/v1/me/datasets/{dataset.id}/records/search"
        pending = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                        "values": ["pending"]}]}}
        assert http.post(me, json=pending).json()["total"] == 5

        # Answer one record as the owner: it leaves the owner's pending queue and becomes completed.
        record_id = page["items"][0]["record"]["id"]  # "The app crashes ...", 7 words
        response = {"values": {"label": {"value": "bug"}}, "status": "submitted"}
        assert http.post(f"/api/v1/records/{record_id}/responses", json=response).status_code == 201
        assert http.post(me, json=pending).json()["total"] == 4
        submitted = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                          "values": ["submitted"]}]}}
        assert http.post(me, json=submitted).json()["total"] == 1
        by_label = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "question": "label"},
                                         "values": ["bug"]}]}}
        assert http.post(url, json=by_label).json()["total"] == 1
        assert len(list(dataset.records(query=rg.Query(filter=("status", "==", "completed"))))) == 1

        progress = http.get(f"/api/v1/datasets/{dataset.id}/progress").json()
        assert (progress["total"], progress["completed"], progress["pending"]) == (5, 1, 4)
        mine = http.get(f"/api/v1/me/datasets/{dataset.id}/metrics").json()
        assert (mine["responses"]["submitted"], mine["responses"]["pending"]) == (1, 4)

        properties = http.get(f"/api/v1/me/datasets/{dataset.id}/metadata-properties").json()["items"]
        ids = {p["name"]: p["id"] for p in properties}
        words = http.get(f"/api/v1/metadata-properties/{ids['words']}/metrics").json()
        assert (words["min"], words["max"]) == (5, 8)
        sources = http.get(f"/api/v1/metadata-properties/{ids['source']}/metrics").json()
        assert {v["term"]: v["count"] for v in sources["values"]} == {"email": 2, "forum": 2, "chat": 1}


def test_similarity_search(dataset):
    similar = list(dataset.records(query=rg.Query(similar=rg.Similar(name="emb", value=[1.0, 0.0, 0.0]))))
    assert [record.fields["text"] for record, _ in similar[:2]] == [TEXTS[0][0], TEXTS[2][0]]
    scores = [score for _, score in similar]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
    least = list(dataset.records(query=rg.Query(similar=rg.Similar(name="emb", value=[1.0, 0.0, 0.0],
                                                                     most_similar=False))))
    assert least[0][0].fields["text"] in {TEXTS[1][0], TEXTS[3][0]}  # orthogonal to the query


def test_updates_and_deletions_reach_the_index(review):
    client = review.client()
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.TextQuestion(name="note")],
                           metadata=[rg.TermsMetadataProperty(name="tag")])
    scratch = rg.Dataset(name="scratch", workspace="tests", settings=settings, client=client).create()
    scratch.records.log([rg.Record(id=f"r{i}", fields={"text": f"note number {i}"}, metadata={"tag": "old"},
                                   suggestions=[rg.Suggestion("note", f"first {i}", agent="a")])
                         for i in range(3)])
    scratch.records.log([rg.Record(id="r0", fields={"text": "note number 0"}, metadata={"tag": "new"},
                                   suggestions=[rg.Suggestion("note", "second 0", agent="b")])])
    assert texts(scratch.records(query=rg.Query(filter=("metadata.tag", "==", "new")))) == {"note number 0"}
    # Upserting a record again replaces its suggestion for the question (one per question), in SQL and in the index.
    suggested = {record.id: [(s.value, s.agent) for s in record.suggestions] for record in scratch.records}
    assert suggested == {"r0": [("second 0", "b")], "r1": [("first 1", "a")], "r2": [("first 2", "a")]}
    assert not list(scratch.records(query=rg.Query(filter=rg.Filter(("note.suggestion", "==", "first 0")))))
    assert [r.id for r in scratch.records(query=rg.Query(filter=rg.Filter(("note.suggestion", "==", "second 0"))))] == [
        "r0"
    ]

    scratch.records.delete([next(iter(scratch.records(query=rg.Query(query="1"))))])
    assert texts(scratch.records(query=rg.Query(query="note"))) == {"note number 0", "note number 2"}

    dataset_id = str(scratch.id)
    scratch.delete()
    with sqlite3.connect(review.workspace / "argilla" / "search-index.sqlite3") as index:
        assert index.execute("SELECT count(*) FROM records WHERE dataset_id = ?", (dataset_id,)).fetchone() == (0,)


def test_sorted_pages_text_search_and_queues_follow_changes(review):
    """The engine keeps sort keys, text indexes and each user's order between requests: a change must reach them."""
    client = review.client()
    settings = rg.Settings(fields=[rg.TextField(name="text")], questions=[rg.TextQuestion(name="note")],
                           metadata=[rg.IntegerMetadataProperty(name="n")])
    views = rg.Dataset(name="views", workspace="tests", settings=settings, client=client).create()
    views.records.log([rg.Record(id=f"v{i}", fields={"text": f"alpha item {i}"}, metadata={"n": i})
                       for i in range(1, 4)])
    search = f"/api/v1/datasets/{views.id}/records/search"
    by_n = {"sort": [{"scope": {"entity": "metadata", "metadata_property": "n"}, "order": "desc"}]}
    me = f"/api/v1/me/datasets/{views.id}/records/search"
    pending = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                    "values": ["pending"]}]}}

    def sorted_texts(http) -> list[str]:
        return [item["record"]["fields"]["text"] for item in http.post(search, json=by_n).json()["items"]]

    def found(http, word: str) -> set[str]:
        body = {"query": {"text": {"q": word}}}
        return {item["record"]["fields"]["text"] for item in http.post(search, json=body).json()["items"]}

    def queue(http) -> list[str]:
        return [item["record"]["id"] for item in http.post(me, params={"limit": 10}, json=pending).json()["items"]]

    with review.http() as http:
        assert sorted_texts(http) == ["alpha item 3", "alpha item 2", "alpha item 1"]
        assert found(http, "alpha") == {"alpha item 1", "alpha item 2", "alpha item 3"}
        first_queue = queue(http)
        assert queue(http) == first_queue and len(first_queue) == 3  # a user's order is stable

        views.records.log([rg.Record(id="v1", fields={"text": "beta item 1"}, metadata={"n": 9})])
        assert sorted_texts(http) == ["beta item 1", "alpha item 3", "alpha item 2"]
        assert found(http, "alpha") == {"alpha item 2", "alpha item 3"}
        assert found(http, "beta") == {"beta item 1"}

        answered = first_queue[0]
        response = {"values": {"note": {"value": "seen"}}, "status": "submitted"}
        assert http.post(f"/api/v1/records/{answered}/responses", json=response).status_code == 201
        assert queue(http) == [record_id for record_id in first_queue if record_id != answered]


def test_owner_credentials_are_private(review):
    owner = review.workspace / "owner.json"
    assert stat.S_IMODE(owner.stat().st_mode) == 0o600
    assert set(json.loads(owner.read_text())) == {"username", "password", "api_key"}


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on port, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_answers_only_on_loopback(review):
    assert httpx.get(f"{review.url}/api/v1/version").json() == {"version": "2.8.0"}
    if Path("/proc/net/tcp").exists():
        assert _listening_addresses(review.port) == {"0100007F"}  # 127.0.0.1, and nothing else
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outward address
        outward = probe.getsockname()[0]
    except OSError:
        outward = None
    finally:
        probe.close()
    if outward and not outward.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((outward, review.port), timeout=2).close()


def test_a_foreign_host_header_is_refused(review):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own name as Host."""
    url = f"{review.url}/api/v1/version"
    assert httpx.get(url, headers={"Host": f"evil.example:{review.port}"}).status_code == 400
    assert httpx.get(url, headers={"Host": f"localhost:{review.port}"}).status_code == 200
    assert httpx.get(url).status_code == 200  # 127.0.0.1, as every client here sends it


def test_web_ui_is_served(review):
    page = httpx.get(review.url + "/", follow_redirects=True)
    assert page.status_code == 200 and "<title>Argilla</title>" in page.text


def test_one_server_per_workspace(review):
    with pytest.raises(ReviewServerError, match="already runs"):
        ReviewServer(workspace=review.workspace, port=free_port()).start()
    assert review.server.failed_child() is None  # the running one is untouched


def test_serve_refuses_a_busy_port_and_defers_to_a_deployment(review, tmp_path):
    busy = subprocess.run([*CLI, "serve", "--workspace", str(tmp_path / "other"), "--port", str(review.port)],
                          capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and "already in use" in busy.stderr

    env = {**os.environ, "ARGILLA_API_URL": "http://argilla.example:6900", "ARGILLA_API_KEY": "k"}
    external = subprocess.run([*CLI, "serve", "--workspace", str(tmp_path / "other")],
                              capture_output=True, text=True, timeout=60, env=env)
    assert external.returncode == 0 and "http://argilla.example:6900" in external.stderr
    assert not (tmp_path / "other").exists()


def _process_group(pgid: int) -> list[int]:
    """Pids of the live processes in a process group (from /proc)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat_file.parent.name))
    return members


def _ready(pid_file: Path) -> bool:
    try:
        return json.loads(pid_file.read_text()).get("ready", False)
    except (OSError, ValueError):
        return False


def test_restart_with_the_cli_keeps_records_then_stop(review, dataset):
    review.server.stop()
    review.server = None
    ws = str(review.workspace)
    serve = subprocess.Popen([*CLI, "serve", "--workspace", ws, "--port", str(review.port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        pid_file = review.workspace / "server.json"
        while not _ready(pid_file) and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ready(pid_file), serve.stderr.read() if serve.poll() is not None else "not ready in time"
        children = json.loads(pid_file.read_text())["children"]
        api_processes = _process_group(children["api"]["pid"])
        assert len(api_processes) == 2  # the default --api-workers

        client = review.client()
        again = client.datasets(name="tickets", workspace="tests")
        assert texts(again.records) == {text for text, _, _ in TEXTS}
        assert texts(again.records(query=rg.Query(query="refund", filter=("metadata.source", "==", "email")))) == {
            TEXTS[2][0]
        }
        assert len(list(again.records(query=rg.Query(filter=("status", "==", "completed"))))) == 1

        added = subprocess.run([*CLI, "users", "add", "alice", "--workspace", ws],
                               capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        password = added.stdout.strip()
        assert len(password) >= 12
        alice = client.users("alice")
        assert alice is not None and alice.role == "annotator"
        token = httpx.post(f"{review.url}/api/v1/token", data={"username": "alice", "password": password})
        assert token.status_code == 201
        # Every API process accepts the session one of them signed (new connections spread over them).
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        for _ in range(8):
            assert httpx.get(f"{review.url}/api/v1/me", headers=bearer).json()["username"] == "alice"

        stopped = subprocess.run([*CLI, "stop", "--workspace", ws], capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0 and "stopped" in stopped.stderr
        assert serve.wait(30) == 0
        assert not pid_file.exists()
        for pid in [child["pid"] for child in children.values()] + api_processes:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)


def test_a_sigkilled_serve_leaves_no_process_and_the_port_serves_again(tmp_path):
    """kill -9 of `curate review serve`: Redis, the worker and every API process go with it (the API used to keep
    serving, and a new serve then found the port taken); serving again on the same port works."""
    ws, port = tmp_path / "ws", free_port()

    def serve() -> tuple[subprocess.Popen, dict]:
        proc = subprocess.Popen([*CLI, "serve", "--workspace", str(ws), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 150

        def up() -> bool:  # this serve's pid file says ready (a killed one's stays behind until the next start)
            return _ready(ws / "server.json") and json.loads((ws / "server.json").read_text())["pid"] == proc.pid

        while not up() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert up(), proc.stderr.read() if proc.poll() is not None else "not ready in time"
        return proc, json.loads((ws / "server.json").read_text())["children"]

    first, children = serve()
    processes = [c["pid"] for c in children.values()] + _process_group(children["api"]["pid"])
    assert len(processes) >= 4  # redis, worker, two API processes
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    deadline = time.monotonic() + 60
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"still running after the SIGKILL of serve: {alive}: " + "; ".join(
        Path(f"/proc/{p}/stat").read_text()[:80] for p in alive) + (ws / "logs" / "api.log").read_text()[-2000:]

    second, _ = serve()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/version").status_code == 200
    finally:
        stopped = subprocess.run([*CLI, "stop", "--workspace", str(ws)], capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        second.wait(60)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
