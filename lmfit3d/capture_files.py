"""Capture files (``lmfit3d capture``): multi-view landmarks from an .npz (:func:`fit_capture_file`) or
one synchronised video per camera (:func:`fit_capture_videos`) -> :func:`lmfit3d.capture.fit_capture`
-> ``.npz`` (:func:`result_arrays`), refined calibration JSON and, for videos, the per-frame tables of
``lmfit3d track`` (:mod:`lmfit3d.outputs`).
"""
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .calibration import Calibration, read_calibration, write_calibration
from .calibration import image_sizes as _image_sizes
from .capture import fit_capture
from .exports import write_capture_gltf
from .frame_sync import apply_frame_offsets, estimate_frame_offsets
from .media import VideoReader, _check_out_dir, landmarks_from_video
from .model import Params, load_model
from .outputs import FrameRows, _Outputs, fit_arrays, write_npz
from .paths import read_npz, work_dir
from .report import ContactFrames, write_report
from .rotation import matrix_to_axis_angle, rodrigues
from .track import TrackOptions, make_predictor


def result_arrays(model, res):
    """The output .npz contents of a :class:`lmfit3d.capture.CaptureResult`: ``outputs.fit_arrays``
    (the ``fit-landmarks`` keys) plus the cameras."""
    return dict(fit_arrays(model, res), camera_rotation=res.camera_rotation,
                camera_translation=res.camera_translation, image_size=res.image_size, camera_ok=res.camera_ok, reproj_median_px=res.reproj_median_px,
                reproj_mean_px=res.reproj_mean_px, reference_camera=np.array(res.reference_camera),
                total_cost=np.array(res.total_cost))


def synchronise(mu, sigma, frame_offsets, progress=None):
    """Re-index unsynchronised cameras onto camera 0's frames (``lmfit3d.frame_sync``).

    ``frame_offsets``: None (synchronised: every camera cut to the shortest), ``"auto"`` (estimated
    from the landmarks' motion) or one integer per camera (camera j's frame t + offset[j] is camera
    0's frame t).  ``mu`` / ``sigma``: per-camera (F_j, L, 2) / (F_j, L).  Returns (mu (C, F, L, 2),
    sigma (C, F, L), offsets (C,), score (C,): the motion correlation, NaN when given)."""
    nc = len(mu)
    if frame_offsets is None:
        nf = min(m.shape[0] for m in mu)
        return (np.stack([m[:nf] for m in mu]), np.stack([s[:nf] for s in sigma]), np.zeros(nc, np.int64),
                np.full(nc, np.nan))
    if isinstance(frame_offsets, str) and frame_offsets == "auto":
        off, score = estimate_frame_offsets(mu, sigma)
        if progress is not None:
            progress("frame offsets (camera j's frame t + offset = camera 0's frame t): "
                     + ", ".join(f"{o:+d} (correlation {c:.2f})" for o, c in zip(off, score)))
    else:
        off, score = np.asarray(frame_offsets, dtype=np.int64).ravel(), np.full(nc, np.nan)
    out_mu, out_sigma = apply_frame_offsets(mu, sigma, off)
    return out_mu, out_sigma, off, score


