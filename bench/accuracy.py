"""Accuracy of single-image fits on synthetic faces: landmark density and predicted uncertainty.

Reproduces the shape of the paper's ablation (Wood et al. 2022, "more landmarks give lower error;
using the predicted sigma gives lower error") on data from ``lmfit3d.synthetic``:

* N random faces (identity, sparse expression, head pose from the priors; fixed seed), each
  projected into a 512 px image with the face spanning 256 px (``make_frame(face_px=256)``);
* Gaussian landmark noise with a known per-landmark sigma (0.5, 1, 2 px); 10 % of the landmarks
  get sigma = 15 px and noise of that size (what a good predictor reports on occluded points);
* for each landmark set (ibug68, dense320, dense320v2, dense703) and noise level the same noisy landmarks are
  fitted twice: with the true (predicted) sigma, and with a fixed sigma (all ones);
* single images: focal length known, identity estimated (``fit_landmarks`` on one frame);
* metric: per-vertex error (mm) on the face region (``model.face_mask()``) after rigid alignment
  (``rigid_align_error``), pooled over the N faces: median and mean.

The same faces are used for every configuration, and the same noisy landmarks for both sigma modes.

Usage::

    python bench/accuracy.py              # N = 30 faces, all sets, noise 0.5 / 1 / 2 px
    python bench/accuracy.py --quick      # N = 4, a smoke run
    python bench/accuracy.py --n 10 --jobs 2 --json /tmp/acc.json
    python bench/accuracy.py --write-doc  # also write the results into docs/results.md ("accuracy")
"""
import os

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import results_doc  # noqa: E402

from lmfit3d.fit import fit_landmarks  # noqa: E402
from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.synthetic import make_frame, random_params, rigid_align_error  # noqa: E402

SETS = ("ibug68", "dense320", "dense320v2", "dense703")
# the density ordering is checked on sets of different sizes; a redesigned set of the same size is
# compared with the set it replaces (VARIANTS: new -> old)
DENSITY_SETS = ("ibug68", "dense320", "dense703")
VARIANTS = {"dense320v2": "dense320"}
NOISES = (0.5, 1.0, 2.0)
MODES = ("true sigma", "fixed sigma")

_MODEL = None


def _model():
    global _MODEL
    if _MODEL is None:
        _MODEL = load_model()
    return _MODEL


def face_params(model, seed, i):
    """Face i of the run: the same for every configuration."""
    return random_params(model, np.random.default_rng([seed, i]))


def run_case(args):
    """Fit one face / landmark set / noise level with both sigma modes.

    Returns dict with per-vertex face errors (float32) per mode, solver status, cost and time.
    """
    seed, i, s, set_name, k, noise, face_px, out_frac, out_sigma = args
    model = _model()
    ids = load_landmark_set(set_name)
    params = face_params(model, seed, i)
    rng = np.random.default_rng([seed, i, 1000 + s, k])
    fr = make_frame(model, params, ids, rng, noise_px=noise, face_px=face_px,
                    outlier_fraction=out_frac, outlier_sigma_px=out_sigma)
    mask = model.face_mask()
    out = {}
    for mode, sigma in zip(MODES, (fr.sigma, np.ones_like(fr.sigma))):
        t0 = time.perf_counter()
        res = fit_landmarks(fr.mu[None], sigma[None], landmark_set=set_name,
                            image_size=(fr.camera.width, fr.camera.height), focal_px=fr.camera.focal,
                            model=model)
        dt = time.perf_counter() - t0
        err = rigid_align_error(res.vertices(model, 0), fr.vertices, mask)
        out[mode] = dict(err=err.astype(np.float32), status=int(res.status[0]),
                         iterations=int(res.iterations[0]), cost=float(res.cost[0]), seconds=dt)
    return (i, set_name, noise), out


