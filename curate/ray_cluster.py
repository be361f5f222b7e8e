"""Joining a Ray cluster: the one place that calls `ray.init`, so every command connects the same way.

`connect()` joins the cluster in `address` or `RAY_ADDRESS` (KubeRay, `ray up`, `ray start --head`)
and otherwise starts a local instance that ends with this process. A local instance listens on
127.0.0.1 only and starts no dashboard (the brief: nothing listens beyond 127.0.0.1 unless asked).
Ray's own log lines go to Ray's session log folder, not to the console. Importing this module
does not import Ray: the `local` executor never needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from curate.errors import SmallsetError

ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class RayOptions:
    """How to reach Ray (the recipe's `ray:` section and the `--ray-*` flags)."""

    address: str | None = None
    """A cluster to join (`HOST:PORT`, `ray://HOST:10001`, or `auto`); None: RAY_ADDRESS, else a local instance."""
    num_cpus: int | None = None
    """CPUs of a local instance (None: every core). Ignored when joining a cluster."""
    workers: int | None = None
    """Parallel tasks or actors per step (None: one per CPU of the cluster)."""


def require_ray():
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is what the steps run on)
    except ImportError:
        raise SmallsetError("the ray executor needs Ray: pip install 'smallset[ray]' (make setup installs it)") from None
    return ray


def connect(options: RayOptions | None = None):
    """Join (or start) the cluster once per process; return the `ray` module."""
    options = options or RayOptions()
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = options.address or os.environ.get(ADDRESS_ENV) or None
    settings = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    try:
        if address:
            ray.init(address=address, **settings)
        else:
            # "local": a new instance. Without it Ray joins the last `ray start` cluster on this machine
            # (/tmp/ray/ray_current_cluster), someone else's, which may stop under this command.
            # The instance is this process's: mark what it starts so that a kill -9 of the command takes it
            # along (curate.processes); SPT_NOENV keeps setproctitle (Ray's agents rename themselves) off the mark.
            from curate.processes import guard_descendants

            os.environ.setdefault("SPT_NOENV", "1")
            guard_descendants()
            ray.init(address="local", num_cpus=options.num_cpus, _node_ip_address="127.0.0.1", **settings)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SmallsetError(f"could not start or join {where}: {exc}") from None
    _quiet_ray_data(ray)
    return ray


def _quiet_ray_data(ray) -> None:
    """Ray's and Ray Data's log lines stay in Ray's session log files, not on the console (errors still show);
    Ray Data's progress table is off: smallset shows its own progress."""
    import logging

    for name, level in (("ray", logging.ERROR), ("ray.data", logging.CRITICAL)):  # a failed task's error is raised to us
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(level)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # results come back in input order, as locally


def cluster_cpus(ray) -> int:
    """CPUs the cluster has now (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
