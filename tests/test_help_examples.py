"""Every command of the four CLIs shows an example in its --help, and every example parses against the real command.

An example that names a removed flag, a choice that no longer exists or a value of the wrong type fails
here instead of in a user's terminal. Parsing only: nothing runs (files the examples name are created
empty in a temporary folder, so that `exists=True` paths pass and the rest of the line is still checked).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest

from curate.cli import main as curate_cli
from recipes.cli import main as smallset_cli
from synth.cli import main as synth_cli
from train.cli import main as train_cli

CLIS = {"curate": curate_cli, "synth": synth_cli, "train": train_cli, "smallset": smallset_cli}


def _leaves(command: click.Command, path: tuple[str, ...]):
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from _leaves(command.get_command(ctx, name), (*path, name))
    else:
        yield path, command


COMMANDS = [(path, command) for name, cli in CLIS.items() for path, command in _leaves(cli, (name,))]


def examples(command: click.Command) -> list[str]:
    """The command lines of the `Example:`/`Examples:` block of a command's help text."""
    lines, inside, continued = [], False, False
    for line in (command.help or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("Example") and stripped.endswith(":"):  # "Examples:", "Example (with trusted rows):"
            inside = True
            continue
        if not inside:
            continue
        if continued:  # the line before ended with a backslash
            lines[-1] = f"{lines[-1][:-1].rstrip()} {stripped}"
        elif not stripped or stripped == "\b":
            if lines:
                break
            continue
        elif stripped.split()[0] not in CLIS:
            break
        else:
            lines.append(stripped)
        continued = lines[-1].endswith("\\")
    return lines


def _leaf(argv: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The command a line names, its path and the arguments left for it."""
    command, path = CLIS[argv[0]], [argv[0]]
    rest = argv[1:]
    while isinstance(command, click.Group) and rest:
        sub = command.get_command(click.Context(command, info_name=path[-1]), rest[0])
        assert sub is not None, f"{' '.join(path)} has no command {rest[0]!r}"
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    return command, path, rest


def _make_paths(args: list[str], folder: Path) -> None:
    """Every argument that looks like a file or folder, made empty under `folder`."""
    for arg in args:
        value = arg.split("=", 1)[-1] if arg.startswith("--") else arg
        if value.startswith("-") or "://" in value or ":" in value and not value.startswith("."):
            continue
        target = folder / value
        if Path(value).suffix in (".parquet", ".jsonl", ".json", ".csv", ".tsv", ".yaml", ".yml", ".html", ".png",
                                  ".txt"):
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.touch()
        elif "/" in value:  # a folder: an adapter, a run, a workspace
            target.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_shows_an_example_that_parses(path, command, tmp_path, monkeypatch):
    found = examples(command)
    assert found, f"`{' '.join(path)} --help` has no Example: block"
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in found:  # a line may show the next command of a chain: it must parse too
        argv = shlex.split(line)
        leaf, leaf_path, rest = _leaf(argv)
        ran.append(tuple(leaf_path))
        _make_paths(rest, tmp_path)
        try:
            leaf.make_context(" ".join(leaf_path), list(rest), resilient_parsing=False)
        except click.ClickException as exc:
            pytest.fail(f"the example {line!r} does not parse: {exc.format_message()}")
    assert path in ran, f"no example of {' '.join(path)} runs {' '.join(path)} itself"


def test_the_example_reader_sees_a_broken_example():
    """The check can fail: an example with an unknown flag does not parse."""
    @click.command(help="Do it.\n\n\b\nExample:\n  curate ingest a.jsonl --no-such-flag -o b.parquet\n")
    def broken() -> None:
        pass

    (line,) = examples(broken)
    leaf, _, rest = _leaf(shlex.split(line))
    with pytest.raises(click.NoSuchOption):
        leaf.make_context("curate ingest", rest, resilient_parsing=False)


def _groups(command: click.Command, path: tuple[str, ...]):
    if isinstance(command, click.Group):
        yield path, command
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            yield from _groups(command.get_command(ctx, name), (*path, name))


def test_every_flag_a_help_text_names_is_a_flag_a_command_shows():
    """Prose rots too: a help text (a command's, a group's or an option's) that names a flag names one that some
    command shows in its --help, not a removed or renamed one (old names are hidden, `curate.renamed_flags`)."""
    import re

    everything = [*COMMANDS, *(group for name, cli in CLIS.items() for group in _groups(cli, (name,)))]
    shown = {opt for _, command in everything for p in command.params if isinstance(p, click.Option) and not p.hidden
             for opt in p.opts + p.secondary_opts}
    stale = []
    for path, command in everything:
        texts = [command.help or ""] + [p.help or "" for p in command.params if isinstance(p, click.Option)]
        stale += [(" ".join(path), flag) for text in texts for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)
                  if flag not in shown]
    assert stale == []


def _readme_lines() -> list[str]:
    """The command lines of the README's code blocks (continuations joined, comments cut)."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    lines, inside = [], False
    for line in readme.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside and line.split(" #")[0].split()[:1] and line.split()[0] in CLIS:
            lines.append(line.split(" #")[0].strip())
    return lines


def test_every_command_line_of_the_readme_parses(tmp_path, monkeypatch):
    """The README's examples are held to the real commands too (a renamed flag's old name counts as stale)."""
    lines = _readme_lines()
    assert len(lines) >= 20  # the reader finds them
    monkeypatch.chdir(tmp_path)
    failed = []
    for line in lines:
        leaf, leaf_path, rest = _leaf(shlex.split(line))
        _make_paths(rest, tmp_path)
        hidden = [a.split("=")[0] for a in rest for p in leaf.params
                  if isinstance(p, click.Option) and p.hidden and a.split("=")[0] in p.opts]
        try:
            leaf.make_context(" ".join(leaf_path), list(rest), resilient_parsing=False)
        except click.ClickException as exc:
            failed.append(f"{line}: {exc.format_message()}")
        else:
            failed += [f"{line}: {flag} is an old name" for flag in hidden]
    assert failed == []
