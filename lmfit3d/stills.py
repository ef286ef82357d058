"""Stills: fit every face of a photo (``lmfit3d fit``), or several photos of one person with one
identity (``lmfit3d fit --same-person``).

:func:`fit_image` finds the faces (:func:`image_landmarks` for one), fits each with the real-time
fitter and writes per face NAME.obj/.ply (camera mm) and NAME.json, and one NAME_overlay.png.
:func:`fit_same_person` fits the photos together (:func:`fit_stills`: the capture problem of
:mod:`lmfit3d.capture` with one camera per photo) and writes the same files per photo.
"""
import json
import re
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from .calibration import Calibration
from .calibration import image_sizes as _image_sizes
from .camera import Camera
from .capture import _MIN_LANDMARKS, CaptureConfig, CaptureProblem, _result, validate_multiview
from .fit import Tracker, fit_landmarks
from .landmarks import resolve_vertex_ids
from .exports import write_still_gltf
from .media import _check_out_dir, read_image
from .meshio import write_obj, write_ply
from .model import load_model
from .outputs import _OverlayRenderer, _global_rotations
from .paths import commit_outputs, work_dir
from .points68 import Points68
from .rotation import matrix_to_axis_angle
from .skinning import evaluate_mesh
from .track import TrackOptions, make_predictor

# The landmark backend for photos when no options are given (``lmfit3d fit``'s default too): the
# attention mesh measures best on single images (issue 14: the 68 points on every annotated photo,
# bench/landmarks68.py; rendered faces 3.57 -> 3.10 mm, bench/stills_backends.py).  Videos keep
# TrackOptions' default, the face mesh (docs/results.md, "Attention mesh").
PHOTO_BACKEND = "mediapipe-attention"


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
    uv68, xyz68 = Points68(model, p.identity)(p, Camera(focal, *size))
    info = dict(image=str(path), image_size=list(size), focal_px=float(focal), confidence=pred.presence,
                fit_rms_px=float(np.sqrt(np.nanmean(np.sum((uv - pred.mu) ** 2, 1)))),
                identity=p.identity.tolist(), expression=dict(zip(model.expression_names, p.expression.tolist())),
                root_rotation=p.rotations[0].tolist(), translation_mm=p.translation.tolist(),
                joint_rotations={n: r.tolist() for n, r in zip(model.joint_names[1:], p.rotations[1:])},
                head_rotation=matrix_to_axis_angle(g[2]).tolist(), landmarks68=uv68.tolist(),
                landmarks68_3d=xyz68.tolist(),
                cost=float(cost), iterations=int(iterations), status=int(status), units="mm")
    return info, verts


def still_output_names(name, max_faces, mesh_format="obj"):
    """File names a photo NAME may write (``max_faces`` faces at most), and the regular expression
    matching every member of its output set (any face count, either mesh format)."""
    stems = [name] + [f"{name}_face{k}" for k in range(1, max_faces)]
    names = [f"{s}.{ext}" for s in stems for ext in (mesh_format, "json")] + [f"{name}_overlay.png"]
    stale = rf"{re.escape(name)}(_face\d+)?\.(obj|ply|json|glb)|{re.escape(name)}_overlay\.png"
    return names, stale


def _write_still_files(out_dir, name, model, opt, img, focal, results, keep=()):
    """NAME.obj/.ply and NAME.json per face (NAME_faceK.* for the K-th face after the first) and one
    NAME_overlay.png with every face; results: [(info, verts), ...], largest face first.

    Written into a private folder and moved into ``out_dir`` as one set
    (:func:`lmfit3d.paths.commit_outputs`): files of an earlier run of NAME that this one does not
    write (more faces, the other mesh format) are removed, except the paths in ``keep``."""
    import imageio.v2 as imageio
    overlay = img
    render = _OverlayRenderer(model, opt.overlay_style)
    names = []
    with work_dir(out_dir, name) as work:
        for k, (info, verts) in enumerate(results):
            stem = name if k == 0 else f"{name}_face{k}"
            if opt.gltf:
                write_still_gltf(work / f"{stem}.glb", model, info)
                names.append(f"{stem}.glb")
            (write_obj if opt.mesh_format == "obj" else write_ply)(work / f"{stem}.{opt.mesh_format}", verts,
                                                                   model.faces)
            info["backend"] = opt.backend            # the landmarks it was fitted to
            with open(work / f"{stem}.json", "x") as fh:
                json.dump(info, fh, indent=1)
            names += [f"{stem}.{opt.mesh_format}", f"{stem}.json"]
            overlay = render(overlay, verts, focal)
        with open(work / f"{name}_overlay.png", "xb") as fh:
            imageio.imwrite(fh, overlay, format="png")
        names.append(f"{name}_overlay.png")
        commit_outputs(out_dir, work, names, still_output_names(name, 1)[1], keep)


