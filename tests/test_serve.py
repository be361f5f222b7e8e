"""The teacher over HTTP: `synth serve` (real vLLM OpenAI server) and the endpoint client's fault handling."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import psutil
import pytest
import yaml

from curate.errors import SmallsetError
from curate.models import cache_dir
from curate.llm import EndpointConfig, EndpointEngine

SYNTH = str(Path(sys.executable).parent / "synth")
TASK = {
    "name": "colours", "instructions": "Name a colour and describe it in a few words.", "n": 4,
    "output": {"fields": {"colour": {"type": "string", "maxLength": 20}, "note": {"type": "string", "maxLength": 60}},
               "user": "Describe {colour}.", "assistant": "{note}"},
    "sampling": {"max_tokens": 64, "seed": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_generate_through_synth_serve_over_http(tmp_path):
    port = free_port()
    server = subprocess.Popen([SYNTH, "serve", "--port", str(port), "--max-model-len", "1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 480
        key_file = cache_dir() / "serve" / f"{port}.key"
        while time.time() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 401:
                    break  # up, and it wants the key it made
            except httpx.HTTPError:
                time.sleep(2)
        # A key was made, kept private, and is the one the server takes.
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=5).status_code == 200
        # It listens on loopback only.
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
        task = tmp_path / "task.yaml"
        task.write_text(yaml.safe_dump(TASK))
        out = tmp_path / "out.parquet"
        proc = subprocess.run([SYNTH, "generate", str(task), "-o", str(out), "--endpoint", f"http://127.0.0.1:{port}/v1",
                               "--api-key", key], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = pl.read_parquet(out)
        assert records.height == 4  # response_format json_schema: all parse
        assert all(m[0]["content"].startswith("Describe ") for m in records["messages"].to_list())
        manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
        assert manifest["models"][0]["source"] == "endpoint:teacher"
        assert manifest["parameters"]["usage"]["completion_tokens"] > 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_endpoint_down_gives_a_clear_error_after_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    started = time.time()
    with pytest.raises(SmallsetError) as err:
        EndpointEngine(EndpointConfig(url=url, model="teacher", retries=2)).chat([[{"role": "user", "content": "hi"}]])
    assert url in str(err.value) and "3 attempts" in str(err.value)
    assert time.time() - started >= 3  # backoff 1 s + 2 s


def test_endpoint_answering_garbage_is_an_error_and_loses_nothing(tmp_path):
    # A fake server: the only way to make a real endpoint answer garbage on demand.
    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        task = tmp_path / "task.yaml"
        task.write_text(yaml.safe_dump(TASK))
        out = tmp_path / "out.parquet"
        env = {**os.environ, "SMALLSET_ENDPOINT": f"http://127.0.0.1:{httpd.server_port}/v1"}
        proc = subprocess.run([SYNTH, "generate", str(task), "-o", str(out), "--model", "teacher"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode != 0
        assert f"127.0.0.1:{httpd.server_port}" in proc.stderr and "attempts" in proc.stderr
        assert not out.exists()
    finally:
        httpd.shutdown()
