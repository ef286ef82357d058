"""Initialisation of the offline capture (``lmfit3d.capture.fit_capture``): the reference camera tracked
alone by the real-time fitter, every other camera with unknown extrinsics or focal tracked on a few
frames and placed by the head poses both saw (steps 1-3 of ``lmfit3d.capture``'s docstring).
"""
import numpy as np

from .camera import focal_from_fov
from .context import FitContext
from .fit import Tracker, fit_landmarks
from .model import Params
from .rotation import matrix_to_axis_angle, rodrigues

_MIN_LANDMARKS = 3          # a camera "sees" a frame's face with at least this many landmarks


def _interp_frames(idx, values, n):
    """Rows of values (len(idx), ...) known at increasing frames idx, linearly interpolated onto
    frames 0..n-1 (held constant beyond the ends).  Axis-angle rows are interpolated per component
    (small frame-to-frame motion)."""
    flat = values.reshape(len(idx), -1)
    out = np.empty((n, flat.shape[1]))
    frames = np.arange(n)
    for c in range(flat.shape[1]):
        out[:, c] = np.interp(frames, idx, flat[:, c])
    return out.reshape((n,) + values.shape[1:])


def _fold_joints(model, ids, identity, expression, rotations, translation, limit=0.0):
    """Move a tracked pose's neck/head rotation into the root.

    The real-time tracker splits a head turn between root and neck as it likes (face-only landmarks
    do not see the neck), and can end turned by large opposite angles (a "double flip": root by ~pi,
    the neck turning the face back).  The capture's joint prior then unwinds such a split only
    slowly: the pose blocks with that unobserved direction get the diagonal preconditioner
    (``capture_precond._BLOCK_SINGULAR``); issue 17, 8 cameras: frame 0 started at root -30 / neck
    +25 degrees, and 220 of the 280 cost units L-BFGS still found after its cap came from unwinding
    such splits (face error unchanged).  When a neck or head rotation exceeds ``limit`` radians
    (default 0: always), those joints are zeroed and the root pose is re-fitted rigidly (Kabsch) to
    the same landmark positions.  Returns (rotations, translation).
    """
    if np.abs(np.linalg.norm(rotations[1:3], axis=1)).max() <= limit:
        return rotations, translation
    from .skinning import evaluate_points
    x, _ = evaluate_points(model, Params(identity, expression, rotations, translation), ids)
    rot = rotations.copy()
    rot[0] = 0.0
    rot[1:3] = 0.0
    x0, _ = evaluate_points(model, Params(identity, expression, rot, np.zeros(3)), ids)
    c, c0 = x.mean(0), x0.mean(0)
    u, _, vt = np.linalg.svd((x - c).T @ (x0 - c0))
    r = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    rot[0] = matrix_to_axis_angle(r)
    return rot, c - r @ c0


def _relative_pose(rot_j, t_j, rot_r, t_r):
    """Rigid transform camera_ref -> camera_j from head poses seen by both (per-frame arrays)."""
    rr = rodrigues(rot_r)
    rj = rodrigues(rot_j)
    rel = rj @ np.transpose(rr, (0, 2, 1))
    u, _, vt = np.linalg.svd(rel.sum(0))
    r = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    t = np.median(t_j - np.einsum("ij,fj->fi", r, t_r), axis=0)
    return r, t


