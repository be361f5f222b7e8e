"""The teacher as N replicas on Ray: each replica a Ray actor holding one in-process vLLM engine.

vLLM's CPU build has no Ray executor (and a CUDA build's only splits one model over GPUs), so
scaling out a teacher that fits one device means more copies of it: one `LLMEngine` per actor,
placed by Ray wherever the cluster has `cpus_per_replica` CPUs and `gpus_per_replica` GPUs free.
A `chat` call cuts its conversations into contiguous slices, one per replica, runs them side by
side and puts the replies back in input order, so a caller (`synth generate` and its journal,
`curate score --judge`, `train eval`) sees the same engine as the local one, only wider.

Per-request seeds (`SamplingConfig.seed`, one per sample in `synth generate`) travel with each
request, so a reply does not depend on which replica wrote it or what else was in its batch
(tests/test_ray_engine.py compares a replica's answers with one engine's on the whole batch).

A killed driver leaves nothing behind: the driver marks everything it starts
(`curate.processes.guard_descendants`: the local Ray instance's GCS, raylet, agents and workers)
and each replica marks its own vLLM processes, so the watchdogs stop them all; Ray's own
fate-sharing reaps the raylet and the workers too, but leaves its agents up to a minute.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

from curate.engines import check_request
from curate.errors import SmallsetError
from curate.llm import EngineConfig, Generation, LLMEngine, SamplingConfig, count_usage, per_conversation
from curate.models import ResolvedModel


@dataclass
class RayEngineConfig(EngineConfig):
    """LLMEngine's options for every replica, and how many replicas Ray holds where."""

    replicas: int = 2
    """Engines, one per Ray actor; each holds the whole model."""
    cpus_per_replica: float = 1
    """CPUs Ray reserves for each replica (a CPU replica decodes on them)."""
    gpus_per_replica: float | None = None
    """GPUs Ray reserves for each replica. None: 1 when the cluster has GPUs, else 0."""
    address: str | None = None
    """The Ray cluster to join. None: RAY_ADDRESS, else a local instance that ends with this process."""


class _Replica:
    """One in-process vLLM engine inside a Ray actor."""

    def __init__(self, config: EngineConfig) -> None:
        self.engine = LLMEngine(config)

    def describe(self) -> tuple[ResolvedModel, dict[str, bool], dict[str, str]]:
        from curate.engines import CAPABILITIES

        return self.engine.model, {c: getattr(self.engine, c) for c in CAPABILITIES}, dict(self.engine.limits)

    def chat(self, conversations, sampling, json_schema, lora, choices, logprobs) -> list[Generation]:
        return self.engine.chat(conversations, sampling, json_schema=json_schema, lora=lora, choices=choices,
                                logprobs=logprobs)

    def close(self) -> None:
        self.engine.close()


