"""Range of motion of the fitted face against the landmarks it was fitted to (issue 13).

A fit can be steady because it follows the face, or because it does not move.  This script reports
both sides: for each clip, the *range ratio* of facial distances (5-95 percentile range of a distance
measured on the fitted landmarks / the same range on the predicted landmarks; 1 = the fit moves as
much as the face) next to the steadiness ratio (raw jitter / fitted jitter, ``track_eval.jitter``).

Features (MediaPipe face-mesh points; pairs averaged where two or three are listed):

=================  ==========================================
inner lip gap      13-14, 82-87, 312-317
outer lip height   0-17
mouth width        61-291
eye aperture R/L   159-145 / 386-374
brow-eye R/L       105-159 / 334-386
=================  ==========================================

Run::

    python bench/expression_range.py [NPZ ...]          # ratios of tracked outputs (lmfit3d track)
    python bench/expression_range.py --track [--out DIR] [--track-args "--backend network"]

``--track`` tracks the shared talking clips first (default options) and writes a markdown table.
A second table gives each eye's deepest closing (:func:`closing_depths`: median - minimum of the
aperture, fitted / landmarks), which a blink of a few frames sets and the percentile range misses.
``--target`` adds the ratios against the smoothed tracks the fit is given (what the smoother keeps
vs what the fitter keeps); ``--lip-pairs`` the width between left-right lip pairs from the corners
inwards (where along the mouth the fitted width falls short).
``--write-doc`` writes the table into its section of docs/results.md (``bench/results_doc.py``):
``expression_range`` (and ``.closing``) for the default options, ``expression_range.no_smooth`` for ``--track-args
--no-smooth``, ``expression_range.network`` for ``--track-args "--backend network"``; other options
(or NPZ files) need ``--section NAME``.
Outputs of other landmark sets (``--backend network``: dense320) are measured on the same features
through their iBUG 68 points (:data:`FEATURES_IBUG`).
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

# (name, list of point pairs) on MediaPipe's 468-point mesh
FEATURES = (
    ("inner lip gap", ((13, 14), (82, 87), (312, 317))),
    ("outer lip height", ((0, 17),)),
    ("mouth width", ((61, 291),)),
    ("eye aperture R", ((159, 145),)),
    ("eye aperture L", ((386, 374),)),
    ("brow-eye R", ((105, 159),)),
    ("brow-eye L", ((334, 386),)),
)


# the same features on iBUG 68 points (0-based), for landmark sets that contain ibug68
FEATURES_IBUG = (
    ("inner lip gap", ((62, 66), (61, 67), (63, 65))),
    ("outer lip height", ((51, 57),)),
    ("mouth width", ((48, 54),)),
    ("eye aperture R", ((37, 41), (38, 40))),
    ("eye aperture L", ((43, 47), (44, 46))),
    ("brow-eye R", ((19, 37),)),
    ("brow-eye L", ((24, 44),)),
)


CLOSING_SIDES = ("R", "L")        # eyes whose deepest closing is also reported (closing_depths)

# left-right pairs of MediaPipe lip points, from the mouth corners inwards (--lip-pairs): whether the
# fitted mouth widens evenly or, as ICT's shapes do against MediaPipe's points, more in the middle
LIP_PAIRS = (
    ("corners 61-291", (61, 291)),
    ("inner corners 78-308", (78, 308)),
    ("upper outer 185-409", (185, 409)),
    ("upper outer 40-270", (40, 270)),
    ("upper outer 39-269", (39, 269)),
    ("lower outer 146-375", (146, 375)),
    ("lower outer 91-321", (91, 321)),
    ("lower outer 181-405", (181, 405)),
)


def feature_series(points, pairs):
    """Mean distance (F,) over ``pairs`` of point indices in (F, L, 2) trajectories (pixels)."""
    d = [np.linalg.norm(points[:, a] - points[:, b], axis=1) for a, b in pairs]
    return np.mean(d, axis=0)


def spread(x, lo=5.0, hi=95.0):
    """5-95 percentile range of the finite values of ``x`` (nan if fewer than 5)."""
    x = x[np.isfinite(x)]
    return float(np.percentile(x, hi) - np.percentile(x, lo)) if x.size >= 5 else float("nan")


def range_ratios(mu, fitted, point_index=None, features=FEATURES):
    """Range ratio of every feature: spread on ``fitted`` / spread on ``mu``.

    Parameters
    ----------
    mu, fitted : (F, L, 2) float, predicted and fitted landmarks (pixels; nan where not fitted).
    point_index : (P,) int or None, column in ``mu`` of each point the features index (identity if
        None).
    features : :data:`FEATURES` (MediaPipe points) or :data:`FEATURES_IBUG`.

    Returns
    -------
    dict name -> float
    """
    mu, fitted = _fitted_frames(mu, fitted, point_index)
    out = {}
    for name, pairs in features:
        out[name] = spread(feature_series(fitted, pairs)) / spread(feature_series(mu, pairs))
    return out


def _fitted_frames(mu, fitted, point_index):
    """``mu`` and ``fitted`` (F, L, 2) checked, columns picked, frames with every point finite."""
    mu = np.asarray(mu, np.float64)
    fitted = np.asarray(fitted, np.float64)
    if mu.shape != fitted.shape or mu.ndim != 3:
        raise ValueError(f"mu and fitted must be equal (F, L, 2) arrays, got {mu.shape}, {fitted.shape}")
    if point_index is not None:
        mu, fitted = mu[:, point_index], fitted[:, point_index]
    ok = np.isfinite(fitted).all(axis=(1, 2)) & np.isfinite(mu).all(axis=(1, 2))
    return mu[ok], fitted[ok]


def closing_depths(mu, fitted, point_index=None, features=FEATURES):
    """How deep the fit's deepest closing of each eye goes against the landmarks'.

    A blink lasts a few frames, so the 5-95 percentile range of :func:`range_ratios` can miss it on
    a short clip (W023: 4 frames of 73).  Depth = median - minimum of the eye aperture; the ratio is
    the fitted depth over the landmarks' (1 = the fitted eye closes as far as the landmarks').
    Same arguments as :func:`range_ratios`.

    Returns
    -------
    dict "eye closing R" / "eye closing L" -> (ratio, landmarks' depth in pixels)
    """
    mu, fitted = _fitted_frames(mu, fitted, point_index)
    pairs = dict(features)
    out = {}
    for side in CLOSING_SIDES:
        depth = [np.median(x) - np.min(x) for x in
                 (feature_series(p, pairs["eye aperture " + side]) for p in (fitted, mu))]
        out["eye closing " + side] = (depth[0] / depth[1], depth[1])
    return out


def lip_pair_ratios(path):
    """Range ratio (fitted / landmarks) of the width between each of :data:`LIP_PAIRS` in one
    MediaPipe-backend NPZ; dict name -> (ratio, the landmarks' 5-95 range in pixels)."""
    d = np.load(path)
    if len(d["vertex_ids"]) != 470:
        raise ValueError(f"{path}: --lip-pairs needs the MediaPipe face mesh's points (--backend mediapipe)")
    mu, fit = _fitted_frames(d["mu"], d["landmarks_fitted"], None)
    out = {}
    for name, pair in LIP_PAIRS:
        r = [spread(feature_series(p, (pair,))) for p in (fit, mu)]
        out[name] = (r[0] / r[1], r[1])
    return out


def lip_pairs_table(paths):
    """Markdown table of :func:`lip_pair_ratios` for each NPZ."""
    lines = ["| clip | " + " | ".join(n for n, _ in LIP_PAIRS) + " |", "|" + "---|" * (len(LIP_PAIRS) + 1)]
    for p in paths:
        r = lip_pair_ratios(p)
        lines.append(f"| {Path(p).stem} | " + " | ".join("{:.2f} ({:.0f} px)".format(*r[n]) for n, _ in LIP_PAIRS)
                     + " |")
    return "\n".join(lines)


def feature_points(vertex_ids):
    """(point_index, features) of a landmark set given by its vertex ids: MediaPipe's 470 points
    (None, :data:`FEATURES`), or another set's iBUG 68 points (their columns, :data:`FEATURES_IBUG`)."""
    if len(vertex_ids) == 470:
        return None, FEATURES
    from lmfit3d.landmarks import load_landmark_set
    col = {int(v): i for i, v in enumerate(vertex_ids)}
    return [col[int(v)] for v in load_landmark_set("ibug68")], FEATURES_IBUG


def smoothed_target(mu, sigma, cut_threshold=0.35):
    """The landmark tracks ``lmfit3d track`` fits by default: each shot smoothed without lag
    (``temporal.smooth_shots`` with the shot's frame noise), (F, L, 2) pixels."""
    from lmfit3d.temporal import frame_noise_variance, shot_segments, smooth_shots
    seg = shot_segments(mu, cut_threshold)
    arr = np.concatenate([mu, sigma[..., None]], axis=2)
    return smooth_shots(arr, mu.shape[0], seg, frame_noise_variance(mu, seg))[..., :2].astype(np.float64)


def npz_ratios(path, target=False):
    """Range ratios and steadiness of one ``lmfit3d track`` NPZ (either backend).  ``target``: the
    ratios against the smoothed tracks the fit is given (:func:`smoothed_target`) instead of the
    raw landmarks, which tells the fitter's loss of range from the smoother's."""
    from track_eval import best_lag, jitter
    d = np.load(path)
    mu, fit = d["mu"], d["landmarks_fitted"]
    ref = smoothed_target(mu, d["sigma"]) if target else mu
    cols, features = feature_points(d["vertex_ids"])
    r = range_ratios(ref, fit, cols, features)
    r.update(closing_depths(ref, fit, cols, features))
    ok = d["success"]
    raw_j = jitter(np.where(ok[:, None, None], mu, np.nan), mu)
    fit_j = jitter(np.where(ok[:, None, None], fit, np.nan), mu)
    r["steadiness"] = raw_j / fit_j
    r["lag"] = best_lag(np.where(ok[:, None, None], mu, np.nan), np.where(ok[:, None, None], fit, np.nan))
    return r


def table(rows):
    """Markdown table of {clip: ratios}."""
    names = [n for n, _ in FEATURES]
    head = "| clip | " + " | ".join(names) + " | steadier x | lag |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    for clip, r in rows.items():
        cells = [f"{r[n]:.2f}" for n in names] + [f"{r['steadiness']:.2f}", f"{r['lag']:d}"]
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def closing_table(rows):
    """Markdown table of each clip's eye closing depths (ratio and the landmarks' depth)."""
    lines = ["| clip | " + " | ".join(f"eye closing {s}" for s in CLOSING_SIDES) + " |",
             "|" + "---|" * (len(CLOSING_SIDES) + 1)]
    for clip, r in rows.items():
        cells = ["{:.2f} ({:.1f} px)".format(*r["eye closing " + s]) for s in CLOSING_SIDES]
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def track_clips(out_dir, extra=()):
    from track_eval import CLIPS
    from lmfit3d.cli import main as cli_main
    from lmfit3d.paths import shared_media_dir
    media = shared_media_dir()
    paths = [str(media / c) for c in CLIPS if (media / c).exists()]
    rc = cli_main(["track", *paths, "-o", str(out_dir), "-q", *extra])
    if rc not in (0, None):
        raise SystemExit(f"track failed ({rc})")
    return [Path(out_dir) / (Path(p).stem + ".npz") for p in paths]


# --track-args of the runs reported in docs/results.md -> their section
SECTIONS = {(): "expression_range", ("--no-smooth",): "expression_range.no_smooth",
            ("--backend", "network"): "expression_range.network",
            ("--backend", "mediapipe-attention"): "expression_range.attention"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("npz", nargs="*")
    ap.add_argument("--track", action="store_true", help="track the shared clips first")
    ap.add_argument("--out", default=None, help="folder for the tracked outputs (default: a temporary one)")
    ap.add_argument("--track-args", default="", help="extra options for lmfit3d track (one string)")
    ap.add_argument("--section", help="section of docs/results.md for --write-doc (default: from --track-args)")
    ap.add_argument("--target", action="store_true",
                    help="also the ratios against the smoothed tracks the fit is given (section NAME.target)")
    ap.add_argument("--lip-pairs", action="store_true",
                    help="also the range ratio of the width between left-right lip pairs, corners inwards "
                         "(section NAME.lip_pairs)")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    section = args.section or (SECTIONS.get(tuple(args.track_args.split())) if args.track else None)
    if args.write_doc and section is None:
        ap.error("--write-doc: give --section NAME (no default section for these inputs)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    paths = [Path(p) for p in args.npz]
    if args.track:
        out = Path(args.out or tempfile.mkdtemp(prefix="lmfit3d_range_"))
        paths += track_clips(out, args.track_args.split())
    if not paths:
        ap.error("give NPZ files or --track")
    rows = {p.stem: npz_ratios(p) for p in paths}
    text = table(rows)
    closing = closing_table(rows)
    print(text + "\n\nDeepest closing of the eyes (median - minimum aperture, fitted / landmarks; "
          "the landmarks' depth in brackets):\n" + closing)
    sections = {section: text, section + ".closing": closing} if section else {}
    if args.target:
        target = table({p.stem: npz_ratios(p, target=True) for p in paths})
        print("\nAgainst the smoothed tracks (the fit's target):\n" + target)
        if section:
            sections[section + ".target"] = target
    if args.lip_pairs:
        lips = lip_pairs_table(paths)
        print("\nLip widths, corners inwards (fitted / landmarks; the landmarks' range in brackets):\n" + lips)
        if section:
            sections[section + ".lip_pairs"] = lips
    results_doc.maybe_write(args, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