def _initialise(model, ids, mu, inv_sigma, size, cal, ref, cfg, identity, progress):
    """Initial full vector pieces: identity, per-frame params (world), camera R, T, focal."""
    nc, nf = mu.shape[:2]

    def nan_mu(j, frames):          # one camera's frames only (no (C, F, L) copies)
        return np.where((inv_sigma[j, frames] > 0)[..., None], mu[j, frames], np.nan)

    def sigma(j, frames):
        inv = inv_sigma[j, frames]
        return np.where(inv > 0, 1.0 / np.where(inv > 0, inv, 1.0), 1.0)

    foc = cal.focal.copy()
    stride = cfg.init.stride or max(1, nf // 128)
    sel = np.unique(np.r_[np.arange(0, nf, stride), nf - 1])
    context = FitContext(model, ids, cfg.fit.sparsity_threshold_mm)      # every camera's trackers
    fr = fit_landmarks(nan_mu(ref, sel), sigma(ref, sel), vertex_ids=ids, image_size=size[ref],
                       focal_px=foc[ref] if np.isfinite(foc[ref]) else None, model=model, config=cfg.fit,
                       identity=identity, two_pass=cfg.init.two_pass, context=context)
    good_s = fr.status >= 0
    if not good_s.any():
        raise ValueError(f"the reference camera {ref} could not be fitted in any frame")
    ok = np.zeros(nf, bool)                                      # frames with a tracked head pose
    ok[sel[good_s]] = True
    beta = fr.identity.copy()
    foc[ref] = np.nanmedian(fr.focal)
    for k in np.flatnonzero(good_s):
        fr.rotations[k], fr.translation[k] = _fold_joints(model, ids, beta, fr.expression[k], fr.rotations[k],
                                                          fr.translation[k])
    rot_c = _interp_frames(sel[good_s], fr.rotations[good_s], nf)          # in the reference camera
    tr_c = _interp_frames(sel[good_s], fr.translation[good_s], nf)
    expr = np.clip(_interp_frames(sel[good_s], fr.expression[good_s], nf), 0.0, 1.0)
    rot_cam = np.tile(np.eye(3), (nc, 1, 1))
    t_cam = np.zeros((nc, 3))
    known = cal.known_extrinsics
    if known[ref]:
        rot_cam[ref], t_cam[ref] = cal.rotation[ref], cal.translation[ref]
    for j in range(nc):
        if j == ref or (known[j] and np.isfinite(foc[j])):
            continue
        good = np.flatnonzero(ok & ((inv_sigma[j] > 0).sum(1) >= _MIN_LANDMARKS))
        if good.size == 0:
            if not known[j]:
                raise ValueError(f"camera {j} shares no frame with a face with the reference camera "
                                 f"{ref}; give its calibration")
            continue
        pick = good[np.unique(np.linspace(0, good.size - 1, min(cfg.init.frames, good.size)).round().astype(int))]
        tracker = Tracker(model, ids, size[j], foc[j] if np.isfinite(foc[j]) else None, cfg.fit, identity=beta,
                          context=context)
        fits = []
        for f in pick:
            tracker.reset()
            fits.append(tracker.step(nan_mu(j, f), sigma(j, f)))
        keep = [i for i, ft in enumerate(fits) if ft is not None and ft.success]
        if not keep:
            raise ValueError(f"camera {j}: the face could not be fitted to initialise its extrinsics")
        if not np.isfinite(foc[j]):
            foc[j] = tracker.focal
        if not known[j]:
            folded = [_fold_joints(model, ids, beta, fits[i].params.expression, fits[i].params.rotations,
                                   fits[i].params.translation) for i in keep]
            rj = np.array([fd[0][0] for fd in folded])
            tj = np.array([fd[1] for fd in folded])
            r_rel, t_rel = _relative_pose(rj, tj, rot_c[pick[keep]][:, 0], tr_c[pick[keep]])
            rot_cam[j] = r_rel @ rot_cam[ref]
            t_cam[j] = r_rel @ t_cam[ref] + t_rel
        if progress is not None:
            progress(f"camera {j} initialised")
    for j in range(nc):
        if known[j] and j != ref:
            rot_cam[j], t_cam[j] = cal.rotation[j], cal.translation[j]
    # head pose in world coordinates: x_ref = R_ref x_w + T_ref
    r_ref, t_ref = rot_cam[ref], t_cam[ref]
    rot_w = rot_c.copy()
    root = rodrigues(rot_c[:, 0])
    for f in range(nf):
        rot_w[f, 0] = matrix_to_axis_angle(r_ref.T @ root[f])
    tr_w = (tr_c - t_ref) @ r_ref
    for j in range(nc):
        if not np.isfinite(foc[j]):
            foc[j] = focal_from_fov(size[j, 0], 45.0)
    return beta, rot_w, tr_w, expr, rot_cam, t_cam, foc
