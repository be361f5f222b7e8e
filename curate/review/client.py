"""Connect the argilla SDK to the right server, and turn its failures into one clear line.

The review commands talk to the deployment named by ARGILLA_API_URL and
ARGILLA_API_KEY when both are set, else to the server `curate review serve` runs
for the workspace folder (its URL from `server.json`, the owner's key from
`owner.json`). An unreachable server, a refused key or an API error becomes a
`ReviewError` that names the URL, which the CLI prints without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curate.errors import SmallsetError
from curate.review.server import DEFAULT_ARGILLA_WORKSPACE, Deployment, Workspace, external_deployment

if TYPE_CHECKING:
    import argilla as rg

TIMEOUT_S = 120  # a bulk upsert of 500 records on a busy 2-core machine can take a while


class ReviewError(SmallsetError):
    """A review command could not do its work (server, credentials, dataset)."""


def find_deployment(workspace: Path) -> Deployment:
    """The environment's deployment, else the running server of this workspace folder."""
    external = external_deployment()
    if external is not None:
        return external
    ws = Workspace(Path(workspace).absolute())
    running = ws.running()
    if running is None:
        raise ReviewError(
            f"no review server runs for {ws.root}; start one with `curate review serve --workspace {workspace}` "
            "(or set ARGILLA_API_URL and ARGILLA_API_KEY to use an existing Argilla)"
        )
    owner = ws.owner()
    if owner is None:
        raise ReviewError(f"the review server of {ws.root} runs, but its owner credentials ({ws.owner_file}) are gone")
    return Deployment(api_url=running["url"], api_key=owner["api_key"])


@contextlib.contextmanager
def argilla_errors(url: str) -> Iterator[None]:
    """Turn what the SDK and httpx raise into a `ReviewError` that names the server."""
    import httpx

    try:
        yield
    except httpx.TimeoutException as exc:
        raise ReviewError(f"Argilla at {url} did not answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise ReviewError(f"cannot reach Argilla at {url}: {exc or type(exc).__name__}; is the server running?") from None
    except httpx.HTTPStatusError as exc:  # a request of ours, sent with the SDK's HTTP client (push)
        status = exc.response.status_code
        if status == 401:
            raise ReviewError(_refused(url)) from None
        raise ReviewError(f"Argilla at {url} answered {status}: {_detail(exc.response)}") from None
    except Exception as exc:
        kind = sdk_error_kind(exc)
        if kind is None:
            raise
        if kind == "credentials":
            raise ReviewError(_refused(url)) from None
        if kind == "api":
            raise ReviewError(f"Argilla at {url} answered {getattr(exc, 'status_code', '?')}: {_message(exc)}") from None
        raise ReviewError(f"Argilla at {url}: {_message(exc)}") from None


def sdk_error_kind(exc: BaseException) -> str | None:
    """Which of the argilla SDK's errors `exc` is: "credentials", "api", "sdk", or None (not the SDK's).

    Told by the class names along its MRO rather than by importing `argilla._exceptions`, the
    SDK's private module: where a later SDK moves or renames its classes, their errors still
    read as "sdk" (one clear line) when they come from the `argilla` package, never as a traceback.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ArgillaCredentialsError", "UnauthorizedError"}:
        return "credentials"
    if "ArgillaAPIError" in names:
        return "api"
    if "ArgillaError" in names or any(cls.__module__.split(".")[0] == "argilla" for cls in type(exc).__mro__):
        return "sdk"
    return None


def _refused(url: str) -> str:
    return f"Argilla at {url} refused the API key; check ARGILLA_API_KEY (or the workspace's owner.json)"


def _detail(response) -> str:
    """The `detail` of an Argilla error response (JSON), else its text."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return _short(detail if isinstance(detail, str) else json.dumps(detail))


def _message(exc: BaseException) -> str:
    """The informative parts of an SDK error and its causes (the SDK wraps errors in generic ones)."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = Exception.__str__(exc) if exc.args else ""
        if text and text != getattr(exc, "message_stub", None) and text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return _short("; ".join(parts) or "unknown error")


def _short(text: str, width: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Connection:
    """An SDK client and where it points."""

    client: "rg.Argilla"
    url: str

    def workspace(self, name: str = DEFAULT_ARGILLA_WORKSPACE, create: bool = False) -> "rg.Workspace":
        import argilla as rg

        found = self.client.workspaces(name)
        if found is not None:
            return found
        if not create:
            raise ReviewError(f"Argilla at {self.url} has no workspace named {name!r}")
        return rg.Workspace(name=name, client=self.client).create()

    def dataset(self, name: str, workspace: str = DEFAULT_ARGILLA_WORKSPACE) -> "rg.Dataset | None":
        if self.client.workspaces(workspace) is None:
            return None
        with warnings.catch_warnings():  # the SDK warns when the dataset does not exist: None says it
            warnings.simplefilter("ignore")
            return self.client.datasets(name=name, workspace=workspace)


def connect(workspace: Path, deployment: Deployment | None = None) -> Connection:
    """An SDK client for the deployment (checked: the SDK asks the server who we are)."""
    import argilla as rg

    deployment = deployment or find_deployment(workspace)
    # The SDK logs its errors before raising them; the CLI reports them once, through `argilla_errors`.
    logging.getLogger("argilla.sdk").setLevel(logging.CRITICAL)
    with argilla_errors(deployment.api_url):
        client = rg.Argilla(api_url=deployment.api_url, api_key=deployment.api_key, timeout=TIMEOUT_S, retries=2)
    return Connection(client=client, url=deployment.api_url)
