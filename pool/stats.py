"""What a pool can tell about its workers, and how many CPUs this process may use."""

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerStats:
    """One worker of a pool, as ``ClonePool.stats()`` reports it."""

    clone: int  # index of the clone in its set
    tasks: int  # tasks run (an initializer is not counted)
    cpu_seconds: float  # CPU time of the worker thread, which runs the clone's side of its tasks
    transport_bytes: int  # size of the transport buffer now
    peak_transport_bytes: int  # the largest it has been
    route: str = "copies"  # how its clone is loaded: "copies" or "namespaces" (docs/pool.md)

    @classmethod
    def of(cls, worker) -> "WorkerStats":
        """The statistics of a running worker, read now (used by ``ClonePool.stats``)."""
        view = worker._view
        return cls(
            clone=worker.clone.index,
            tasks=worker.tasks,
            cpu_seconds=worker.cpu_seconds(),
            transport_bytes=len(view) if view is not None else 0,
            peak_transport_bytes=worker.peak_transport,
            route=worker.clone.route,
        )


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota():
    """CPUs' worth of time the cgroup grants (cgroup v2 cpu.max, v1 cfs quota), or None."""
    for directory in _cgroup_dirs():
        for name, parse in (("cpu.max", _parse_cpu_max), ("cpu.cfs_quota_us", _parse_cfs)):
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                continue
            try:
                quota = parse(text, directory)
            except ValueError:
                continue
            if quota is not None:
                return quota
    return None


def _cgroup_dirs():
    """This process's cgroup directories, its own first, for v2 and the v1 cpu controller."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dirs = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            dirs.append("/sys/fs/cgroup" + path.rstrip("/"))
        elif "cpu" in controllers.split(","):
            dirs += [f"/sys/fs/cgroup/{controllers}" + path.rstrip("/"), f"/sys/fs/cgroup/{controllers}"]
    if "/sys/fs/cgroup" not in dirs:
        dirs.append("/sys/fs/cgroup")
    return dirs


def _parse_cpu_max(text, _directory):
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return int(fields[0]) / int(fields[1])


def _parse_cfs(text, directory):
    quota = int(text.strip() or -1)
    if quota <= 0:
        return None
    try:
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            period = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return quota / period
