"""``lmfit3d fit-landmarks``: landmarks of F frames from an .npz in, the fit as an .npz out (the
contract any landmark source can use; README "fit-landmarks").  The output keys are written by
``outputs.fit_arrays`` / ``outputs.write_npz``, as ``capture`` writes its own."""
from pathlib import Path

import numpy as np

from .fit import fit_landmarks
from .model import load_model
from .outputs import fit_arrays, write_npz
from .paths import read_npz


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
    lset = str(data["landmark_set"]) if "landmark_set" in data else None
    focal = float(data["focal_px"]) if "focal_px" in data else None
    model = model or load_model()
    res = fit_landmarks(data["mu"], data.get("sigma"), landmark_set=lset, vertex_ids=data.get("vertex_ids"),
                        image_size=tuple(np.asarray(data["image_size"]).ravel()), focal_px=focal,
                        model=model, config=config, progress=progress)
    write_npz(Path(out_path), fit_arrays(model, res))
    return res
