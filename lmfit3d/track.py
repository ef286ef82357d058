"""Video tracking: ONNX landmarks -> real-time fitter -> per-frame outputs (:mod:`lmfit3d.outputs`).

``track_video`` runs in two streamed passes over the file, so memory stays flat for any length:

1. Decode frames one at a time, predict landmarks (detector on the first frame and whenever the face
   score drops under the threshold; otherwise the ROI follows the previous frame's landmarks) and
   append mu/sigma to a disk-backed array.  The real-time tracker runs along on every
   ``identity_stride``-th frame (2) with the identity free, refitting identity (and focal length
   when unknown) on keyframes from the whole clip, until it holds ``max_keyframes`` of them.
2. Track the clip again with that identity (and focal) held, on landmark tracks smoothed without
   lag (``lmfit3d.temporal``: a constant-velocity Kalman/RTS smoother whose process noise follows the
   motion, with the shot's frame-to-frame noise :func:`frame_noise_variance` as the measurement
   noise; ``smooth``), each landmark's sigma widened by the smoother's variance (without ``smooth``:
   by the frame noise, with the temporal term on), and stream the outputs: ``NAME.csv``,
   ``NAME_arkit.csv``, optional meshes and overlay video; ``NAME.npz`` at the end.  Every output is written to a temporary file
   and renamed when complete.

The outputs' columns and their writers are in :mod:`lmfit3d.outputs`; frame sources in
:mod:`lmfit3d.media`; photos in :mod:`lmfit3d.stills`.
"""
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .faces import (FaceFollower, LandmarkStore, _memmap, assign_faces, face_identity, fit_identities,
                    fit_identity, reid_score)
from .context import FitContext
from .fit import FitConfig, Tracker
from .report import ContactFrames
from .media import VideoReader, _check_out_dir, _progress
from .meshio import write_obj, write_ply
from .model import load_model
from .outputs import OVERLAY_STYLES, FrameRows, RunSummary, _OverlayRenderer, _Outputs
from .exports import write_extras
from .paths import work_dir
from .predict import MediaPipeLandmarks, NetworkLandmarks
from .render import draw_label
from .skinning import evaluate_mesh
from .temporal import is_cut, frame_noise_variance, shot_segments, smooth_shots

TRACK_TEMPORAL_WEIGHT = 0.1
# expression prior of landmark-network tracking: the networks' systematic errors otherwise show as
# constant spurious weights (renders, bench/dynamics_eval.py: MAE over 53 shapes 0.107 at 1, 0.086
# at 3; the shared clips' range ratios change by <= 0.06)
TRACK_EXPRESSION_WEIGHT = 3.0
# antagonist pairs of the expression prior (energy.ANTAGONISTS) in landmark-network tracking: opposite
# shapes held together stood in for the identity's brow and lid shape (renders, bench/dynamics_eval.py:
# MAE over 53 shapes 0.082 at 0, 0.077 at 1.5, eyeBlink_L/R 0.212/0.103 -> 0.195/0.093; the shared clips'
# range ratios and steadiness change by <= 0.02)
TRACK_ANTAGONIST_WEIGHT = 1.5
BACKENDS = ("mediapipe", "mediapipe-attention", "network")
# "every face" (``--max-faces 0``, a video's default): at most this many, a bound for the detector's
# candidates and the output names a batch checks
ALL_FACES = 32


