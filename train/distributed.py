"""Data-parallel `train lora`: the ranks that torchrun starts, and the launcher that starts them.

One optimizer step means on N processes what it means on one: its rows are shared out among
the ranks, every rank divides its loss by the target tokens of the whole step, and DDP's
gradient all-reduce turns the ranks' parts into that step's gradient. torch.distributed with
DDP rather than accelerate's Accelerator: the loop runs its own forward (no vocabulary
projection on prompt tokens) and normalizes per optimizer step, and Accelerator's
`accumulate`/`backward` would have to be worked around for both while adding nothing here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from curate.processes import die_with_parent
from train.errors import TrainError

AGENT_ENV = "SMALLSET_DDP_AGENT"
"""The pid of the torchrun agent `launch` starts; its ranks die with it."""

# torch.distributed.run's own entry point, with its failure report (a traceback) turned into the
# failed rank's exit code: the rank has already said what went wrong.
_TORCHRUN = f"""
import os, sys
os.environ["{AGENT_ENV}"] = str(os.getpid())
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
try:
    run(parse_args(sys.argv[1:]))
except ChildFailedError as exc:
    code = exc.get_first_failure()[1].exitcode
    sys.exit(128 - code if code < 0 else code)
except SignalException as exc:
    sys.exit(128 + int(exc.sigval))
"""


@dataclass
class World:
    """This process's place among the ranks of one training run; the default is a run on its own."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this run created the process group, so it destroys it
    _ddp: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, model, loss: Callable) -> Callable[[dict], torch.Tensor]:
        """`batch -> loss(model, batch)`; on several ranks through DDP, whose forward arms the gradient all-reduce."""
        if not self.distributed:
            return functools.partial(loss, model)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(_Loss(model, loss), device_ids=ids)
        return self._ddp

    def syncing(self, last: bool):
        """Gradients are all-reduced once per optimizer step, in the backward of its last micro-batch."""
        return contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()

    def shard(self, group: list[list[int]], micro_batch: int) -> list[list[int]]:
        """This rank's micro-batches of one optimizer step: an equal share of its rows, at most `micro_batch` a forward."""
        if not self.distributed:
            return group
        rows = [i for batch in group for i in batch]
        mine = rows[self.rank * len(rows) // self.size : (self.rank + 1) * len(rows) // self.size]
        return [mine[k : k + micro_batch] for k in range(0, len(mine), micro_batch)]

    def part(self, batches: list) -> list:
        """This rank's share of fixed batches (validation)."""
        return batches[self.rank :: self.size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks, bit for bit the same on every rank (rank 0's are broadcast)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        dist.broadcast(tensor, 0)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def seed(self, seed: int, step: int) -> None:
        """Each rank its own dropout stream, drawn from (seed, step, rank): the same run gives the same adapter."""
        torch.manual_seed(int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1)[0]))

    def rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def leave(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


class _Loss(torch.nn.Module):
    """The loop's loss as a module, so that DDP runs the forward it syncs."""

    def __init__(self, model, loss: Callable) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(self.model, batch)


SINGLE = World()

_interrupted = False


def join() -> World:
    """The world that torchrun (or accelerate launch) set up in the environment; one process when none did.

    Several ranks: the process group (NCCL on CUDA, one GPU per rank; gloo on CPU), and, under
    `launch`, death with the agent that started this rank.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if os.environ.get(AGENT_ENV, "").isdigit():
        die_with_parent(signal.SIGTERM, parent=int(os.environ[AGENT_ENV]))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    import torch.distributed as dist

    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise TrainError(f"rank {rank}: LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible")
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, **({"device_id": device} if backend == "nccl" else {}))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _note_interrupt)
    return World(rank, size, local, device, owns)


def _note_interrupt(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)


def interrupted() -> bool:
    """Whether this rank was sent SIGINT: a peer's collective may then fail first, with another error."""
    return _interrupted


def rank() -> int:
    """This process's rank as the launcher set it (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


# -- the launcher ------------------------------------------------------------------------


def processes(devices: int | str) -> int:
    """How many ranks `--devices` asks for: "auto" is every visible GPU when there are several, else 1.

    Without a GPU any number of gloo processes may share the CPU (for testing: slower than one).
    """
    gpus = torch.cuda.device_count()
    if devices == "auto":
        return gpus if gpus > 1 else 1
    if gpus and int(devices) > gpus:
        raise TrainError(f"--devices {devices}: this machine has {gpus} visible GPU{'s' if gpus > 1 else ''}")
    return int(devices)


def launched(devices: int | str) -> bool:
    """Whether this process already is one of a launcher's ranks; a --devices other than their number is an error."""
    if "WORLD_SIZE" not in os.environ:
        return False
    size = int(os.environ["WORLD_SIZE"])
    if devices != "auto" and int(devices) != size:
        raise TrainError(f"--devices {devices}, but this process is one of {size} that a launcher started "
                         "(WORLD_SIZE); leave out --devices under torchrun or accelerate launch")
    return True


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run `train lora ARGS` as `nproc` ranks under torchrun (torch.distributed.run); returns their exit code.

    The agent dies with this process (parent-death signal) and its ranks with the agent. It has
    a session of its own, so that a Ctrl-C reaches it once, from here; it passes the signal
    on to the ranks, which stop as one process would (exit 130, `--resume` continues).
    """
    env = dict(os.environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))  # the cores shared out among the ranks
    cmd = [sys.executable, "-c", _TORCHRUN, "--nproc-per-node", str(nproc), "--standalone",
           "-m", "train.cli", "lora", *args]
    agent = subprocess.Popen(cmd, env=env, start_new_session=True,
                             preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, parent=os.getpid()))
    try:
        while (code := _wait(agent, 0.2)) is None:  # a timed wait: a Ctrl-C taken by one of torch's threads
            pass  # wakes no blocking waitpid, but is seen between two of these
    except KeyboardInterrupt:
        agent.send_signal(signal.SIGINT)
        code = agent.wait()
    return 128 - code if code < 0 else code


def _wait(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
