"""Where the per-call spread of the tracking landmarks comes from (issue 4, docs/history/NOTES_frontend5.md).

Run::

    python bench/landmarks_spread.py [--calls N] [--block B]

Tracks the 1080p clip ``W040_level_3_happy_029.mp4`` the way ``bench/test_bench_track.py::
test_landmarks_track`` does (:meth:`MediaPipeLandmarks.track`, default alternating iris policy, 72
pre-decoded frames cycled, so every frame is cold in cache) and times every call, split into the
face-mesh crop, the mesh network, the iris crop, the iris network and the rest (Python glue, next
ROI).  The sessions and the crop kernel are wrapped from outside; the code under test is unchanged.

After every block of ``--block`` calls two probes run (outside the timed calls): a fixed
arithmetic loop (no memory traffic) and a read of a 16 MB array (beyond the L2, through the shared
L3 and memory).  Printed: each section's median / 10th / 90th percentile / min; medians by eye and
the spread of the per-frame medians; the lag-1 autocorrelation of the call times; the spread of
the block medians, their correlation with the two probes and between the sections; the share of
calls during or just before which the process was preempted (an involuntary context switch: another
process ran on this core and may have evicted its L2), and the median with and without.
"""
import argparse
import itertools
import resource
import sys
import time
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lmfit3d.imaging as imaging  # noqa: E402
import lmfit3d.predict as predict  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.media import VideoReader  # noqa: E402

CLIP = "W040_level_3_happy_029.mp4"
SECTIONS = ("total", "mesh_crop", "mesh_net", "iris_crop", "iris_net", "rest")


@njit(cache=True)
def _alu_probe(n):
    """n dependent multiply-adds: time depends on the core clock only."""
    x = 1.0
    for _ in range(n):
        x = x * 1.0000001 + 1e-9
    return x


@njit(cache=True)
def _memory_probe(a):
    """One read of every cache line of ``a`` (float64): time depends on L3 / memory bandwidth."""
    s = 0.0
    for i in range(0, a.size, 8):
        s += a[i]
    return s


class _Timed:
    """An onnxruntime session whose ``run`` records its wall time into ``rec[key]``."""

    def __init__(self, session, rec, key):
        self._s, self._rec, self._key = session, rec, key

    def run(self, *args, **kwargs):
        t = time.perf_counter()
        out = self._s.run(*args, **kwargs)
        self._rec[self._key] = time.perf_counter() - t
        return out

    def __getattr__(self, name):
        return getattr(self._s, name)


def _timed_warp(warp, rec):
    def timed(image, m, out_size, *args):
        t = time.perf_counter()
        r = warp(image, m, out_size, *args)
        rec["mesh_crop" if out_size > 64 else "iris_crop"] = time.perf_counter() - t
        return r
    return timed


def measure(calls=1000, block=20, n_frames=80, first=8):
    """Per-call section times (calls, 6) seconds, eye and frame index per call, block probes."""
    frames = list(itertools.islice(iter(VideoReader(shared_media_dir() / CLIP)), n_frames))
    mp = predict.MediaPipeLandmarks()
    rec = {}
    mp.mesh.session = _Timed(mp.mesh.session, rec, "mesh_net")
    mp.iris.session = _Timed(mp.iris.session, rec, "iris_net")
    predict.warp_chw = _timed_warp(predict.warp_chw, rec)          # the mesh crop
    imaging.warp_chw = _timed_warp(imaging.warp_chw, rec)          # crop(): the iris crop
    big = np.ones(2_000_000)
    _alu_probe(10), _memory_probe(big)
    mp.track(frames[first - 1])
    order = itertools.cycle(range(first, n_frames))
    times, eyes, fidx, probes, switched = [], [], [], [], []
    pc = time.perf_counter
    ru = resource.getrusage
    last = ru(resource.RUSAGE_SELF).ru_nivcsw
    for k in range(calls):
        f = next(order)
        eyes.append(mp._iris_next)
        fidx.append(f)
        for s in SECTIONS[1:5]:
            rec[s] = 0.0
        t = pc()
        mp.track(frames[f])
        tot = pc() - t
        now = ru(resource.RUSAGE_SELF).ru_nivcsw
        switched.append(now != last)            # preempted during or since the previous call
        last = now
        times.append([tot] + [rec[s] for s in SECTIONS[1:5]] + [tot - sum(rec[s] for s in SECTIONS[1:5])])
        if (k + 1) % block == 0:
            t = pc()
            _alu_probe(300_000)
            ta = pc() - t
            t = pc()
            _memory_probe(big)
            probes.append((ta, pc() - t))
            last = ru(resource.RUSAGE_SELF).ru_nivcsw
    return np.array(times), np.array(eyes), np.array(fidx), np.array(probes), np.array(switched)


def report(times, eyes, fidx, probes, switched, block):
    ms = times * 1e3
    print("| section | median | p10 | p90 | min | eye 0 median | eye 1 median |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for j, s in enumerate(SECTIONS):
        x = ms[:, j]
        print(f"| {s} | {np.median(x):.3f} | {np.percentile(x, 10):.3f} | {np.percentile(x, 90):.3f} | "
              f"{x.min():.3f} | {np.median(x[eyes == 0]):.3f} | {np.median(x[eyes == 1]):.3f} |")
    tot = ms[:, 0]
    per_frame = np.array([np.median(tot[fidx == f]) for f in np.unique(fidx)])
    d = tot - np.median(tot)
    print(f"\nper-frame medians of total: {per_frame.min():.3f}-{per_frame.max():.3f} ms (sd {per_frame.std():.3f})")
    print(f"lag-1 autocorrelation of total: {np.corrcoef(d[:-1], d[1:])[0, 1]:.2f}")
    sw = switched
    print(f"calls preempted (involuntary context switch during or just before the call): {sw.mean():.1%}; "
          f"median total {np.median(tot[sw]):.3f} ms with, {np.median(tot[~sw]):.3f} ms without")
    nb = len(probes)
    bt = np.median(tot[:nb * block].reshape(nb, block), 1)
    pa, pm = probes[:, 0] * 1e3, probes[:, 1] * 1e3
    spread = [np.percentile(b, 90) / np.percentile(b, 10) for b in (bt, pa, pm)]
    print(f"block medians ({block} calls): total {bt.min():.3f}-{bt.max():.3f} ms, p90/p10 {spread[0]:.3f}; "
          f"arithmetic probe p90/p10 {spread[1]:.3f}; memory probe p90/p10 {spread[2]:.3f}")
    print(f"correlation of block medians with the arithmetic probe {np.corrcoef(bt, pa)[0, 1]:.2f}, "
          f"with the memory probe {np.corrcoef(bt, pm)[0, 1]:.2f}")
    sec = [np.median(ms[:nb * block, j].reshape(nb, block), 1) for j in (1, 2, 4)]
    print("correlation of block medians between sections: "
          f"mesh crop / mesh net {np.corrcoef(sec[0], sec[1])[0, 1]:.2f}, "
          f"mesh net / iris net {np.corrcoef(sec[1], sec[2])[0, 1]:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--block", type=int, default=20)
    a = ap.parse_args(argv)
    if a.calls < 4 * a.block or a.block < 2:
        ap.error("need --block >= 2 and --calls >= 4 blocks")
    times, eyes, fidx, probes, switched = measure(a.calls, a.block)
    skip = 2 * a.block                                                   # warm-up blocks
    report(times[skip:], eyes[skip:], fidx[skip:], probes[2:], switched[skip:], a.block)


if __name__ == "__main__":
    main()
