"""Inputs as tasks on a Dask cluster (``lmfit3d track|fit ... --dask ADDRESS`` or ``--dask local:N``).

One task per input, run by :func:`lmfit3d.batch._run_one` in a Dask worker: the worker loads the
face model once (``lmfit3d.model.load_model`` keeps it per process) and Numba's compiled kernels
from the cache that ``lmfit3d model build`` filled; a task compiles nothing (:func:`_task` counts
it).  Each worker writes its input's outputs into the output folder as one set
(:func:`lmfit3d.paths.commit_outputs`), so the folder and the inputs must be at the same paths on
every worker (one machine, or a shared file system).  When a worker dies mid-input, the scheduler
runs the task again on another worker (after ``distributed.scheduler.allowed-failures`` deaths,
default 3, the input is reported as failed); the dead worker's private folder is removed by the
batch (:func:`lmfit3d.paths.sweep_work_dirs`).

dask.distributed is an optional extra (``pip install "lmfit3d[cluster]"``), imported only here,
inside :func:`run_dask`.
"""
import os
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path

from .batch import _run_one, check_output_names, inputs_in
from .media import _check_out_dir

CONNECT_TIMEOUT_S = 20

# Dask settings for the LocalCluster of ``--dask local:N``, so that its workers run as the ``--jobs N``
# processes do (docs/results.md, "Batches (issue 21)").  Dask starts each worker with
# MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap threshold at 128 KiB: every
# frame-sized array became a fresh mmap, ~7x the page faults and ~30 % more CPU per video; None
# drops the variable (the workers keep glibc's defaults, or what this process's environment sets).
# The worker's profiler samples the running task every 10 ms for a dashboard this cluster does not
# have, and the 20 ms event-loop tick only feeds warnings that are silenced: both take the GIL from
# the task.
LOCAL_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s"}


def parse_dask(text):
    """("local", N) for ``local:N`` (a LocalCluster of N single-thread worker processes), else
    ("scheduler", address) for a running scheduler (``tcp://host:8786``; ``host:port`` means tcp)."""
    t = str(text).strip()
    if t.startswith("local"):
        m = re.fullmatch(r"local:(\d+)", t)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"--dask {text}: expected local:N with N >= 1 workers, e.g. local:4")
        return "local", int(m.group(1))
    if not t:
        raise ValueError("--dask needs a scheduler address (tcp://host:8786) or local:N")
    if "://" not in t:
        t = "tcp://" + t
    if not re.fullmatch(r"[a-z]+://\S+", t):
        raise ValueError(f"--dask {text}: not a scheduler address (tcp://host:8786) or local:N")
    return "scheduler", t


def require_distributed():
    """The dask.distributed module; ValueError (one line, how to install it) when it is missing."""
    try:
        import distributed
    except ImportError:
        raise ValueError('--dask needs dask.distributed: pip install "lmfit3d[cluster]" '
                         '(or pip install "dask[distributed]")') from None
    return distributed


def _task(kind, path, out_dir, options, model_path, keep, version):
    """One input on a Dask worker: (path, result, error, info); info: host, pid, seconds (wall),
    compiled (Numba compilations during the task), first (the worker's first lmfit3d task)."""
    import socket

    from . import __version__
    from .warmup import count_compilations
    global _TASKS_DONE
    t0 = time.perf_counter()
    if version != __version__:
        return path, None, f"{path}: the worker runs lmfit3d {__version__}, this command {version}", {}
    with count_compilations() as c:
        r = _run_one(kind, path, out_dir, options, model_path, keep)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "seconds": time.perf_counter() - t0,
            "compiled": c.n, "first": _TASKS_DONE == 0}
    _TASKS_DONE += 1
    return (*r, info)


_TASKS_DONE = 0


def _connect(distributed, address):
    """(client, cluster or None) for ``--dask ADDRESS``; ValueError (one line) when unreachable."""
    import logging
    mode, value = parse_dask(address)
    cluster = None
    try:
        if mode == "local":
            import dask
            with dask.config.set(LOCAL_CONFIG):
                cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                                                   dashboard_address=None, silence_logs=logging.CRITICAL)
            return distributed.Client(cluster, set_as_default=False), cluster
        return distributed.Client(value, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False), None
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ValueError(f"--dask {address}: cannot reach the scheduler ({' '.join(str(exc).split())})") from None


def _failure(distributed, path, exc):
    """One line for a task that raised instead of returning (its worker died too often, ...)."""
    if isinstance(exc, distributed.KilledWorker):
        return (f"{path}: the Dask workers running it died {exc.allowed_failures + 1} times "
                "(killed, or out of memory)")
    return f"{path}: the Dask task failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"


def run_dask(kind, paths, out_dir, options, address, model_path=None, on_done=None, stats=None):
    """Process many inputs as tasks on a Dask cluster; the contract of :func:`lmfit3d.batch.run_many`.

    address : ``local:N`` (a LocalCluster of N processes, one thread each, closed at the end) or a
        running scheduler's address.
    stats : a list to which each task's info dict (host, pid, seconds, compiled, first) is appended,
        with its input's ``path``.

    Returns a list of (path, result, error) in input order; ``on_done(path, result, error)`` as each
    finishes.  On ``SystemExit`` / ``KeyboardInterrupt`` the tasks not yet started are cancelled
    (those running on a remote cluster finish their input).
    """
    distributed = require_distributed()
    _check_out_dir(out_dir)
    check_output_names(kind, paths, out_dir, options)
    out_dir = os.path.abspath(out_dir)
    keep = inputs_in(out_dir, paths)
    opt = replace(options, progress=False)
    from . import __version__
    client, cluster = _connect(distributed, address)
    results, futs = {}, {}
    try:
        for p in paths:
            key = f"lmfit3d-{kind}-{Path(p).stem[:40]}-{uuid.uuid4().hex[:8]}"
            futs[client.submit(_task, kind, os.path.abspath(p), out_dir, opt, model_path, keep, __version__,
                               key=key, pure=False)] = p
        for fu in distributed.as_completed(list(futs), loop=client.loop):
            p = futs[fu]
            try:
                path, res, err, info = fu.result()
            except Exception as exc:
                res, err, info = None, _failure(distributed, p, exc), {}
            results[str(p)] = (p, res, err)
            if stats is not None:
                stats.append(dict(info, path=p))
            if on_done:
                on_done(p, res, err)
    except BaseException:
        client.cancel(list(futs), force=True)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [results[str(p)] for p in paths]
