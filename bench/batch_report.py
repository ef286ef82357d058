"""Batch throughput: videos per minute of `lmfit3d track DIR` serial, with `--jobs 2` and with
`--dask local:2` on the same folder in the same run, and the per-task overhead of Dask.

Usage::

    python bench/batch_report.py                       # 8 clips of 100 frames cut from the shared small clip
    python bench/batch_report.py --frames 600          # 8 clips of 600 frames (section batch_report_8x600)
    python bench/batch_report.py --write-doc           # also write the table into docs/results.md ("batch_report")

Each mode runs the command line in a fresh process into a fresh folder (imports, model, kernels from
Numba's cache, worker processes or the LocalCluster all counted: what a user waits for), with the CPU
time of the whole process tree; the rounds alternate the modes (A/B interleaved on a shared
machine) and the table gives each mode's median, the ratios those of the same round.  One extra
mode runs `--dask local:2` with ``MALLOC_TRIM_THRESHOLD_=65536`` in the environment, the setting
Dask gives its workers by default and ``--dask local:N`` drops (:data:`lmfit3d.cluster.LOCAL_CONFIG`).
Then, on the LocalCluster of ``--dask local:2`` (:func:`lmfit3d.cluster._connect`), its start and
close times, and :func:`lmfit3d.cluster.run_dask` tracks the folder again with its per-task
figures: the task's wall time in the worker minus the time of the tracking stages (decode, detect,
landmarks, fit, write) is the in-task overhead (model lookup, predictor, opening the video, private
folder, moving the outputs), compared with the same measure in two processes of a process pool
(the ``--jobs 2`` setting; one process alone would have a core to itself); Numba compilations per
task; and the round trip of an empty task through the scheduler.  Needs dask.distributed
(``pip install ".[cluster]"``).
"""
import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import results_doc  # noqa: E402

DASK_MALLOC = "--dask local:2, Dask's MALLOC_TRIM_THRESHOLD_"
MODES = {"serial": ([], {}), "--jobs 2": (["--jobs", "2"], {}), "--dask local:2": (["--dask", "local:2"], {}),
         DASK_MALLOC: (["--dask", "local:2"], {"MALLOC_TRIM_THRESHOLD_": "65536"})}


def make_clips(folder, n, frames):
    """``n`` clips of ``frames`` frames cut from the shared 224 x 224 clip at different offsets."""
    import imageio.v2 as imageio

    from lmfit3d.paths import shared_media_dir
    reader = imageio.get_reader(str(shared_media_dir() / "QoT0S2vu9m4_00002.mp4"))
    src = [f for f in reader]
    reader.close()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        start = (7 * k) % max(len(src) - 1, 1)
        clip = [src[(start + j) % len(src)] for j in range(frames)]
        imageio.mimwrite(folder / f"clip{k:02d}.mp4", clip, fps=25, codec="libx264", quality=7, macro_block_size=1)
    return folder


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_mode(folder, out, extra, env_extra):
    """(wall seconds, CPU seconds of the process tree, summary rows) of one `lmfit3d track` run in a
    fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               **env_extra)
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lmfit3d.cli", "track", str(folder), "-o", str(out), "-q",
                           "--no-iris", *extra], env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"track {' '.join(extra)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(out / "summary.csv", newline="") as fh:
        return wall, cpu, list(csv.DictReader(fh))


def dask_figures(folder, out):
    """Per-task figures of run_dask on the LocalCluster of ``--dask local:2``, the empty-task round
    trip, and the cluster's start and close times (seconds)."""
    import distributed

    from lmfit3d.cluster import _connect, run_dask
    from lmfit3d.media import VIDEO_EXTENSIONS, expand_inputs
    from lmfit3d.track import TrackOptions
    t0 = time.perf_counter()
    client, cluster = _connect(distributed, "local:2")
    client.wait_for_workers(2)
    start = time.perf_counter() - t0
    try:
        client.submit(sum, [1], pure=False).result()
        trips = []
        for k in range(30):
            t0 = time.perf_counter()
            client.submit(sum, [k], pure=False).result()
            trips.append(time.perf_counter() - t0)
        stats, results = [], {}
        t0 = time.perf_counter()
        res = run_dask("video", expand_inputs([folder], VIDEO_EXTENSIONS), out,
                       TrackOptions(iris=False, progress=False), cluster.scheduler_address, stats=stats)
        wall = time.perf_counter() - t0
    finally:
        t0 = time.perf_counter()
        client.close()
        cluster.close()
        close = time.perf_counter() - t0
    for path, summary, err in res:
        if err:
            raise RuntimeError(err)
        results[str(path)] = summary
    for s in stats:
        s["stages"] = sum(results[str(s["path"])].timings.values())
    return stats, statistics.median(trips), wall, (start, close)


