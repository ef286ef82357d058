"""Map MediaPipe's 468 face-mesh points and 2 iris centres onto ICT model vertices; learn sigma.

Method (deterministic, seeded):

1. Render the face model (``lmfit3d.render``: shaded skin, eyeballs with iris and pupil, teeth) with
   random identities from the prior, mild expressions, head poses (yaw +-30, pitch +-15, roll +-10
   degrees), skin tones and lights, and run the MediaPipe backend on each render exactly as at
   runtime (detector ROI, then one ROI refinement from the landmarks).
2. Correspondence set (the first half of the renders): each predicted point is back-projected
   through the z-buffer onto the rendered triangle; its barycentric position is carried to the mean
   head (T_mean).  Per point, the skin vertex within ``WINDOW_MM`` of the median of these 3D
   positions (on the point's side of the mouth or eye) whose projections best match the predictions
   is chosen; each upper/lower eyelid pair is chosen together, the best pair that meets (within
   ``LID_CLOSE_MM`` in the face plane) under a full ``eyeBlink`` of the mean head, as real lids do.
   Residuals (mm): distance median -> chosen vertex, and the median spread of the per-render
   positions around their median.  Iris centres map to the pupil centre of each inner eyeball (the
   vertex on the eye's forward axis).
3. Sigma set (the other half): per point, the RMS error between the prediction and the projection of
   its chosen vertex, in pixels of the 192-pixel face crop, is that point's sigma (floor 0.5 px).
   This is the "per-landmark error statistics learnt where ground truth is known" sigma; at runtime
   it is scaled by the crop size (and optionally combined with crop-jitter spread).

Writes ``data/mediapipe/correspondence.txt`` (columns: point, vertex, sigma_crop_px) and prints a
summary (``--attention``: the same for MediaPipe's attention mesh, ``data/mediapipe_attention/``); ``--check`` compares with the committed file instead of writing.  ``--write-doc`` also writes
the before/after error table into the ``correspondence`` section of docs/results.md
(``bench/results_doc.py``).

Needs the converted ONNX models (``python tools/convert_mediapipe.py``) and the built face model.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402

from lmfit3d.model import SCLERA_L, SCLERA_R, load_model  # noqa: E402
from lmfit3d.detect import mediapipe_dir  # noqa: E402
from lmfit3d.predict import Manifest, MediaPipeLandmarks  # noqa: E402
from lmfit3d.render import visible_faces  # noqa: E402
from lmfit3d.synthetic import render_random_face, strong_expression  # noqa: E402

OUT_DIR = ROOT / "data" / "mediapipe"
IMAGE_PX = 512
FACE_PX = 260.0
N_RENDERS = 600
WINDOW_MM = 12.0          # candidate vertices around a point's back-projected median
TRUNCATE_PX = 8.0         # crop-pixel error beyond which a render counts as a failure of the network
SEED = 468


def iris_vertices(model):
    """Pupil-centre vertex of each inner eyeball: (subject's right eye, left eye)."""
    t = model.template()
    joints = model.joints()
    out = []
    for name, joint, (a, b) in (("eyeball_R", 4, SCLERA_R), ("eyeball_L", 3, SCLERA_L)):
        ids = np.flatnonzero(model.region_mask(name))
        ids = ids[(ids < a) | (ids > b)]                 # inner eyeball, not the cornea shell
        d = t[ids] - joints[joint]
        out.append(int(ids[np.argmax(d[:, 2] / np.linalg.norm(d, axis=1))]))
    return out


# MediaPipe face-mesh contours whose points must stay on one side of an opening (its topology).
UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415)
LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
UPPER_OUTER_LIP = (185, 40, 39, 37, 0, 267, 269, 270, 409)
LOWER_OUTER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375)
UPPER_LID = (246, 161, 160, 159, 158, 157, 173, 466, 388, 387, 386, 385, 384, 398)
LOWER_LID = (7, 163, 144, 145, 153, 154, 155, 249, 390, 373, 374, 380, 381, 382)
LID_PAIRS = tuple(zip(UPPER_LID, LOWER_LID))     # (upper, lower) across each eye, subject's right then left
LID_CLOSE_MM = 1.0        # most a lid pair may stay apart (face plane) on the mean head under a full blink
GROUPS = {"inner lip": UPPER_INNER_LIP + LOWER_INNER_LIP + (78, 308),
          "outer lip": UPPER_OUTER_LIP + LOWER_OUTER_LIP + (61, 291),
          "eyelids": UPPER_LID + LOWER_LID + (33, 133, 263, 362)}


