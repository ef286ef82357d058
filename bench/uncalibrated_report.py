"""Offline capture without a calibration (issue 17): error, time, iterations and status against the
number of cameras, calibrated vs. uncalibrated (focal known / unknown).

Synthetic: one face, F frames of expression animation (``lmfit3d.synthetic.make_multiview``), dense320,
1 px noise with 10 % outliers (sigma 15 px, the true sigma passed), C cameras on a +-30 degree yaw ring
(camera 0 frontal; each C its own ring).  Error: face-region vertex error after rigid alignment, mean
over frames (mm).  Status 1: converged (``CaptureSolver.stop_decrease``; scipy's tests for L-BFGS), 2: LM
found no further decrease, 0: the iteration cap.  Modes: ``calibrated`` (true extrinsics and focal),
``focal known`` (no extrinsics), ``focal unknown``, all with the default solver (Levenberg-Marquardt
for these sizes, ``lmfit3d.capture_gn``), and ``focal known, L-BFGS`` (``CaptureSolver(method="lbfgs")``,
the solver before, same run).  ``--second-seed``: focal known and unknown on a second face (4+ cameras).
``--run-on N``: the default-solver fits again with ``stop_decrease=0`` (LM runs until no step lowers
the cost, at most N iterations): how far the stopping rule leaves them from the minimum.

Usage::

    NUMBA_NUM_THREADS=1 python bench/uncalibrated_report.py [--frames 20] [--cameras 1 2 4 8 17] [--run-on 200]
        [--second-seed 1] [--write-doc]
    NUMBA_NUM_THREADS=1 python bench/uncalibrated_report.py --long 60x8 120x4 [--write-doc]
"""
import os

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results_doc  # noqa: E402

MODES = ("calibrated", "focal known", "focal unknown", "focal known, L-BFGS")


def run(model, ids, n_cameras, frames, seed, mode, max_iter, run_on=False):
    """One fit; ``run_on``: no stopping rule of our own (``stop_decrease=0``)."""
    from lmfit3d.calibration import Calibration
    from lmfit3d.capture import CaptureConfig, CaptureSolver, fit_capture, parse_calibration
    from lmfit3d.synthetic import make_multiview, rigid_align_error

    mv = make_multiview(model, ids, np.random.default_rng(seed), n_cameras=n_cameras, n_frames=frames,
                        noise_px=1.0, outlier_fraction=0.1, yaw_span_deg=60.0, pitch_deg=(0.0,))
    if mode == "calibrated":
        cal = parse_calibration(mv.calibration_json(), n_cameras)
    else:
        cal = Calibration.unknown(mv.image_size)
        if mode.startswith("focal known"):
            cal = replace(cal, focal=mv.focal.copy())
    solver = CaptureSolver("lbfgs" if mode.endswith("L-BFGS") else "auto", max_iter=max_iter)
    if run_on:
        solver = replace(solver, stop_decrease=0.0)
    cfg = CaptureConfig(solver=solver)
    t0 = time.perf_counter()
    res = fit_capture(mv.mu, mv.sigma, vertex_ids=ids, calibration=cal, model=model, config=cfg)
    secs = time.perf_counter() - t0
    mask = model.face_mask()
    err, err_s, scale = [], [], []
    for f in range(frames):
        a, b = res.vertices(model, f), mv.vertices(model, f)
        ca, cb = a[mask].mean(0), b[mask].mean(0)
        s = np.sqrt(((a[mask] - ca) ** 2).sum(1).mean() / ((b[mask] - cb) ** 2).sum(1).mean())
        err.append(rigid_align_error(a, b, mask).mean())
        err_s.append(rigid_align_error((a - ca) / s + ca, b, mask).mean())
        scale.append(s)
    return dict(err=float(np.mean(err)), err_s=float(np.mean(err_s)), scale_pct=float(100 * (np.mean(scale) - 1)),
                secs=secs, it=res.iterations, status=int(res.status.max()), cost=res.total_cost,
                focal_pct=float(100 * np.abs(res.focal / mv.focal - 1).max()))


