"""The `synth` command: generate task data with a local teacher, nothing leaves the machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from curate import __version__
from curate.console import SmallsetGroup, console
from curate.library_log import verbose_option
from curate.drops import write_drops
from curate.engine_cli import EngineChoice, engine_options
from curate.executor import EXECUTOR_ENV, EXECUTORS
from curate.llm import SamplingConfig
from curate.manifest import Manifest
from curate.renamed_flags import renamed
from curate.writers import write_records


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="synth")
@verbose_option
def main() -> None:
    """Generate synthetic task data with a local vLLM teacher.

    The teacher is the default LLM (see `curate models`) unless --model or
    SMALLSET_LLM names another: a local folder or a hub id.
    """


@main.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--system", help="System prompt.")
@click.option("--model", help="Teacher model spec (default: packaged SmolLM2-135M-Instruct).")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json-schema", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Constrain the reply to this JSON schema (structured output).")
@click.option("--max-model-len", type=int, help="Context length of an in-process engine. [default: 2048]")
@engine_options
def prompt(text: tuple[str, ...], system: str | None, model: str | None, max_tokens: int, temperature: float,
           seed: int, json_schema: Path | None, max_model_len: int | None, engine_choice: EngineChoice) -> None:
    """Ask the teacher one question and print its reply.

    \b
    Example:
      synth prompt "Write a one-line support ticket about a failed payment."
    """
    schema = json.loads(json_schema.read_text()) if json_schema else None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": " ".join(text)}]
    engine = engine_choice.open(model=model, max_model_len=max_model_len)
    console.print(f"teacher: {engine.model.path} ({engine.model.source})")
    with engine:
        reply = engine.chat([messages], SamplingConfig(temperature=temperature, max_tokens=max_tokens, seed=seed),
                            json_schema=schema)[0]
    click.echo(reply.text)


@main.command()
@click.argument("task_file", metavar="TASK.yaml", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Generated records: .parquet or .jsonl.")
@renamed("--num", "--size")
@click.option("-n", "--size", "num", type=int, help="Samples to generate (overrides the task's n), as `curate select -n`.")
@click.option("--model", help="Teacher model spec (default: packaged SmolLM2-135M-Instruct).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per engine call (and per durable save).")
@click.option("--structured/--no-structured", default=True, show_default=True, help="JSON-schema structured output.")
@click.option("--max-model-len", type=int, help="Context length of an in-process engine. [default: 2048]")
@click.option("--privacy/--no-privacy", default=None,
              help="PII scan and seed-copy check of every sample. [default: on when the task is sensitive]")
@click.option("--pii-action", type=click.Choice(["drop", "redact"]), default="drop", show_default=True,
              help="What happens to a sample with PII in it.")
@engine_options
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", envvar=EXECUTOR_ENV, show_default=True,
              help="Where the teacher runs: local (one engine in this process), or ray (--replicas vLLM engines as "
                   "Ray actors; RAY_ADDRESS or --ray-address, else a local Ray instance). With --endpoint, the servers "
                   "either way.")
@click.option("--replicas", type=click.IntRange(min=1), metavar="N",
              help="With --executor ray: teacher replicas, one engine each. [default: 2]")
@click.option("--ray-address", metavar="ADDRESS",
              help="With --executor ray: the cluster to join (HOST:PORT, ray://HOST:10001 or auto). [default: RAY_ADDRESS]")
def generate(task_file: Path, output: Path, num: int | None, model: str | None, batch_size: int, structured: bool,
             max_model_len: int | None, engine_choice: EngineChoice, privacy: bool | None, pii_action: str,
             executor: str, replicas: int | None, ray_address: str | None) -> None:
    """Generate the samples a task spec describes, covering its axes.

    Results are saved as they arrive; run the same command again after a crash
    and it continues where it stopped, with no sample duplicated or lost.

    \b
    Examples:
      synth generate recipes/tasks/support_tickets.yaml -n 64 -o runs/synth/tickets.parquet
      synth generate task.yaml -n 2000 --executor ray --replicas 4 -o synth.parquet
      synth generate task.yaml --endpoint http://gpu1:8000/v1 --endpoint http://gpu2:8000/v1 -o synth.parquet
    """
    from curate.writers import check_output
    from synth.generate import generate as run_generate, journal_path
    from synth.task import load_task

    check_output(output, inputs=[task_file])  # before the engine starts, not after its work
    engine_choice.on_executor(executor, replicas, ray_address)
    task = load_task(task_file)
    if num is not None:
        if num < 1:
            raise click.BadParameter("must be at least 1", param_hint="--size")
        task.n = num
    manifest = Manifest("synth generate", parameters={"task": task.name, "n": task.n, "strategy": task.strategy,
                                                      "structured": structured, "batch_size": batch_size,
                                                      "sampling": task.sampling, "sensitive": task.sensitive,
                                                      "executor": "ray" if engine_choice.name == "ray" else executor})
    manifest.add_input(task_file)
    unbounded = task.output.unbounded_strings()
    if structured and unbounded:
        console.print(f"[yellow]warning:[/] {task_file}: output field(s) {', '.join(unbounded)} have no maxLength, so a "
                      "reply cut off at max_tokens cannot be given room to finish and will not parse")
    engine = engine_choice.open(model=model, max_model_len=max_model_len)
    manifest.parameters["engine"] = engine_choice.describe(engine)
    manifest.parameters["replicas"] = getattr(engine.config, "replicas", None) if engine_choice.name == "ray" else None
    manifest.models.append(engine.model.describe())
    with engine:
        result = run_generate(task, engine, output, model_name=str(engine.model.path), structured=structured,
                              batch_size=batch_size)
    records, drops = result.records, result.drops
    guarded = task.sensitive if privacy is None else privacy
    privacy_counts = {}
    if guarded and records.height:
        import polars as pl

        from synth.privacy import PrivacyConfig, guard, seed_texts

        with console.status("privacy guard: PII scan and seed-copy check"):
            checked = guard(records, seed_texts(task), PrivacyConfig(pii_action=pii_action))
        records, drops = checked.kept, pl.concat([drops, checked.drops])
        privacy_counts = checked.counts
    write_records(records, output)
    manifest.add_output(output, rows=records.height)
    write_drops(drops, output)
    manifest.counts = {"planned": task.n, "out": records.height,
                       "unparsable": int((drops["reason"] == "unparsable").sum()),
                       "privacy_dropped": int(drops["reason"].str.starts_with("pii:").sum() + (drops["reason"] == "seed_copy").sum())}
    manifest.parameters.update(usage=result.usage, privacy_guard=guarded, privacy=privacy_counts)
    if task.seeds and records.height:  # fidelity and privacy against the seeds, as `curate audit --against` says them
        from curate.models import resolve_embedder
        from synth.generate import seed_audit

        with console.status("auditing the samples against the seeds: fidelity and privacy"):
            manifest.parameters["audit"] = seed_audit(records, task)
        manifest.models.append(resolve_embedder(None).describe())
    if hasattr(engine, "per_endpoint"):
        manifest.parameters["endpoints"] = engine.per_endpoint  # which server answered how many requests
    manifest.write(output)
    journal_path(output).unlink(missing_ok=True)
    console.print(f"[green]wrote[/] {records.height} of {task.n} samples to {output} "
                  f"({result.usage['resumed']} resumed, {manifest.counts['unparsable']} unparsable, "
                  f"{manifest.counts['privacy_dropped']} dropped by the privacy guard{'' if guarded else ' (off)'})")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--model", help="Model spec (default: packaged SmolLM2-135M-Instruct).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on. Anything but loopback is your decision.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-model-len", type=int, default=2048, show_default=True)
@click.option("--api-key", envvar="SMALLSET_ENDPOINT_KEY", help="Key clients must send. [default: a new random key, "
              "printed once and kept in SMALLSET_CACHE/serve/PORT.key (mode 0600)]")
@click.option("--no-api-key", is_flag=True, help="Answer anyone who can reach the port, without a key.")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(model: str | None, host: str, port: int, max_model_len: int, api_key: str | None, no_api_key: bool,
          vllm_args: tuple[str, ...]) -> None:
    """Serve the teacher with vLLM's OpenAI-compatible server, for a team that shares one.

    Clients send the API key (`synth generate --endpoint URL --api-key KEY`, or
    SMALLSET_ENDPOINT_KEY); without --api-key a new one is made, printed once and
    kept beside the cache. Extra arguments after `--` go to vLLM as they are.

    \b
    Example:
      synth serve --port 8000
      synth generate task.yaml --endpoint http://127.0.0.1:8000/v1 --api-key KEY -o synth.parquet
    """
    import os
    import secrets
    import socket
    import sys

    from curate.models import cache_dir, resolve_llm
    from curate.processes import guard_descendants

    if "--api-key" in vllm_args:
        raise click.UsageError("give the key as `synth serve --api-key KEY`, not after `--`")

    with socket.socket() as probe:
        if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:
            raise click.ClickException(f"port {port} on {host} is already in use; choose another with --port")
    resolved = resolve_llm(model)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from curate.llm import device_settings

    cuda, dtype, eager = device_settings()
    if not cuda:  # the in-process engine's CPU settings, unless given after `--`
        given = " ".join(vllm_args)
        vllm_args = [*([] if "--dtype" in given else ["--dtype", dtype]),
                     *([] if "--enforce-eager" in given or not eager else ["--enforce-eager"]), *vllm_args]
    key_args: list[str] = []
    if not no_api_key:
        if api_key is None:
            api_key = secrets.token_urlsafe(24)
            key_file = cache_dir() / "serve" / f"{port}.key"
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(api_key + "\n")
            os.chmod(key_file, 0o600)
            console.print(f"API key (printed once; also in {key_file}, mode 0600): {api_key}", highlight=False,
                          soft_wrap=True)
        key_args = ["--api-key", api_key]
    console.print(f"serving {resolved.path} ({resolved.source}) on http://{host}:{port}/v1 as model 'teacher'"
                  + ("" if key_args else " [bold red]without an API key[/]"))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolved.path),
           "--served-model-name", "teacher", "--host", host, "--port", str(port),
           "--max-model-len", str(max_model_len), *key_args, *vllm_args]
    guard_descendants()  # the server's engine core dies with it, even on SIGKILL
    os.execv(sys.executable, cmd)  # become the server: signals and exit codes are vLLM's own


if __name__ == "__main__":
    main()