class RayEngine:
    """`LLMEngine`'s `chat` over `replicas` Ray actors, each with its own engine. Use as a context manager.

    It can do what `LLMEngine` can (LoRA only with `enable_lora`, and the adapter folder must be
    readable where each replica runs); usage is summed over the replicas.
    """

    name = "ray"
    Config = RayEngineConfig
    structured_output = choices = lora = logprobs = token_ids = True
    limits: dict[str, str] = {}

    def __init__(self, config: RayEngineConfig | None = None) -> None:
        from curate.processes import guard_descendants
        from curate.ray_cluster import RayOptions, connect, require_ray

        self.config = config = config or RayEngineConfig()
        if config.replicas < 1:
            raise SmallsetError(f"the ray engine needs at least 1 replica, got replicas={config.replicas}")
        if config.cpus_per_replica < 0 or (config.gpus_per_replica or 0) < 0:
            raise SmallsetError("the ray engine's cpus_per_replica and gpus_per_replica cannot be negative")
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self._actors: list = []
        # A local instance's processes are this one's descendants: mark them so that they die with it. setproctitle
        # (Ray's agents rename themselves) would otherwise overwrite the environment that carries the mark.
        os.environ.setdefault("SPT_NOENV", "1")
        guard_descendants()
        self._owns_ray = not require_ray().is_initialized()
        self._ray = ray = connect(RayOptions(address=config.address))
        try:
            self._start(ray)
        except BaseException:
            self.close()
            raise

    def _start(self, ray) -> None:
        config = self.config
        resources = ray.cluster_resources()
        gpus = config.gpus_per_replica if config.gpus_per_replica is not None else (1 if resources.get("GPU", 0) else 0)
        need = {"CPU": config.replicas * config.cpus_per_replica, "GPU": config.replicas * gpus}
        short = {k: v for k, v in need.items() if v > resources.get(k, 0)}
        if short:
            have = ", ".join(f"{resources.get(k, 0):g} {k}" for k in short)
            raise SmallsetError(f"the ray engine's {config.replicas} replicas need "
                                + ", ".join(f"{v:g} {k}" for k, v in short.items())
                                + f" and the Ray cluster has {have}: lower replicas, cpus_per_replica or gpus_per_replica")
        self.gpus_per_replica = gpus
        engine_fields = {k: v for k, v in asdict(config).items() if k in EngineConfig.__dataclass_fields__}
        actor = ray.remote(num_cpus=config.cpus_per_replica, num_gpus=gpus, max_restarts=0)(_Replica)
        self._actors = [actor.remote(EngineConfig(**engine_fields)) for _ in range(config.replicas)]
        described = self._get([a.describe.remote() for a in self._actors], "start")
        self.model, flags, limits = described[0]
        for capability, on in flags.items():
            if not on:
                setattr(self, capability, False)
        self.limits = limits

    def _get(self, refs: list, doing: str) -> list:
        """`ray.get`, with a replica's failure as one clear error rather than Ray's traceback."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self._ray.get(refs)
        except RayTaskError as exc:
            if isinstance(exc.cause, SmallsetError):
                raise SmallsetError(f"a ray replica could not {doing}: {exc.cause}") from None
            raise
        except RayActorError as exc:  # its start failed (the last line is the error), or its process died
            lines = [line for line in str(exc).splitlines() if line.strip()]
            last = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else str(exc)
            raise SmallsetError(f"a ray replica could not {doing}: {last}") from None

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict | None] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None, logprobs: bool = False) -> list[Generation]:
        """One reply per conversation, in order: contiguous slices, one per replica, answered side by side."""
        from tqdm import tqdm

        check_request(self, json_schema=json_schema, choices=choices, lora=lora, logprobs=logprobs)
        samplings, schemas = per_conversation(conversations, sampling, json_schema)
        slices = split(len(conversations), len(self._actors))
        refs = [actor.chat.remote(conversations[a:b], samplings[a:b], schemas[a:b], lora, choices, logprobs)
                for actor, (a, b) in zip(self._actors, slices)]
        sizes = {ref: b - a for ref, (a, b) in zip(refs, slices)}
        pending = list(refs)
        with tqdm(total=len(conversations), desc="ray", unit="reply", disable=not progress) as bar:
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                bar.update(sum(sizes[ref] for ref in done))
        result = [g for part in self._get(refs, "answer") for g in part]
        return count_usage(self.usage, result)

    def close(self) -> None:
        """Stop every replica's engine, then its actor (and the local Ray instance this engine started)."""
        ray = getattr(self, "_ray", None)
        actors, self._actors = getattr(self, "_actors", []), []
        if ray is None:
            return
        if actors:
            ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=60)
            for actor in actors:
                ray.kill(actor)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of n items over at most `parts`, sizes differing by at most one, none empty."""
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(min(parts, n)):
        end = start + size + (i < extra)
        bounds.append((start, end))
        start = end
    return bounds


__all__ = ["RayEngine", "RayEngineConfig", "split"]