def table(rows, cameras, modes=MODES):
    lines = ["| mode | " + " | ".join(f"{c} cam" for c in cameras) + " |", "|---|" + "---:|" * len(cameras)]
    for mode in modes:
        cells = []
        for c in cameras:
            r = rows[(mode, c)]
            cell = (f"{r['err']:.3f} mm ({r['err_s']:.3f} scaled, size {r['scale_pct']:+.1f} %), {r['secs']:.1f} s, "
                    f"{r['it']} it, status {r['status']}")
            if mode == "focal unknown":
                cell += f", focal {r['focal_pct']:.1f} %"
            cells.append(cell)
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_on_table(rows, longer, cameras, cap):
    """Each default fit against the same fit run on without the stopping rule."""
    lines = ["| mode | " + " | ".join(f"{c} cam" for c in cameras) + " |", "|---|" + "---:|" * len(cameras)]
    for mode in RUN_ON:
        cells = []
        for c in cameras:
            a, b = rows[(mode, c)], longer[(mode, c)]
            cells.append(f"{a['err']:.4f} -> {b['err']:.4f} mm ({b['err'] - a['err']:+.4f}), {a['it']} -> {b['it']} it, "
                         f"cost -{a['cost'] - b['cost']:.2f}" + (", cap" if b['status'] < 1 else ""))
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return (f"Run on: the same fits without `stop_decrease` (until no step lowers the cost), cap {cap}; cell: "
            f"face error at the default stop -> run on (change), iterations, the further cost decrease "
            f"(\"cap\": the run-on hit its cap).\n\n" + "\n".join(lines))


RUN_ON = ("calibrated", "focal known", "focal unknown")


def checks(rows, cameras, seed=None):
    out = [] if seed is None else [f"Seed {seed}:"]
    known = [rows[("focal known", c)]["err"] for c in cameras if c <= 8]
    if len(known) > 1:
        out.append("Focal known, error strictly falling 1 -> 8 cameras: "
                   + ("met" if all(b < a for a, b in zip(known, known[1:])) else "not met")
                   + " (" + " / ".join(f"{e:.3f}" for e in known) + " mm).")
        scaled = [rows[("focal known", c)]["err_s"] for c in cameras if c <= 8]
        out.append("Focal known, error after scale alignment strictly falling 1 -> 8 cameras: "
                   + ("yes" if all(b < a for a, b in zip(scaled, scaled[1:])) else "no")
                   + " (" + " / ".join(f"{e:.3f}" for e in scaled) + " mm).")
    if 1 in cameras and 8 in cameras:
        r = rows[("focal known", 8)]["err"] / rows[("focal known", 1)]["err"]
        out.append(f"Focal known, 8 cameras / 1 camera: {r:.2f} (goal <= 0.6): {'met' if r <= 0.6 else 'not met'}.")
    for mode in ("calibrated", "focal known", "focal unknown"):
        if (mode, cameras[0]) not in rows:
            continue
        conv = [c for c in cameras if rows[(mode, c)]["status"] >= 1]
        out.append(f"{mode.capitalize()}, converged (status >= 1) within the cap: {len(conv)}/{len(cameras)} "
                   f"camera counts ({', '.join(str(c) for c in conv) or 'none'}).")
    for c in cameras:
        if c >= 4:
            r = rows[("focal unknown", c)]["err"] / rows[("focal known", c)]["err"]
            out.append(f"Focal unknown / known at {c} cameras: {r:.2f} (goal <= 1.3), focal off by "
                       f"{rows[('focal unknown', c)]['focal_pct']:.1f} % (goal <= 3 %).")
    return out


def _fits(model, ids, a, seed, modes):
    rows = {}
    for c in a.cameras:
        for mode in modes:
            rows[(mode, c)] = run(model, ids, c, a.frames, seed, mode, a.max_iter)
            print(f"  seed {seed}, {c} cameras, {mode}: {rows[(mode, c)]}", file=sys.stderr, flush=True)
    return rows


LONG_MODES = ("calibrated", "focal known", "focal known, L-BFGS", "focal unknown")


