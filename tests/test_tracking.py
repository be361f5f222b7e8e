"""`train lora --report-to tensorboard,mlflow,trackio`: curves written through the real libraries, read back with them.

One real training run (3 optimizer steps of the default SmolLM2 on 12 rows) and one real `train eval`
on its adapter (one vLLM engine start); the TensorBoard event files are read with EventAccumulator,
the MLflow run with MlflowClient and the trackio run with trackio's own storage. The same two runs
show a quiet console: what transformers, trackio and vLLM print is in the library log, not on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import run_train, write_jsonl
from recipes.options import command_args
from test_train_eval import test_rows, train_rows
from train.cli import main as train_cli
from train.tracking import TRACKING_FILE, Tracker

# A reader of the folder store needs MLflow 3's opt-in as much as the writer (train.tracking sets it for itself).
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tracking")
    data = write_jsonl(root / "train.jsonl", train_rows())
    test = write_jsonl(root / "test.jsonl", test_rows())
    out, logs = root / "lora", root / "logs"
    trained = run_train("lora", data, "-o", out, "--epochs", "1", "--batch-size", "4", "--micro-batch-size", "4",
                        "--val-size", "2", "--max-length", "64", "--seed", "3", "--quiet",
                        "--report-to", "tensorboard,mlflow", "--report-to", "trackio",
                        env={"TRACKIO_DIR": str(root / "trackio"), "SMALLSET_LOG_FILE": str(logs / "train.log")})
    record = json.loads((out / TRACKING_FILE).read_text())
    manifest = json.loads((out / "adapter.manifest.json").read_text())
    before = _mlflow_history(record, "eval/adapter/accuracy"), _trackio_run(record)["logs"]
    # No TRACKIO_DIR here: eval finds the store through OUT/tracking.json.
    proc = run_train("eval", out, "--test", test, "-o", root / "eval", "--max-model-len", "512", "--quiet",
                     env={"SMALLSET_LOG_FILE": str(logs / "eval.log")})
    report = json.loads((root / "eval" / "eval.json").read_text())
    return {"root": root, "out": out, "record": record, "manifest": manifest, "report": report, "before_eval": before,
            "output": proc.stdout + proc.stderr, "train_output": trained.stdout + trained.stderr,
            "train_log": (logs / "train.log").read_text(), "eval_log": (logs / "eval.log").read_text()}


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow_history(record: dict, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(record["mlflow"]["tracking_uri"])
    return [(m.step, m.value) for m in client.get_metric_history(record["mlflow"]["run_id"], key)]


def _trackio_run(record: dict) -> dict:
    """The run's config and logged rows, read by trackio itself from the store training named (it reads
    TRACKIO_DIR once, on import: a process of its own)."""
    code = ("import json, sys, trackio\nfrom trackio.sqlite_storage import SQLiteStorage\n"
            "name = sys.argv[1]\nrun = next(r for r in trackio.Api().runs('smallset') if r.name == name)\n"
            "print(json.dumps({'config': run.config, 'logs': SQLiteStorage.get_logs('smallset', name)}, default=str))\n")
    proc = subprocess.run([sys.executable, "-c", code, record["trackio"]["run"]], capture_output=True, text=True,
                          env={**os.environ, "TRACKIO_DIR": record["trackio"]["dir"]}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _series(logs: list[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in logs if row.get(key) is not None]


def test_tensorboard_holds_the_training_curves(tracked):
    manifest, out = tracked["manifest"], tracked["out"]
    scalars = _scalars(str(out / "tensorboard"))
    steps = manifest["counts"]["steps"]
    losses = scalars["train/loss"]
    assert [s for s, _ in losses] == list(range(1, steps + 1))
    assert [round(v, 4) for _, v in losses] == [round(e["loss"], 4) for e in manifest["metrics"]["train_loss"]]
    val = dict(scalars["eval/val_loss"])
    assert val[0] == pytest.approx(manifest["metrics"]["base_val_loss"], rel=1e-5)
    for e in manifest["metrics"]["evaluations"]:
        assert val[e["step"]] == pytest.approx(e["val_loss"], rel=1e-5)
    lrs = [v for _, v in scalars["train/learning_rate"]]
    assert len(lrs) == steps and all(0 < lr <= 2e-4 for lr in lrs) and lrs[-1] < max(lrs)  # warmup, then cosine decay
    assert all(v > 0 for _, v in scalars["train/tokens_per_s"])
    assert scalars["final/best_val_loss"][0][1] == pytest.approx(manifest["metrics"]["best_val_loss"], rel=1e-5)


def test_mlflow_run_holds_the_same_curves_and_settings(tracked):
    from mlflow.tracking import MlflowClient

    record, out, manifest = tracked["record"], tracked["out"], tracked["manifest"]
    assert record["mlflow"]["tracking_uri"] == (out / "mlruns").resolve().as_uri()
    run = MlflowClient(record["mlflow"]["tracking_uri"]).get_run(record["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "lora"
    assert run.data.params["rank"] == "16" and run.data.params["batch_size"] == "4"
    losses = _mlflow_history(record, "train/loss")
    assert sorted(losses) == sorted(_scalars(str(out / "tensorboard"))["train/loss"])
    assert run.data.metrics["final/tokens_per_s"] == pytest.approx(manifest["metrics"]["tokens_per_s"])


def test_trackio_run_holds_the_same_curves_and_settings(tracked):
    record, out = tracked["record"], tracked["out"]
    assert record["trackio"]["dir"] == str((tracked["root"] / "trackio").resolve())
    assert record["trackio"]["project"] == "smallset" and record["trackio"]["run"].startswith("lora-")
    run = _trackio_run(record)
    assert run["config"]["rank"] == 16 and run["config"]["batch_size"] == 4  # kept when eval resumed the run
    scalars = _scalars(str(out / "tensorboard"))
    for key in ("train/loss", "train/learning_rate", "eval/val_loss"):
        assert _series(run["logs"], key) == [(s, pytest.approx(v, rel=1e-5)) for s, v in scalars[key]]


def test_train_eval_adds_its_final_metrics_to_the_run(tracked):
    record, report = tracked["record"], tracked["report"]
    mlflow_before, trackio_before = tracked["before_eval"]
    assert mlflow_before == [] and _series(trackio_before, "eval/adapter/accuracy") == []
    assert "logged to: tensorboard, mlflow, trackio" in " ".join(tracked["output"].split())  # rich wraps lines
    last = record["last_step"]
    trackio_logs = _trackio_run(record)["logs"]
    for contender in ("adapter", "base", "kshot"):
        accuracy = report["results"][contender]["accuracy"]
        assert _mlflow_history(record, f"eval/{contender}/accuracy") == [(last, pytest.approx(accuracy))]
        assert _scalars(str(tracked["out"] / "tensorboard"))[f"eval/{contender}/accuracy"] == [(last, pytest.approx(accuracy))]
        assert _series(trackio_logs, f"eval/{contender}/accuracy") == [(last, pytest.approx(accuracy))]


# vLLM's log lines, from the main process and the engine processes it spawns.
VLLM_LINE = re.compile(r"\((?:MainProcess|EngineCore|\w*Worker[\w-]*) pid=\d+\) (?:DEBUG|INFO|WARNING|ERROR)")


def test_library_output_goes_to_the_log_not_the_console(tracked):
    train_out, train_log = tracked["train_output"], tracked["train_log"]
    assert "Loading weights" in train_log and "Trackio" in train_log  # transformers' loading bar, trackio's notices
    assert "Loading weights" not in train_out and "Trackio" not in train_out and "adapter:" in train_out
    eval_out, eval_log = tracked["output"], tracked["eval_log"]
    assert len(VLLM_LINE.findall(eval_log)) >= 3 and "EngineCore" in eval_log and "Loading safetensors" in eval_log
    assert VLLM_LINE.findall(eval_out) == [] and "WARNING" not in eval_out and "safetensors" not in eval_out
    assert "answering 6 test rows" in eval_out and "accuracy" in eval_out  # the command's own lines stay


def test_mlflow_tracking_uri_is_respected(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tracker = Tracker(tmp_path / "out", ["mlflow"], run_name="r")
    tracker.log({"train/loss": 1.5}, 1)
    tracker.close()
    record = json.loads((tmp_path / "out" / TRACKING_FILE).read_text())
    assert record["mlflow"]["tracking_uri"] == store and not (tmp_path / "out" / "mlruns").exists()
    history = MlflowClient(store).get_metric_history(record["mlflow"]["run_id"], "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5)]


def test_unknown_tracker_is_a_clear_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", train_rows())
    result = CliRunner().invoke(train_cli, ["lora", str(data), "-o", str(tmp_path / "out"), "--report-to", "tensorboard,wandb"])
    assert result.exit_code == 1 and "unknown tracker 'wandb'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / TRACKING_FILE).exists()


def test_recipe_report_to_passes_through():
    args = command_args(train_cli.commands["lora"], {"report-to": ["tensorboard", "mlflow"]}, where="train", path=Path("r.yaml"))
    assert args == ["--report-to", "tensorboard", "--report-to", "mlflow"]
    curve = command_args(train_cli.commands["curve"], {"report_to": "none"}, where="train", path=Path("r.yaml"))
    assert curve == ["--report-to", "none"]
