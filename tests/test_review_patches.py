"""curate/review/patches.py against the real argilla-server 2.8.0 in the review server's own venv, and the
guard around the argilla SDK's errors.

Each check runs in the server venv's python, loading patches.py by path as launcher.py does. A patch
whose upstream function changed shape (another release, an edited function) fails its test here, and
the launcher refuses to start with a message that names the patch and the versions.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from curate.review.client import ReviewError, argilla_errors, sdk_error_kind
from curate.review.patches import PATCHES, WRITTEN_FOR
from curate.review.server_env import LAUNCHER, ensure_server_env

PATCHES_FILE = Path(LAUNCHER).with_name("patches.py")
NAMES = [patch.name for patch in PATCHES]
LOAD = (
    "import importlib.util, json, sys\n"
    f"spec = importlib.util.spec_from_file_location('smallset_review_patches', {str(PATCHES_FILE)!r})\n"
    "patches = importlib.util.module_from_spec(spec); sys.modules[spec.name] = patches; spec.loader.exec_module(patches)\n"
)


@pytest.fixture(scope="module")
def server_python() -> str:
    return str(ensure_server_env().python)


def in_server_venv(python: str, code: str) -> dict:
    """Run `code` (after LOAD) in the server venv as the launcher runs (`python -P`, no smallset on the
    path) and return the JSON object it prints last. One process per fixture: importing argilla_server
    takes seconds."""
    done = subprocess.run([python, "-P", "-c", LOAD + code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checked(server_python) -> dict:
    """Each patch checked against the installed server and against a pretended 2.9.0, then all applied twice."""
    return in_server_venv(server_python, """
import argilla_server, os
report = {"fits": {p.name: patches.problems(p) for p in patches.PATCHES},
          "other_version": {p.name: patches.problems(p, installed="2.9.0") for p in patches.PATCHES},
          "package": os.path.dirname(argilla_server.__file__)}
before = {p.name: id(patches._resolve(p.replaces)[2]) for p in patches.PATCHES}
patches.apply_all()
after = {p.name: id(patches._resolve(p.replaces)[2]) for p in patches.PATCHES}
patches.apply_all()  # a second call (the launcher applies before forking) changes nothing
again = {p.name: id(patches._resolve(p.replaces)[2]) for p in patches.PATCHES}
report["applied"] = {p.name: patches.applied(p) and before[p.name] != after[p.name] for p in patches.PATCHES}
report["stable"] = after == again
print(json.dumps(report))
""")


@pytest.mark.parametrize("name", NAMES)
def test_patch_fits_the_installed_server(checked, name):
    """Fails when the upstream function a patch replaces or relies on changed shape (signature or code)."""
    assert checked["fits"][name] == []


@pytest.mark.parametrize("name", NAMES)
def test_another_server_version_is_refused_by_name(checked, name):
    [problem] = checked["other_version"][name]
    assert name in problem and f"argilla-server {WRITTEN_FOR}" in problem and "argilla-server 2.9.0" in problem


def test_patches_apply_once_and_each_replaces_its_function(checked):
    assert checked["applied"] == {name: True for name in NAMES} and checked["stable"]


def test_the_patch_script_checks_by_hand(server_python):
    """`python -P patches.py check`, what a maintainer runs after an upgrade."""
    done = subprocess.run([server_python, "-P", str(PATCHES_FILE), "check"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {name: [] for name in NAMES}


# A changed upstream function: another signature, or the same signature and other code.
CHANGES = {
    "signature": "async def changed(self, records_and_suggestions, upsert_in_batches=True):\n    return []\n",
    "code": "async def changed(self, records_and_suggestions):\n    return list(records_and_suggestions)\n",
}


@pytest.fixture(scope="module")
def refused(server_python) -> dict:
    """launcher.py's own entry point (`worker`) after each change: how it exits, and which patches it applied."""
    return in_server_venv(server_python, f"""
from argilla_server.bulk.records_bulk import CreateRecordsBulk
spec = importlib.util.spec_from_file_location('smallset_review_launcher', {str(LAUNCHER)!r})
launcher = importlib.util.module_from_spec(spec); spec.loader.exec_module(launcher)
report = {{}}
for change, source in {CHANGES!r}.items():
    scope = {{}}
    exec(source, scope)
    CreateRecordsBulk._upsert_records_suggestions = scope["changed"]
    try:
        launcher.main(["worker"])
        report[change] = {{"exit": None}}
    except SystemExit as stop:
        report[change] = {{"exit": stop.code, "applied": [patches.applied(p) for p in patches.PATCHES]}}
print(json.dumps(report))
""")


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_launcher_refuses_a_changed_upstream_function(refused, change):
    """It stops before the worker starts, applies no patch, and says which patch, function and version."""
    message = refused[change]["exit"]
    assert refused[change]["applied"] == [False] * len(NAMES)
    assert message.startswith("smallset: the review server will not start: patch 'upsert_suggestions_as_executemany'")
    assert "CreateRecordsBulk._upsert_records_suggestions" in message and f"argilla-server {WRITTEN_FOR}" in message
    assert ("now takes (self, records_and_suggestions, upsert_in_batches=True)" in message) == (change == "signature")
    assert ("is not the code of" in message) == (change == "code")