@dataclass(frozen=True)
class TrackOptions:
    """Options of :func:`track_video` / :func:`lmfit3d.stills.fit_image` (CLI flags of ``lmfit3d track``)."""
    backend: str = "mediapipe"
    roi_strategy: str = "aligned"
    sigma_jitter: int = 0
    fixed_sigma: bool = False
    iris: bool = True
    iris_policy: str = "alternate"
    temporal_weight: float = None
    focal_px: float = None
    mesh_every: int = 0
    mesh_format: str = "obj"
    overlay: bool = False
    overlay_style: str = "shaded"
    gltf: bool = False
    report: bool = False
    max_frames: int = None
    cut_threshold: float = 0.35
    identity_stride: int = 2
    max_faces: int = None
    frame_noise: bool = True
    smooth: bool = True
    landmark_loss: str = "squared"
    loss_scale: float = 3.0
    progress: bool = True

    def __post_init__(self):
        if self.mesh_every < 0:
            raise ValueError(f"--mesh-every must be >= 0, got {self.mesh_every}")
        if self.mesh_format not in ("obj", "ply"):
            raise ValueError(f"--mesh-format must be obj or ply, got {self.mesh_format!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "network" and self.sigma_jitter:
            raise ValueError("--sigma-jitter applies to the mediapipe backend (the network predicts its sigma)")
        if self.iris_policy not in ("alternate", "both"):
            raise ValueError(f"iris_policy must be alternate or both, got {self.iris_policy!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.identity_stride < 1:
            raise ValueError(f"identity_stride must be >= 1, got {self.identity_stride}")
        if self.max_faces is not None and self.max_faces < 0:
            raise ValueError(f"--max-faces must be >= 0 (0: all faces), got {self.max_faces}")
        if self.sigma_jitter < 0:
            raise ValueError(f"--sigma-jitter must be >= 0, got {self.sigma_jitter}")
        if self.focal_px is not None and not (np.isfinite(self.focal_px) and self.focal_px > 0):
            raise ValueError(f"--focal must be a positive number of pixels, got {self.focal_px}")
        if self.temporal_weight is not None and not (np.isfinite(self.temporal_weight) and self.temporal_weight >= 0):
            raise ValueError(f"--temporal-weight must be >= 0, got {self.temporal_weight}")
        if self.overlay_style not in OVERLAY_STYLES:
            raise ValueError(f"--overlay-style must be one of {', '.join(OVERLAY_STYLES)}, got {self.overlay_style!r}")
        if self.gltf:
            from .exports import require_gltf
            require_gltf()
        self.config()           # ValueError on a bad --landmark-loss / --loss-scale

    def face_limit(self, video):
        """At most this many faces: ``max_faces``; 0 (and by default, None, in a video) every face,
        ``ALL_FACES`` at most (:mod:`lmfit3d.faces`); by default 10 in a photo.  1 in a video: the
        single-face tracking (one face at a time, whoever is largest)."""
        if self.max_faces is None:
            return ALL_FACES if video else 10
        return self.max_faces or ALL_FACES

    def config(self):
        """The fitter's settings: FitConfig defaults, with the temporal weight of video tracking
        unless given: 0 when the landmark tracks are smoothed (``smooth``: the zero-lag smoother
        gives the steadiness, and a pull towards the previous frame would damp every expression),
        else ``TRACK_TEMPORAL_WEIGHT``; the expression prior ``TRACK_EXPRESSION_WEIGHT`` with its
        antagonist pairs ``TRACK_ANTAGONIST_WEIGHT``; the gaze
        shapes held at 0 (``FitConfig.fit_gaze_shapes``; the outputs derive them from the eyes); the
        landmark loss as given (``--landmark-loss``, ``--loss-scale``)."""
        w = self.temporal_weight
        if w is None:
            w = 0.0 if (self.smooth and self.frame_noise) else TRACK_TEMPORAL_WEIGHT
        return FitConfig(w_temporal=w, w_expression=TRACK_EXPRESSION_WEIGHT, w_antagonist=TRACK_ANTAGONIST_WEIGHT,
                         fit_gaze_shapes=False, landmark_loss=self.landmark_loss, loss_scale=self.loss_scale)


@dataclass
class TrackSummary(RunSummary):
    """What :func:`track_video` did: frame counts (``outputs.RunSummary``) and timings (seconds)."""
    path: str
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    truncated: bool = False
    expected_frames: int = None
    faces: int = 1
    face_frames: list = field(default_factory=list)
    any_face: int = 0


def track_video(path, out_dir, options=None, model=None, predictor=None, keep=(), *, context=None):
    """Track one video; writes NAME.csv, NAME_arkit.csv, NAME.npz (+ meshes, overlay).

    Parameters
    ----------
    path : str or Path of a video file, or a frame source (:class:`VideoReader`, :class:`FrameList`).
    out_dir : existing writable folder.
    options : TrackOptions
    model : FaceModel (default: the cached model).
    predictor : MediaPipeLandmarks (default: built from ``options``); reset before the first frame, so
        another video's may be re-used.
    keep : paths never removed as stale members of an earlier run's output set (the inputs).
    context : :class:`~lmfit3d.context.FitContext` of the model, the predictor's landmarks and the
        options' sparsity threshold, to re-use (another video's); None builds one.  Both passes and
        every face of the video use the one context.

    Every face is tracked (by default; at most ``options.max_faces``; :mod:`lmfit3d.faces`): face 0,
    the main face, writes NAME.csv, NAME_arkit.csv, NAME.npz (and NAME_meshes/), every other face K
    the same files as NAME_faceK.csv, NAME_faceK_arkit.csv, NAME_faceK.npz (NAME_faceK_meshes/); with
    more than one face, NAME_faces.csv holds one row per face per frame it was fitted (``face_id``,
    then the NAME.csv columns) and the overlay draws every face with its id.  A video of one face
    writes the files of face 0 alone.  ``max_faces`` 1: the single-face tracking (one face followed
    at a time, whoever it is).

    Every output is written into a private temporary folder in ``out_dir`` and moved into place as
    one set when complete (:func:`lmfit3d.paths.commit_outputs`): a rerun replaces the whole set
    (:func:`lmfit3d.outputs.track_output_names`; members it does not write are removed); a failed
    or interrupted run leaves nothing behind.

    Returns
    -------
    TrackSummary
    """
    opt = options or TrackOptions()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    reader = path if hasattr(path, "fps") else VideoReader(path)
    name = reader.name
    mp = predictor or make_predictor(opt)
    mp.reset()                                  # a predictor handed in may have followed another video
    summary = TrackSummary(str(getattr(reader, "path", name)))
    tm = {"decode": 0.0, "detect": 0.0, "landmarks": 0.0, "fit": 0.0, "write": 0.0}
    mp.timings = {"detect": 0.0, "landmarks": 0.0}
    if context is None:
        context = FitContext(model, mp.vertex_ids, opt.config().sparsity_threshold_mm)
    stores = []
    work = None
    try:
        with work_dir(out_dir, name) as work:
            sheet = ContactFrames() if opt.report else None
            if opt.face_limit(True) == 1:
                store = LandmarkStore(work / "landmarks.npy", reader.n_frames_hint or 1024, mp.vertex_ids.size)
                stores.append(store)
                n, image_size, tracker = _first_pass(reader, store, mp, model, opt, tm, sheet, context=context)
                faces = [(store.arr, tracker.identity.copy(), tracker.focal, ())]
            else:
                n, image_size, faces = _first_pass_faces(reader, mp, model, opt, tm, sheet, work, stores,
                                                         context=context)
            _check_decoded(reader, n, opt, summary)
            # ---- pass 2: track with identity and focal held; stream outputs
            summary.frames = n
            summary.faces = len(faces)
            outs = _Outputs(out_dir, name, model, reader.fps, opt, work, keep=keep, n_faces=len(faces))
            try:
                npzs = _second_pass(faces, n, model, mp.vertex_ids, image_size, opt, outs, summary, tm, reader,
                                    context=context)
                write_extras(outs, model, opt, npzs[0], sheet, tm)
                outs.commit(npzs)
            except BaseException:
                outs.abort()
                raise
            finally:
                for st in stores:
                    st.close()
                faces = None
            summary.outputs = [str(p) for p in outs.final]
    except OSError as exc:
        # a failed write of an open or temporary file (a full disk): name the output folder and input
        if exc.filename is None or (work is not None and str(exc.filename).startswith(str(work))):
            raise OSError(exc.errno, f"{exc.strerror or exc} (writing the outputs of {summary.path})",
                          str(out_dir)) from None
        raise
    finally:
        for st in stores:
            st.close()
    summary.timings = tm
    return summary


def _frames(reader, opt, tm, label):
    """(index, frame) of the decoded frames up to ``opt.max_frames``, decode time into ``tm``, with the
    progress bar of pass 1; ValueError for a video without frames."""
    pbar = _progress(opt.progress, reader.n_frames_hint, f"{reader.name} {label}")
    n = 0
    t_dec = time.perf_counter()
    for frame in reader:
        tm["decode"] += time.perf_counter() - t_dec
        if opt.max_frames is not None and n >= opt.max_frames:
            break
        yield n, frame
        n += 1
        if pbar is not None:
            pbar.update(1)
        t_dec = time.perf_counter()
    if pbar is not None:
        pbar.close()
    if n == 0:
        raise ValueError(f"{getattr(reader, 'path', reader.name)}: video has no frames")


def _first_pass(reader, store, mp, model, opt, tm, sheet=None, *, context):
    """Pass 1: landmarks of every decoded frame into ``store`` (disk-backed, flat memory), the
    real-time tracker fitting identity and focal length on keyframes along the way (and the report's
    contact-sheet frames offered to ``sheet``).  Returns the frame count, the image size and the tracker."""
    cfg = opt.config()
    vids = mp.vertex_ids
    L = vids.size
    image_size = None
    tracker = None
    n = 0
    prev_c = None
    for n, frame in _frames(reader, opt, tm, "landmarks"):
        if image_size is None:
            image_size = (frame.shape[1], frame.shape[0])
            tracker = Tracker(model, vids, image_size, opt.focal_px, cfg, context=context)
        pred = mp.track(frame)
        rec = np.full((L, 6), np.nan, np.float32)
        if pred is not None:
            rec[:, 0:2] = pred.mu
            rec[:, 2] = pred.sigma
            rec[:, 3] = pred.presence
            prev_c, cut = is_cut(pred.mu, prev_c, opt.cut_threshold)
            if cut:
                tracker.reset()                 # scene cut: no warm start, no temporal term
            # identity pass: every ``identity_stride``-th frame, until the keyframe set is full
            if n % opt.identity_stride == 0 and len(tracker.keyframes) < cfg.max_keyframes:
                t = time.perf_counter()
                tracker.step(pred.mu, pred.sigma)
                tm["fit"] += time.perf_counter() - t
        else:
            prev_c = None
            tracker.reset()
        store.put(n, rec)
        if sheet is not None:
            sheet.offer(n, frame, None if pred is None else pred.mu)
    n += 1
    store.arr.flush()
    tm["detect"], tm["landmarks"] = mp.timings["detect"], mp.timings["landmarks"]
    return n, image_size, tracker


def _check_decoded(reader, n, opt, summary):
    """A truncated or damaged file: a warning (``summary.warnings``) and ``summary.truncated``, when
    ffmpeg met bad data or decoded clearly fewer frames than the container announces."""
    summary.expected_frames = getattr(reader, "n_frames_hint", None)
    if opt.max_frames is not None and n >= opt.max_frames:
        return
    problem = getattr(reader, "problem", None)
    expected = summary.expected_frames
    if problem or (expected and n < 0.9 * expected - 1):
        summary.truncated = True
        summary.warnings.append(f"{summary.path}: only {n} of about {expected} frames could be decoded; the file "
                                f"looks truncated or damaged" + (f" ({problem})" if problem else ""))


def _first_pass_faces(reader, mp, model, opt, tm, sheet, work, stores, *, context):
    """Pass 1 for every face (:class:`lmfit3d.faces.FaceFollower`): landmarks of each face track into
    its slot's store (appended to ``stores``), an identity tracker per track; then the tracks linked
    into faces (:func:`lmfit3d.faces.assign_faces`).  Returns the frame count, the image size and per
    face (landmark array (F, L, 6), identity, focal, first frames of its tracks); face 0 first."""
    cfg = opt.config()
    vids = mp.vertex_ids
    cap = reader.n_frames_hint or 1024
    proto = []

    def new_tracker():
        return proto[0].fresh()

    def new_store(slot, fill_to):
        st = LandmarkStore(work / f"landmarks{slot}.npy", cap, vids.size, fill_to)
        stores.append(st)
        return st

    follower = FaceFollower(mp, new_tracker, new_store, opt, tm)
    n, image_size = 0, None
    for n, frame in _frames(reader, opt, tm, "landmarks"):
        if image_size is None:
            image_size = (frame.shape[1], frame.shape[0])
            proto.append(Tracker(model, vids, image_size, opt.focal_px, cfg, context=context))
        found = follower.step(frame, n)
        if sheet is not None:
            sheet.offer(n, frame, found[0][1].mu if found else None)
    n += 1
    tm["detect"], tm["landmarks"] = mp.timings["detect"], mp.timings["landmarks"]
    t = time.perf_counter()
    fits = {"focal": fit_identities(follower.tracklets, opt.focal_px)}

    def fit_short(tracklet):            # a short tracklet a comparison needs (one focal for all)
        fits["focal"] = fit_identity(tracklet, fits["focal"])

    faces = assign_faces(follower.tracklets, lambda a, b: reid_score(model, vids, a, b, fit=fit_short),
                         opt.face_limit(True))
    focal = fits["focal"]
    out = []
    for j, face in enumerate(faces):
        identity, f = face_identity(face, proto[0], focal, cfg.max_keyframes)
        out.append((_face_array(follower, j, face, n, work, vids.size, stores), identity, f,
                    tuple(t.start for t in face)))
    if not out:                                          # no face anywhere: one face of empty rows
        empty = LandmarkStore(work / "landmarks.npy", n, vids.size, n)
        stores.append(empty)
        out.append((empty.arr, proto[0].identity.copy(), proto[0].focal, ()))
    tm["fit"] += time.perf_counter() - t
    for st in stores:
        st.arr.flush()
    return n, image_size, out


def _face_array(follower, j, face, n, work, n_landmarks, stores):
    """The landmark array (F, L, 6) of face j: its slot's store when the face is all that slot holds,
    else a new store with the face's tracks copied in (NaN elsewhere)."""
    slots = {t.slot for t in face}
    if len(slots) == 1:
        s = next(iter(slots))
        if all(t.face == j for t in follower.tracklets if t.slot == s) and follower.stores[s].arr.shape[0] >= n:
            return follower.stores[s].arr
    st = LandmarkStore(work / f"face{j}.npy", n, n_landmarks, n)
    stores.append(st)
    for t in face:
        src = follower.stores[t.slot].arr
        for a in range(t.start, t.end + 1, 256):
            b = min(t.end + 1, a + 256)
            st.arr[a:b] = src[a:b]
    return st.arr


class _FaceFit:
    """Pass 2 of one face: its shots, smoothed tracks, tracker (identity and focal held), rows and
    result arrays."""

    def __init__(self, arr, n, model, vids, image_size, focal, identity, opt, fps, tm, breaks=(), *, context):
        cfg = opt.config()
        self.arr, self.n, self.opt = arr, n, opt
        self.identity, self.focal = identity, focal
        self.tracker = Tracker(model, vids, image_size, focal, cfg, identity, context=context)
        self.rows = FrameRows(model, identity, focal, image_size, fps, derive_gaze=not cfg.fit_gaze_shapes)
        ne, nj = model.n_expression, model.n_joints
        self.res = dict(expression=np.full((n, ne), np.nan), rotations=np.full((n, nj, 3), np.nan),
                        translation=np.full((n, 3), np.nan), success=np.zeros(n, bool), confidence=np.zeros(n),
                        cost=np.full(n, np.nan), iterations=np.zeros(n, np.int64), status=np.full(n, -2, np.int64),
                        landmarks68=np.full((n, 68, 2), np.nan), landmarks68_3d=np.full((n, 68, 3), np.nan),
                        fit_rms_px=np.full(n, np.nan))
        # shots (cuts, frames without the face, the starts of its tracks) once, from the stored
        # landmarks (a view of the disk-backed array: memory stays flat); the tracker starts afresh at each
        t = time.perf_counter()
        mu_all = arr[:n, :, 0:2]
        self.seg = shot_segments(mu_all, opt.cut_threshold, breaks)
        self.noise = frame_noise_variance(mu_all, self.seg) if opt.frame_noise else np.zeros(n)
        self.smooth = None
        if opt.smooth and opt.frame_noise:
            path = getattr(arr, "filename", None)
            store = _memmap(str(path) + ".smooth.npy", (n, arr.shape[1], 3)) if path else None
            self.smooth = smooth_shots(arr, n, self.seg, self.noise, out=store)
        tm["fit"] += time.perf_counter() - t

    def fit(self, f):
        """(fit or None, mu (L, 2), presence) of frame f; (None, None, nan) where the face is absent."""
        seg, tracker = self.seg, self.tracker
        if seg[f] < 0:                          # not this face's frame: nothing to read
            tracker.reset()
            return None, None, np.nan
        rec = np.asarray(self.arr[f], dtype=np.float64)
        mu, sigma, presence = rec[:, 0:2], rec[:, 2], rec[:, 3]
        if f == 0 or seg[f - 1] != seg[f]:
            tracker.reset()
        sigma = np.where(np.isfinite(sigma), sigma, 1.0)
        if self.smooth is not None:             # smoothed tracks, sigma widened by their variance
            sm = np.asarray(self.smooth[f], dtype=np.float64)
            return tracker.step(sm[:, 0:2], np.sqrt(sigma * sigma + sm[:, 2])), mu, presence[0]
        noise = self.noise[f]
        return tracker.step(mu, np.sqrt(sigma * sigma + noise) if noise > 0 else sigma), mu, presence[0]

    def record(self, f, fit, vals):
        res, p = self.res, fit.params
        res["expression"][f], res["rotations"][f], res["translation"][f] = p.expression, p.rotations, p.translation
        res["cost"][f], res["iterations"][f], res["status"][f] = fit.cost, fit.iterations, fit.status
        res["success"][f] = True
        for k, v in vals.items():
            res[k][f] = v
        self.arr[f, :, 4:6] = fit.uv

    def close(self):
        if self.smooth is not None and getattr(self.smooth, "filename", None):
            name = self.smooth.filename
            self.smooth = None
            os.unlink(name)

    def npz(self, model, vids, image_size, fps, summary, face_id, n_faces):
        res, arr, n = self.res, self.arr, self.n
        return dict(identity=self.identity, focal_px=np.array(self.focal), image_size=np.array(image_size),
                    fps=np.array(fps), expression_names=np.array(model.expression_names),
                    joint_names=np.array(model.joint_names[1:]), root_rotation=res["rotations"][:, 0],
                    joint_rotations=res["rotations"][:, 1:], translation=res["translation"],
                    expression=res["expression"], success=res["success"], confidence=res["confidence"],
                    cost=res["cost"], iterations=res["iterations"], status=res["status"],
                    landmarks68=res["landmarks68"], landmarks68_3d=res["landmarks68_3d"],
                    fit_rms_px=res["fit_rms_px"], vertex_ids=np.asarray(vids),
                    mu=np.asarray(arr[:n, :, 0:2]), sigma=np.asarray(arr[:n, :, 2]),
                    frame_noise_px=np.sqrt(self.noise), landmarks_fitted=np.asarray(arr[:n, :, 4:6]),
                    units=np.array("mm"), decoded_frames=np.array(n),
                    expected_frames=np.array(summary.expected_frames or -1), truncated=np.array(summary.truncated),
                    face_id=np.array(face_id), faces=np.array(n_faces))


def _fit_frames(fits, n, model, opt, outs, summary, tm, reader):
    """Pass 2's per-frame loop over every face: fit (smoothed tracks when given), write rows, meshes
    and the overlay (every face, with its id when there are several)."""
    frames = iter(reader) if opt.overlay else None
    overlay = _OverlayRenderer(model, opt.overlay_style) if opt.overlay else None
    pbar = _progress(opt.progress, n, f"{reader.name} fit")
    focal = fits[0].focal
    summary.face_frames = [0] * len(fits)
    for f in range(n):
        drawn = []
        anyone = False
        for k, ff in enumerate(fits):
            t = time.perf_counter()
            fit, mu, presence = ff.fit(f)
            tm["fit"] += time.perf_counter() - t
            t = time.perf_counter()
            row, ark, vals = ff.rows(f, fit, mu, presence)
            outs.write_frame(f, row, ark, k)
            if vals is not None:
                ff.record(f, fit, vals)
                summary.face_frames[k] += 1
                anyone = True
            # the full mesh, evaluated once for the mesh file and the overlay
            mesh_dir = outs.mesh_dirs[k] if outs.mesh_dirs else None
            want_mesh = vals is not None and mesh_dir is not None and f % opt.mesh_every == 0
            verts = evaluate_mesh(model, fit.params) if vals is not None and (want_mesh or frames is not None) else None
            if want_mesh:
                (write_obj if opt.mesh_format == "obj" else write_ply)(
                    mesh_dir / f"frame_{f:06d}.{opt.mesh_format}", verts, model.faces)
            if verts is not None and frames is not None:
                drawn.append((k, verts, mu, fit.uv))
            tm["write"] += time.perf_counter() - t
        summary.success += bool(fits[0].res["success"][f])
        summary.any_face += anyone
        if frames is not None:
            t = time.perf_counter()
            frame = next(frames, None)
            if frame is not None:
                for k, verts, mu, uv in drawn:
                    frame = overlay(frame, verts, focal, mu, uv)
                if len(fits) > 1:
                    for k, _, mu, _ in drawn:
                        frame = draw_label(frame, k, np.nanmin(mu[:, 0]), np.nanmin(mu[:, 1]) - 20)
                outs.writer.append_data(frame)
            tm["write"] += time.perf_counter() - t
        if pbar is not None:
            pbar.update(1)
    if pbar is not None:
        pbar.close()


def _second_pass(faces, n, model, vids, image_size, opt, outs, summary, tm, reader, *, context):
    """Pass 2 of every face (``faces``: (landmark array, identity, focal, track starts) each, face 0
    first); returns the NPZ dict of each face."""
    fits = []
    try:
        for arr, identity, focal, breaks in faces:
            fits.append(_FaceFit(arr, n, model, vids, image_size, focal, identity, opt, reader.fps, tm, breaks,
                                 context=context))
        _fit_frames(fits, n, model, opt, outs, summary, tm, reader)
        return [ff.npz(model, vids, image_size, reader.fps, summary, k, len(fits)) for k, ff in enumerate(fits)]
    finally:
        for ff in fits:
            ff.close()


# the options :func:`make_predictor` reads, and the only ones (a batch process keys its predictor on them)
PREDICTOR_FIELDS = ("backend", "roi_strategy", "fixed_sigma", "sigma_jitter", "iris", "iris_policy")


def make_predictor(opt):
    """The landmark backend named by ``opt.backend``: "mediapipe" (MediaPipe's detector, face mesh and
    iris networks with the learnt sigma table), "mediapipe-attention" (the same detector; MediaPipe's
    attention mesh in place of the face mesh and iris networks, its own table ``data/mediapipe_attention``) or "network" (lmfit3d's
    own probabilistic dense320 network, ``data/lmfit3d_dense320``; no iris network, no sigma jitter)."""
    o = SimpleNamespace(**{f: getattr(opt, f) for f in PREDICTOR_FIELDS})    # reads nothing else
    if o.backend == "network":
        return NetworkLandmarks(roi_strategy=o.roi_strategy, fixed_sigma=o.fixed_sigma)
    return MediaPipeLandmarks(roi_strategy=o.roi_strategy, sigma_jitter=o.sigma_jitter, iris=o.iris,
                              fixed_sigma=o.fixed_sigma, iris_policy=o.iris_policy,
                              attention=o.backend == "mediapipe-attention")