def fit_capture_file(in_path, out_path, calibration=None, calibration_out=None, model=None, config=None,
                     progress=None, frame_offsets=None):
    """``lmfit3d capture``: multi-view landmarks from an .npz, fit, write results atomically.

    IN keys: ``mu`` (C, F, L, 2) pixels (NaN missing); ``sigma`` (C, F, L) (optional, default 1);
    ``landmark_set`` (str) or ``vertex_ids`` (L,); ``image_size`` (2,) or (C, 2) (optional when the
    calibration gives it); ``focal_px`` (optional, (C,) or one number: known focal lengths).

    OUT keys: those of ``fit-landmarks`` (``vertices`` (F, V, 3) float32 world mm, ``identity``,
    ``expression``, ``root_rotation``, ``translation``, ``joint_rotations``, ``cost`` (F,) landmark
    cost per frame, ``iterations``, ``status``, ``landmarks_fitted`` (C, F, L, 2)) with ``focal_px``
    per camera (C,), plus ``camera_rotation`` (C, 3, 3), ``camera_translation`` (C, 3) mm,
    ``image_size`` (C, 2), ``camera_ok`` (C,), ``reproj_median_px`` / ``reproj_mean_px`` (C,),
    ``reference_camera``, ``total_cost``, ``frame_offsets`` (C,) and ``frame_offset_score`` (C,).  The
    refined calibration goes to ``calibration_out`` (JSON).  ``frame_offsets``: see :func:`synchronise`
    (frames then follow camera 0's).
    """
    data = read_npz(in_path, ("mu",))
    mu = np.asarray(data["mu"])
    if mu.ndim != 4:
        raise ValueError(f"{in_path}: mu must have shape (C, F, L, 2), got {mu.shape}")
    nc = mu.shape[0]
    if calibration is None and "image_size" not in data:
        raise ValueError(f"{in_path}: missing key 'image_size' (or give a calibration)")
    size = _image_sizes(data["image_size"], nc) if "image_size" in data else None
    if calibration is not None:
        cal = read_calibration(calibration, nc, size)
    else:
        cal = Calibration.unknown(size)
    if "focal_px" in data:
        f = np.broadcast_to(np.asarray(data["focal_px"], dtype=np.float64).ravel(), (nc,)) \
            if np.asarray(data["focal_px"]).size in (1, nc) else None
        if f is None or not (np.isfinite(f) & (f > 0)).all():
            raise ValueError(f"{in_path}: focal_px must be one positive number or one per camera ({nc})")
        cal = replace(cal, focal=np.where(np.isfinite(cal.focal), cal.focal, f))
    lset = str(data["landmark_set"]) if "landmark_set" in data else None
    model = model or load_model()
    sigma = data.get("sigma")
    sync = {}
    if frame_offsets is not None:
        sg = np.ones(mu.shape[:3]) if sigma is None else np.asarray(sigma, dtype=np.float64)
        if sg.shape != mu.shape[:3]:
            raise ValueError(f"{in_path}: sigma must have shape {mu.shape[:3]}, got {sg.shape}")
        mu, sigma, off, score = synchronise(list(mu), list(sg), frame_offsets, progress)
        sync = dict(frame_offsets=off, frame_offset_score=score)
    res = fit_capture(mu, sigma, landmark_set=lset, vertex_ids=data.get("vertex_ids"),
                      calibration=cal, model=model, config=config, progress=progress)
    save_capture(model, res, out_path, calibration_out, sync)
    return res


def save_capture(model, res, out_path, calibration_out=None, extra=None):
    """Write a :class:`lmfit3d.capture.CaptureResult` to ``out_path`` (.npz, ``result_arrays`` and
    ``extra``) and optionally the refined calibration JSON, both atomically."""
    write_npz(out_path, dict(result_arrays(model, res), **(extra or {})))
    if calibration_out is not None:
        write_calibration(calibration_out, res.calibration())


