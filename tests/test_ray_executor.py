"""`--executor ray` on a real two-node Ray cluster started by the test: every step gives what `local` gives.

The cluster is `ray.cluster_utils.Cluster`: a head and a second node, one CPU each, as separate
raylets on this machine. Each step runs through the real CLI twice, locally and on the cluster
(the CLI joins it with --ray-address), on real text (docstrings, tests/corpus.py) with planted
copies and flipped labels; the kept rows, and the drops' id, reason and duplicate_of, must be
equal. One test kills the second node while a step's tasks run on it: Ray reruns them on the
head and the output is still the local one.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import psutil
import ray.cluster_utils  # the ray extra is part of `make setup`

from corpus import docstring_corpus, flip_labels

CURATE = str(Path(sys.executable).parent / "curate")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    cluster = ray.cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cluster.worker = worker
    yield cluster
    cluster.shutdown()


def _rows(texts_labels, rng: random.Random) -> list[dict]:
    rows = [{"id": f"r{k}", "prompt": text, "completion": label, "label": label} for k, (text, label) in enumerate(texts_labels)]
    planted = []
    for k in range(0, len(rows), 9):
        planted.append({**rows[k], "id": f"copy{k}"})
        words = rows[k]["prompt"].split()
        if len(words) > 30:
            words[len(words) // 2] = "altered"
            planted.append({**rows[k], "id": f"near{k}", "prompt": " ".join(words)})
    rows += planted
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ray")
    corpus, _ = flip_labels(docstring_corpus(), share=0.1, seed=3)
    rows = _rows([(r["text"], r["label"]) for r in corpus], random.Random(5))
    test_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows[:15]]
    for name, content in (("raw.jsonl", rows), ("test.jsonl", test_rows)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in content))
    for name in ("raw", "test"):
        _curate("ingest", tmp / f"{name}.jsonl", "-o", tmp / f"{name}.parquet")
    return {"dir": tmp, "raw": tmp / "raw.parquet", "test": tmp / "test.parquet"}


def _curate(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def _no_cache() -> dict:
    return {**os.environ, "SMALLSET_EMBED_CACHE": "off"}  # each run computes its own vectors


def _same_outcome(local: Path, ray: Path) -> None:
    kept_local, kept_ray = pl.read_parquet(local), pl.read_parquet(ray)
    assert kept_ray["id"].to_list() == kept_local["id"].to_list()
    assert kept_ray.columns == kept_local.columns
    drops_local, drops_ray = (pl.read_parquet(f"{p}.drops.parquet") for p in (local, ray))
    key = ["id", "reason", "duplicate_of"]
    assert drops_ray.select(key).to_dicts() == drops_local.select(key).to_dicts()
    assert drops_ray["similarity"].fill_null(0).to_list() == pytest.approx(drops_local["similarity"].fill_null(0).to_list(), abs=1e-5)


STEPS = {
    "exact+near dedup": ["dedup", "--method", "exact", "--method", "near"],
    "semantic dedup": ["dedup", "--method", "semantic", "--semantic-threshold", "0.9"],
    "filter": ["filter", "--max-tokens", "48", "--languages", "en"],
    "check-labels": ["check-labels"],
    "select": ["select", "--size", "120"],
    "decontaminate": ["decontaminate"],
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_step_on_two_nodes_gives_the_local_result(step, cluster, data):
    tmp, args = data["dir"], list(STEPS[step])
    if step == "decontaminate":
        args += ["--against", str(data["test"])]
    slug = step.replace(" ", "_").replace("+", "_")
    local, ray = tmp / f"{slug}-local.parquet", tmp / f"{slug}-ray.parquet"
    _curate(*args, data["raw"], "-o", local, env=_no_cache())
    _curate(*args, data["raw"], "-o", ray, "--executor", "ray", "--ray-address", cluster.address, env=_no_cache())
    _same_outcome(local, ray)
    drops = pl.read_parquet(f"{local}.drops.parquet")
    assert drops.height > 0, "the planted copies, flipped labels, long rows or test overlap give every step something to drop"
    manifest = json.loads(Path(f"{ray}.manifest.json").read_text())
    assert manifest["executor"]["name"] == "ray" and manifest["executor"]["nodes"] == 2
    assert manifest["parameters"] == json.loads(Path(f"{local}.manifest.json").read_text())["parameters"]


def test_a_step_error_on_ray_is_the_step_error(cluster, data, tmp_path):
    out = tmp_path / "out.parquet"
    proc = subprocess.run([CURATE, "filter", str(data["raw"]), "--min-score", "judge_score=3", "-o", str(out),
                           "--executor", "ray", "--ray-address", cluster.address], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "judge_score" in proc.stderr and "Traceback" not in proc.stderr and "RayTaskError" not in proc.stderr
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()


def test_ingest_on_two_nodes_reads_every_input_as_local_does(cluster, data, tmp_path):
    """`curate ingest --executor ray`: one task per input (JSONL, CSV, Parquet), the same records and manifest inputs;
    a bad line in one input is the local error, naming the file and line, and nothing is written."""
    rows = pl.read_parquet(data["raw"])
    texts = [turns[0]["content"] for turns in rows["messages"].to_list()]
    jsonl, csv, parquet = tmp_path / "a.jsonl", tmp_path / "b.csv", tmp_path / "c.parquet"
    jsonl.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts[:60], rows["label"])))
    pl.DataFrame({"text": texts[60:120], "label": rows["label"][60:120]}).write_csv(csv)
    pl.DataFrame({"text": texts[120:200], "label": rows["label"][120:200]}).write_parquet(parquet)
    inputs = [jsonl, csv, parquet]
    local, ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _curate("ingest", *inputs, "-o", local)
    _curate("ingest", *inputs, "-o", ray, "--executor", "ray", "--ray-address", cluster.address)
    assert pl.read_parquet(ray).equals(pl.read_parquet(local))
    manifests = [json.loads(Path(f"{p}.manifest.json").read_text()) for p in (local, ray)]
    assert manifests[1]["inputs"] == manifests[0]["inputs"] and manifests[1]["executor"]["name"] == "ray"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(jsonl.read_text() + "{not json\n")
    errors = []
    for extra in ([], ["--executor", "ray", "--ray-address", cluster.address]):
        out = tmp_path / f"bad-{len(extra)}.parquet"
        proc = subprocess.run([CURATE, "ingest", str(jsonl), str(bad), "-o", str(out), *extra],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and not out.exists()
        assert "Traceback" not in proc.stderr and "RayTaskError" not in proc.stderr
        errors.append(proc.stderr.strip().splitlines()[-1])
    assert errors[0] == errors[1] and "bad.jsonl" in errors[0] and "61" in errors[0]


def test_the_local_executor_never_imports_ray(data, tmp_path):
    script = ("import sys\nfrom click.testing import CliRunner\nfrom curate.cli import main\n"
              f"r = CliRunner().invoke(main, ['dedup', {str(data['raw'])!r}, '-o', {str(tmp_path / 'o.parquet')!r}])\n"
              "assert r.exit_code == 0, r.output\nprint('ray' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def _busy_task_on(node) -> bool:
    """Whether a worker process of `node` (a child of its raylet) is running one of our tasks."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for child in raylet.children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ray::_" in title and "IDLE" not in title:
            return True
    return False


def test_killing_a_node_mid_step_still_gives_the_local_result(cluster, data, tmp_path):
    rng = random.Random(11)
    corpus = docstring_corpus()
    texts = [" ".join(rng.choice(corpus)["text"] for _ in range(4)) for _ in range(30_000)]
    texts += [t + " again" for t in texts[:3_000]]  # near copies
    pl.DataFrame({"prompt": texts, "completion": ["x"] * len(texts)}).write_parquet(tmp_path / "big.parquet")
    _curate("ingest", tmp_path / "big.parquet", "-o", tmp_path / "in.parquet")
    args = ["dedup", tmp_path / "in.parquet", "--method", "near"]
    _curate(*args, "-o", tmp_path / "local.parquet")

    worker = cluster.worker
    proc = subprocess.Popen([CURATE, *map(str, args), "-o", str(tmp_path / "ray.parquet"), "--executor", "ray",
                             "--ray-address", cluster.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _busy_task_on(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the step ended before a task ran on the second node"
    cluster.remove_node(worker, allow_graceful=False)
    cluster.worker = cluster.add_node(num_cpus=1)  # for any test that runs after this one
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    _same_outcome(tmp_path / "local.parquet", tmp_path / "ray.parquet")
