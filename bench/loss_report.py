"""The landmark loss on single frames with outliers: squared (the paper's) against Cauchy.

Synthetic frames (``lmfit3d.synthetic``: random identity, 4 active expression shapes, yaw up to 20
degrees, dense320, 1 px noise, the fitter told sigma = 1 px); a fraction of the landmarks is moved
by 40 px (normal, per coordinate) without the fitter being told.  Each frame is fitted from scratch
(``fit.fit_landmarks``, identity and expression free, focal known) with each loss; metric: median
face-region vertex error (mm) after rigid alignment, then its median over the faces (min-max).

Usage::

    python bench/loss_report.py [--faces 10] [--write-doc]

``--write-doc`` writes the table into the ``loss_report`` section of docs/results.md.
"""
import sys
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402
from lmfit3d.fit import FitConfig, fit_landmarks  # noqa: E402
from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.synthetic import make_frame, random_params, rigid_align_error  # noqa: E402

LOSSES = {"squared": FitConfig(), "cauchy (c = 3 sigma)": FitConfig(landmark_loss="cauchy", loss_scale=3.0)}
FRACTIONS = (0.0, 0.05, 0.15, 0.30)
OFFSET_PX = 40.0


def errors(model, faces, fraction):
    """{loss: [median face error (mm) per face]} with ``fraction`` of the landmarks moved."""
    ids = load_landmark_set("dense320")
    out = {name: [] for name in LOSSES}
    for seed in range(faces):
        rng = np.random.default_rng(seed)
        p = random_params(model, rng, n_active=4, yaw_deg=20.0)
        fr = make_frame(model, p, ids, rng, noise_px=1.0)
        mu = fr.mu.copy()
        moved = rng.random(ids.size) < fraction
        mu[moved] += rng.normal(scale=OFFSET_PX, size=(int(moved.sum()), 2))
        for name, cfg in LOSSES.items():
            res = fit_landmarks(mu[None], np.ones((1, ids.size)), vertex_ids=ids, image_size=(512, 512),
                                focal_px=fr.camera.focal, model=model, config=cfg)
            err = rigid_align_error(res.vertices(model, 0), fr.vertices, model.face_mask())
            out[name].append(float(np.median(err)))
    return out


def table(rows, faces):
    lines = [f"{faces} faces per row; median face-region vertex error (mm), median over faces (min-max).", "",
             "| landmarks moved by 40 px | " + " | ".join(LOSSES) + " |", "|---|" + "---:|" * len(LOSSES)]
    for frac, errs in rows:
        cells = [f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in errs.values()]
        lines.append(f"| {frac:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = results_doc.parser(__doc__)
    ap.add_argument("--faces", type=results_doc.positive_int, default=10)
    args = ap.parse_args(argv)
    model = load_model()
    rows = [(f, errors(model, args.faces, f)) for f in FRACTIONS]
    md = table(rows, args.faces)
    print(md)
    results_doc.maybe_write(args, {"loss_report": md})
    return 0


if __name__ == "__main__":
    sys.exit(main())
