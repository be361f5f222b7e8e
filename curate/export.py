"""`curate export`: a record set in the layouts trainers read, so that no user writes a converter.

Row layouts: `messages` (TRL / OpenAI chat), `prompt-completion` (TRL's conversational form, or
plain strings), `sharegpt` (`conversations` of `from`/`value`) and `alpaca` (`instruction`,
`input`, `output`), written as JSONL, a JSON array or Parquet; `hf` is a `datasets` folder
(`save_to_disk`) of one of those layouts, a DatasetDict when the rows carry a split. Beside the
data: the manifest, the drops of rows a layout cannot hold (with `--on-unfit skip`), and on request
the Axolotl `datasets:` entry or the LLaMA-Factory `dataset_info.json` entry that reads the file.
A row that a layout cannot express is never bent to fit: it is refused, by id and why, or skipped
and counted.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import polars as pl

from curate.atomic import atomic_path, check_parents, write_text
from curate.console import console
from curate.drops import drops_path, make_drops, write_drops
from curate.errors import InputError
from curate.manifest import Manifest
from curate.renamed_flags import renamed

ROW_LAYOUTS = ("messages", "prompt-completion", "sharegpt", "alpaca")
FORMATS = (*ROW_LAYOUTS, "hf")
FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
DEFAULT_SPLIT_COLUMN = "split"
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # what `datasets` accepts as a split name


@dataclass
class ExportConfig:
    """How to export; every field is a `curate export` option and lands in the manifest."""

    format: str = "messages"
    """One of FORMATS."""
    layout: str = "messages"
    """The row layout of an `hf` folder (and of what is pushed to the hub); the other formats are their own."""
    plain: bool = False
    """prompt-completion as plain strings (TRL's standard form) rather than lists of messages."""
    on_unfit: str = "fail"
    """fail: refuse the export at the first row the layout cannot hold, naming it. skip: leave such rows out, counted."""
    split_by: str | None = None
    """Column (or `meta` key) whose values name each row's split; None: `split` when the rows have one."""
    keep: tuple[str, ...] = ()
    """Columns (or `meta` keys) copied into every row as they are, e.g. id, label."""
    push_to_hub: str | None = None
    """A hub dataset repo (`user/name`) to push to, besides writing OUT; needs a token and the network."""
    private: bool = False
    """Push as a private dataset."""
    axolotl_config: Path | None = None
    """Where to write the Axolotl `datasets:` entry that reads OUT."""
    llama_factory_config: Path | None = None
    """A LLaMA-Factory `dataset_info.json` to write (or add to) the entry that reads OUT."""
    name: str | None = None
    """The dataset's name in dataset_info.json (default: OUT's name without its suffix)."""

    @property
    def rows(self) -> str:
        """The row layout written."""
        return self.layout if self.format == "hf" else self.format

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise click.BadParameter(f"unknown format {self.format!r}; one of {', '.join(FORMATS)}", param_hint="--format")
        if self.layout not in ROW_LAYOUTS:
            raise click.BadParameter(f"unknown layout {self.layout!r}; one of {', '.join(ROW_LAYOUTS)}", param_hint="--layout")
        if self.format != "hf" and self.layout != "messages":
            raise click.BadParameter("--layout chooses the rows of --format hf; the other formats are a layout themselves",
                                     param_hint="--layout")
        if self.plain and self.rows != "prompt-completion":
            raise click.BadParameter("--plain is for the prompt-completion layout", param_hint="--plain")
        if self.on_unfit not in ("fail", "skip"):
            raise click.BadParameter(f"{self.on_unfit!r}: one of fail, skip", param_hint="--on-unfit")
        if self.split_by is not None and self.format != "hf" and not self.push_to_hub:
            raise click.BadParameter("splits are kept by --format hf and --push-to-hub; a file holds one split",
                                     param_hint="--split-by")

    def parameters(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class Unfit(Exception):
    """A row the layout cannot hold; the message says why."""


# -- one row in each layout ----------------------------------------------------------------------


def _split_system(turns: list[dict]) -> tuple[str | None, list[dict]]:
    """The leading system prompt (if any) and the turns after it; a system turn elsewhere is unfit."""
    system = turns[0]["content"] if turns and turns[0]["role"] == "system" else None
    rest = turns[1:] if system is not None else turns
    if any(t["role"] == "system" for t in rest):
        raise Unfit("a system turn after the first message")
    return system, rest


def _alternating(rest: list[dict]) -> None:
    """user, assistant, user, assistant, ..., ending with the assistant: what ShareGPT readers require."""
    for k, turn in enumerate(rest):
        expected = "user" if k % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise Unfit(f"turn {k + 1} after the system prompt is a {turn['role']} turn where a {expected} turn "
                        "must be (ShareGPT alternates human and gpt, human first)")
    if not rest or rest[-1]["role"] != "assistant":
        raise Unfit("the conversation does not end with an assistant turn")


def _turns(messages: list[dict]) -> list[dict]:
    return [{"role": t["role"], "content": t["content"]} for t in messages]


def as_messages(messages: list[dict], *, strict: bool = False) -> dict:
    """{"messages": [...]}: every record fits; `strict` adds ShareGPT's turn order (LLaMA-Factory reads it so)."""
    turns = _turns(messages)
    if strict:
        _alternating(_split_system(turns)[1])
    return {"messages": turns}


def as_prompt_completion(messages: list[dict], *, plain: bool = False) -> dict:
    """TRL's prompt-completion: everything before the last reply is the prompt, the last reply the completion.

    Plain strings hold one exchange: the system prompt, if any, is joined before the user's text with
    a blank line (as Alpaca's instruction and input are joined); a multi-turn chat is unfit.
    """
    turns = _turns(messages)
    if turns[-1]["role"] != "assistant":
        raise Unfit(f"the conversation ends with a {turns[-1]['role']} turn after the last assistant reply")
    if not plain:
        return {"prompt": turns[:-1], "completion": turns[-1:]}
    system, rest = _split_system(turns)
    if [t["role"] for t in rest] != ["user", "assistant"]:
        raise Unfit(f"a multi-turn chat ({len(rest)} turns): plain prompt-completion holds one user turn and one reply")
    prompt = rest[0]["content"] if system is None else f"{system}\n\n{rest[0]['content']}"
    return {"prompt": prompt, "completion": rest[1]["content"]}


def as_sharegpt(messages: list[dict]) -> dict:
    """{"conversations": [{"from": "system|human|gpt", "value": ...}]}, in the order ShareGPT readers expect."""
    turns = _turns(messages)
    _alternating(_split_system(turns)[1])
    return {"conversations": [{"from": SHAREGPT_FROM[t["role"]], "value": t["content"]} for t in turns]}


def as_alpaca(messages: list[dict]) -> dict:
    """Alpaca's instruction/input/output: the system prompt is the instruction and the user's text its
    input, or, with no system prompt, the user's text is the instruction; one exchange only."""
    system, rest = _split_system(_turns(messages))
    if [t["role"] for t in rest] != ["user", "assistant"]:
        users = sum(t["role"] == "user" for t in rest)
        raise Unfit(f"a multi-turn chat ({users} user turns, {len(rest) - users} replies): "
                    "alpaca holds one instruction and one output")
    user, reply = rest[0]["content"], rest[1]["content"]
    if system is None:
        return {"instruction": user, "input": "", "output": reply}
    return {"instruction": system, "input": user, "output": reply}


def convert(messages: list[dict], config: ExportConfig) -> dict:
    """One record's messages in the layout `config` writes; `Unfit` when they cannot be."""
    layout = config.rows
    if layout == "messages":
        return as_messages(messages, strict=config.llama_factory_config is not None)
    if layout == "prompt-completion":
        return as_prompt_completion(messages, plain=config.plain)
    if layout == "sharegpt":
        return as_sharegpt(messages)
    return as_alpaca(messages)


# -- the rows ------------------------------------------------------------------------------------


@dataclass
class Converted:
    rows: list[dict] = field(default_factory=list)
    splits: list[str] | None = None  # per row, when the rows carry a split
    unfit: list[tuple[str, str]] = field(default_factory=list)  # (id, why)


def _column_getter(df: pl.DataFrame, name: str, path: Path, option: str):
    """A per-row getter for a column, or for a key of the `meta` JSON (where ingest keeps unmapped columns)."""
    if name in df.columns:
        values = df[name].to_list()
        return lambda i: values[i]
    if "meta" in df.columns:
        metas = df["meta"].to_list()
        decoded: dict[int, dict] = {}

        def from_meta(i: int):
            if i not in decoded:
                decoded[i] = json.loads(metas[i]) if metas[i] else {}
            return decoded[i].get(name)

        if any(name in (json.loads(m) if m else {}) for m in metas):
            return from_meta
    raise InputError(path, f"{option}: no column or meta key '{name}' (columns: {', '.join(df.columns)})")


def convert_all(df: pl.DataFrame, config: ExportConfig, path: Path) -> Converted:
    """Every record in the layout; unfit rows collected (the caller refuses or skips them)."""
    split_name = config.split_by  # only a folder or the hub keeps splits (validate refuses --split-by otherwise)
    keeps_splits = config.format == "hf" or config.push_to_hub
    if split_name is None and keeps_splits and (DEFAULT_SPLIT_COLUMN in df.columns or _meta_has(df, DEFAULT_SPLIT_COLUMN)):
        split_name = DEFAULT_SPLIT_COLUMN
    split_of = _column_getter(df, split_name, path, "--split-by") if split_name else None
    keepers = {name: _column_getter(df, name, path, "--keep-column") for name in config.keep}
    out = Converted(splits=[] if split_of else None)
    ids = df["id"].to_list()
    for i, messages in enumerate(df["messages"].to_list()):
        try:
            row = convert(messages, config)
        except Unfit as exc:
            out.unfit.append((ids[i], str(exc)))
            continue
        for name, get in keepers.items():
            if name in row:
                raise InputError(path, f"--keep-column {name}: the {config.rows} layout has a field of that name")
            row[name] = get(i)
        if split_of is not None:
            split = split_of(i)
            if not isinstance(split, str) or not _SPLIT_NAME.match(split):
                raise InputError(path, f"row {ids[i]}: split {split!r} in '{split_name}' is not a split name "
                                       "(letters, digits, _ and dots, e.g. train, test)")
            out.splits.append(split)
        out.rows.append(row)
    return out


def _meta_has(df: pl.DataFrame, key: str) -> bool:
    if "meta" not in df.columns or df.height == 0:
        return False
    return any(key in (json.loads(m) if m else {}) for m in df["meta"].to_list())


# -- writing -------------------------------------------------------------------------------------


def check_export_output(output: Path, config: ExportConfig, dataset: Path) -> None:
    """Refuse before any work: a suffix the format cannot write, an input as output, a user's folder."""
    check_parents(output)
    if output.resolve() == dataset.resolve() or dataset.resolve() in output.resolve().parents:
        raise InputError(output, "is (or lies inside) the input; choose another output")
    if config.format == "hf":
        if output.suffix and not output.is_dir():
            raise InputError(output, "--format hf writes a folder (save_to_disk); give a name without a suffix")
        if output.is_file():
            raise InputError(output, "is a file; --format hf writes a folder")
        if output.is_dir() and any(output.iterdir()) and not _is_saved_dataset(output):
            raise InputError(output, "holds files that are not a saved dataset; the folder is replaced whole, so give "
                                     "a new one, an empty one or an earlier export")
    elif output.suffix.lower() not in FILE_SUFFIXES:
        raise InputError(output, f"--format {config.format} writes {', '.join(FILE_SUFFIXES)} files, not "
                                 f"'{output.suffix or 'a folder'}'")
    for snippet, suffixes in ((config.axolotl_config, (".yaml", ".yml")), (config.llama_factory_config, (".json",))):
        if snippet is not None:
            check_parents(snippet)
            if snippet.suffix.lower() not in suffixes:
                raise InputError(snippet, f"must end in {' or '.join(suffixes)}")


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def write_rows(rows: list[dict], output: Path) -> None:
    """JSONL, a JSON array or Parquet, as the suffix says; atomic."""
    kind = FILE_SUFFIXES[output.suffix.lower()]
    with atomic_path(output) as tmp:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
            return
        with open(tmp, "w", encoding="utf-8") as fh:
            if kind == "jsonl":
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                fh.write("[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n")


def to_dataset(converted: Converted):
    """A `datasets.Dataset`, or a DatasetDict of one Dataset per split (in order of first appearance)."""
    from datasets import Dataset, DatasetDict

    if converted.splits is None:
        return Dataset.from_list(converted.rows)
    groups: dict[str, list[dict]] = {}
    for row, split in zip(converted.rows, converted.splits):
        groups.setdefault(split, []).append(row)
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in groups.items()})