def test_nothing_in_argilla_server_reads_what_the_suggestion_upsert_returns(checked):
    """The executemany patch returns [] where upstream returns the upserted rows: every use must drop them."""
    where = checked["package"]
    name = "_upsert_records_suggestions"
    calls, other_uses, definitions, mentions = [], [], 0, 0
    for path in sorted(Path(where).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if name not in text:
            continue
        mentions += text.count(name)
        tree = ast.parse(text)
        parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                definitions += 1
            elif isinstance(node, ast.Attribute) and node.attr == name:
                call = parent.get(node)
                awaited = parent.get(call)
                dropped = (isinstance(call, ast.Call) and call.func is node and isinstance(awaited, ast.Await)
                           and isinstance(parent.get(awaited), ast.Expr))
                (calls if dropped else other_uses).append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Constant) and node.value == name:
                other_uses.append(f"{path.name}:{node.lineno} (by name)")
    assert definitions >= 1 and calls, "the function or its caller is gone: re-read the patch"
    assert other_uses == []
    assert mentions == definitions + len(calls)  # no use the syntax tree did not see (a comment, a string)


# --------------------------------------------------------------------------- the SDK's errors


def test_sdk_errors_are_told_apart_without_importing_the_sdk_privately():
    """The SDK's real exception classes (taken from its private module here, in the test only)."""
    from argilla._exceptions import ArgillaError, BadRequestError, RecordsIngestionError
    from argilla._exceptions._api import ArgillaAPIError, UnauthorizedError
    from argilla._exceptions._client import ArgillaCredentialsError

    assert sdk_error_kind(ArgillaCredentialsError()) == "credentials"
    assert sdk_error_kind(UnauthorizedError("no", status_code=401)) == "credentials"
    assert sdk_error_kind(BadRequestError("bad", status_code=400)) == "api"
    assert sdk_error_kind(ArgillaAPIError("boom", status_code=503)) == "api"
    assert sdk_error_kind(ArgillaError("sdk")) == "sdk"
    assert sdk_error_kind(RecordsIngestionError("mapping")) == "sdk"
    assert sdk_error_kind(ValueError("not the SDK's")) is None

    with pytest.raises(ReviewError, match=r"^Argilla at http://h answered 503: .*boom"), argilla_errors("http://h"):
        raise ArgillaAPIError("boom", status_code=503)
    with pytest.raises(ReviewError, match="refused the API key"), argilla_errors("http://h"):
        raise ArgillaCredentialsError()
    with pytest.raises(ValueError), argilla_errors("http://h"):  # not the SDK's: left alone
        raise ValueError("x")


def test_a_renamed_sdk_error_still_reads_as_one_line():
    """The fallback: an error class from the `argilla` package that this code does not know by name."""
    renamed = type("ArgillaServerError", (Exception,), {"__module__": "argilla._errors"})
    assert sdk_error_kind(renamed("the dataset is gone")) == "sdk"
    with pytest.raises(ReviewError, match=r"^Argilla at http://h: the dataset is gone$"), argilla_errors("http://h"):
        raise renamed("the dataset is gone")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (422, {"detail": "record at position 0 is not valid"}, "answered 422: record at position 0 is not valid"),
    (500, "Internal Server Error", "answered 500: Internal Server Error"),
    (401, {"detail": "Could not validate credentials"}, "refused the API key"),
])
def test_http_errors_of_our_own_requests(status, body, expected):
    """push sends its bulk upserts with the SDK's httpx client: a refused batch is an HTTPStatusError."""
    request = httpx.Request("PUT", "http://h/api/v1/datasets/x/records/bulk")
    response = (httpx.Response(status, json=body, request=request) if isinstance(body, dict)
                else httpx.Response(status, text=body, request=request))
    with pytest.raises(ReviewError) as caught, argilla_errors("http://h"):
        response.raise_for_status()
    assert expected in str(caught.value) and str(caught.value).startswith("Argilla at http://h")


def test_the_ui_chip_fix_fits_the_bundle_and_refuses_another(server_python, tmp_path):
    """The chip fix rewrites the bundle's one preview expression; a bundle without it stops the server by name."""
    report = in_server_venv(server_python, f"""
import argilla_server, shutil
from pathlib import Path
static = Path(argilla_server.__file__).parent / "static"
copy = Path({str(tmp_path / "ui")!r}); shutil.copytree(static / "_nuxt", copy / "_nuxt")
changed = patches.fix_ui_chip_preview(copy)
left = sum(patches.UI_CHIP_PREVIEW in p.read_text() for p in (copy / "_nuxt").glob("*.js"))
try:
    patches.fix_ui_chip_preview(copy)
    refusal = None
except patches.PatchError as exc:
    refusal = str(exc)
print(json.dumps({{"changed": changed, "left": left, "refusal": refusal}}))
""")
    assert report["changed"] >= 1 and report["left"] == 0
    assert "similar-search chip" in report["refusal"] and WRITTEN_FOR in report["refusal"]
