"""Which landmark backend fits single photos best: rendered faces with known shape and expression.

Each of ``--renders`` random faces (``lmfit3d.synthetic.render_random_face``, seeded; expressive,
yaw up to 30 degrees) is fitted from the one image as ``lmfit3d fit`` does (the largest face's
landmarks, one Tracker step: identity, expression, pose; focal length known) with each backend.
Printed per backend, over the faces every backend found:

- shape: face-region vertex error (mm) after rigid alignment, the median per face, mean over faces;
- all-53 MAE: mean absolute error of the 53 expression weights;
- jaw / blink MAE: the same over jawOpen, eyeBlink_L, eyeBlink_R.

``lmfit3d fit``'s default backend is the one this table and ``bench/landmarks68.py`` (the 68 points
on annotated photos) choose (issue 14)::

    python bench/stills_backends.py [--renders 60] [--write-doc]
"""
import sys
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402

from lmfit3d.fit import FitConfig, Tracker  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402
from lmfit3d.synthetic import render_random_face, rigid_align_error  # noqa: E402
from lmfit3d.track import TrackOptions, make_predictor  # noqa: E402

BACKENDS = ("mediapipe", "mediapipe-attention", "network")
KEY_SHAPES = ("jawOpen", "eyeBlink_L", "eyeBlink_R")


def run(model, n, seed=2026):
    rng = np.random.default_rng(seed)
    preds = {b: make_predictor(TrackOptions(progress=False, backend=b, iris_policy="both")) for b in BACKENDS}
    key = [model.expression_names.index(s) for s in KEY_SHAPES]
    mask = model.face_mask()
    errs, missed = {b: [] for b in BACKENDS}, 0
    for _ in range(n):
        sc = render_random_face(model, rng)
        row = {}
        for b, mp in preds.items():
            mp.reset()
            found = mp.faces(sc.image, 1)
            if not found:
                break
            tr = Tracker(model, mp.vertex_ids, (sc.camera.width, sc.camera.height), sc.camera.focal, FitConfig())
            fit = tr.step(found[0].mu, found[0].sigma)
            if fit is None or fit.status < 0:
                break
            d = np.abs(fit.params.expression - sc.params.expression)
            row[b] = (np.median(rigid_align_error(evaluate_mesh(model, fit.params), sc.vertices, mask)),
                      d.mean(), d[key].mean())
        if len(row) < len(BACKENDS):
            missed += 1
            continue
        for b, v in row.items():
            errs[b].append(v)
    return errs, missed


def table(errs, n, missed):
    out = [f"{n} rendered faces ({missed} not found or not fitted by every backend, left out), one image "
           "each, focal known.", "", "| backend | shape (mm) | all-53 MAE | jaw / blink MAE |",
           "|---|---:|---:|---:|"]
    for b, e in errs.items():
        e = np.array(e)
        out.append(f"| {b} | {e[:, 0].mean():.3f} | {e[:, 1].mean():.4f} | {e[:, 2].mean():.3f} |")
    return "\n".join(out)


def main(argv=None):
    ap = results_doc.parser(__doc__)
    ap.add_argument("--renders", type=results_doc.positive_int, default=60, help="faces rendered (default 60)")
    args = ap.parse_args(argv)
    errs, missed = run(load_model(), args.renders)
    text = table(errs, args.renders, missed)
    print(text)
    results_doc.maybe_write(args, {"stills_backends": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
