"""Training curves in the experiment trackers practitioners already use: TensorBoard and MLflow.

`train lora --report-to tensorboard,mlflow` logs the loss, the learning rate, tokens/s and each
validation loss through the libraries themselves, offline: TensorBoard event files under
OUT/tensorboard, an MLflow run in a local file store OUT/mlruns (or wherever MLFLOW_TRACKING_URI
points). OUT/tracking.json records where, so that `train eval` on the adapter adds its final
metrics to the same run instead of starting a new one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from curate.atomic import write_text
from train.errors import TrainError

BACKENDS = ("tensorboard", "mlflow")
TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
EXPERIMENT = "smallset"
_INSTALL = "pip install 'smallset[tracking]'"


def parse_report_to(values: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Backend names from repeated and/or comma-separated values; "none" (or nothing) is no tracking."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name or name == "none":
                continue
            if name not in BACKENDS:
                raise TrainError(f"--report-to: unknown tracker {name!r}; choose from {', '.join(BACKENDS)} or none")
            if name not in names:
                names.append(name)
    return names


class Tracker:
    """Every chosen backend behind one `log(metrics, step)`; no backends: does nothing."""

    def __init__(self, output_dir: Path, names: list[str], *, params: dict[str, Any] | None = None,
                 run_name: str | None = None, resume: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.names = names
        self.record: dict[str, Any] = {"report_to": names}
        previous = read_record(self.output_dir) if resume else None
        self._tb = self._mlflow = None
        self._run_id: str | None = None
        if "tensorboard" in names:
            self._tb = _summary_writer(self.output_dir / TENSORBOARD_DIR)
            self.record["tensorboard"] = {"logdir": str((self.output_dir / TENSORBOARD_DIR).resolve())}
        if "mlflow" in names:
            old = (previous or {}).get("mlflow") or {}
            self._mlflow, self._run_id, uri = _mlflow_run(self.output_dir, run_name, old.get("run_id"))
            self.record["mlflow"] = {"tracking_uri": uri, "run_id": self._run_id}
            if params and not old.get("run_id"):
                self._mlflow.log_batch(self._run_id, params=_mlflow_params(params))
        if names:
            write_text(self.output_dir / TRACKING_FILE, json.dumps(self.record, indent=2) + "\n")

    def log(self, metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._mlflow.log_batch(self._run_id, metrics=[Metric(_mlflow_key(k), v, now, step) for k, v in metrics.items()])

    def close(self, status: str = "FINISHED") -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.set_terminated(self._run_id, status=status)
            self._mlflow = None


def read_record(output_dir: Path) -> dict[str, Any] | None:
    """OUT/tracking.json, or None when the run was not tracked."""
    path = Path(output_dir) / TRACKING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}: not valid JSON ({exc})") from None


def log_eval(adapter_dir: Path, report: dict[str, Any]) -> list[str]:
    """Append `train eval`'s final metrics (per contender) to the adapter's tracked run; the backends used."""
    output_dir = Path(adapter_dir).parent
    record = read_record(output_dir)
    if not record or not record.get("report_to"):
        return []
    step = int(record.get("last_step", 0))
    metrics: dict[str, float] = {}
    for contender, values in (report.get("results") or {}).items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"eval/{contender}/{key}"] = value
    names = parse_report_to(record["report_to"])
    if "tensorboard" in names:
        writer = _summary_writer(Path(record["tensorboard"]["logdir"]))
        for key, value in metrics.items():
            writer.add_scalar(key, float(value), step)
        writer.close()
    if "mlflow" in names:
        from mlflow.entities import Metric

        client = _mlflow_client(record["mlflow"]["tracking_uri"])
        now = int(time.time() * 1000)
        client.log_batch(record["mlflow"]["run_id"], metrics=[Metric(_mlflow_key(k), float(v), now, step) for k, v in metrics.items()])
    return names


def finish(tracker: Tracker, last_step: int, summary: dict[str, float]) -> None:
    """Log the run's summary, note its last step (where eval's metrics go) and close the backends."""
    if not tracker.names:
        return
    tracker.log(summary, last_step)
    tracker.record["last_step"] = last_step
    write_text(tracker.output_dir / TRACKING_FILE, json.dumps(tracker.record, indent=2) + "\n")
    tracker.close()


# -- backends ---------------------------------------------------------------------------


def _summary_writer(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(f"--report-to tensorboard needs the tensorboard package: {_INSTALL}") from None
    return SummaryWriter(log_dir=str(logdir))


def _mlflow_client(uri: str):
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3.x refuses a plain folder store unless told: it is the offline default here (no
        # database, no server), and MLflow's UI and client still read it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrainError(f"--report-to mlflow needs the mlflow package (mlflow-skinny is enough): {_INSTALL}") from None
    return MlflowClient(tracking_uri=uri)


def _mlflow_run(output_dir: Path, run_name: str | None, run_id: str | None):
    """(client, run id, tracking URI): the run `run_id` again on resume, else a new one in experiment 'smallset'."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(output_dir).resolve() / "mlruns").as_uri()
    client = _mlflow_client(uri)
    try:
        if run_id:
            client.update_run(run_id, status="RUNNING")
            return client, run_id, uri
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=run_name, tags={"smallset.output": str(Path(output_dir).resolve())})
    except Exception as exc:  # an unreachable server, a store it cannot write
        raise TrainError(f"MLflow at {uri}: {exc}") from None
    return client, run.info.run_id, uri


def _mlflow_params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:500]) for k, v in params.items()]


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and spaces; contender names may hold others."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
