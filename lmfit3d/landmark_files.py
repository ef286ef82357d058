"""``lmfit3d fit-landmarks``: landmarks of F frames from an .npz in, the fit as an .npz out (the
contract any landmark source can use; README "fit-landmarks").  The output keys are written by
``outputs.fit_arrays`` / ``outputs.write_npz``, as ``capture`` writes its own."""
from pathlib import Path

import numpy as np

from .fit import fit_landmarks
from .model import load_model
from .outputs import fit_arrays, write_npz
from .paths import read_npz


def read_pts(path):
    """Points of an iBUG / menpo ``.pts`` annotation file as (N, 2) float64 in lmfit3d's pixels.

    The format's coordinates are 1-based (Matlab: the top-left pixel's centre is (1, 1)); lmfit3d's
    pixel i spans [i, i + 1) (centre i + 0.5), so a file's (x, y) is (x - 0.5, y - 0.5) here.
    """
    text = Path(path).read_text()
    try:
        body = text[text.index("{") + 1:text.index("}")]
        pts = np.array([[float(v) for v in line.split()] for line in body.strip().splitlines()], np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError
    except ValueError:
        raise ValueError(f"{path}: not an iBUG .pts file (want 'x y' lines between '{{' and '}}')") from None
    return pts - 0.5


def fit_landmarks_file(in_path, out_path, model=None, config=None, progress=None):
    """Read landmarks from an .npz, fit them (``fit.fit_landmarks``), write the results atomically.

    IN keys: ``mu`` (F, L, 2) pixels; ``sigma`` (F, L) pixels (optional, default 1); ``landmark_set``
    (str) or ``vertex_ids`` (L,); ``image_size`` (2,) = (width, height); ``focal_px`` (optional).

    OUT keys (``outputs.fit_arrays``): ``vertices`` (F, V, 3) float32 mm in camera coordinates (NaN for
    failed frames); ``identity`` (K,); ``expression`` (F, E) and ``expression_names``; ``root_rotation``
    (F, 3) axis-angle; ``translation`` (F, 3) mm; ``joint_rotations`` (F, J-1, 3) and ``joint_names``
    (neck, head, eye_L, eye_R); ``focal_px``; ``cost``, ``iterations``, ``status`` per frame;
    ``landmarks_fitted`` (F, L, 2) pixels.

    Returns the ``fit.SequenceFit``.
    """
    data = read_npz(in_path, ("mu", "image_size"))
    for key in ("mu", "sigma", "image_size", "focal_px", "vertex_ids"):
        if key in data and not np.issubdtype(data[key].dtype, np.number):
            raise ValueError(f"{in_path}: {key} must be numbers, got an array of {data[key].dtype}")
    lset = str(data["landmark_set"]) if "landmark_set" in data else None
    focal = None
    if "focal_px" in data:
        f = data["focal_px"]
        if f.size != 1:
            raise ValueError(f"{in_path}: focal_px must be one number of pixels, got shape {f.shape}")
        focal = float(f.ravel()[0])
    model = model or load_model()
    try:
        res = fit_landmarks(data["mu"], data.get("sigma"), landmark_set=lset, vertex_ids=data.get("vertex_ids"),
                            image_size=np.asarray(data["image_size"], dtype=np.float64).ravel(), focal_px=focal,
                            model=model, config=config, progress=progress)
    except ValueError as exc:
        raise ValueError(f"{in_path}: {exc}") from None
    write_npz(Path(out_path), fit_arrays(model, res))
    return res