def write_still(path, out_dir, model, opt, img, params, focal, pred, uv, cost, iterations, status, keep=()):
    """NAME.obj/.ply (camera mm), NAME_overlay.png and NAME.json for one fitted photo; returns the JSON dict."""
    info, verts = _still_result(path, model, img, params, focal, pred, uv, cost, iterations, status)
    _write_still_files(out_dir, Path(path).stem, model, opt, img, focal, [(info, verts)], keep)
    return info


def fit_image(path, out_dir, options=None, model=None, predictor=None, keep=(), *, context=None):
    """Fit every face of one still image (at most ``options.face_limit(False)``, default 10, largest first).

    Writes NAME.obj (or .ply) and NAME.json for the largest face, NAME_face1.*, NAME_face2.* ... for
    the others, and one NAME_overlay.png with all of them.  Identity, expression and pose are fitted
    per face; the photo has one camera, so an unknown focal length is fitted on the largest face and
    held for the others.  Returns the largest face's JSON dict (its "faces" entry counts the faces).
    A rerun replaces the photo's whole output set (``keep``: paths never removed, the inputs).
    ``options`` None: :class:`~lmfit3d.track.TrackOptions` defaults with :data:`PHOTO_BACKEND`.
    ``context``: a :class:`~lmfit3d.context.FitContext` of the model and the predictor's landmarks to
    re-use (another photo's); None builds one.
    """
    opt = options or TrackOptions(backend=PHOTO_BACKEND)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    mp = predictor or make_predictor(opt)
    if hasattr(mp, "faces"):
        img = read_image(path)
        preds = mp.faces(img, opt.face_limit(False))
        if not preds:
            raise ValueError(f"{path}: no face found")
    else:
        img, pred = image_landmarks(path, mp)
        preds = [pred]
    size = (img.shape[1], img.shape[0])
    focal, results = opt.focal_px, []
    for k, pred in enumerate(preds):
        tracker = Tracker(model, mp.vertex_ids, size, focal, opt.config(), context=context)
        context = tracker.context                   # one context for every face of the photo
        fit = tracker.step(pred.mu, pred.sigma)
        if fit is None or fit.status < 0:
            if k == 0:
                raise ValueError(f"{path}: the fit failed")
            continue                                # a smaller face that does not fit is left out
        focal = fit.focal
        results.append(_still_result(path, model, img, fit.params, fit.focal, pred, fit.uv, fit.cost,
                                     fit.iterations, fit.status))
    for k, (info, _) in enumerate(results):
        info.update(face=k, faces=len(results))
    _write_still_files(out_dir, Path(path).stem, model, opt, img, focal, results, keep)
    return results[0][0]