def side_masks(model, skin):
    """Vertex sets of the two sides of the mouth and of the eyes, from the model's own shapes.

    Lower lip/jaw: skin vertices that ``jawOpen`` moves down by at least 35 % of its largest skin
    displacement; upper lip: the rest (inner-lip points only: the outer lips never touch).  Upper lids: moved down by ``eyeBlink_L/R`` more than
    30 % of that shape's largest displacement; lower lids: the rest.  Returns {point: allowed (V,)
    bool}.
    """
    names = list(model.expression_names)
    t0 = model.template()

    def moved(name):
        psi = np.zeros(model.n_expression)
        psi[names.index(name)] = 1.0
        d = t0[:, 1] - model.template(expression=psi)[:, 1]          # downward motion, mm
        return d / d[skin].max()

    jaw = moved("jawOpen")
    blink = np.maximum(moved("eyeBlink_L"), moved("eyeBlink_R"))
    lower_lip, upper_lip = skin & (jaw >= 0.35), skin & (jaw < 0.35)
    upper_lid, lower_lid = skin & (blink > 0.3), skin & (blink < 0.3)
    allowed = {}
    for pts, mask in ((UPPER_INNER_LIP, upper_lip), (LOWER_INNER_LIP, lower_lip),
                      (UPPER_LID, upper_lid), (LOWER_LID, lower_lid)):
        for p in pts:
            allowed[p] = mask
    return allowed


def blink_gaps(model, upper, lower, side):
    """(U, L) distance (mm, face plane x-y) between upper and lower lid vertices of the mean head
    with ``eyeBlink_<side>`` = 1: what is left of a lid pair's gap when that eye is shut."""
    psi = np.zeros(model.n_expression)
    psi[list(model.expression_names).index("eyeBlink_" + side)] = 1.0
    t = model.template(expression=psi)[:, :2]
    return np.linalg.norm(t[upper][:, None] - t[lower][None], axis=2)


def lid_gaps(model, vid):
    """(14,) gap (mm, face plane) of each lid pair of a table's vertices ``vid`` under a full blink."""
    return np.array([blink_gaps(model, [vid[u]], [vid[lo]], "R" if i < 7 else "L")[0, 0]
                     for i, (u, lo) in enumerate(LID_PAIRS)])


def choose_vertices(model, fit_pts, fit_proj, skin_ids, med, allowed):
    """Vertex per face-mesh point (468,) int64 and its distance (mm) from the back-projected median.

    Candidates: the point's side, within WINDOW_MM of its back-projected median ``med`` (468, 3);
    cost: truncated squared crop-pixel error between the candidate's projections ``fit_proj``
    (R, S, 2) and the predictions ``fit_pts`` (R, 468, 2), summed over renders.  Each point takes
    its cheapest candidate, except the eyelid pairs (:data:`LID_PAIRS`): upper and lower are
    chosen together, the cheapest pair whose gap under a full blink is at most
    :data:`LID_CLOSE_MM`, so that the fitted lids can close as real ones do (ICT's blink leaves
    3.7 mm between the cheapest pair of 159/145: its lower-lid vertices slide sideways).
    """
    mean_t = model.template()
    vid, snap = np.empty(468, np.int64), np.empty(468)
    cands, costs, dists = {}, {}, {}
    for k in range(468):
        ok = allowed[k][skin_ids] if k in allowed else np.ones(skin_ids.size, bool)
        d = np.linalg.norm(mean_t[skin_ids] - med[k], axis=1)
        cand = np.flatnonzero(ok & (d < WINDOW_MM)) if np.isfinite(med[k]).all() else np.flatnonzero(ok)
        e2 = ((fit_proj[:, cand] - fit_pts[:, k, None]) ** 2).sum(-1)
        cands[k], costs[k], dists[k] = cand, np.minimum(e2, TRUNCATE_PX ** 2).sum(0), d[cand]
        best = np.argmin(costs[k])
        vid[k], snap[k] = skin_ids[cand[best]], dists[k][best]
    for side, pairs in (("R", LID_PAIRS[:7]), ("L", LID_PAIRS[7:])):
        for u, lo in pairs:
            gap = blink_gaps(model, skin_ids[cands[u]], skin_ids[cands[lo]], side)
            total = np.where(gap <= LID_CLOSE_MM, costs[u][:, None] + costs[lo][None], np.inf)
            i, j = np.unravel_index(np.argmin(total), total.shape)
            if not np.isfinite(total[i, j]):
                raise RuntimeError(f"no lid pair {u}/{lo} closes to {LID_CLOSE_MM} mm")
            vid[u], snap[u] = skin_ids[cands[u][i]], dists[u][i]
            vid[lo], snap[lo] = skin_ids[cands[lo][j]], dists[lo][j]
    return vid, snap


