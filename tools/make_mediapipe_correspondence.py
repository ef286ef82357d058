"""Map MediaPipe's 468 face-mesh points and 2 iris centres onto ICT model vertices; learn sigma.

Method (deterministic, seeded):

1. Render the face model (``lmfit3d.render``: shaded skin, eyeballs with iris and pupil, teeth) with
   random identities from the prior, mild expressions, head poses (yaw +-30, pitch +-15, roll +-10
   degrees), skin tones and lights, and run the MediaPipe backend on each render exactly as at
   runtime (detector ROI, then one ROI refinement from the landmarks).
2. Correspondence set (the first half of the renders): each predicted point is back-projected
   through the z-buffer onto the rendered triangle; its barycentric position is carried to the mean
   head (T_mean).  Per point, the median of these 3D positions over renders is snapped to the
   nearest skin vertex.  Residuals (mm): distance median -> chosen vertex, and the median spread of
   the per-render positions around their median.  Iris centres map to the pupil centre of each
   inner eyeball (the vertex on the eye's forward axis).
3. Sigma set (the other half): per point, the RMS error between the prediction and the projection of
   its chosen vertex, in pixels of the 192-pixel face crop, is that point's sigma (floor 0.5 px).
   This is the "per-landmark error statistics learnt where ground truth is known" sigma; at runtime
   it is scaled by the crop size (and optionally combined with crop-jitter spread).

Writes ``data/mediapipe/correspondence.txt`` (columns: point, vertex, sigma_crop_px) and prints a
summary; ``--check`` compares with the committed file instead of writing.

Needs the converted ONNX models (``python tools/convert_mediapipe.py``) and the built face model.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmfit3d.model import SCLERA_L, SCLERA_R, load_model  # noqa: E402
from lmfit3d.predict import Manifest, MediaPipeLandmarks, mediapipe_dir  # noqa: E402
from lmfit3d.render import visible_faces  # noqa: E402
from lmfit3d.synthetic import render_random_face  # noqa: E402

OUT_DIR = ROOT / "data" / "mediapipe"
IMAGE_PX = 512
FACE_PX = 260.0
N_RENDERS = 400
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


def run(n_renders=N_RENDERS, seed=SEED, verbose=True):
    model = load_model()
    faces = visible_faces(model)
    mean_t = model.template()
    skin_ok = np.zeros(model.n_vertices, bool)
    skin_ok[np.unique(faces)] = True
    skin_ok &= model.region_mask("face", "head_neck")
    skin_ids = np.flatnonzero(skin_ok)
    raw_manifest = Manifest(name="raw", onnx=str(mediapipe_dir() / "face_landmark.onnx"), input_size=192,
                            scale=1 / 255.0,
                            offset=0.0, mu_output="conv2d_21", point_dim=3, presence_output="conv2d_31",
                            vertex_ids=np.zeros(470, np.int64), points=np.arange(470),
                            sigma_table=np.ones(470))
    mp = MediaPipeLandmarks(raw_manifest)
    rng = np.random.default_rng(seed)
    n_half = n_renders // 2
    pos3d = np.full((n_half, 468, 3), np.nan)
    records = []                    # (raw points, roi size, posed vertices, camera) of the sigma set
    skipped = 0
    for r in range(n_renders):
        scene = render_random_face(model, rng, expressive=r >= n_half, image_px=IMAGE_PX, face_px=FACE_PX)
        img, tri, bary, verts, cam = scene.image, scene.tri_id, scene.bary, scene.vertices, scene.camera
        mp.reset()
        pred = mp.track(img)
        if pred is not None:
            pred = mp.track(img)            # second pass: ROI from the landmarks, as when tracking
        if pred is None:
            skipped += 1
            continue
        pts = pred.points
        if r < n_half:
            ij = np.floor(pts[:468]).astype(int)
            inside = (ij[:, 0] >= 0) & (ij[:, 0] < cam.width) & (ij[:, 1] >= 0) & (ij[:, 1] < cam.height)
            for k in np.flatnonzero(inside):
                t = tri[ij[k, 1], ij[k, 0]]
                if t < 0:
                    continue
                pos3d[r, k] = bary[ij[k, 1], ij[k, 0]] @ mean_t[faces[t]]
        else:
            records.append((pts, pred.roi.size, verts, cam))
    med = np.nanmedian(pos3d, axis=0)                                     # (468, 3)
    spread = np.nanmedian(np.linalg.norm(pos3d - med[None], axis=2), axis=0)
    d = np.linalg.norm(mean_t[skin_ids][None, :, :] - med[:, None, :], axis=2)
    vid = skin_ids[np.argmin(d, axis=1)]
    snap = d.min(axis=1)
    vid = np.concatenate([vid, iris_vertices(model)])
    errs = []
    for pts, size, verts, cam in records:
        proj = cam.project(verts[vid])
        errs.append((pts - proj) / (size / 192.0))
    errs = np.stack(errs)                                                 # (R, 470, 2) crop px
    sigma = np.maximum(np.sqrt(np.nanmean(errs ** 2, axis=(0, 2))), 0.5)
    table = np.column_stack([np.arange(470), vid, sigma])
    summary = dict(renders=n_renders, skipped=skipped, sigma_renders=len(records),
                   snap_mm_median=float(np.median(snap)), snap_mm_max=float(snap.max()),
                   spread_mm_median=float(np.nanmedian(spread)),
                   spread_mm_p90=float(np.nanpercentile(spread, 90)),
                   sigma_crop_px_median=float(np.median(sigma[:468])),
                   sigma_crop_px_range=[float(sigma.min()), float(sigma.max())],
                   iris_sigma_crop_px=[float(s) for s in sigma[468:]],
                   unique_vertices=int(np.unique(vid).size))
    if verbose:
        print(json.dumps(summary, indent=1))
    return table, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renders", type=int, default=N_RENDERS)
    ap.add_argument("--check", action="store_true", help="compare with the committed table")
    args = ap.parse_args(argv)
    table, summary = run(args.renders)
    path = OUT_DIR / "correspondence.txt"
    if args.check:
        old = np.loadtxt(path)
        same = (old[:, :2] == table[:, :2]).mean()
        print(f"{same * 100:.1f} % of rows identical to {path}")
        return 0 if same > 0.95 else 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    header = ("MediaPipe face mesh (0-467) and iris centres (468 subject's right, 469 left) -> ICT vertex; "
              "sigma in pixels of the 192-px face crop.\nMade by tools/make_mediapipe_correspondence.py: "
              + json.dumps(summary) + "\npoint vertex sigma_crop_px")
    np.savetxt(path, table, fmt=["%d", "%d", "%.3f"], header=header)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