def _timed_gaps(paths, out):
    """In one worker process: time outside the tracking stages of each video after the first."""
    from lmfit3d.batch import _run_one
    from lmfit3d.track import TrackOptions
    opt = TrackOptions(iris=False, progress=False)
    gaps = []
    for k, p in enumerate(paths):
        t0 = time.perf_counter()
        _, summary, err = _run_one("video", p, out, opt, None)
        if err:
            raise RuntimeError(err)
        if k:
            gaps.append(time.perf_counter() - t0 - sum(summary.timings.values()))
    return gaps


def process_pool_baseline(folder, out):
    """Median time outside the tracking stages of a video in the ``--jobs 2`` setting (two spawned
    processes, half the folder each, after each one's first video): the same measure as a Dask
    task's in-task overhead, with the same two processes sharing the cores, without Dask."""
    import multiprocessing as mpc
    from concurrent.futures import ProcessPoolExecutor

    from lmfit3d.media import VIDEO_EXTENSIONS, expand_inputs
    out.mkdir()
    paths = expand_inputs([folder], VIDEO_EXTENSIONS)
    with ProcessPoolExecutor(2, mp_context=mpc.get_context("spawn")) as ex:
        halves = [ex.submit(_timed_gaps, paths[k::2], out) for k in range(2)]
        return statistics.median(g for h in halves for g in h.result())