def write_hf(dataset, output: Path) -> None:
    import datasets

    datasets.disable_progress_bars()  # one line per shard and split would bury the result line
    with atomic_path(output) as tmp:
        dataset.save_to_disk(str(tmp))


# -- the hub -------------------------------------------------------------------------------------


def hub_token() -> str:
    """A Hugging Face token and a reachable hub, or an error that says which is missing (before any work)."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise InputError("--push-to-hub", "no Hugging Face token: set HF_TOKEN (a write token from "
                                          "https://huggingface.co/settings/tokens) or run `hf auth login`")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise InputError("--push-to-hub", "HF_HUB_OFFLINE is set, so the hub cannot be reached; unset it to push")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=10).close()
    except OSError as exc:
        raise InputError("--push-to-hub", f"no network: {endpoint} cannot be reached from here ({exc})") from None
    return token


def push(dataset, repo: str, token: str, private: bool) -> str:
    try:
        info = dataset.push_to_hub(repo, token=token, private=private)
    except Exception as exc:  # refused token, no write access, a name the hub rejects...
        raise InputError("--push-to-hub", f"the hub refused the push to {repo}: {type(exc).__name__}: {exc}") from None
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/datasets/{repo}")


# -- trainer configs -----------------------------------------------------------------------------


def _data_type(output: Path) -> str:
    return {"jsonl": "json", "json": "json", "parquet": "parquet"}[FILE_SUFFIXES[output.suffix.lower()]]


def axolotl_entry(output: Path, config: ExportConfig, splits: list[str] | None) -> dict:
    """The Axolotl `datasets:` entry that reads OUT (a file through ds_type, a saved folder by its path)."""
    entry: dict[str, Any] = {"path": str(output.resolve())}
    if config.format == "hf":
        if splits:
            entry["split"] = "train" if "train" in splits else splits[0]
    else:
        entry["ds_type"] = _data_type(output)
    layout = config.rows
    if layout == "messages":
        entry.update(type="chat_template", field_messages="messages",
                     message_property_mappings={"role": "role", "content": "content"})
    elif layout == "sharegpt":
        entry.update(type="chat_template", field_messages="conversations",
                     message_property_mappings={"role": "from", "content": "value"},
                     roles={"system": ["system"], "user": ["human"], "assistant": ["gpt"]})
    elif layout == "alpaca":
        entry["type"] = "alpaca"
    elif config.plain:  # plain prompt/completion: Axolotl's user-defined instruction format, the prompt as is
        entry["type"] = {"field_instruction": "prompt", "field_output": "completion",
                         "format": "{instruction}", "no_input_format": "{instruction}"}
    else:
        raise InputError("--axolotl-config", "Axolotl has no dataset type for conversational prompt-completion rows; "
                                             "export --format messages (chat_template) or add --plain")
    return entry


def llama_factory_entry(output: Path, config: ExportConfig, dataset_dir: Path) -> dict:
    """The LLaMA-Factory dataset_info.json entry that reads OUT (its path relative to the dataset_dir when inside)."""
    if config.format == "hf":
        raise InputError("--llama-factory-config", "LLaMA-Factory reads json, jsonl, csv and parquet files, not a "
                                                   "saved dataset folder; export a file (e.g. -o data.jsonl)")
    target = output.resolve()
    file_name = str(target.relative_to(dataset_dir.resolve())) if dataset_dir.resolve() in target.parents else str(target)
    layout = config.rows
    if layout == "messages":
        return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"}}
    if layout == "sharegpt":
        return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"},
                "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                         "assistant_tag": "gpt", "system_tag": "system"}}
    if layout == "alpaca":
        return {"file_name": file_name, "formatting": "alpaca",
                "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
    if config.plain:
        return {"file_name": file_name, "formatting": "alpaca", "columns": {"prompt": "prompt", "response": "completion"}}
    raise InputError("--llama-factory-config", "LLaMA-Factory has no layout for conversational prompt-completion "
                                               "rows; export --format messages or sharegpt, or add --plain")


def write_axolotl(path: Path, entry: dict) -> None:
    import yaml

    write_text(path, "# Axolotl dataset entry written by `curate export`; paste it into your config's datasets:\n"
                     + yaml.safe_dump({"datasets": [entry]}, sort_keys=False, allow_unicode=True))


def write_llama_factory(path: Path, name: str, entry: dict) -> None:
    """Add (or replace) the entry in dataset_info.json, keeping the datasets already described there."""
    info: dict[str, Any] = {}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"is not valid JSON ({exc}); LLaMA-Factory's dataset_info.json is one JSON object") from None
        if not isinstance(info, dict):
            raise InputError(path, "is not a JSON object of dataset entries, as dataset_info.json is")
    info[name] = entry
    write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")


# -- the command ---------------------------------------------------------------------------------


def export_dataset(dataset: Path, output: Path, config: ExportConfig) -> Manifest:
    """Read DATASET, write OUT in the layout, the snippets and the manifest; returns the manifest written."""
    from curate.readers import read_records

    config.validate()
    check_export_output(output, config, dataset)
    token = hub_token() if config.push_to_hub else None
    manifest = Manifest("curate export", parameters=config.parameters())
    read = read_records(dataset)
    manifest.add_input(dataset, rows=read.rows_in)
    converted = convert_all(read.records, config, dataset)
    if converted.unfit and config.on_unfit == "fail":
        row_id, why = converted.unfit[0]
        raise InputError(dataset, f"row {row_id} cannot be written as {_layout_name(config)}: {why}"
                                  + (f" ({len(converted.unfit) - 1} more rows cannot either)" if len(converted.unfit) > 1 else "")
                                  + "; --on-unfit skip leaves such rows out", unit="row")
    built = None
    if config.format == "hf" or config.push_to_hub:
        built = to_dataset(converted)
    if config.format == "hf":
        write_hf(built, output)
    else:
        write_rows(converted.rows, output)
    manifest.add_output(output, rows=len(converted.rows))
    if converted.unfit:
        ids, reasons = zip(*converted.unfit)
        written = write_drops(make_drops(id=list(ids), step="export", reason=f"unfit_{config.rows.replace('-', '_')}",
                                         detail=list(reasons)), output)
        manifest.add_output(written, rows=len(converted.unfit))
    else:
        drops_path(output).unlink(missing_ok=True)  # an older export's drops would mislead
    splits = sorted(set(converted.splits)) if converted.splits is not None else None
    if config.axolotl_config is not None:
        write_axolotl(config.axolotl_config, axolotl_entry(output, config, splits))
        manifest.add_output(config.axolotl_config)
    if config.llama_factory_config is not None:
        name = config.name or output.name.split(".")[0]
        write_llama_factory(config.llama_factory_config, name,
                            llama_factory_entry(output, config, config.llama_factory_config.parent))
        manifest.add_output(config.llama_factory_config)
    if config.push_to_hub:
        manifest.parameters["pushed"] = push(built, config.push_to_hub, token, config.private)
    manifest.counts = {"in": read.records.height, "out": len(converted.rows), "unfit": len(converted.unfit)}
    if converted.splits is not None:
        manifest.counts.update({f"split_{s}": converted.splits.count(s) for s in splits})
    manifest.write(output)
    return manifest


def _layout_name(config: ExportConfig) -> str:
    return config.rows + (" (plain)" if config.plain else "")


def _iter_counts(manifest: Manifest) -> Iterator[str]:
    for key, value in manifest.counts.items():
        if key.startswith("split_"):
            yield f"{key[6:]} {value}"


@click.command("export")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="messages: TRL/OpenAI chat JSONL. prompt-completion: TRL's prompt/completion. sharegpt: "
                   "conversations of from/value. alpaca: instruction/input/output. hf: a save_to_disk folder.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="A .jsonl, .json (one array) or .parquet file; for --format hf a folder.")
@click.option("--layout", type=click.Choice(ROW_LAYOUTS), default="messages", show_default=True,
              help="The rows of an hf folder (and of a push to the hub).")
@click.option("--plain", is_flag=True, help="prompt-completion as plain strings instead of lists of messages.")
@click.option("--on-unfit", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A row the layout cannot hold (a multi-turn chat in alpaca): fail names it; skip leaves it out, "
                   "counted, in OUT.drops.parquet.")
@click.option("--split-by", metavar="COLUMN",
              help="Column or meta key naming each row's split: a DatasetDict (default: 'split' when present).")
@renamed("--keep", "--keep-column")  # `curate dedup --keep` picks a cluster's survivor
@click.option("--keep-column", "keep", multiple=True, metavar="COLUMN", help="Also copy this column or meta key into every row (repeatable).")
@click.option("--push-to-hub", metavar="REPO", help="Also push to this hub dataset repo (needs HF_TOKEN and the network).")
@click.option("--private", is_flag=True, help="With --push-to-hub: a private dataset.")
@click.option("--axolotl-config", type=click.Path(path_type=Path), help="Write the Axolotl datasets: entry (YAML) here.")
@click.option("--llama-factory-config", type=click.Path(path_type=Path),
              help="Write (or add to) this LLaMA-Factory dataset_info.json.")
@click.option("--name", help="The dataset's name in dataset_info.json (default: OUT's name without suffix).")
def export(dataset: Path, fmt: str, output: Path, layout: str, plain: bool, on_unfit: str, split_by: str | None,
           keep: tuple[str, ...], push_to_hub: str | None, private: bool, axolotl_config: Path | None,
           llama_factory_config: Path | None, name: str | None) -> None:
    """Write DATASET in the layout a trainer reads (TRL, Axolotl, LLaMA-Factory, datasets, the hub).

    A row the layout cannot hold is refused by id, or skipped and counted with --on-unfit skip.
    The manifest goes beside OUT; the config snippets point at OUT.

    \b
    Example:
      curate export selected.parquet --format sharegpt -o train.jsonl --llama-factory-config data/dataset_info.json
      curate export selected.parquet --format hf --split-by split -o train_hf
    """
    config = ExportConfig(format=fmt, layout=layout, plain=plain, on_unfit=on_unfit, split_by=split_by, keep=keep,
                          push_to_hub=push_to_hub, private=private, axolotl_config=axolotl_config,
                          llama_factory_config=llama_factory_config, name=name)
    manifest = export_dataset(dataset, output, config)
    skipped = manifest.counts["unfit"]
    splits = ", ".join(_iter_counts(manifest))
    console.print(f"[green]wrote[/] {manifest.counts['out']} rows as {_layout_name(config)} to {output}"
                  + (f" (splits: {splits})" if splits else "")
                  + (f", [yellow]{skipped} unfit rows skipped[/] (see {drops_path(output)})" if skipped else "")
                  + (f"; pushed to {manifest.parameters['pushed']}" if push_to_hub else ""))
