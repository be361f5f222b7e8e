"""`curate review status`: how far review has come, per dataset and per annotator.

Argilla counts a record as completed once it has as many submitted responses
as its task distribution asks for (the push's `--overlap`); per annotator it
counts submitted, discarded and draft responses. Both come from Argilla's
progress endpoints, through the SDK.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from curate.review.client import Connection, ReviewError, argilla_errors


@dataclass
class DatasetStatus:
    workspace: str
    dataset: str
    total: int
    completed: int
    pending: int
    overlap: int | None
    annotators: dict[str, dict[str, int]] = field(default_factory=dict)  # user -> submitted/discarded/draft

    def to_dict(self) -> dict:
        return asdict(self)


def _sum_statuses(progress: dict) -> dict[str, int]:
    """Argilla splits a user's responses by record status (completed/pending); add them up."""
    totals = {"submitted": 0, "discarded": 0, "draft": 0}
    for part in ("completed", "pending"):
        for status, count in (progress.get(part) or {}).items():
            if status in totals and count:
                totals[status] += int(count)
    return totals


def status(conn: Connection, workspace: str | None = None, name: str | None = None) -> list[DatasetStatus]:
    """Progress of every dataset (of one workspace, or one dataset by name)."""
    found = []
    with argilla_errors(conn.url):
        workspaces = [conn.workspace(workspace)] if workspace else list(conn.client.workspaces)
        for ws in workspaces:
            for dataset in ws.datasets:
                if name and dataset.name != name:
                    continue
                dataset = conn.dataset(dataset.name, ws.name) or dataset  # a listed dataset has default settings
                progress = dataset.progress(with_users_distribution=True)
                found.append(
                    DatasetStatus(
                        workspace=ws.name,
                        dataset=dataset.name,
                        total=int(progress.get("total", 0)),
                        completed=int(progress.get("completed", 0)),
                        pending=int(progress.get("pending", 0)),
                        overlap=getattr(dataset.settings.distribution, "min_submitted", None),
                        annotators={user: _sum_statuses(p) for user, p in (progress.get("users") or {}).items()},
                    )
                )
    if name and not found:
        where = f"the workspace {workspace!r}" if workspace else "any workspace"
        raise ReviewError(f"Argilla at {conn.url} has no dataset {name!r} in {where}")
    return found