def sample_expression(model, rng, r):
    """Every third render mild (1-3 shapes at 0.1-0.7), the others strong (``strong_expression``)."""
    if r % 3 == 0:
        psi = np.zeros(model.n_expression)
        act = rng.choice(model.n_expression, size=rng.integers(1, 4), replace=False)
        psi[act] = rng.uniform(0.1, 0.7, size=act.size)
        return psi
    return strong_expression(model, rng)


def crop_errors(records, vid):
    """(R, 470) distance (192-px crop pixels) between the predictions and the projected vertices."""
    errs = []
    for pts, size, verts, cam in records:
        proj = cam.project(verts[vid])
        errs.append(np.linalg.norm(pts - proj, axis=1) / (size / 192.0))
    return np.stack(errs)


def before_after_table(rows, lid_gap=None):
    """Markdown table of the per-group errors of the old and the new table (crop px); ``lid_gap``:
    (before, after) (14,) lid-pair gaps under a full blink (mm), a line below the table."""
    lines = ["| points | median before | median after | RMS before | RMS after |  (crop px, held-out renders)",
             "|---|---|---|---|---|"]
    lines += ["| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(*row) for row in rows]
    if lid_gap is not None:
        b, a = lid_gap
        lines += ["", f"Eyelid pairs (upper, lower; 14) under a full blink, mean head, face plane: gap "
                      f"median {np.median(b):.2f} -> {np.median(a):.2f} mm, max {b.max():.2f} -> {a.max():.2f} mm."]
    return "\n".join(lines)


def run(n_renders=N_RENDERS, seed=SEED, verbose=True, old_table=None, attention=False):
    model = load_model()
    faces = visible_faces(model)
    mean_t = model.template()
    skin_ok = np.zeros(model.n_vertices, bool)
    skin_ok[np.unique(faces)] = True
    skin_ok &= model.region_mask("face", "head_neck")
    allowed = side_masks(model, skin_ok)
    raw_manifest = Manifest(name="raw", onnx=str(mediapipe_dir() / "face_landmark.onnx"), input_size=192,
                            scale=1 / 255.0,
                            offset=0.0, mu_output="conv2d_21", point_dim=3, presence_output="conv2d_31",
                            vertex_ids=np.zeros(470, np.int64), points=np.arange(470),
                            sigma_table=np.ones(470))
    mp = MediaPipeLandmarks(raw_manifest, iris_policy="both", attention=attention)
    rng = np.random.default_rng(seed)
    n_half = n_renders // 2
    pos3d = np.full((n_half, 468, 3), np.nan)
    skin_ids = np.flatnonzero(skin_ok)
    fit_pts, fit_proj = [], []      # correspondence set: points and projected skin vertices (crop px)
    records = []                    # (raw points, roi size, posed vertices, camera) of the sigma set
    skipped = 0
    for r in range(n_renders):
        scene = render_random_face(model, rng, expression=sample_expression(model, rng, r), image_px=IMAGE_PX,
                                   face_px=FACE_PX)
        img, tri, bary, cam = scene.image, scene.tri_id, scene.bary, scene.camera
        mp.reset()
        pred = mp.track(img)
        if pred is not None:
            pred = mp.track(img)            # second pass: ROI from the landmarks, as when tracking
        if pred is None:
            skipped += 1
            continue
        pts = pred.points
        if r < n_half:
            # back-project each point onto the visible triangle; keep skin hits on the point's side
            ij = np.floor(pts[:468]).astype(int)
            inside = (ij[:, 0] >= 0) & (ij[:, 0] < cam.width) & (ij[:, 1] >= 0) & (ij[:, 1] < cam.height)
            for k in np.flatnonzero(inside):
                t = tri[ij[k, 1], ij[k, 0]]
                if t < 0:
                    continue
                corner = faces[t]
                ok = skin_ok[corner] if k not in allowed else allowed[k][corner]
                if ok.all():
                    pos3d[r, k] = bary[ij[k, 1], ij[k, 0]] @ mean_t[corner]
            scale = pred.roi.size / 192.0
            fit_pts.append(pts[:468] / scale)
            fit_proj.append((cam.project(scene.vertices[skin_ids]) / scale).astype(np.float32))
        else:
            records.append((pts, pred.roi.size, scene.vertices, cam))
    med = np.nanmedian(pos3d, axis=0)                                     # (468, 3)
    spread = np.nanmedian(np.linalg.norm(pos3d - med[None], axis=2), axis=0)
    hits = np.isfinite(pos3d[..., 0]).sum(axis=0)
    fit_pts, fit_proj = np.stack(fit_pts), np.stack(fit_proj)          # (R, 468, 2), (R, S, 2)
    vid, snap = choose_vertices(model, fit_pts, fit_proj, skin_ids, med, allowed)
    vid = np.concatenate([vid, iris_vertices(model)])
    err = crop_errors(records, vid)
    sigma = np.maximum(np.sqrt(np.nanmean(err ** 2 / 2.0, axis=0)), 0.5)   # per axis, as before
    table = np.column_stack([np.arange(470), vid, sigma])
    summary = dict(renders=n_renders, skipped=skipped, sigma_renders=len(records),
                   min_hits=int(hits.min()),
                   chosen_from_median_mm_median=float(np.median(snap)),
                   chosen_from_median_mm_max=float(snap.max()),
                   spread_mm_median=float(np.nanmedian(spread)),
                   spread_mm_p90=float(np.nanpercentile(spread, 90)),
                   sigma_crop_px_median=float(np.median(sigma[:468])),
                   sigma_crop_px_range=[float(sigma.min()), float(sigma.max())],
                   iris_sigma_crop_px=[float(s) for s in sigma[468:]],
                   unique_vertices=int(np.unique(vid).size),
                   lid_blink_gap_mm_max=float(lid_gaps(model, vid).max()))
    if old_table is not None:
        old = crop_errors(records, old_table[:, 1].astype(np.int64))
        rows = []
        for name, pts in list(GROUPS.items()) + [("all 470", tuple(range(470)))]:
            p = list(pts)
            rms = lambda e: float(np.sqrt(np.nanmean(e[:, p] ** 2)))    # noqa: E731
            rows.append((name, float(np.nanmedian(old[:, p])), float(np.nanmedian(err[:, p])), rms(old), rms(err)))
        summary["before_after"] = rows
        summary["lid_gap"] = (lid_gaps(model, old_table[:, 1].astype(np.int64)), lid_gaps(model, vid))
    if verbose:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("before_after", "lid_gap")}, indent=1))
        if old_table is not None:
            print(before_after_table(summary["before_after"], summary["lid_gap"]))
    return table, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renders", type=int, default=N_RENDERS)
    ap.add_argument("--check", action="store_true", help="compare with the committed table")
    ap.add_argument("--attention", action="store_true",
                    help="MediaPipe's attention mesh (data/mediapipe_attention/) instead of face mesh + iris")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.check and args.write_doc:
        ap.error("--write-doc writes the table of a new correspondence: drop --check")
    out_dir = ROOT / "data" / "mediapipe_attention" if args.attention else OUT_DIR
    path = out_dir / "correspondence.txt"
    old = path if path.exists() else OUT_DIR / "correspondence.txt"     # attention: before = the mesh's table
    table, summary = run(args.renders, old_table=np.loadtxt(old) if old.exists() else None,
                         attention=args.attention)
    rows, lid_gap = summary.pop("before_after", None), summary.pop("lid_gap", None)
    if args.check:
        old = np.loadtxt(path)
        same = (old[:, :2] == table[:, :2]).mean()
        print(f"{same * 100:.1f} % of rows identical to {path}")
        return 0 if same > 0.95 else 1
    out_dir.mkdir(parents=True, exist_ok=True)
    header = (("MediaPipe attention mesh" if args.attention else "MediaPipe face mesh")
              + " (0-467) and iris centres (468 subject's right, 469 left) -> ICT vertex; "
              "sigma in pixels of the 192-px face crop.\nMade by tools/make_mediapipe_correspondence.py: "
              + json.dumps(summary) + "\npoint vertex sigma_crop_px")
    np.savetxt(path, table, fmt=["%d", "%d", "%.3f"], header=header)
    print(f"wrote {path}")
    if rows is not None:
        section = "correspondence" + (".attention" if args.attention else "")
        results_doc.maybe_write(args, {section: before_after_table(rows, lid_gap)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
