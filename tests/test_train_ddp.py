"""`train lora --devices 2`: data-parallel training as two gloo processes under torchrun, on the CPU.

The real default model (SmolLM2-135M-Instruct) on the tiny set of test_train: 16 training
rows, 2 optimizer steps of 8 rows. The runs go side by side through the installed `train`
script: on 2 processes, on 1 (the same effective batch), on 2 once more, stopped by a Ctrl-C
after its first checkpoint and resumed, and on 2, SIGKILLed as soon as its ranks run. Dropout
is off, so a step computes the same mean loss on 1 and on 2 processes and only the order of
float sums differs.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from click.testing import CliRunner

from conftest import marked_processes, write_jsonl
from test_train import FAST, TRAIN, adapter, manifest, rows
from train.cli import _command_line, lora
from train.cli import main as train_cli

MARK = "SMALLSET_TEST_DDP_RUN"  # in a run's environment, so inherited by the torchrun agent and every rank
COMMON = [*FAST, "--epochs", "1", "--eval-every", "1", "--dropout", "0"]
# fp32 sums in another order differ by about 1e-7 of the loss (measured: 3e-7 after two steps);
# a step that was not the whole batch's mean (a rank's rows only, or an unsynchronized gradient)
# moves the loss by 1e-2 or more.
REL = 1e-4


def start(data: Path, out: Path, *args: str) -> tuple[subprocess.Popen, str]:
    mark = uuid.uuid4().hex
    cmd = [str(TRAIN), "lora", str(data), "-o", str(out), *COMMON, *args]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", MARK: mark}
    # SIGINT as a terminal delivers it, even where this test runs in a shell that ignores it (a background job)
    restore = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore), mark


def marked(mark: str) -> list[psutil.Process]:
    return marked_processes(MARK, mark)


def ranks(mark: str) -> set[str]:
    """The RANK of each live rank of a run (the agent has none)."""
    out = set()
    for p in marked(mark):
        try:
            if "RANK" in (env := p.environ()):
                out.add(env["RANK"])
        except psutil.Error:
            continue
    return out


def gone(mark: str, timeout: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chats.jsonl", rows())


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    out: dict = {"root": root}
    two, two_mark = start(data, root / "two", "--devices", "2")
    one, _ = start(data, root / "one", "--devices", "1")
    stopped, stopped_mark = start(data, root / "stopped", "--devices", "2")
    seen: set[str] = set()
    state = root / "stopped" / "checkpoints" / "last" / "trainer_state.pt"
    while not state.exists() and stopped.poll() is None:
        seen |= ranks(two_mark)
        time.sleep(0.2)
    out["stopped_ranks"] = ranks(stopped_mark)
    stopped.send_signal(signal.SIGINT)  # Ctrl-C after the first checkpoint
    stdout, stderr = stopped.communicate(timeout=120)
    out["stopped"], out["stopped_code"] = stdout + stderr, stopped.returncode
    out["stopped_left"] = [p.cmdline() for p in gone(stopped_mark)]
    resumed, _ = start(data, root / "stopped", "--devices", "2", "--resume")

    killed, killed_mark = start(data, root / "killed", "--devices", "2")
    while ranks(killed_mark) != {"0", "1"} and killed.poll() is None:
        seen |= ranks(two_mark)
        time.sleep(0.2)
    out["killed_ranks"] = ranks(killed_mark)
    killed.kill()  # SIGKILL: no handler runs; the parent-death signals must stop the agent and the ranks
    killed.wait()
    out["killed_left"] = [p.cmdline() for p in gone(killed_mark)]
    while two.poll() is None:
        seen |= ranks(two_mark)
        time.sleep(0.2)
    for name, proc in (("two", two), ("one", one), ("resumed", resumed)):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
        out[name] = stdout + stderr
    out["two_ranks"] = seen
    out["two_left"] = [p.cmdline() for p in gone(two_mark)]
    return out


def test_two_processes_train_one_adapter_like_one_process(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from curate.models import resolve_llm

    assert runs["two_ranks"] == {"0", "1"}  # really two ranks, each started by torchrun
    two, one = manifest(runs["root"] / "two"), manifest(runs["root"] / "one")
    assert two["parameters"]["world_size"] == 2 and two["parameters"]["devices"] == 2
    assert one["parameters"]["world_size"] == 1
    for key in ("batch_size", "micro_batch_size", "grad_accumulation"):  # the same effective batch
        assert two["parameters"][key] == one["parameters"][key], key
    assert two["counts"] == one["counts"]  # rows, steps and every trained token counted once
    a, b = two["metrics"], one["metrics"]
    assert a["base_val_loss"] == pytest.approx(b["base_val_loss"], rel=REL)
    assert [e["step"] for e in a["evaluations"]] == [e["step"] for e in b["evaluations"]] == [1, 2]
    for x, y in zip(a["evaluations"], b["evaluations"]):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=REL)
    for x, y in zip(a["train_loss"], b["train_loss"]):  # the mean over the whole step's targets, not a rank's
        assert x["loss"] == pytest.approx(y["loss"], rel=REL)
    assert a["best_val_loss"] < a["base_val_loss"] - 0.1  # it learned: the tolerance is far below that
    weights, single = adapter(runs["root"] / "two"), adapter(runs["root"] / "one")
    assert weights.keys() == single.keys()
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in weights.items() if "lora_B" in k)
    for key in weights:  # Adam's first steps move a weight by about lr whatever its gradient's size, so a weight
        # whose gradient is float noise away from 0 may go either way (measured: 274 of 4.9M; 4e-4 of a tensor's norm)
        assert (weights[key] - single[key]).norm() <= 1e-2 * single[key].norm(), key
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_llm().path), runs["root"] / "two" / "adapter")
    assert model.peft_config["default"].r == 16


def test_rank_zero_alone_writes_and_speaks(runs):
    folder = runs["root"] / "two"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert [f for f in files if "manifest" in f or "metrics" in f] == ["adapter.manifest.json"]
    assert not [f for f in files if Path(f).name.startswith(".")]  # no temporaries left behind
    assert sorted({f.split("/")[0] for f in files}) == ["adapter", "adapter.manifest.json", "checkpoints", "curves.png", "split.json"]
    assert runs["two"].count("adapter: ") == 1 and runs["two"].count("rows are longer than 64 tokens") == 1
    assert "Traceback" not in runs["two"]


def test_no_process_outlives_the_run(runs):
    assert runs["two_left"] == []
    assert runs["killed_ranks"] == {"0", "1"}  # the kill came while both ranks ran
    assert runs["killed_left"] == []  # SIGKILL of the launcher took the agent and both ranks with it


def test_ctrl_c_stops_every_rank_and_resume_gives_the_uninterrupted_adapter(runs):
    assert runs["stopped_ranks"] == {"0", "1"} and runs["stopped_code"] == 130
    assert runs["stopped"].count("--resume` continues") == 1 and "Traceback" not in runs["stopped"]
    assert runs["stopped_left"] == []
    m = manifest(runs["root"] / "stopped")
    assert m["metrics"]["resumed_from_step"] == 1 and m["counts"]["steps"] == 2
    a, c = adapter(runs["root"] / "two"), adapter(runs["root"] / "stopped")
    for key in a:
        assert torch.equal(a[key], c[key]), key


def test_a_failing_rank_exits_with_its_code_and_one_clear_error(tmp_path):
    few = write_jsonl(tmp_path / "few.jsonl", rows(9))
    proc = subprocess.run([str(TRAIN), "lora", str(few), "-o", str(tmp_path / "out"), "--devices", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.count("9 rows; training needs at least 10") == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("value, message", [("0", "'0': give a number of processes"), ("two", "'two': give a number")])
def test_bad_devices_are_clear_errors(data, tmp_path, value, message):
    result = CliRunner().invoke(train_cli, ["lora", str(data), "-o", str(tmp_path / "out"), "--devices", value])
    assert result.exit_code == 2 and message in result.output


def test_devices_other_than_the_launchers_world_is_an_error(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(train_cli, ["lora", str(data), "-o", str(tmp_path / "out"), "--devices", "3"])
    assert result.exit_code == 1 and "one of 2 that a launcher started" in result.output


def test_each_rank_runs_the_same_command():
    args = ["data.jsonl", "-o", "out", "--lr", "0.001", "--qlora", "--devices", "2", "--val-size", "4", "--resume"]
    ctx = lora.make_context("lora", list(args))
    again = lora.make_context("lora", _command_line(ctx))
    assert again.params == ctx.params and ctx.params["devices"] == 2 and ctx.params["qlora"]
