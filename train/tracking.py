"""Training curves in the experiment trackers practitioners already use: TensorBoard, MLflow, trackio.

`train lora --report-to tensorboard,mlflow,trackio` logs the loss, the learning rate, tokens/s and
each validation loss through the libraries themselves, offline: TensorBoard event files under
OUT/tensorboard, an MLflow run in a local file store OUT/mlruns (or wherever MLFLOW_TRACKING_URI
points), a trackio run in trackio's own local store (TRACKIO_DIR, else its cache folder; project
"smallset", so `trackio show --project smallset` finds every run). OUT/tracking.json records where,
so that `train eval` on the adapter adds its final metrics to the same run instead of starting a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from curate.atomic import write_text
from curate.library_log import to_log_file
from train.errors import TrainError

BACKENDS = ("tensorboard", "mlflow", "trackio")
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
        self._tb = self._mlflow = self._trackio = None
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
        if "trackio" in names:
            old = (previous or {}).get("trackio") or {}
            name = old.get("run") or f"{run_name or self.output_dir.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
            self._trackio = _trackio_run(name, params, resume="allow" if old else "never")
            self.record["trackio"] = {"dir": str(_trackio_dir()), "project": EXPERIMENT, "run": name}
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
        if self._trackio is not None:
            self._trackio.log(metrics, step=step)

    def close(self, status: str = "FINISHED") -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.set_terminated(self._run_id, status=status)
            self._mlflow = None
        if self._trackio is not None:  # trackio keeps no run status: finishing flushes what is queued
            _trackio_finish()
            self._trackio = None


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
    if "trackio" in names:
        if "trackio" not in sys.modules:  # trackio reads TRACKIO_DIR once, on import: the store training wrote to
            os.environ["TRACKIO_DIR"] = record["trackio"]["dir"]
        run = _trackio_run(record["trackio"]["run"], _trackio_config(record["trackio"]["run"]), resume="must")
        run.log({k: float(v) for k, v in metrics.items()}, step=step)
        _trackio_finish()
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


def _import_trackio():
    try:
        import trackio
    except ImportError:
        raise TrainError(f"--report-to trackio needs the trackio package: {_INSTALL}") from None
    return trackio


def _trackio_dir() -> Path:
    """trackio's local store; it reads TRACKIO_DIR once, when imported."""
    _import_trackio()
    from trackio.utils import TRACKIO_DIR

    return Path(TRACKIO_DIR).resolve()


@contextlib.contextmanager
def _quiet_trackio():
    """trackio prints its dashboard instructions to stdout: library noise, for the library log."""
    with to_log_file("trackio"), contextlib.redirect_stdout(sys.stderr):
        yield


def _trackio_run(name: str, config: dict[str, Any] | None, *, resume: str):
    """A local trackio run in project 'smallset' (`resume`: never, allow, must, as trackio.init takes it)."""
    trackio = _import_trackio()
    try:
        with _quiet_trackio():
            return trackio.init(project=EXPERIMENT, name=name, config=config, resume=resume, embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)
    except ValueError as exc:  # resume='must' of a run that is gone (another TRACKIO_DIR, a deleted project)
        raise TrainError(f"trackio at {_trackio_dir()}: {exc}") from None


def _trackio_finish() -> None:
    """Flush and end the current run (the one the last init made): trackio's exit hook then has none left."""
    trackio = _import_trackio()
    with _quiet_trackio():
        trackio.finish()


def _trackio_config(name: str) -> dict[str, Any] | None:
    """The run's settings as training logged them: trackio replaces a run's config when it is resumed."""
    try:
        runs = list(_import_trackio().Api().runs(EXPERIMENT))
    except ValueError:  # no such project: resuming the run says so
        return None
    for run in runs:
        if run.name == name:
            return {k: v for k, v in (run.config or {}).items() if not k.startswith("_")}
    return None