def fit_stills(mu, sigma=None, *, landmark_set=None, vertex_ids=None, image_size, focal_px=None, model=None,
               config=None, progress=None):
    """Several photos of one person: identity shared, everything else per photo.

    Each photo n is a camera observing only frame n (C = F = N): its extrinsics are held at the
    identity, so the head pose of photo n (root rotation / translation of frame n) is in that
    photo's camera coordinates; expression and joints are per photo; the focal length per photo is
    estimated unless given; the temporal term is off.

    Parameters
    ----------
    mu : (N, L, 2) pixels (NaN missing); sigma : (N, L) pixels (default 1).
    image_size : (2,) or (N, 2); focal_px : None, a number or (N,) pixels.

    Returns
    -------
    CaptureResult with F = N frames; ``vertices(model, n)`` is photo n's mesh in its camera's mm.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 3 or mu.shape[2] != 2 or 0 in mu.shape:
        raise ValueError(f"mu must have shape (N, L, 2), got {mu.shape}")
    n, nl = mu.shape[:2]
    sigma = np.ones((n, nl)) if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (n, nl):
        raise ValueError(f"sigma must have shape {(n, nl)}, got {sigma.shape}")
    size = _image_sizes(image_size, n)
    foc = np.full(n, np.nan) if focal_px is None else np.broadcast_to(np.asarray(focal_px, float), (n,)).copy()
    mv = np.full((n, n, nl, 2), np.nan)
    sv = np.ones((n, n, nl))
    for k in range(n):
        mv[k, k], sv[k, k] = mu[k], sigma[k]
    cal = Calibration(np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), foc, size, np.zeros(n, bool),
                      np.zeros(n, bool))
    cfg = config or CaptureConfig()
    cfg = replace(cfg, fit=replace(cfg.fit, w_temporal=0.0))
    model = model or load_model()
    return _fit_stills(model, mv, sv, cal, landmark_set, vertex_ids, cfg, progress)


def _fit_stills(model, mv, sv, cal, landmark_set, vertex_ids, cfg, progress):
    """Stills share the capture problem; initialise each photo alone, identity = their mean."""
    ids = resolve_vertex_ids(landmark_set, vertex_ids, model.n_vertices)
    mu, inv_sigma = validate_multiview(mv, sv, ids.size)
    n = mu.shape[0]
    t0 = time.perf_counter()
    ok = np.array([(inv_sigma[k, k] > 0).sum() >= _MIN_LANDMARKS for k in range(n)])
    for k in np.flatnonzero(~ok):
        warnings.warn(f"photo {k} has no face; it is left out of the fit", stacklevel=3)
    if not ok.any():
        raise ValueError("no photo has a face (fewer than 3 landmarks)")
    used = np.flatnonzero(ok)
    mu, inv_sigma = mu[np.ix_(used, used)], inv_sigma[np.ix_(used, used)]
    size = cal.image_size[used]
    fits = []
    for k in range(used.size):
        sg = np.where(inv_sigma[k, k] > 0, 1.0 / np.where(inv_sigma[k, k] > 0, inv_sigma[k, k], 1.0), 1.0)
        m = np.where((inv_sigma[k, k] > 0)[:, None], mu[k, k], np.nan)
        f0 = cal.focal[used[k]]
        fits.append(fit_landmarks(m[None], sg[None], vertex_ids=ids, image_size=size[k],
                                  focal_px=f0 if np.isfinite(f0) else None, model=model, config=cfg.fit))
    beta = np.mean([ft.identity for ft in fits], axis=0)
    prob = CaptureProblem(model, ids, mu, inv_sigma, size, cfg, beta)
    z = np.zeros(prob.n)
    z[:prob.nk] = beta
    free = np.ones(prob.n, bool)
    for k, ft in enumerate(fits):
        prob.layout.set_frame(z, k, ft.rotations[0], ft.translation[0], np.clip(ft.expression[0], 0, 1))
        prob.layout.set_camera(z, k, focal=ft.focal[0])
        c = prob.camera_slice(k).start
        free[c:c + 6] = False       # camera k is still k's own frame: rotation and translation held
        free[c + 6] = not np.isfinite(cal.focal[used[k]])
        if not cfg.fit.fit_eyes:
            for j in model.eye_joints:
                free[prob.layout.frame_joint_block(k, j)] = False
    t1 = time.perf_counter()
    z, res = prob.solve(z, free)
    out = _result(model, prob, z, res, used, replace(cal, image_size=cal.image_size), cal.image_size, ids,
                  int(used[0]), t1 - t0, time.perf_counter() - t1)
    if used.size < n:       # frames of photos left out: NaN
        full = np.full(n, -1)
        full[used] = np.arange(used.size)
        keep = full >= 0
        for name in ("expression", "rotations", "translation", "cost"):
            a = getattr(out, name)
            b = np.full((n,) + a.shape[1:], np.nan)
            b[keep] = a[full[keep]]
            setattr(out, name, b)
        st = np.full(n, -1, np.int64)
        st[keep] = out.status[full[keep]]
        out.status = st
        uv = np.full((n, n) + out.uv.shape[2:], np.nan)
        uv[:, keep] = out.uv
        out.uv = uv
    return out


def fit_same_person(paths, out_dir, options=None, model=None, predictor=None):
    """Several photos of one person (``lmfit3d fit --same-person``): one identity shared by all,
    expression, pose and focal length per photo, fitted together (:func:`fit_stills`).

    Photos without a face are reported (ValueError) before anything is written.  Writes the
    outputs of :func:`fit_image` per photo; returns their JSON dicts.  ``options`` None: the
    defaults with :data:`PHOTO_BACKEND`.
    """
    opt = options or TrackOptions(backend=PHOTO_BACKEND)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    mp = predictor or make_predictor(opt)
    got = [image_landmarks(p, mp) for p in paths]
    sizes = np.array([(img.shape[1], img.shape[0]) for img, _ in got], dtype=np.float64)
    res = fit_stills(np.stack([pr.mu for _, pr in got]), np.stack([pr.sigma for _, pr in got]),
                     vertex_ids=mp.vertex_ids, image_size=sizes, focal_px=opt.focal_px, model=model)
    return [write_still(path, out_dir, model, opt, img, res.params(k), res.focal[k], pred, res.uv[k, k],
                        res.cost[k], res.iterations, res.status[k], keep=paths)
            for k, (path, (img, pred)) in enumerate(zip(paths, got))]