def _long(a):
    """Long clips: above ``CaptureSolver.lm_max_unknowns`` the default is LM on keyframes (cameras and
    identity), then L-BFGS over every frame with those held."""
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.model import load_model
    model = load_model()
    ids = load_landmark_set("dense320")
    run(model, ids, 2, 3, a.seed, "focal known, L-BFGS", 5)          # compile outside the timings
    lines = ["| frames x cameras | " + " | ".join(LONG_MODES) + " |", "|---|" + "---:|" * len(LONG_MODES)]
    for size in a.long:
        nf, nc = (int(v) for v in size.split("x"))
        cells = []
        for mode in LONG_MODES:
            r = run(model, ids, nc, nf, a.seed, mode, a.max_iter)
            print(f"  {size}, {mode}: {r}", file=sys.stderr, flush=True)
            cells.append(f"{r['err']:.3f} mm ({r['err_s']:.3f} scaled, size {r['scale_pct']:+.1f} %), "
                         f"{r['secs']:.1f} s, {r['it']} it, status {r['status']}"
                         + (f", focal {r['focal_pct']:.1f} %" if mode == "focal unknown" else ""))
        lines.append(f"| {nf} x {nc} | " + " | ".join(cells) + " |")
    machine = results_doc.machine_line(f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, one process")
    text = (f"Longer clips (seed {a.seed}; settings as above, cap {a.max_iter}): the default solver runs LM on "
            f"20 keyframes, then L-BFGS with the cameras and the identity held; \"focal known, L-BFGS\" is "
            f"`CaptureSolver(method=\"lbfgs\")` (all free).\n\n" + "\n".join(lines) + f"\n\n{machine}")
    print(text)
    results_doc.maybe_write(a, {"uncalibrated_report.long": text})
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8, 17])
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run-on", type=int, default=0, metavar="N",
                    help="also run the default-solver fits without the stopping rule, at most N iterations")
    ap.add_argument("--second-seed", type=int, default=None,
                    help="also fit focal known and unknown on the face of this seed")
    ap.add_argument("--long", nargs="+", default=None, metavar="FxC",
                    help="instead: clips too long for LM on the whole problem (e.g. 60x8 120x4), the "
                         "keyframe path against L-BFGS (section uncalibrated_report.long)")
    results_doc.add_arguments(ap)
    a = ap.parse_args(argv)
    if a.long:
        return _long(a)
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.model import load_model
    model = load_model()
    ids = load_landmark_set("dense320")
    for mode in ("focal unknown", "focal known, L-BFGS"):
        run(model, ids, 2, 3, a.seed, mode, 5)                     # compile outside the timings
    rows = _fits(model, ids, a, a.seed, MODES)
    text = (f"One face (seed {a.seed}), {a.frames} frames, dense320, 1 px noise, 10 % outliers at 15 px, cameras "
            f"on a +-30 degree ring, iteration cap {a.max_iter}; cell: face error (mean, rigid-aligned; in brackets "
            f"after scaling the fitted face to the true size, and its size error), fit time (init + solve), "
            f"iterations, status.\n\n{table(rows, a.cameras)}\n\n" + "\n".join(checks(rows, a.cameras)))
    if a.second_seed is not None:
        modes = ("focal known", "focal unknown")
        second = _fits(model, ids, a, a.second_seed, modes)
        text += (f"\n\nA second face (seed {a.second_seed}), the same settings:\n\n{table(second, a.cameras, modes)}"
                 f"\n\n" + "\n".join(checks(second, a.cameras, a.second_seed)))
    if a.run_on:
        longer = {}
        for c in a.cameras:
            for mode in RUN_ON:
                longer[(mode, c)] = run(model, ids, c, a.frames, a.seed, mode, a.run_on, run_on=True)
                print(f"  {c} cameras, {mode}, run on: {longer[(mode, c)]}", file=sys.stderr, flush=True)
        text += "\n\n" + run_on_table(rows, longer, a.cameras, a.run_on)
    lb = [rows[("focal known", c)]["secs"] / rows[("focal known, L-BFGS", c)]["secs"] for c in a.cameras]
    text += ("\n\nFit time, focal known, default / L-BFGS (same run): "
             + ", ".join(f"{c} cam {r:.2f}" for c, r in zip(a.cameras, lb)) + ".")
    machine = results_doc.machine_line(f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}, one process")
    text += f"\n\n{machine}"
    print(text)
    results_doc.maybe_write(a, {"uncalibrated_report": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