def fit_capture_videos(paths, out_dir, calibration=None, model=None, config=None, options=None,
                       progress=None, frame_offsets=None):
    """``lmfit3d capture --videos``: one synchronised video per camera -> landmarks -> joint fit.

    Landmarks come from the backend of ``options`` (``lmfit3d.track.TrackOptions``: backend, ROI
    strategy, sigma jitter, iris).  Videos of different lengths are cut to the shortest (warning), unless
    ``frame_offsets`` (:func:`synchronise`) re-indexes them onto camera 0's frames.
    Writes into ``out_dir``: ``capture.npz`` (:func:`result_arrays`), ``capture_calibration.json``
    (refined cameras), and ``capture.csv`` / ``capture_arkit.csv`` with the columns of ``lmfit3d
    track`` (pose in the reference camera's axes, 68 points projected into the reference camera); with
    ``options.gltf`` ``capture.glb`` (world frame, the cameras), with ``options.report``
    ``capture_report.html`` (the reference camera's view).
    Returns the :class:`lmfit3d.capture.CaptureResult`.
    """
    opt = options or TrackOptions(progress=False)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    mp = make_predictor(opt)
    got = [landmarks_from_video(p, mp, opt.max_frames, opt.progress) for p in paths]
    counts = [g[0].shape[0] for g in got]
    if len(set(counts)) > 1 and frame_offsets is None:
        warnings.warn(f"frame counts differ between cameras ({', '.join(map(str, counts))}); "
                      f"using the first {min(counts)} frames of each")
    mu, sigma, off, score = synchronise([g[0] for g in got], [np.where(np.isfinite(g[1]), g[1], 1.0) for g in got],
                                        frame_offsets, progress)
    nf = mu.shape[1]
    sizes = np.array([g[3] for g in got], dtype=np.float64)
    cal = read_calibration(calibration, len(paths), sizes) if calibration is not None else Calibration.unknown(sizes)
    res = fit_capture(mu, sigma, vertex_ids=mp.vertex_ids, calibration=cal, model=model, config=config,
                      progress=progress)
    save_capture(model, res, out_dir / "capture.npz", out_dir / "capture_calibration.json",
                 dict(frame_offsets=off, frame_offset_score=score))
    # per-frame tables in the reference camera's axes
    ref = res.reference_camera
    r_ref, t_ref = res.camera_rotation[ref], res.camera_translation[ref]
    fps = got[ref][4]
    rows = FrameRows(model, res.identity, float(res.focal[ref]), tuple(int(v) for v in sizes[ref]), fps)
    table = dict(root_rotation=np.full((nf, 3), np.nan), joint_rotations=np.full(res.rotations[:, 1:].shape, np.nan),
                 translation=np.full((nf, 3), np.nan), success=np.zeros(nf, bool), confidence=np.zeros(nf),
                 fit_rms_px=np.full(nf, np.nan), landmarks68=np.full((nf, 68, 2), np.nan),
                 landmarks68_3d=np.full((nf, 68, 3), np.nan))
    with work_dir(out_dir, "capture") as work:
        outs = _Outputs(out_dir, "capture", model, fps, replace(opt, overlay=False, mesh_every=0), work,
                        whole_set=False)
        try:
            for f in range(nf):
                fit = None
                if res.status[f] >= 0:
                    rot = res.rotations[f].copy()
                    rot[0] = matrix_to_axis_angle(r_ref @ rodrigues(rot[0]))
                    p = Params(res.identity, res.expression[f], rot, r_ref @ res.translation[f] + t_ref)
                    fit = SimpleNamespace(params=p, uv=res.uv[ref, f], status=int(res.status[f]))
                    table["root_rotation"][f], table["joint_rotations"][f] = rot[0], rot[1:]
                    table["translation"][f] = p.translation
                row, ark, vals = rows(f, fit, mu[ref, f], got[ref][2][f])
                if vals is not None:
                    table["success"][f] = True
                    for k, v in vals.items():
                        table[k][f] = v
                outs.write_frame(f, row, ark)
            outs.commit()
        except BaseException:
            outs.abort()
            raise
    if opt.gltf:
        write_capture_gltf(out_dir / "capture.glb", model, res, fps)
    if opt.report:
        data = dict(table, identity=res.identity, expression=res.expression, focal_px=res.focal[ref],
                    image_size=sizes[ref], fps=fps)
        sheet = ContactFrames()
        for f, frame in zip(range(nf), VideoReader(paths[ref])):
            sheet.offer(f, frame, mu[ref, f])
        write_report(out_dir / "capture_report.html", model, data, f"capture (camera {ref})", sheet,
                     "landmarks" if opt.overlay_style == "landmarks" else "wireframe")
    return res
