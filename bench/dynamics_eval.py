"""Expression dynamics through the whole video pipeline on renders with known curves (issue 13).

Each sequence renders one random identity (skin tone, light, camera) performing known expression
curves at 30 frames/s: talking (jawOpen syllables with mouthFunnel/mouthClose), blinks
(eyeBlink_L/R), a smile (mouthSmile_L/R), a brow raise (browInnerUp_L/R), a cheek puff; the head
turns slowly about a base yaw.  The frames go through ``lmfit3d track`` (MediaPipe landmarks ->
smoothed tracks -> per-frame fit) and the fitted weights are compared with the truth:

- per shape: MAE and Pearson correlation (ARKit ``browInnerUp`` = mean of ICT's two sides);
- MAE over all 53 shapes;
- inner-lip gap and eye aperture (mm, the 3D distance of the MediaPipe points' vertices 13-14 and
  159-145 / 386-374 on the fitted mesh against the true mesh);
- where the range of motion is lost (:func:`range_chain`): the facial distances of
  ``bench/expression_range.py`` (5-95 percentile ranges, pixels) on the landmarks against the exact
  ones (the front end's share), on the fit against the landmarks (the fitter's share, the ratio
  ``expression_range`` reports on real clips) and on the fit against the truth.

``--oracle PX`` replaces MediaPipe by the exact projections of the correspondence table's vertices
on the true mesh (plus PX pixels of Gaussian noise, sigma from the table as at runtime): what the
fit, the priors and the smoother recover when the landmarks hold no bias, i.e. the ceiling of the
rest of the pipeline.  Besides the pooled correlation (all sequences' frames together, which also
scores each sequence's constant offset) the table gives the median of the per-sequence
correlations (how well the motion itself is followed).

Run::

    python bench/dynamics_eval.py [--sequences 6] [--frames 120] [--no-smooth] [--oracle PX] [--backend B]

Prints a markdown table (docs/results.md, "Known expression curves on renders"); ``--write-doc``
writes it into the ``dynamics_eval`` section (``dynamics_eval.no_smooth`` with ``--no-smooth``) of
docs/results.md (``bench/results_doc.py``).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402
from expression_range import FEATURES, feature_points, range_ratios  # noqa: E402

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.model import Params, load_model  # noqa: E402
from lmfit3d.predict import load_manifest  # noqa: E402
from lmfit3d.skinning import evaluate_points  # noqa: E402
from lmfit3d.synthetic import FACE_WIDTH_MM, random_look, render_face  # noqa: E402
from lmfit3d.media import FrameList  # noqa: E402
from lmfit3d.track import BACKENDS, TrackOptions, track_video  # noqa: E402

GOAL_SHAPES = ("jawOpen", "mouthClose", "eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R",
               "browInnerUp")
FPS = 30.0
SEED = 1313


def expression_curves(names, nf, rng):
    """(nf, E) known expression weights: talking, blinks, a smile, a brow raise, a cheek puff."""
    t = np.arange(nf) / FPS
    psi = np.zeros((nf, len(names)))
    ix = {n: i for i, n in enumerate(names)}

    def bump(centre_s, width_s):
        return np.exp(-0.5 * ((t - centre_s) / width_s) ** 2)

    # talking: syllables of 4-6 Hz in the first half, amplitudes 0.3-0.9
    dur = t[-1]
    talk = (t < 0.5 * dur)
    rate = rng.uniform(3.5, 5.5)
    syll = np.maximum(0.0, np.sin(2 * np.pi * rate * t)) ** 1.5
    amp = rng.uniform(0.3, 0.9, size=int(rate * dur) + 2)[np.floor(rate * t).astype(int)]
    psi[:, ix["jawOpen"]] = talk * syll * amp
    psi[:, ix["mouthFunnel"]] = talk * 0.4 * np.maximum(0.0, np.sin(2 * np.pi * rate * 0.5 * t + 1.0)) ** 2
    psi[:, ix["mouthClose"]] = talk * 0.25 * bump(0.25 * dur, 0.1)
    # blinks every 1.2-2 s, 0.15 s wide
    for c in np.arange(rng.uniform(0.3, 0.8), dur, rng.uniform(1.2, 2.0)):
        b = bump(c, 0.05)
        psi[:, ix["eyeBlink_L"]] = np.maximum(psi[:, ix["eyeBlink_L"]], b)
        psi[:, ix["eyeBlink_R"]] = np.maximum(psi[:, ix["eyeBlink_R"]], b)
    # smile (second half), brow raise (middle), cheek puff (end)
    smile = 0.8 * bump(0.7 * dur, 0.12 * dur)
    psi[:, ix["mouthSmile_L"]] = smile
    psi[:, ix["mouthSmile_R"]] = smile * rng.uniform(0.8, 1.0)
    brow = 0.8 * bump(0.45 * dur, 0.08 * dur)
    psi[:, ix["browInnerUp_L"]] = brow
    psi[:, ix["browInnerUp_R"]] = brow
    psi[:, ix["cheekPuff_L"]] = psi[:, ix["cheekPuff_R"]] = 0.7 * bump(0.92 * dur, 0.04 * dur)
    return np.clip(psi, 0.0, 1.0)


def render_sequence(model, rng, nf, yaw_deg, face_px, image_px=None):
    """Frames (list of (H, W, 3) uint8), true Params per frame and the camera."""
    image_px = image_px or int(max(512, 1.8 * face_px))
    beta = rng.normal(size=model.n_identity) * 0.8
    cam = Camera.from_fov(image_px, image_px, rng.uniform(25, 45))
    depth = cam.focal * FACE_WIDTH_MM / face_px
    look = random_look(model, rng, beta, image_px)
    psi = expression_curves(list(model.expression_names), nf, rng)
    frames, params = [], []
    t = np.arange(nf) / FPS
    for f in range(nf):
        rot = np.zeros((model.n_joints, 3))
        rot[0] = np.radians([4.0 * np.sin(0.7 * t[f]), yaw_deg + 6.0 * np.sin(0.5 * t[f]),
                             2.0 * np.sin(0.3 * t[f])])
        p = Params(beta, psi[f], rot, np.array([0.0, 0.0, -depth]))
        frames.append(render_face(model, p, cam, look).image)
        params.append(p)
    return frames, params, cam


def arkit_view(names, psi):
    """{goal shape: (F,) weights}, browInnerUp as the mean of the two ICT sides."""
    ix = {n: i for i, n in enumerate(names)}
    out = {n: psi[:, ix[n]] for n in GOAL_SHAPES if n in ix}
    out["browInnerUp"] = 0.5 * (psi[:, ix["browInnerUp_L"]] + psi[:, ix["browInnerUp_R"]])
    return out


def gaps_mm(model, params_list, vids):
    """(F, 3) inner-lip gap, right and left eye aperture (mm) of a list of Params."""
    pairs = ((13, 14), (159, 145), (386, 374))
    ids = np.array([vids[i] for p in pairs for i in p])
    out = np.full((len(params_list), 3), np.nan)
    for f, p in enumerate(params_list):
        if p is None:
            continue
        x, _ = evaluate_points(model, p, ids)
        out[f] = np.linalg.norm(x[0::2] - x[1::2], axis=1)
    return out


class OracleLandmarks:
    """A landmark "predictor" that returns the exact projections of the manifest's vertices on the
    true meshes of a sequence (+ ``noise_px`` Gaussian pixels), sigma as the MediaPipe backend gives
    it (table sigma x ROI size / 192, the ROI 1.5 x the points' extent); frames are ignored."""

    def __init__(self, model, truth, cam, noise_px, rng):
        man = load_manifest("mediapipe")
        self.vertex_ids = man.vertex_ids
        self._table = man.sigma_table
        self._uv = [cam.project(evaluate_points(model, p, man.vertex_ids)[0]) for p in truth]
        self._noise, self._rng, self._f = noise_px, rng, 0
        self.timings = {"detect": 0.0, "landmarks": 0.0}

    def reset(self):
        pass

    def track(self, frame):
        from lmfit3d.predict import Prediction
        uv = self._uv[self._f]
        self._f += 1
        roi = 1.5 * float(np.max(np.ptp(uv, axis=0)))
        mu = uv + self._rng.normal(scale=self._noise, size=uv.shape) if self._noise > 0 else uv
        return Prediction(mu=mu, sigma=self._table * (roi / 192.0), presence=1.0, points=mu, roi=None)


def run_sequence(model, k, nf, smooth=True, oracle_px=None, backend="mediapipe"):
    rng = np.random.default_rng([SEED, k])
    yaw = [0.0, 20.0, -30.0, 40.0, -10.0, 30.0][k % 6]
    face_px = [260.0, 120.0, 400.0, 180.0, 500.0, 220.0][k % 6]
    frames, truth, cam = render_sequence(model, rng, nf, yaw, face_px)
    out = Path(tempfile.mkdtemp(prefix="lmfit3d_dyn_"))
    # the oracle follows one face (``track``); it has no detector for the every-face search
    opt = TrackOptions(progress=False, smooth=smooth, backend=backend, max_faces=None if oracle_px is None else 1)
    predictor = (None if oracle_px is None
                 else OracleLandmarks(model, truth, cam, oracle_px, np.random.default_rng([SEED, k, 1])))
    track_video(FrameList(frames, fps=FPS, name=f"seq{k}"), out, opt, model=model, predictor=predictor)
    d = np.load(out / f"seq{k}.npz")
    ok = d["success"]
    fitted = [Params(d["identity"], d["expression"][f],
                     np.concatenate([d["root_rotation"][f][None], d["joint_rotations"][f]]), d["translation"][f])
              if ok[f] else None for f in range(nf)]
    true_psi = np.stack([p.expression for p in truth])
    man = load_manifest("mediapipe")
    vids = dict(zip(man.points.tolist(), man.vertex_ids.tolist()))
    return dict(yaw=yaw, face_px=face_px, ok=ok, psi=d["expression"], true=true_psi,
                gap=gaps_mm(model, fitted, vids), true_gap=gaps_mm(model, truth, vids),
                ranges=range_chain(model, d, truth, cam))


def range_chain(model, d, truth, cam):
    """Where each facial distance's range of motion is lost (``expression_range`` features, 5-95
    percentile ranges in pixels): {"landmarks / truth", "fit / landmarks", "fit / truth"} -> {feature:
    ratio}.  The truth is the backend's own table vertices projected from the true mesh (what an exact
    landmark network would give), the landmarks the network's, the fit ``landmarks_fitted``."""
    vids = d["vertex_ids"]
    true_uv = np.stack([cam.project(evaluate_points(model, p, vids)[0]) for p in truth])
    ok = d["success"].astype(bool)
    fit = np.where(ok[:, None, None], d["landmarks_fitted"], np.nan)
    cols, features = feature_points(vids)
    return {"landmarks / truth": range_ratios(true_uv, d["mu"], cols, features),
            "fit / landmarks": range_ratios(d["mu"], fit, cols, features),
            "fit / truth": range_ratios(true_uv, fit, cols, features)}


def summarise(runs, names):
    ok = np.concatenate([r["ok"] for r in runs])
    psi = np.concatenate([r["psi"] for r in runs])[ok]
    true = np.concatenate([r["true"] for r in runs])[ok]
    fit_v, true_v = arkit_view(names, psi), arkit_view(names, true)
    rows = {}
    per_seq = [(arkit_view(names, r["psi"][r["ok"]]), arkit_view(names, r["true"][r["ok"]])) for r in runs]
    for n in fit_v:
        a, b = fit_v[n], true_v[n]
        # a fitted curve that never moves follows none of the motion: correlation 0 (not NaN)
        seq_c = [np.corrcoef(f[n], t[n])[0, 1] if np.ptp(f[n]) > 0 else 0.0
                 for f, t in per_seq if f[n].size > 2 and np.ptp(t[n]) > 0]
        rows[n] = (float(np.mean(np.abs(a - b))), float(np.corrcoef(a, b)[0, 1]), float(np.median(seq_c)))
    gap = np.concatenate([r["gap"] for r in runs])[ok]
    tgap = np.concatenate([r["true_gap"] for r in runs])[ok]
    err = np.abs(gap - tgap)
    rng_ratio = [(np.percentile(gap[:, j], 95) - np.percentile(gap[:, j], 5))
                 / (np.percentile(tgap[:, j], 95) - np.percentile(tgap[:, j], 5)) for j in range(3)]
    return dict(shapes=rows, mae_all=float(np.mean(np.abs(psi - true))), success=float(ok.mean()),
                lip_gap_median_mm=float(np.median(err[:, 0])), eye_gap_median_mm=float(np.median(err[:, 1:])),
                lip_range=float(rng_ratio[0]), eye_range=float(np.mean(rng_ratio[1:])))


def range_table(runs):
    """Markdown table: per feature, the median over sequences of each ratio of :func:`range_chain`."""
    names = [n for n, _ in FEATURES]
    lines = ["| range ratio (median of sequences) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for step in runs[0]["ranges"]:
        cells = [f"{np.nanmedian([r['ranges'][step][n] for r in runs]):.2f}" for n in names]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(s):
    lines = ["| shape | MAE | correlation | per-sequence correlation (median) |", "|---|---|---|---|"]
    for n, (mae, c, cs) in s["shapes"].items():
        lines.append(f"| {n} | {mae:.3f} | {c:.3f} | {cs:.3f} |")
    lines += [f"| all 53 shapes (MAE) | {s['mae_all']:.3f} | | |", "",
              f"inner-lip gap error median {s['lip_gap_median_mm']:.2f} mm (range ratio {s['lip_range']:.2f}); "
              f"eye aperture error median {s['eye_gap_median_mm']:.2f} mm (range ratio {s['eye_range']:.2f}); "
              f"frames fitted {100 * s['success']:.1f} %"]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=6)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--no-smooth", action="store_true")
    ap.add_argument("--backend", choices=BACKENDS, default="mediapipe",
                    help="landmark backend of lmfit3d track (section suffix .attention / .network)")
    ap.add_argument("--oracle", type=float, default=None, metavar="PX",
                    help="exact landmarks (projected table vertices) + PX pixels of noise instead of MediaPipe")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.oracle is not None and args.oracle < 0:
        ap.error("--oracle: noise must be >= 0 pixels")
    model = load_model()
    runs = []
    for k in range(args.sequences):
        runs.append(run_sequence(model, k, args.frames, smooth=not args.no_smooth, oracle_px=args.oracle,
                                 backend=args.backend))
        r = runs[-1]
        j = list(model.expression_names).index("jawOpen")
        ok = r["ok"]
        c = np.corrcoef(r["psi"][ok, j], r["true"][ok, j])[0, 1] if ok.sum() > 2 else float("nan")
        print(f"sequence {k}: yaw {r['yaw']:+.0f} deg, face {r['face_px']:.0f} px, fitted {ok.mean():.2f}, "
              f"jawOpen correlation {c:.2f}", file=sys.stderr)
    oracle = f", oracle landmarks + {args.oracle:g} px noise" if args.oracle is not None else ""
    backend = "" if args.backend == "mediapipe" else f", --backend {args.backend}"
    text = (f"{args.sequences} sequences x {args.frames} frames (yaw 0..+-40 deg, faces 120-500 px){backend}"
            f"{', --no-smooth' if args.no_smooth else ''}{oracle}\n\n"
            + table(summarise(runs, list(model.expression_names))) + "\n\n" + range_table(runs))
    print(text)
    section = ("dynamics_eval" + (".no_smooth" if args.no_smooth else "") + (".oracle" if args.oracle is not None else "")
               + {"mediapipe": "", "mediapipe-attention": ".attention", "network": ".network"}[args.backend])
    results_doc.maybe_write(args, {section: text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
