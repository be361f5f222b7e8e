"""Shared helpers: the real `curate` console script, tiny input files, and the Argilla UI in a browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

CURATE = Path(sys.executable).parent / "curate"


def run_curate(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the installed `curate` script; returns the finished process (stdout/stderr as text)."""
    return run_curate_many([args])[0]


def run_curate_many(calls: list) -> list[subprocess.CompletedProcess]:
    """Run several `curate` commands at once (each one starts in seconds: run them side by side)."""
    procs = [
        subprocess.Popen([str(CURATE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in calls
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


TRAIN = Path(sys.executable).parent / "train"
TRAIN_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # as the `train` script sets for itself


def run_train(*args: str | Path, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `train` script to the end (`env`: variables to add); a failure shows the tail of its stderr."""
    proc = subprocess.run([str(TRAIN), *map(str, args)], capture_output=True, text=True, env={**TRAIN_ENV, **(env or {})},
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def marked_processes(variable: str, mark: str) -> list:
    """Live processes whose environment has `variable` = `mark`: every process a run started (the test sets the
    variable in the run's environment), whoever its parent is now."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(variable) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value per line (rows need not be objects: bad input is written this way too)."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return ([{"role": "system", "content": system}] if system else []) + turns


# `make test` installs Debian's chromium (the `browser` target): a missing browser is a broken set-up, not a skip.
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BROWSER_TIMEOUT_MS = 30_000


@contextlib.contextmanager
def annotator_page(url: str, user: str, password: str, failure_screenshot: Path) -> Iterator:
    """A Playwright page in headless Chromium, signed in to the Argilla UI at `url` as `user`.

    Signs in the way a person does, from the sign-in page nobody is past yet; a failure
    inside the block leaves a screenshot at `failure_screenshot`.
    """
    from playwright import sync_api

    assert CHROMIUM, "Debian's chromium is not installed: run `make browser` (`make test` does)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        try:
            page.goto(f"{url}/", wait_until="networkidle")
            assert page.url.endswith("/sign-in")  # nobody is signed in
            page.locator("input[type=text]").first.fill(user)
            page.locator("input[type=password]").fill(password)
            page.locator("button[type=submit]").click()
            yield page
        except Exception:
            page.screenshot(path=str(failure_screenshot))
            raise
        finally:
            browser.close()
