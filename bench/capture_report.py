"""Offline capture benchmarks: accuracy against the number of cameras, and time / memory at scale.

Accuracy (``--accuracy``): synthetic multi-view sequences (``lmfit3d.synthetic.make_multiview``:
cameras on a ring, camera 0 frontal, F frames of expression animation, 1 px landmark noise with
the true per-landmark sigma, landmarks facing away from a camera and 5 % random ones at sigma
15 px with noise of that size), calibrated cameras (extrinsics and focal known), fitted by
``fit_capture``.  Per landmark set and camera count the same sequences are fitted with the true
sigma ("predicted") and with sigma = 1 ("fixed").  Metric: face-region vertex error (mm) after
rigid alignment, pooled over frames and faces: median and mean.  C cameras = the first C of the
17-camera ring, so every row sees a superset of the views of the row above.

Scale (``--scale``): dense703, noise as above, calibrated; time of the L-BFGS solve, of the
initialisation (real-time tracker on the reference camera), the number of iterations, time per
cost+gradient evaluation and the peak resident memory of the process (``ru_maxrss``, a fresh
subprocess per size, model included), growing with F and C up to 520 frames x 17 cameras, and the
face-region vertex error (rigid-aligned, 8 frames spread over the clip).

Usage::

    NUMBA_NUM_THREADS=1 python bench/capture_report.py                 # both tables
    python bench/capture_report.py --accuracy --faces 2 --frames 3
    python bench/capture_report.py --scale --sizes 10x1 130x17 520x17
    python bench/capture_report.py --write-doc    # also write the tables into docs/results.md

``--write-doc`` writes the scale table into the ``capture_report.scale`` section of docs/results.md
and the accuracy table into ``capture_report.accuracy`` (``bench/results_doc.py``), each with the
machine line.
"""
import os

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_doc  # noqa: E402

SETS = ("ibug68", "dense320", "dense703")
CAMERAS = (1, 2, 4, 8, 17)
SIZES = ("10x1", "10x17", "40x4", "40x17", "130x17", "520x1", "520x4", "520x17")


def accuracy(faces, frames, seed, cameras=CAMERAS, sets=SETS):
    from lmfit3d.capture import CaptureConfig, fit_capture, parse_calibration
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.model import load_model
    from lmfit3d.synthetic import make_multiview, rigid_align_error

    model = load_model()
    mask = model.face_mask()
    cfg = CaptureConfig()
    errs, secs = {}, {}
    for s in sets:
        ids = load_landmark_set(s)
        for i in range(faces):
            mv = make_multiview(model, ids, np.random.default_rng([seed, i]), n_cameras=max(cameras),
                                n_frames=frames)
            gt = [mv.vertices(model, f) for f in range(frames)]
            cams = mv.calibration_json()["cameras"]
            for c in cameras:
                cal = parse_calibration({"cameras": cams[:c]}, c)
                for mode in ("predicted", "fixed"):
                    sigma = mv.sigma[:c] if mode == "predicted" else np.ones_like(mv.sigma[:c])
                    t0 = time.perf_counter()
                    res = fit_capture(mv.mu[:c], sigma, vertex_ids=ids, calibration=cal, model=model, config=cfg)
                    secs.setdefault((s, c, mode), []).append(time.perf_counter() - t0)
                    e = np.concatenate([rigid_align_error(res.vertices(model, f), gt[f], mask) for f in range(frames)])
                    errs.setdefault((s, c, mode), []).append(e)
            print(f"  {s} face {i} done", file=sys.stderr, flush=True)
    stats = {k: (float(np.median(np.concatenate(v))), float(np.concatenate(v).mean()), float(np.median(secs[k])))
             for k, v in errs.items()}
    return stats


def accuracy_table(stats, cameras=CAMERAS, sets=SETS):
    head = "| landmarks | sigma | " + " | ".join(f"{c} cam median / mean" for c in cameras) + " |"
    rows = [head, "|---|---|" + "---:|" * len(cameras)]
    for s in sets:
        for mode in ("predicted", "fixed"):
            cells = [f"{stats[(s, c, mode)][0]:.3f} / {stats[(s, c, mode)][1]:.3f}" for c in cameras]
            rows.append(f"| {s} | {mode} | " + " | ".join(cells) + " |")
    checks = []
    n_ok = n = 0
    for s in sets:
        for mode in ("predicted", "fixed"):
            single = stats[(s, cameras[0], mode)][1]
            for c in cameras[1:]:
                n += 1
                ok = stats[(s, c, mode)][1] < single
                n_ok += ok
                if not ok:
                    checks.append(f"  multi-view not better: {s} {mode} {c} cameras mean "
                                  f"{stats[(s, c, mode)][1]:.3f} >= single {single:.3f}")
    checks.insert(0, f"Multi-view beats single-view (mean error, C > 1 vs C = 1): {n_ok}/{n} comparisons.")
    return "\n".join(rows), checks


