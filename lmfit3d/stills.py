"""Stills: fit every face of a photo (``lmfit3d fit``).

:func:`fit_image` finds the faces (:func:`image_landmarks` for one), fits each with the real-time
fitter and writes per face NAME.obj/.ply (camera mm) and NAME.json, and one NAME_overlay.png.
"""
import json
from pathlib import Path

import numpy as np

from .camera import Camera
from .fit import Tracker
from .landmarks import load_landmark_set
from .media import _check_out_dir, read_image
from .meshio import write_obj, write_ply
from .model import load_model
from .outputs import _OverlayRenderer, _global_rotations
from .paths import atomic_write
from .rotation import matrix_to_axis_angle
from .skinning import evaluate_mesh
from .track import TrackOptions, make_predictor


def image_landmarks(path, predictor):
    """(image, Prediction) of the largest face of a still: the detector ROI, then the ROI from
    those landmarks (as when tracking)."""
    img = read_image(path)
    predictor.reset()
    policy = getattr(predictor, "iris_policy", None)
    if policy is not None:
        predictor.iris_policy = "both"          # a still: both eyes on each pass
    try:
        pred = predictor.track(img)
        if pred is not None:
            pred = predictor.track(img) or pred
    finally:
        if policy is not None:
            predictor.iris_policy = policy
    if pred is None:
        raise ValueError(f"{path}: no face found")
    return img, pred


def _still_result(path, model, img, params, focal, pred, uv, cost, iterations, status):
    """(JSON dict, camera-space mesh (V, 3) mm) of one fitted face of a photo."""
    p = params
    size = (img.shape[1], img.shape[0])
    verts = evaluate_mesh(model, p)
    g = _global_rotations(model, p.rotations)
    uv68 = Camera(focal, *size).project(verts[load_landmark_set("ibug68")])
    info = dict(image=str(path), image_size=list(size), focal_px=float(focal), confidence=pred.presence,
                fit_rms_px=float(np.sqrt(np.nanmean(np.sum((uv - pred.mu) ** 2, 1)))),
                identity=p.identity.tolist(), expression=dict(zip(model.expression_names, p.expression.tolist())),
                root_rotation=p.rotations[0].tolist(), translation_mm=p.translation.tolist(),
                joint_rotations={n: r.tolist() for n, r in zip(model.joint_names[1:], p.rotations[1:])},
                head_rotation=matrix_to_axis_angle(g[2]).tolist(), landmarks68=uv68.tolist(),
                cost=float(cost), iterations=int(iterations), status=int(status), units="mm")
    return info, verts


def _write_still_files(out_dir, name, model, opt, img, focal, results):
    """NAME.obj/.ply and NAME.json per face (NAME_faceK.* for the K-th face after the first) and one
    NAME_overlay.png with every face; results: [(info, verts), ...], largest face first."""
    import imageio.v2 as imageio
    overlay = img
    render = _OverlayRenderer(model)
    for k, (info, verts) in enumerate(results):
        stem = name if k == 0 else f"{name}_face{k}"
        (write_obj if opt.mesh_format == "obj" else write_ply)(out_dir / f"{stem}.{opt.mesh_format}", verts,
                                                               model.faces)
        with atomic_write(out_dir / f"{stem}.json", "w") as fh:
            json.dump(info, fh, indent=1)
        overlay = render(overlay, verts, focal)
    with atomic_write(out_dir / f"{name}_overlay.png", "wb") as fh:
        imageio.imwrite(fh, overlay, format="png")


def write_still(path, out_dir, model, opt, img, params, focal, pred, uv, cost, iterations, status):
    """NAME.obj/.ply (camera mm), NAME_overlay.png and NAME.json for one fitted photo; returns the JSON dict."""
    info, verts = _still_result(path, model, img, params, focal, pred, uv, cost, iterations, status)
    _write_still_files(out_dir, Path(path).stem, model, opt, img, focal, [(info, verts)])
    return info


def fit_image(path, out_dir, options=None, model=None, predictor=None):
    """Fit every face of one still image (at most ``options.max_faces``, largest first).

    Writes NAME.obj (or .ply) and NAME.json for the largest face, NAME_face1.*, NAME_face2.* ... for
    the others, and one NAME_overlay.png with all of them.  Identity, expression and pose are fitted
    per face; the photo has one camera, so an unknown focal length is fitted on the largest face and
    held for the others.  Returns the largest face's JSON dict (its "faces" entry counts the faces).
    """
    opt = options or TrackOptions()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    mp = predictor or make_predictor(opt)
    if hasattr(mp, "faces"):
        img = read_image(path)
        preds = mp.faces(img, opt.max_faces)
        if not preds:
            raise ValueError(f"{path}: no face found")
    else:
        img, pred = image_landmarks(path, mp)
        preds = [pred]
    size = (img.shape[1], img.shape[0])
    focal, results = opt.focal_px, []
    for k, pred in enumerate(preds):
        fit = Tracker(model, mp.vertex_ids, size, focal, opt.config()).step(pred.mu, pred.sigma)
        if fit is None or fit.status < 0:
            if k == 0:
                raise ValueError(f"{path}: the fit failed")
            continue                                # a smaller face that does not fit is left out
        focal = fit.focal
        results.append(_still_result(path, model, img, fit.params, fit.focal, pred, fit.uv, fit.cost,
                                     fit.iterations, fit.status))
    for k, (info, _) in enumerate(results):
        info.update(face=k, faces=len(results))
    _write_still_files(out_dir, Path(path).stem, model, opt, img, focal, results)
    return results[0][0]