def table(n, frames, runs, stats, trip, dask_wall, cluster_times, base):
    """Markdown: ``runs`` maps each mode to its rounds' (wall, cpu, summary rows)."""
    lines = ["| mode | wall (s), median of rounds | videos / minute | frames / s | CPU s (all processes) | "
             "stage time / wall x workers |", "|---|---:|---:|---:|---:|---:|"]
    med = {}
    for mode, rounds in runs.items():
        walls = [w for w, _, _ in rounds]
        wall, cpu = statistics.median(walls), statistics.median(c for _, c, _ in rounds)
        rows = min(rounds, key=lambda r: abs(r[0] - wall))[2]
        stage = sum(float(r["seconds"]) for r in rows)
        workers = 1 if mode == "serial" else 2
        med[mode] = wall
        lines.append(f"| `{mode}` | {wall:.1f} ({min(walls):.1f}-{max(walls):.1f}) | {60 * n / wall:.1f} | "
                     f"{n * frames / wall:.0f} | {cpu:.1f} | {stage / (wall * workers):.2f} |")

    def same_run(a, b):
        """Throughput of mode ``a`` / that of ``b``, round by round."""
        return [wb / wa for (wa, _, _), (wb, _, _) in zip(runs[a], runs[b])]

    ratios = same_run("--dask local:2", "--jobs 2")
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median(ca / cb for (_, ca, _), (_, cb, _) in zip(runs["--dask local:2"], runs["--jobs 2"]))
    malloc = statistics.median(same_run(DASK_MALLOC, "--jobs 2"))
    cpu_malloc = statistics.median(ca / cb for (_, ca, _), (_, cb, _) in zip(runs[DASK_MALLOC], runs["--jobs 2"]))
    first = [s for s in stats if s["first"]]
    later = [s for s in stats if not s["first"]]
    over = [s["seconds"] - s["stages"] for s in later]
    over1 = [s["seconds"] - s["stages"] for s in first]
    extra = (med["--dask local:2"] - med["--jobs 2"]) * 2 / n
    lines += ["",
              f"{n} clips of {frames} frames (224 x 224, `--no-iris`); each mode a fresh `lmfit3d track` process, "
              f"startup included; {len(ratios)} rounds, the modes interleaved.",
              f"`--dask local:2` / `--jobs 2` throughput, same round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {ratio:.2f} (goal >= 0.90: {'met' if ratio >= 0.9 else 'not met'}); CPU time "
              f"{cpu_ratio:.2f}x that of `--jobs 2`; the extra wall time of Dask spread over the videos: "
              f"{extra:+.2f} s per video per worker.",
              f"With Dask's default `MALLOC_TRIM_THRESHOLD_=65536` in the workers (before this was dropped): "
              f"throughput {malloc:.2f} of `--jobs 2`, CPU time {cpu_malloc:.2f}x.",
              f"The LocalCluster of `--dask local:2` (scheduler in this process, 2 workers under nannies): "
              f"{cluster_times[0]:.1f} s to start, {cluster_times[1]:.1f} s to close; "
              f"run_dask on it once started: {dask_wall:.1f} s for the folder.",
              f"Per-task overhead inside a Dask worker (task wall - tracking stages, {len(later)} tasks after "
              f"each worker's first): median {statistics.median(over):.3f} s, max {max(over):.3f} s "
              f"(goal <= 0.5 s, median: {'met' if statistics.median(over) <= 0.5 else 'not met'}); "
              "a worker's first task: "
              f"{', '.join(f'{x:.2f}' for x in over1)} s (loading the model and the kernels from Numba's cache).",
              f"The same measure in 2 spawned processes without Dask (`_run_one`, half the folder each, after "
              f"each one's first video): median {base:.3f} s (opening the video, predictor, private folder, "
              f"outputs moved); Dask's own share per task: "
              f"{statistics.median(over) - base + trip:+.3f} s (the difference, plus the round trip).",
              f"Round trip of an empty task through the scheduler: median {1e3 * trip:.1f} ms.",
              f"Numba compilations per task: first tasks {[s['compiled'] for s in first]}, later tasks "
              f"max {max((s['compiled'] for s in later), default=0)} (the kernels come from the cache that "
              f"`lmfit3d model build` filled)."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        ap.error("unset MALLOC_TRIM_THRESHOLD_ first (one of the modes sets it)")
    loads = []
    with tempfile.TemporaryDirectory(prefix="lmfit3d-batch-bench-") as tmp:
        tmp = Path(tmp)
        folder = make_clips(tmp / "clips", args.clips, args.frames)
        runs = {mode: [] for mode in MODES}
        for r in range(args.rounds):
            for k, (mode, (extra, env)) in enumerate(MODES.items()):
                wall, cpu, summary = run_mode(folder, tmp / f"out{r}_{k}", extra, env)
                loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
                print(f"round {r}: {mode}: {wall:.1f} s, CPU {cpu:.1f} s, load {loads[-1]:.1f}", file=sys.stderr)
                runs[mode].append((wall, cpu, summary))
        stats, trip, dask_wall, cluster_times = dask_figures(folder, tmp / "out_stats")
        base = process_pool_baseline(folder, tmp / "out_base")
    text = table(args.clips, args.frames, runs, stats, trip, dask_wall, cluster_times, base)
    text = f"{text}\n\n" + results_doc.machine_line(
        f"{os.cpu_count()} cores, load average {min(loads):.1f}-{max(loads):.1f} during the rounds")
    print(text)
    name = "batch_report" if (args.clips, args.frames) == (8, 100) else f"batch_report_{args.clips}x{args.frames}"
    results_doc.maybe_write(args, {name: text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
