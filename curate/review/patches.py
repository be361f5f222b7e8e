"""Every use of argilla-server's own code, each change to it checked against the code it was written for.

argilla-server has no public Python API, and the review server changes three of its functions
for speed, and one line of its web UI (the similar-search chip, `fix_ui_chip_preview`). All of
that lives here, so that an upgrade of argilla-server is told at once what to re-read:

* `PATCHES`: each patch names the upstream function it replaces, the argilla-server version
  it was written for, and the shape (signature and a hash of the source) of every upstream
  function it replaces or relies on. `apply_all()` checks every patch before it applies any;
  on another version, or when one of those functions changed, it raises `PatchError`, which
  names the patch, the function and both versions, and the server does not start.
* the entry points the launcher calls (the app factory, migrations, the worker, user
  creation, Argilla's CLI), behind the same version check (`require_version`).

`search_engine.py` is not a patch: it implements argilla-server's pluggable `SearchEngine`
interface (an abstract class, which refuses an engine that lacks one of its methods), and
the launcher loads it only after `require_version`.

To port to a new argilla-server: read each function a failing patch names in the new
release, port or drop the patch, set its `written_for`, and paste the new shapes that
`python -P curate/review/patches.py shapes` prints (run it with the server venv's python).

Like `launcher.py`, which loads it by path, this file runs inside the server's own
virtualenv and imports only the standard library and (inside functions) `argilla_server`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

UPSTREAM = "argilla-server"
WRITTEN_FOR = "2.8.0"
"""The argilla-server release the patches and entry points below were written for and checked on."""

_MARK = "__smallset_patch__"  # set on a replacement, so that a patch applies once per process


class PatchError(RuntimeError):
    """A patch does not fit the installed argilla-server; the message says which and why."""


@dataclass(frozen=True)
class Shape:
    """What an upstream function looked like when a patch was written for it."""

    signature: str
    """Its parameters: names, kinds and defaults (annotations are in the source hash)."""
    source: str | None
    """The first 16 hex digits of the sha256 of its source; None: only the signature is held
    to (a function outside argilla-server, whose own pins decide its version)."""


@dataclass(frozen=True)
class Patch:
    """One replacement of an upstream function, and what it was written for."""

    name: str
    replaces: str
    """The replaced attribute, "module:Owner.attribute"."""
    upstream: dict[str, Shape]
    """The shapes of what the patch replaces or relies on ("module:Qualified.name")."""
    install: Callable[[object], object]
    """Given the upstream object, returns its replacement."""
    written_for: str = WRITTEN_FOR

    @property
    def why(self) -> str:
        return inspect.getdoc(self.install) or ""


def upstream_version() -> str:
    """The argilla-server version installed in this environment."""
    return importlib.metadata.version(UPSTREAM)


def _resolve(name: str) -> tuple[object, str, object]:
    """(owner, attribute, value) of "module:Owner.attribute" (or "module:attribute")."""
    module_name, _, path = name.partition(":")
    owner: object = importlib.import_module(module_name)
    *parents, attribute = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, attribute, getattr(owner, attribute)


def shape_of(name: str) -> Shape:
    """The current shape of an upstream function (a property is read as its getter)."""
    value = _resolve(name)[2]
    if isinstance(value, property):
        value = value.fget
    try:
        source = hashlib.sha256(inspect.getsource(value).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        source = None
    signature = inspect.signature(value)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return Shape(str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty)), source)


def problems(patch: Patch, installed: str | None = None) -> list[str]:
    """Why `patch` does not fit the installed argilla-server (or `installed`); empty when it fits."""
    installed = installed or upstream_version()
    if installed != patch.written_for:
        return [
            f"patch {patch.name!r} (it replaces {patch.replaces}) was written for {UPSTREAM} "
            f"{patch.written_for}, and this environment has {UPSTREAM} {installed}"
        ]
    found = []
    for name, expected in patch.upstream.items():
        try:
            current = shape_of(name)
        except (ImportError, AttributeError) as exc:
            found.append(f"patch {patch.name!r} relies on {name}, which {UPSTREAM} {installed} lacks ({exc})")
            continue
        if current.signature != expected.signature:
            found.append(
                f"patch {patch.name!r}: {name} now takes {current.signature}; "
                f"it took {expected.signature} in {UPSTREAM} {patch.written_for}"
            )
        elif expected.source is not None and current.source != expected.source:
            found.append(
                f"patch {patch.name!r}: the code of {name} is not the code of {UPSTREAM} {patch.written_for} "
                f"(source hash {current.source}, expected {expected.source})"
            )
    return found


def _refusal(found: list[str]) -> PatchError:
    return PatchError(
        f"the review server will not start: {'; '.join(found)}. Read what changed upstream, port or drop the "
        "patch in curate/review/patches.py, and update its shapes (`python -P curate/review/patches.py shapes`)"
    )


def applied(patch: Patch) -> bool:
    return getattr(_resolve(patch.replaces)[2], _MARK, None) == patch.name


def apply_all(patches: list[Patch] | None = None) -> None:
    """Check every patch, then apply them all; apply none when one does not fit (`PatchError`)."""
    patches = PATCHES if patches is None else patches
    pending = [patch for patch in patches if not applied(patch)]
    found = [problem for patch in pending for problem in problems(patch)]
    if found:
        raise _refusal(found)
    for patch in pending:
        owner, attribute, original = _resolve(patch.replaces)
        replacement = patch.install(original)
        setattr(replacement, _MARK, patch.name)
        setattr(owner, attribute, replacement)


def require_version() -> None:
    """Refuse to call into an argilla-server other than the one the entry points below were written for."""
    installed = upstream_version()
    if installed != WRITTEN_FOR:
        raise _refusal([f"smallset's launcher was written for {UPSTREAM} {WRITTEN_FOR}, and this environment "
                        f"has {UPSTREAM} {installed}"])


# --------------------------------------------------------------------------- the patches


def _cache_settings_type_adapters(original):
    """Build each pydantic TypeAdapter that argilla-server's models use once, not once per call.

    `Question.parsed_settings` and `MetadataProperty.parsed_settings` build a new
    `TypeAdapter` (a pydantic schema) at every call, and a bulk upsert calls them for
    every suggestion and metadata value of every record: about 90% of the time of a
    500-record upsert on this machine. The adapters are immutable, so one per type serves.
    """
    adapters: dict[int, object] = {}

    def cached(tp, *args, **kwargs):
        if args or kwargs:
            return original(tp, *args, **kwargs)
        adapter = adapters.get(id(tp))
        if adapter is None:
            adapter = adapters[id(tp)] = (original(tp), tp)  # keep tp alive: its id stays its own
        return adapter[0]

    return cached


def _skip_unheard_record_events(original):
    """Build a bulk upsert's record events only when an enabled webhook listens for them.

    argilla-server builds one webhook event per upserted record (a dataset query with
    five eager loads, and a query for the enabled webhooks), then drops it when no
    webhook is enabled: seven queries per record for nothing. This asks once per bulk
    and, when no enabled webhook subscribes to a record event, skips the loop; with one,
    upstream's code runs unchanged. It relies on `enqueue_notify_events` sending an event
    only to enabled webhooks that list it, and on building an event having no other effect.
    """
    from argilla_server.contexts import webhooks
    from argilla_server.webhooks.v1.enums import RecordEvent

    record_events = {event.value for event in RecordEvent}

    async def notify(self, records):
        listening = [w for w in await webhooks.list_enabled_webhooks(self._db) if record_events & set(w.events or [])]
        if listening:
            await original(self, records)

    return notify


def _upsert_suggestions_as_executemany(original):
    """Write a bulk upsert's suggestions with one prepared statement on SQLite.

    Upstream upserts them as one INSERT with a VALUES row per suggestion and RETURNING:
    for 500 records with four suggestions that is 18,000 bound parameters that SQLAlchemy
    compiles afresh at every call, about 0.8 s of the 1.6 s a 500-record upsert took on
    this machine. The same upsert (ON CONFLICT of record and question: update value,
    score, agent, type and updated_at, as `Suggestion.upsert_many` does) sent as an
    executemany is compiled once and cached. Other databases (a Postgres URL) keep
    upstream's code.

    It returns [] where upstream returns the upserted `Suggestion` rows, because nothing
    reads them: the only caller, `_upsert_records_relationships`, awaits the call and
    drops the result (tests/test_review_patches.py checks that no code of argilla-server
    uses it), and the records' suggestions are loaded afresh from the database
    (`_preload_records_relationships_before_index`, after the commit) before they are
    indexed or returned. Upstream's RETURNING also refreshes Suggestion objects already in
    the session; a bulk request loads none before this point (its records come without
    their suggestions), and the re-upsert test of tests/test_review_server.py checks that a
    changed suggestion reaches both the database and the index.
    """
    from datetime import datetime

    from argilla_server.models import Suggestion
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    table = Suggestion.__table__

    async def upsert(self, records_and_suggestions):
        if self._db.bind.dialect.name != "sqlite":
            return await original(self, records_and_suggestions)
        rows = [
            {**suggestion.model_dump(), "record_id": record.id}
            for record, suggestions in records_and_suggestions
            for suggestion in suggestions or []
        ]
        if rows:
            statement = sqlite_insert(table)
            updates = {column: statement.excluded[column] for column in Suggestion.__upsertable_columns__}
            statement = statement.on_conflict_do_update(
                index_elements=[table.c.record_id, table.c.question_id],
                set_={**updates, "updated_at": datetime.utcnow()},
            )
            await self._db.execute(statement, rows)
        return []  # read by no one: see the docstring

    return upsert


_BULK = "argilla_server.bulk.records_bulk"
_DB = "argilla_server.models.database"
_HOOKS = "argilla_server.webhooks"

PATCHES: list[Patch] = [
    Patch(
        name="cache_settings_type_adapters",
        replaces=f"{_DB}:TypeAdapter",
        upstream={
            # pydantic's class (pinned by argilla-server), wrapped whole: only how it is called matters.
            f"{_DB}:TypeAdapter": Shape("(type, *, config=None, _parent_depth=2, module=None)", None),
            f"{_DB}:Question.parsed_settings": Shape("(self)", "5d2f427fe4651063"),
            f"{_DB}:MetadataProperty.parsed_settings": Shape("(self)", "263c9f47b2de7832"),
        },
        install=_cache_settings_type_adapters,
    ),
    Patch(
        name="skip_unheard_record_events",
        replaces=f"{_BULK}:UpsertRecordsBulk._notify_upsert_record_events",
        upstream={
            f"{_BULK}:UpsertRecordsBulk._notify_upsert_record_events": Shape("(self, records)", "e7b587bc7d0447d9"),
            f"{_HOOKS}.v1.records:notify_record_event": Shape("(db, record_event, record)", "92209f75197bb9fd"),
            f"{_HOOKS}.v1.records:build_record_event": Shape("(db, record_event, record)", "97d977a111264526"),
            f"{_HOOKS}.v1.event:Event.notify": Shape("(self, db)", "d1f4714efa2cbd41"),
            "argilla_server.jobs.webhook_jobs:enqueue_notify_events": Shape(
                "(db, event, timestamp, data)", "fcd5b6b37c62b788"
            ),
            "argilla_server.contexts.webhooks:list_enabled_webhooks": Shape("(db)", "900f5cd185b1359b"),
        },
        install=_skip_unheard_record_events,
    ),
    Patch(
        name="upsert_suggestions_as_executemany",
        replaces=f"{_BULK}:CreateRecordsBulk._upsert_records_suggestions",
        upstream={
            f"{_BULK}:CreateRecordsBulk._upsert_records_suggestions": Shape(
                "(self, records_and_suggestions)", "cefd52bfd9ab4eb6"
            ),
            # its only caller, which drops what it returns (see the patch's docstring)
            f"{_BULK}:CreateRecordsBulk._upsert_records_relationships": Shape(
                "(self, records, records_create)", "05c64412bfcf0a0d"
            ),
            # what the patch does instead, on SQLite
            "argilla_server.models:Suggestion.upsert_many": Shape(
                "(db, objects, constraints, autocommit=True)", "9f1dbdfe0814a481"
            ),
        },
        install=_upsert_suggestions_as_executemany,
    ),
]


# --------------------------------------------------------------------------- entry points the launcher calls


# The web UI's "Similar to" chip (after "Find similar") previews a record as `title: content` of its
# first two fields; a chat field's content is a list of messages, which JavaScript prints as
# "[object Object]". The fix shows the last user turn instead. The UI ships as minified bundles:
# the exact text it replaces is checked, and a bundle without it stops the server (`PatchError`).
UI_CHIP_PREVIEW = '"".concat(e.fields[t].title,": ").concat(e.fields[t].content)'
UI_CHIP_PREVIEW_FIXED = (
    '"".concat(e.fields[t].title,": ").concat(function(c){if(!Array.isArray(c))return c;'
    'var u=c.filter(function(m){return m&&m.role==="user"}),m=u.length?u[u.length-1]:c[c.length-1];'
    'return m&&m.content!=null?m.content:""}(e.fields[t].content))'
)


def fix_ui_chip_preview(static_dir) -> int:
    """Rewrite the UI bundles in `static_dir` (the server's own copy) so that the chip reads a chat field; the count."""
    from pathlib import Path

    changed = 0
    for bundle in sorted(Path(static_dir).glob("_nuxt/*.js")):
        text = bundle.read_text(encoding="utf-8")
        if UI_CHIP_PREVIEW in text:
            bundle.write_text(text.replace(UI_CHIP_PREVIEW, UI_CHIP_PREVIEW_FIXED), encoding="utf-8")
            changed += 1
    if not changed:
        raise _refusal([f"the web UI of {UPSTREAM} {upstream_version()} in {static_dir} has no similar-search chip "
                        f"preview of the form written for {WRITTEN_FOR} ({UI_CHIP_PREVIEW})"])
    return changed


def _static_dirs(app) -> list:
    """The folders the app serves its web UI from (argilla-server copies its bundle into a temporary folder)."""
    found = []
    for route in getattr(app, "routes", []):
        directory = getattr(getattr(route, "app", None), "directory", None)
        if getattr(route, "name", None) == "static" and directory:
            found.append(directory)
        elif hasattr(getattr(route, "app", None), "routes"):  # the app mounted under a base URL
            found.extend(_static_dirs(route.app))
    return found


def create_app():
    """argilla-server's FastAPI app (API and web UI), with the smallset search engine already registered."""
    require_version()
    from argilla_server._app import create_server_app

    app = create_server_app()
    for directory in _static_dirs(app):
        fix_ui_chip_preview(directory)
    return app


def migrate_database() -> None:
    require_version()
    from argilla_server.cli.database.migrate import migrate_db

    migrate_db(revision="head")


def run_worker(num_workers: int, imported: Callable[[], None] = lambda: None) -> None:
    """Argilla's rq worker on its default and high-priority queues; `imported()` runs once its
    modules are imported, before it starts."""
    require_version()
    from argilla_server.cli.worker import worker
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE

    imported()
    worker(queues=[DEFAULT_QUEUE.name, HIGH_QUEUE.name], num_workers=num_workers)


async def create_user(spec: dict) -> dict:
    """Create the user `spec` names ({"username", "password", "role", "api_key", "workspaces",
    "first_name"}) unless one of that name exists; returns {"created": bool}."""
    require_version()
    from argilla_server.api.schemas.v1.users import UserCreate
    from argilla_server.cli.database.users.utils import get_or_new_workspace
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User

    async with AsyncSessionLocal() as session:
        existing = await accounts.get_user_by_username(session, spec["username"])
        if existing is not None:
            return {"created": False}
        checked = UserCreate(
            first_name=spec.get("first_name") or spec["username"],
            username=spec["username"],
            role=spec["role"],
            password=spec["password"],
        )
        workspaces = [await get_or_new_workspace(session, name) for name in spec.get("workspaces") or []]
        extra = {"api_key": spec["api_key"]} if spec.get("api_key") else {}
        user = await User.create(
            session,
            first_name=checked.first_name,
            username=checked.username,
            role=checked.role,
            password_hash=accounts.hash_password(checked.password),
            workspaces=workspaces,
            **extra,
        )
        return {"created": user is not None}


def run_cli(args: list[str]) -> None:
    """Argilla's own CLI (`database migrate`, `search-engine reindex`, ...)."""
    require_version()
    from argilla_server.cli import app

    sys.argv = ["argilla_server", *args]
    app()


# --------------------------------------------------------------------------- checking by hand


def main(argv: list[str]) -> int:
    """`check [NAME...]`: each patch's problems as JSON; `shapes`: the current shapes, to paste above."""
    command, names = (argv[0], argv[1:]) if argv else ("check", [])
    chosen = [p for p in PATCHES if not names or p.name in names]
    if command == "check":
        print(json.dumps({p.name: problems(p) for p in chosen}, indent=2))
        return 0
    if command == "shapes":
        for patch in chosen:
            print(f"# {patch.name} ({UPSTREAM} {upstream_version()})")
            for name in patch.upstream:
                shape = shape_of(name)
                print(f"{json.dumps(name)}: Shape({json.dumps(shape.signature)}, {json.dumps(shape.source)}),")
        return 0
    print(f"usage: python -P {__file__} check [NAME...] | shapes [NAME...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