def _scale_child(size, seed, max_iter):
    """One scale measurement (run in a fresh process); prints a JSON line."""
    import resource
    from lmfit3d.capture import CaptureConfig, CaptureProblem, CaptureSolver, fit_capture, parse_calibration
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.model import load_model
    from lmfit3d.synthetic import make_multiview

    nf, nc = (int(v) for v in size.split("x"))
    model = load_model()
    ids = load_landmark_set("dense703")
    mv = make_multiview(model, ids, np.random.default_rng(seed), n_cameras=nc, n_frames=nf)
    cal = parse_calibration(mv.calibration_json(), nc)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    calls = []
    orig = CaptureProblem.energy

    def timed(self, z, want_grad=True, want_diag=False):
        t = time.perf_counter()
        out = orig(self, z, want_grad, want_diag)
        if want_grad and not want_diag:
            calls.append(time.perf_counter() - t)
        return out

    CaptureProblem.energy = timed
    res = fit_capture(mv.mu, mv.sigma, landmark_set="dense703", calibration=cal, model=model,
                      config=CaptureConfig(solver=CaptureSolver(max_iter=max_iter)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    from lmfit3d.synthetic import rigid_align_error
    mask = model.face_mask()
    check = np.unique(np.linspace(0, nf - 1, min(nf, 8)).round().astype(int))
    err = np.concatenate([rigid_align_error(res.vertices(model, f), mv.vertices(model, f), mask) for f in check])
    print(json.dumps(dict(err_median_mm=float(np.median(err)), err_mean_mm=float(err.mean()),
                          size=size, frames=nf, cameras=nc, init_s=res.seconds_init, solve_s=res.seconds_solve,
                          iterations=res.iterations, evaluations=res.n_evaluations,
                          eval_ms=1e3 * float(np.median(calls)), peak_rss_mb=rss, rss_before_fit_mb=rss0,
                          input_mb=(mv.mu.nbytes + mv.sigma.nbytes) / 2 ** 20, message=res.message)))


def scale(sizes, seed, max_iter):
    rows = []
    for size in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", size, "--seed", str(seed),
                              "--max-iter", str(max_iter)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {size}: {rows[-1]['solve_s']:.1f} s", file=sys.stderr, flush=True)
    return rows


def scale_table(rows):
    lines = ["| F x C | solve (s) | iterations / evaluations | per evaluation (ms) | "
             "ns per (frame, camera, landmark) | init (s) | peak RSS (MB) | added by the fit (MB) | "
             "input mu+sigma (MB) | face error median / mean (mm) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ns = r["eval_ms"] * 1e6 / (r["frames"] * r["cameras"] * 703)
        added = r["peak_rss_mb"] - r["rss_before_fit_mb"]
        lines.append(f"| {r['frames']} x {r['cameras']} | {r['solve_s']:.2f} | {r['iterations']} / {r['evaluations']} | "
                     f"{r['eval_ms']:.1f} | {ns:.0f} | {r['init_s']:.2f} | {r['peak_rss_mb']:.0f} | {added:.0f} | "
                     f"{r['input_mb']:.1f} | "
                     f"{r.get('err_median_mm', np.nan):.3f} / {r.get('err_mean_mm', np.nan):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="FRAMESxCAMERAS")
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the raw results here")
    results_doc.add_arguments(ap)
    a = ap.parse_args(argv)
    if a.child:
        _scale_child(a.child, a.seed, a.max_iter)
        return 0
    both = not (a.accuracy or a.scale)
    raw = {}
    machine = results_doc.machine_line(f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, one process")
    print(machine + "\n")
    doc = {}
    if a.accuracy or both:
        t0 = time.perf_counter()
        stats = accuracy(a.faces, a.frames, a.seed)
        table, checks = accuracy_table(stats)
        secs = {k: v[2] for k, v in stats.items()}
        text = (f"{a.faces} faces x {a.frames} frames per cell, calibrated cameras, 1 px noise, occluded and "
                f"5 % random landmarks at sigma 15 px ({time.perf_counter() - t0:.0f} s).\n\n{table}\n\n"
                + "\n".join(checks) + "\n\nMedian fit time (init + L-BFGS) per sequence, s: " + ", ".join(
                    f"{s} {c} cam {secs[(s, c, 'predicted')]:.2f}" for s in ("dense703",) for c in CAMERAS))
        print("### Accuracy: face-region vertex error (mm) after rigid alignment, median / mean\n")
        print(text)
        doc["capture_report.accuracy"] = text + "\n\n" + machine
        raw["accuracy"] = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in stats.items()}
    if a.scale or both:
        rows = scale(a.sizes, a.seed, a.max_iter)
        head = "Scale: dense703, calibrated, L-BFGS (max %d iterations), one thread" % a.max_iter
        print(f"\n### {head}\n")
        text = scale_table(rows)
        print(text)
        doc["capture_report.scale"] = f"{head}.  {machine}\n\n{text}"
        raw["scale"] = rows
    results_doc.maybe_write(a, doc)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(raw, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
