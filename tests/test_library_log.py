"""Library noise goes to the log file, the parent's and its children's alike; --verbose keeps it on the console."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import subprocess, sys
from curate.library_log import to_log_file
with to_log_file("a noisy library") as path:
    print("parent noise", file=sys.stderr)
    subprocess.run(["sh", "-c", "echo child noise >&2"])
print("after the start", file=sys.stderr)
print(path)
"""


def _run(env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc


def test_noise_goes_to_the_log_and_the_console_comes_back(tmp_path):
    log = tmp_path / "logs" / "run.log"
    env = {"SMALLSET_LOG_FILE": str(log), "SMALLSET_VERBOSE": ""}
    proc = _run(env)
    assert proc.stderr.splitlines() == ["after the start"]
    text = log.read_text()
    assert "parent noise" in text and "child noise" in text and "a noisy library" in text
    _run(env)  # appended, one block per start
    assert log.read_text().count("a noisy library") == 2


def test_verbose_keeps_everything_on_the_console(tmp_path):
    log = tmp_path / "run.log"
    proc = _run({"SMALLSET_LOG_FILE": str(log), "SMALLSET_VERBOSE": "1"})
    assert proc.stderr.splitlines() == ["parent noise", "child noise", "after the start"]
    assert not log.exists() and proc.stdout.strip() == "None"


LOGGERS = """
import os, sys
from transformers.utils import logging as hf_logging
from curate.library_log import to_log_file
hf_logging.get_logger("transformers.start")  # configured before the block: its handler holds the console's stderr
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # as curate.llm's engine sets it
with to_log_file("an engine"):
    from vllm.config.logging import LoggingConfig  # imported and configured here, as curate.llm's engine does
    from vllm.logger import configure_logging, init_logger
    configure_logging(LoggingConfig())  # what building vllm.LLM does first
    init_logger("vllm.start").warning("vllm start-up notice")
    hf_logging.get_logger("transformers.start").warning("transformers start-up notice")
init_logger("vllm.later").warning("vllm shutdown notice")  # after the block, as at the end of `train eval`
hf_logging.get_logger("transformers.later").warning("transformers later notice")
print("result line")
"""
NOTICES = ("vllm start-up notice", "transformers start-up notice", "vllm shutdown notice", "transformers later notice")


def test_library_loggers_write_to_the_log_after_start_up_too(tmp_path):
    """The real vLLM and transformers loggers: their own handlers keep the console's streams, so moving
    file descriptor 2 alone would let every later notice through."""
    log = tmp_path / "run.log"
    quiet = subprocess.run([sys.executable, "-c", LOGGERS], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SMALLSET_LOG_FILE": str(log), "SMALLSET_VERBOSE": ""})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == ["result line"] and quiet.stderr == ""
    assert all(notice in log.read_text() for notice in NOTICES)
    verbose = subprocess.run([sys.executable, "-c", LOGGERS], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "SMALLSET_LOG_FILE": str(tmp_path / "v.log"), "SMALLSET_VERBOSE": "1"})
    assert verbose.returncode == 0, verbose.stderr
    assert all(notice in verbose.stdout + verbose.stderr for notice in NOTICES) and not (tmp_path / "v.log").exists()


def test_the_verbose_flag_of_every_cli_reaches_the_environment():
    code = ("import os, click.testing\nfrom recipes.cli import main\n"
            "r = click.testing.CliRunner().invoke(main, ['--verbose', 'check', '--help'])\n"
            "assert r.exit_code == 0, r.output\nprint(os.environ.get('SMALLSET_VERBOSE'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SMALLSET_VERBOSE"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_vllm_progress_bars_leave_only_the_callers_line(capsys):
    """vLLM's own bars through its own helper: no bar for rendering the chat template, and the generation bar
    is cleared when done (the demo printed two finished bars per contender and test set)."""
    from vllm.utils.tqdm_utils import maybe_tqdm

    from curate.llm import transient_bar

    assert list(maybe_tqdm(range(5), use_tqdm=transient_bar, desc="Rendering conversations")) == list(range(5))
    assert "Rendering conversations" not in capsys.readouterr().err
    bar = transient_bar(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="est. speed input: 0 toks/s")
    bar.update(3)
    bar.close()
    assert bar.leave is False and bar.n == 3