def markdown_table(stats, sets, noises):
    head = "| landmarks | sigma | " + " | ".join(f"{n:g} px median | {n:g} px mean" for n in noises) + " |"
    sep = "|---|---|" + "---:|---:|" * len(noises)
    rows = [head, sep]
    for s in sets:
        for mode in MODES:
            cells = []
            for n in noises:
                st = stats[(s, n, mode)]
                cells += [f"{st['median']:.3f}", f"{st['mean']:.3f}"]
            rows.append(f"| {s} ({load_landmark_set(s).size}) | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ordering(stats, sets, noises):
    """Checks of the paper's two orderings; returns (lines, all_density_ok, all_sigma_ok)."""
    lines = []
    dens_ok = dens_n = sig_ok = sig_n = 0
    dsets = [s for s in sets if s in DENSITY_SETS]
    for mode in MODES:
        for n in noises:
            for metric in ("median", "mean"):
                vals = [stats[(s, n, mode)][metric] for s in dsets]
                ok = all(a > b for a, b in zip(vals, vals[1:]))
                dens_ok += ok
                dens_n += 1
                if not ok:
                    lines.append(f"  density ordering FAILS: {mode}, {n:g} px, {metric}: "
                                 + " > ".join(f"{s} {v:.3f}" for s, v in zip(dsets, vals)))
    for s in sets:
        for n in noises:
            for metric in ("median", "mean"):
                a, b = stats[(s, n, MODES[0])][metric], stats[(s, n, MODES[1])][metric]
                ok = a < b
                sig_ok += ok
                sig_n += 1
                if not ok:
                    lines.append(f"  sigma ordering FAILS: {s}, {n:g} px, {metric}: "
                                 f"true {a:.3f} >= fixed {b:.3f}")
    for new, old in VARIANTS.items():
        if new in sets and old in sets:
            cmp = [(stats[(new, n, m)][k], stats[(old, n, m)][k]) for m in MODES for n in noises
                   for k in ("median", "mean")]
            lines.append(f"{new} against {old} (same size): lower error in {sum(a < b for a, b in cmp)}/{len(cmp)} "
                         f"cells; error ratio {min(a / b for a, b in cmp):.2f}-{max(a / b for a, b in cmp):.2f}.")
    head = [f"More landmarks -> lower error ({' > '.join(dsets)} in error): holds in {dens_ok}/{dens_n} "
            f"comparisons (per sigma mode, noise level, median and mean).",
            f"Using the predicted sigma -> lower error (true sigma < fixed sigma): holds in "
            f"{sig_ok}/{sig_n} comparisons (per set, noise level, median and mean)."]
    return head + lines, dens_ok == dens_n, sig_ok == sig_n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="number of random faces (default 30)")
    ap.add_argument("--quick", action="store_true", help="small run: 4 faces")
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--noise", nargs="+", type=float, default=list(NOISES), help="noise sigmas (px)")
    ap.add_argument("--face-px", type=float, default=256.0)
    ap.add_argument("--outlier-fraction", type=float, default=0.1)
    ap.add_argument("--outlier-sigma", type=float, default=15.0)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (each single-threaded)")
    ap.add_argument("--json", help="also write the statistics to this JSON file")
    results_doc.add_arguments(ap)
    a = ap.parse_args(argv)
    n = 4 if a.quick else a.n
    if n < 1:
        ap.error("--n must be >= 1")
    if a.quick and a.write_doc:
        ap.error("--write-doc needs the full run (drop --quick)")
    model = _model()
    cases = [(a.seed, i, s, name, k, noise, a.face_px, a.outlier_fraction, a.outlier_sigma)
             for s, name in enumerate(a.sets) for k, noise in enumerate(a.noise) for i in range(n)]
    t0 = time.perf_counter()
    if a.jobs > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(a.jobs) as pool:
            results = pool.map(run_case, cases, chunksize=1)
    else:
        results = [run_case(c) for c in cases]
    wall = time.perf_counter() - t0

    pooled = {}
    bad = []
    times = []
    for (i, name, noise), out in results:
        for mode, r in out.items():
            pooled.setdefault((name, noise, mode), []).append(r["err"])
            times.append(r["seconds"])
            if r["status"] < 1:
                bad.append(f"face {i} {name} {noise:g} px {mode}: status {r['status']} "
                           f"({r['iterations']} iterations, cost {r['cost']:.1f})")
    stats = {}
    for key, errs in pooled.items():
        e = np.concatenate(errs).astype(np.float64)
        per_face = np.array([x.mean() for x in errs])
        stats[key] = dict(median=float(np.median(e)), mean=float(e.mean()),
                          worst_face_mean=float(per_face.max()), faces=len(errs))

    out = [f"Face region per-vertex error (mm) after rigid alignment, pooled over {n} faces x "
           f"{int(model.face_mask().sum())} vertices (seed {a.seed}). Face {a.face_px:g} px in a 512 px image, "
           f"focal known, identity estimated; {a.outlier_fraction:.0%} of landmarks with sigma = "
           f"{a.outlier_sigma:g} px and matching noise. 'true sigma' passes the generating sigma, "
           f"'fixed sigma' passes all ones.", "", markdown_table(stats, a.sets, a.noise), ""]
    lines, dens, sig = ordering(stats, a.sets, a.noise)
    out += lines
    out += ["", f"Paper ordering holds: more landmarks lower error: {'yes' if dens else 'NO'}; "
            f"using sigma lowers error: {'yes' if sig else 'NO'}.", "",
            f"{len(times)} fits, {np.median(times):.2f} s median per fit, {wall:.0f} s wall with {a.jobs} "
            f"process(es). Fits with solver status < 1: {len(bad)}."]
    out += ["  " + b for b in bad]
    worst = max(stats.items(), key=lambda kv: kv[1]["worst_face_mean"])
    out.append(f"Worst single-face mean error: {worst[1]['worst_face_mean']:.2f} mm ({worst[0][0]}, "
               f"{worst[0][1]:g} px, {worst[0][2]}).")
    out += ["", results_doc.machine_line("single-threaded workers")]
    text = "\n".join(out)
    print(f"# Single-image fit accuracy (synthetic, {n} faces, seed {a.seed})\n")
    print(text)
    results_doc.maybe_write(a, {"accuracy": text})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"n": n, "seed": a.seed, "stats": [dict(set=k[0], noise=k[1], mode=k[2], **v)
                                                          for k, v in stats.items()],
                       "status_lt_1": bad, "density_ordering": dens, "sigma_ordering": sig}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
