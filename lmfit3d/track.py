"""Video and still-image tracking: ONNX landmarks -> real-time fitter -> per-frame outputs.

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

Pose columns (README "Conventions"): ``pose_T*`` is the root translation (model origin in camera
coordinates, mm); ``pose_R*`` the root rotation (axis-angle, radians, camera axes); ``head_R*`` the
head's global rotation root*neck*head (axis-angle); gaze angles are the yaw (about the head's y axis,
positive towards the subject's left) and pitch (about x, positive up) of each eye's forward axis in the
head frame, radians.  ARKit head/eye yaw, pitch, roll are in degrees as in Live Link Face.
"""
import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fit import FitConfig, Tracker
from .landmarks import load_landmark_set
from .paths import atomic_write
from .rotation import matrix_to_axis_angle, rodrigues
from .skinning import evaluate_mesh, pose, skin_mesh
from .temporal import is_cut, frame_noise_variance, shot_segments, smooth_shots

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Live Link Face CSV: the 52 ARKit blendshapes in its column order, then head and eye angles.
ARKIT_NAMES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose",
    "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight",
    "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft",
    "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft",
    "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft",
    "NoseSneerRight", "TongueOut",
)
ARKIT_POSE = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
              "RightEyeYaw", "RightEyePitch", "RightEyeRoll")


def arkit_mapping(expression_names):
    """(52, E) matrix mapping ICT weights to ARKit weights.

    ICT's ``xxx_L`` / ``xxx_R`` are the subject's left / right, as ARKit's ``XxxLeft`` / ``XxxRight``.
    ARKit's unsided BrowInnerUp and CheekPuff are the mean of ICT's two sides; TongueOut has no ICT
    shape and stays 0.
    """
    idx = {n: i for i, n in enumerate(expression_names)}
    mat = np.zeros((len(ARKIT_NAMES), len(expression_names)))
    for a, name in enumerate(ARKIT_NAMES):
        base = name[0].lower() + name[1:]
        if base.endswith("Left") and base[:-4] + "_L" in idx:
            mat[a, idx[base[:-4] + "_L"]] = 1.0
        elif base.endswith("Right") and base[:-5] + "_R" in idx:
            mat[a, idx[base[:-5] + "_R"]] = 1.0
        elif base in idx:
            mat[a, idx[base]] = 1.0
        elif base + "_L" in idx:
            mat[a, idx[base + "_L"]] = mat[a, idx[base + "_R"]] = 0.5
    return mat


def yaw_pitch_roll(r):
    """Yaw (about y), pitch (about x), roll (about z) in radians of a rotation matrix, R = Ry Rx Rz."""
    pitch = np.arcsin(np.clip(-r[1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[0, 2], r[2, 2])
    roll = np.arctan2(r[1, 0], r[1, 1])
    return yaw, pitch, roll


TRACK_TEMPORAL_WEIGHT = 0.1
# expression prior of landmark-network tracking: the networks' systematic errors otherwise show as
# constant spurious weights (renders, bench/dynamics_eval.py: MAE over 53 shapes 0.107 at 1, 0.086
# at 3; the shared clips' range ratios change by <= 0.06)
TRACK_EXPRESSION_WEIGHT = 3.0
BACKENDS = ("mediapipe", "network")


@dataclass(frozen=True)
class TrackOptions:
    """Options of :func:`track_video` / :func:`fit_images` (CLI flags of ``lmfit3d track``)."""
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
    max_frames: int = None
    cut_threshold: float = 0.35
    identity_stride: int = 2
    max_faces: int = 10
    frame_noise: bool = True
    smooth: bool = True
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
        if self.identity_stride < 1:
            raise ValueError(f"identity_stride must be >= 1, got {self.identity_stride}")
        if self.max_faces < 1:
            raise ValueError(f"--max-faces must be >= 1, got {self.max_faces}")
        if self.sigma_jitter < 0:
            raise ValueError(f"--sigma-jitter must be >= 0, got {self.sigma_jitter}")
        if self.focal_px is not None and not (np.isfinite(self.focal_px) and self.focal_px > 0):
            raise ValueError(f"--focal must be a positive number of pixels, got {self.focal_px}")
        if self.temporal_weight is not None and not (np.isfinite(self.temporal_weight) and self.temporal_weight >= 0):
            raise ValueError(f"--temporal-weight must be >= 0, got {self.temporal_weight}")

    def config(self):
        """The fitter's settings: FitConfig defaults, with the temporal weight of video tracking
        unless given: 0 when the landmark tracks are smoothed (``smooth``: the zero-lag smoother
        gives the steadiness, and a pull towards the previous frame would damp every expression),
        else ``TRACK_TEMPORAL_WEIGHT``; the expression prior ``TRACK_EXPRESSION_WEIGHT``; the gaze
        shapes held at 0 (``FitConfig.fit_gaze_shapes``; the outputs derive them from the eyes)."""
        w = self.temporal_weight
        if w is None:
            w = 0.0 if (self.smooth and self.frame_noise) else TRACK_TEMPORAL_WEIGHT
        return FitConfig(w_temporal=w, w_expression=TRACK_EXPRESSION_WEIGHT, fit_gaze_shapes=False)


@dataclass
class TrackSummary:
    """What :func:`track_video` did: frame counts and timings (seconds)."""
    path: str
    frames: int = 0
    success: int = 0
    outputs: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def success_rate(self):
        return self.success / self.frames if self.frames else 0.0


class VideoReader:
    """Frames of a video file, streamed with imageio (ffmpeg) one at a time.

    Each iteration opens the file anew (the overlay pass reads it a second time).  Attributes:
    ``name`` (file stem), ``fps``, ``n_frames_hint`` (from the container; may be None or off).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.name = self.path.stem
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file not found")
        if self.path.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"{self.path}: an image, not a video (use `lmfit3d fit` for photos)")
        if self.path.stat().st_size == 0:
            raise ValueError(f"{self.path}: cannot open as a video (empty file)")
        reader = self._open()
        try:
            meta = reader.get_meta_data()
        finally:
            reader.close()
        self.fps = float(meta.get("fps") or 25.0)
        n = meta.get("nframes", float("inf"))
        self.n_frames_hint = int(n) if np.isfinite(n) else None
        if self.n_frames_hint is None and meta.get("duration"):
            self.n_frames_hint = int(round(float(meta["duration"]) * self.fps))

    def _open(self):
        import imageio.v2 as imageio
        try:
            return imageio.get_reader(str(self.path), format="FFMPEG")
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot open as a video ({_short(exc)})") from None

    def __iter__(self):
        reader = self._open()
        try:
            for frame in reader:
                if frame.ndim == 2:
                    frame = np.repeat(frame[:, :, None], 3, axis=2)
                yield np.ascontiguousarray(frame[:, :, :3])
        except (IndexError, StopIteration):
            return
        except Exception as exc:
            raise ValueError(f"{self.path}: cannot decode video ({_short(exc)})") from None
        finally:
            reader.close()


class FrameList:
    """Decoded frames held in memory, with the interface of :class:`VideoReader` (benchmarks, tests)."""

    def __init__(self, frames, fps=25.0, name="frames"):
        self.frames = list(frames)
        self.fps = float(fps)
        self.name = name
        self.n_frames_hint = len(self.frames)

    def __iter__(self):
        return iter(self.frames)


def _short(exc):
    s = " ".join(str(exc).split())
    return s[:200] if s else type(exc).__name__


def read_image(path):
    """(H, W, 3) uint8 RGB of an image file; ValueError with the file name when unreadable."""
    import imageio.v2 as imageio
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        raise ValueError(f"{path}: a video, not an image (use `lmfit3d track` for videos)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read as an image (empty file)")
    try:
        img = np.asarray(imageio.imread(str(path)))
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as an image ({_short(exc)})") from None
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"{path}: unsupported image shape {img.shape}")
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / max(float(img.max()), 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


class PointEvaluator:
    """Posed positions of a few chosen vertices for a fixed identity (68 output points, gaze)."""

    def __init__(self, model, vertex_ids, identity):
        ids = np.asarray(vertex_ids, dtype=np.int64)
        self.model = model
        self.ids = ids
        self.identity = np.asarray(identity, dtype=np.float64)
        self.t_beta = model.vertices[ids].astype(np.float64) + model.identity_basis[ids].astype(np.float64) @ self.identity
        self.eb = model.expression_basis[ids].astype(np.float64)
        self.w = np.ascontiguousarray(model.skin_weights[ids], dtype=np.float64)
        self.out = np.empty((ids.size, 3))

    def __call__(self, params):
        st = pose(self.model, params)
        t = np.ascontiguousarray(self.t_beta + self.eb @ params.expression)
        skin_mesh(t, self.w, st.r0, st.translation, st.rg, st.tg, self.out)
        return self.out.copy(), st


def _global_rotations(model, rotations):
    """Global rotation matrices (J, 3, 3) of every joint from the local axis-angles (J, 3)."""
    g = np.empty((model.n_joints, 3, 3))
    for j, p in enumerate(model.joint_parents):
        r = rodrigues(rotations[j])
        g[j] = r if p < 0 else g[p] @ r
    return g


def gaze_angles(model, rotations):
    """Per-eye (yaw, pitch) radians in the head frame, eyes in order (subject's left, right)."""
    out = np.empty((2, 2))
    for e, j in enumerate((3, 4)):
        d = rodrigues(rotations[j])[:, 2]          # forward axis of the eye in its parent (head) frame
        out[e] = np.arctan2(d[0], d[2]), np.arctan2(d[1], np.hypot(d[0], d[2]))
    return out


GAZE_FULL_DEG = 30.0    # eye rotation (degrees) at which a derived eyeLook* weight reaches 1


def gaze_blendshapes(model, rotations, full_deg=GAZE_FULL_DEG):
    """eyeLook* weights (E,) from the eye joints (zero elsewhere), ARKit's meaning: per eye, Up/Down
    from the pitch, In (towards the nose) / Out from the yaw, 1 at ``full_deg`` degrees.

    For when the fit holds the eyeLook* shapes at 0 (``FitConfig.fit_gaze_shapes``): the gaze
    lives in the eye joints, and the outputs still carry ARKit's eyeLook* curves.
    """
    names = list(model.expression_names)
    out = np.zeros(len(names))
    gz = gaze_angles(model, rotations) / np.radians(full_deg)      # (left, right) x (yaw, pitch)
    for e, side in enumerate(("_L", "_R")):
        yaw, pitch = gz[e]
        inward = -yaw if side == "_L" else yaw       # yaw > 0 turns towards the subject's left
        for shape, w in (("eyeLookUp", pitch), ("eyeLookDown", -pitch), ("eyeLookIn", inward),
                         ("eyeLookOut", -inward)):
            if shape + side in names:
                out[names.index(shape + side)] = min(max(w, 0.0), 1.0)
    return out


def csv_header(expression_names):
    cols = ["frame", "timestamp_s", "success", "confidence", "pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx",
            "pose_Ry", "pose_Rz", "head_Rx", "head_Ry", "head_Rz", "gaze_angle_x", "gaze_angle_y",
            "gaze_L_yaw", "gaze_L_pitch", "gaze_R_yaw", "gaze_R_pitch", "focal_px", "fit_rms_px"]
    cols += list(expression_names)
    cols += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    return cols


def _timecode(t, fps):
    h, rem = divmod(t, 3600.0)
    m, s = divmod(rem, 60.0)
    fr = int((s - int(s)) * fps + 1e-6)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d}:{fr:02d}.{int(round((t % 1) * 1000)) % 1000:03d}"


class _Outputs:
    """Streaming writers of one video's outputs; temporary files renamed on :meth:`commit`."""

    def __init__(self, out_dir, name, model, fps, options):
        self.out_dir = Path(out_dir)
        self.name = name
        self.fps = fps
        self.model = model
        self.opt = options
        self._tmp = []
        self.final = []
        self.csv_f = self._open(f"{name}.csv")
        self.csv = csv.writer(self.csv_f)
        self.csv.writerow(csv_header(model.expression_names))
        self.ark_f = self._open(f"{name}_arkit.csv")
        self.ark = csv.writer(self.ark_f)
        self.ark.writerow(["Timecode", "BlendShapeCount"] + list(ARKIT_NAMES) + list(ARKIT_POSE))
        self.writer = None
        if options.overlay:
            import imageio.v2 as imageio
            path = self.out_dir / f".{name}_overlay.part.mp4"
            self._tmp.append((path, self.out_dir / f"{name}_overlay.mp4"))
            self.writer = imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264",
                                             quality=7, macro_block_size=1, ffmpeg_log_level="error")
        self.mesh_dir = None
        if options.mesh_every:
            self.mesh_dir = self.out_dir / f"{name}_meshes"
            self.mesh_dir.mkdir(exist_ok=True)

    def _open(self, fname):
        path = self.out_dir / f".{fname}.part"
        self._tmp.append((path, self.out_dir / fname))
        return open(path, "w", newline="")

    def write_frame(self, f, row, arkit_row):
        """Append frame f's rows to NAME.csv and NAME_arkit.csv."""
        self.csv.writerow(row)
        self.ark.writerow(arkit_row)

    def commit(self, npz=None):
        """Close the streams, write NAME.npz (unless ``npz`` is None) and rename every output."""
        self.csv_f.close()
        self.ark_f.close()
        if self.writer is not None:
            self.writer.close()
        if npz is not None:
            with atomic_write(self.out_dir / f"{self.name}.npz", "wb") as fh:
                np.savez(fh, **npz)
            self.final.append(self.out_dir / f"{self.name}.npz")
        for tmp, final in self._tmp:
            os.replace(tmp, final)
            self.final.append(final)

    def abort(self):
        for fh in (self.csv_f, self.ark_f):
            try:
                fh.close()
            except Exception:
                pass
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        for tmp, _ in self._tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _format(*arrays):
    """CSV fields ('%.6g'; empty for NaN/inf) of the values of one or more arrays, in order."""
    vals = np.concatenate([np.ravel(a) for a in arrays]).tolist()
    return ["" if (v != v or v in (_INF, -_INF)) else f"{v:.6g}" for v in vals]


_INF = float("inf")


def track_video(path, out_dir, options=None, model=None, predictor=None):
    """Track one video; writes NAME.csv, NAME_arkit.csv, NAME.npz (+ meshes, overlay).

    Parameters
    ----------
    path : str or Path of a video file, or a frame source (:class:`VideoReader`, :class:`FrameList`).
    out_dir : existing writable folder.
    options : TrackOptions
    model : FaceModel (default: the cached model).
    predictor : MediaPipeLandmarks (default: built from ``options``).

    Returns
    -------
    TrackSummary
    """
    from .model import load_model
    opt = options or TrackOptions()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = model or load_model()
    reader = path if hasattr(path, "fps") else VideoReader(path)
    name = reader.name
    mp = predictor or make_predictor(opt)
    vids = mp.vertex_ids
    L = vids.size
    summary = TrackSummary(str(getattr(reader, "path", name)))
    tm = {"decode": 0.0, "detect": 0.0, "landmarks": 0.0, "fit": 0.0, "write": 0.0}
    mp.timings = {"detect": 0.0, "landmarks": 0.0}
    cfg = opt.config()
    # ---- pass 1: landmarks (disk-backed, flat memory) + identity/focal from keyframes
    store = out_dir / f".{name}.landmarks.part.npy"
    cap = reader.n_frames_hint or 1024
    arr = np.lib.format.open_memmap(store, mode="w+", dtype=np.float32, shape=(cap, L, 6))   # mu, sigma, presence, fitted uv
    image_size = None
    tracker = None
    n = 0
    prev_c = None
    pbar = _progress(opt.progress, reader.n_frames_hint, f"{name} landmarks")
    try:
        t_dec = time.perf_counter()
        for frame in reader:
            tm["decode"] += time.perf_counter() - t_dec
            if opt.max_frames is not None and n >= opt.max_frames:
                break
            if image_size is None:
                image_size = (frame.shape[1], frame.shape[0])
                tracker = Tracker(model, vids, image_size, opt.focal_px, cfg)
            if n >= arr.shape[0]:
                arr.flush()
                del arr
                arr = _grow(store, n, L)
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
            arr[n] = rec
            n += 1
            if pbar is not None:
                pbar.update(1)
            t_dec = time.perf_counter()
        if n == 0:
            raise ValueError(f"{getattr(reader, 'path', name)}: video has no frames")
        arr.flush()
        tm["detect"], tm["landmarks"] = mp.timings["detect"], mp.timings["landmarks"]
        if pbar is not None:
            pbar.close()
        identity = tracker.identity.copy()
        focal = tracker.focal
        # ---- pass 2: track with identity and focal held; stream outputs
        summary.frames = n
        outs = _Outputs(out_dir, name, model, reader.fps, opt)
        try:
            _second_pass(arr, n, model, vids, image_size, focal, identity, cfg, opt, outs, summary, tm,
                         reader)
        except BaseException:
            outs.abort()
            raise
        summary.outputs = [str(p) for p in outs.final]
    finally:
        del arr
        try:
            os.unlink(store)
        except OSError:
            pass
    summary.timings = tm
    return summary


def _grow(store, n, L):
    old = np.load(store, mmap_mode="r")
    tmp = store.with_suffix(".grow.npy")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(max(2 * n, 64), L, 6))
    new[:n] = old[:n]
    new.flush()
    del old, new
    os.replace(tmp, store)
    return np.lib.format.open_memmap(store, mode="r+")


def _progress(enabled, total, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)


class FrameRows:
    """Builds one frame's ``NAME.csv`` and ``NAME_arkit.csv`` rows from a fit (see the module docstring).

    Calling it with ``(f, fit, mu, presence)`` returns ``(row, arkit_row, values)``; ``values`` holds
    the 68 fitted points, the RMS reprojection error (pixels) and the confidence, or is None for a
    frame without a fit (a row with success=0 and empty fields).
    """

    def __init__(self, model, identity, focal, image_size, fps, derive_gaze=False):
        from .camera import Camera
        from .fit import GAZE_SHAPES
        self.model = model
        # eyeLook* columns from the eye joints (the fit held those shapes at 0)
        self.gaze_ids = ([i for i, n in enumerate(model.expression_names) if n in GAZE_SHAPES]
                         if derive_gaze else [])
        self.ibug = PointEvaluator(model, load_landmark_set("ibug68"), identity)
        self.cam = Camera(focal, *image_size)
        self.focal = focal
        self.fps = fps
        self.ark_map = arkit_mapping(model.expression_names)
        self.n_cols = len(csv_header(model.expression_names))

    def __call__(self, f, fit, mu, presence):
        ts = f / self.fps
        ok = fit is not None and fit.status >= 0
        row = [f, f"{ts:.4f}", int(ok)]
        ark = [_timecode(ts, self.fps), len(ARKIT_NAMES) + len(ARKIT_POSE)]
        if not ok:
            row += ["0"] + [""] * (self.n_cols - 4)
            ark += ["0"] * len(ARKIT_NAMES) + [""] * len(ARKIT_POSE)
            return row, ark, None
        p = fit.params
        uv68 = self.cam.project(self.ibug(p)[0])
        rms = float(np.sqrt(np.nanmean(np.sum((fit.uv - mu) ** 2, 1))))
        g = _global_rotations(self.model, p.rotations)
        gz = gaze_angles(self.model, p.rotations)
        conf = float(presence) if np.isfinite(presence) else 0.0
        expr = p.expression
        if self.gaze_ids:
            expr = expr.copy()
            expr[self.gaze_ids] = gaze_blendshapes(self.model, p.rotations)[self.gaze_ids]
        row += [f"{conf:.4f}"] + _format(p.translation, p.rotations[0], matrix_to_axis_angle(g[2]), gz.mean(0),
                                          gz, [self.focal, rms], expr, uv68[:, 0], uv68[:, 1])
        # ARKit (degrees): head yaw/pitch/roll of the head's global rotation in camera axes; eyes in the head
        angles = [yaw_pitch_roll(g[2])] + [yaw_pitch_roll(rodrigues(p.rotations[j])) for j in (3, 4)]
        ark += [f"{v:.4f}" for v in self.ark_map @ expr]
        ark += [f"{np.degrees(v):.4f}" for trio in angles for v in trio]
        return row, ark, dict(landmarks68=uv68, fit_rms_px=rms, confidence=conf)


def _fit_frames(arr, n, seg, noise, smooth, model, focal, tracker, rows, res, opt, outs, summary, tm, reader):
    """Pass 2's per-frame loop: fit (smoothed tracks when given), write rows, meshes and overlay."""
    frames = iter(reader) if opt.overlay else None
    overlay = _OverlayRenderer(model) if opt.overlay else None
    pbar = _progress(opt.progress, n, f"{reader.name} fit")
    for f in range(n):
        rec = np.asarray(arr[f], dtype=np.float64)
        mu, sigma, presence = rec[:, 0:2], rec[:, 2], rec[:, 3]
        fit = None
        t = time.perf_counter()
        if seg[f] >= 0:
            if f == 0 or seg[f - 1] != seg[f]:
                tracker.reset()
            sigma = np.where(np.isfinite(sigma), sigma, 1.0)
            if smooth is not None:              # smoothed tracks, sigma widened by their variance
                sm = np.asarray(smooth[f], dtype=np.float64)
                fit = tracker.step(sm[:, 0:2], np.sqrt(sigma * sigma + sm[:, 2]))
            else:
                fit = tracker.step(mu, np.sqrt(sigma * sigma + noise[f]) if noise[f] > 0 else sigma)
        else:
            tracker.reset()
        tm["fit"] += time.perf_counter() - t
        t = time.perf_counter()
        row, ark, vals = rows(f, fit, mu, presence[0])
        outs.write_frame(f, row, ark)
        if vals is not None:
            p = fit.params
            res["expression"][f], res["rotations"][f], res["translation"][f] = p.expression, p.rotations, p.translation
            res["cost"][f], res["iterations"][f], res["status"][f] = fit.cost, fit.iterations, fit.status
            res["success"][f] = True
            for k, v in vals.items():
                res[k][f] = v
            arr[f, :, 4:6] = fit.uv
            summary.success += 1
        # the full mesh, evaluated once for the mesh file and the overlay
        want_mesh = vals is not None and outs.mesh_dir is not None and f % opt.mesh_every == 0
        verts = evaluate_mesh(model, fit.params) if vals is not None and (want_mesh or frames is not None) else None
        if want_mesh:
            from .meshio import write_obj, write_ply
            (write_obj if opt.mesh_format == "obj" else write_ply)(
                outs.mesh_dir / f"frame_{f:06d}.{opt.mesh_format}", verts, model.faces)
        if frames is not None:
            frame = next(frames, None)
            if frame is not None:
                outs.writer.append_data(overlay(frame, verts, focal))
        tm["write"] += time.perf_counter() - t
        if pbar is not None:
            pbar.update(1)
    if pbar is not None:
        pbar.close()


def _second_pass(arr, n, model, vids, image_size, focal, identity, cfg, opt, outs, summary, tm, reader):
    tracker = Tracker(model, vids, image_size, focal, cfg, identity)
    rows = FrameRows(model, identity, focal, image_size, reader.fps, derive_gaze=not cfg.fit_gaze_shapes)
    ne, nj = model.n_expression, model.n_joints
    res = dict(expression=np.full((n, ne), np.nan), rotations=np.full((n, nj, 3), np.nan),
               translation=np.full((n, 3), np.nan), success=np.zeros(n, bool), confidence=np.zeros(n),
               cost=np.full(n, np.nan), iterations=np.zeros(n, np.int64), status=np.full(n, -2, np.int64),
               landmarks68=np.full((n, 68, 2), np.nan), fit_rms_px=np.full(n, np.nan))
    # shots (cuts, frames without a face) once, from the stored landmarks (a view of the disk-backed
    # array: memory stays flat); the tracker starts afresh at each shot
    t = time.perf_counter()
    mu_all = arr[:n, :, 0:2]
    seg = shot_segments(mu_all, opt.cut_threshold)
    noise = frame_noise_variance(mu_all, seg) if opt.frame_noise else np.zeros(n)
    smooth = None
    if opt.smooth and opt.frame_noise:
        path = getattr(arr, "filename", None)
        store = (np.lib.format.open_memmap(str(path) + ".smooth.npy", mode="w+", dtype=np.float32,
                                           shape=(n, arr.shape[1], 3)) if path else None)
        smooth = smooth_shots(arr, n, seg, noise, out=store)
    tm["fit"] += time.perf_counter() - t
    try:
        _fit_frames(arr, n, seg, noise, smooth, model, focal, tracker, rows, res, opt, outs, summary, tm, reader)
    finally:
        if smooth is not None and getattr(smooth, "filename", None):
            name = smooth.filename
            del smooth
            os.unlink(name)
    npz = dict(identity=identity, focal_px=np.array(focal), image_size=np.array(image_size),
               fps=np.array(reader.fps), expression_names=np.array(model.expression_names),
               joint_names=np.array(model.joint_names[1:]), root_rotation=res["rotations"][:, 0],
               joint_rotations=res["rotations"][:, 1:], translation=res["translation"],
               expression=res["expression"], success=res["success"], confidence=res["confidence"],
               cost=res["cost"], iterations=res["iterations"], status=res["status"],
               landmarks68=res["landmarks68"], fit_rms_px=res["fit_rms_px"], vertex_ids=np.asarray(vids),
               mu=np.asarray(arr[:n, :, 0:2]), sigma=np.asarray(arr[:n, :, 2]), frame_noise_px=np.sqrt(noise),
               landmarks_fitted=np.asarray(arr[:n, :, 4:6]), units=np.array("mm"))
    outs.commit(npz)


class _OverlayRenderer:
    """Draws the fitted mesh (semi-transparent, shaded) over a frame."""

    def __init__(self, model):
        from .render import model_albedo, visible_faces
        self.faces = visible_faces(model)
        self.albedo = model_albedo(model)

    def __call__(self, frame, v, focal):
        """The frame with the camera-space mesh v (V, 3) mm drawn over it (the frame itself when v is None)."""
        if v is None:
            return frame
        from .render import render, shade
        img, _, _ = render(v, self.faces, shade(v, self.faces, self.albedo), focal, frame.shape[1],
                           frame.shape[0], background=frame, alpha=0.55)
        return img


def _check_out_dir(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"{out_dir}: output folder is not writable")


def expand_inputs(paths, extensions):
    """Files from a list of files and folders (folders: their files with the given extensions, sorted)."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in extensions and q.is_file())
            if not found:
                raise ValueError(f"{p}: folder holds no file with extension {', '.join(extensions)}")
            out += found
        else:
            out.append(p)
    return out


def make_predictor(opt):
    """The landmark backend named by ``opt.backend``: "mediapipe" (MediaPipe's detector, face mesh and
    iris networks with the learnt sigma table) or "network" (lmfit3d's own probabilistic dense320
    network, ``data/lmfit3d_dense320``; no iris network, no sigma jitter)."""
    from .predict import MediaPipeLandmarks, NetworkLandmarks
    if opt.backend == "network":
        return NetworkLandmarks(roi_strategy=opt.roi_strategy, fixed_sigma=opt.fixed_sigma)
    return MediaPipeLandmarks(roi_strategy=opt.roi_strategy, sigma_jitter=opt.sigma_jitter, iris=opt.iris,
                              fixed_sigma=opt.fixed_sigma, iris_policy=opt.iris_policy)


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
    from .camera import Camera
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
    from .meshio import write_obj, write_ply
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
    from .model import load_model
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


def _run_one(kind, path, out_dir, options, model_path):
    """Worker body: one input, errors turned into a one-line message (picklable result)."""
    from .model import load_model
    try:
        model = load_model(model_path)
        if kind == "video":
            return str(path), track_video(path, out_dir, options, model), None
        return str(path), fit_image(path, out_dir, options, model), None
    except (ValueError, OSError) as exc:
        return str(path), None, " ".join(str(exc).split()) or type(exc).__name__


def run_many(kind, paths, out_dir, options, jobs=1, model_path=None, on_done=None):
    """Process many inputs (``kind`` "video" or "image"), ``jobs`` worker processes.

    One failing input is reported and the others finish.  Returns a list of (path, result, error)
    in input order; ``on_done(path, result, error)`` is called as each finishes.
    """
    from dataclasses import replace
    _check_out_dir(out_dir)
    if jobs <= 1 or len(paths) <= 1:
        out = []
        for p in paths:
            r = _run_one(kind, p, out_dir, options, model_path)
            if on_done:
                on_done(*r)
            out.append(r)
        return out
    import multiprocessing as mpc
    from concurrent.futures import ProcessPoolExecutor
    opt = replace(options, progress=False)
    results = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mpc.get_context("spawn")) as ex:
        futs = {ex.submit(_run_one, kind, p, out_dir, opt, model_path): str(p) for p in paths}
        from concurrent.futures import as_completed
        for fu in as_completed(futs):
            r = fu.result()
            results[futs[fu]] = r
            if on_done:
                on_done(*r)
    return [results[str(p)] for p in paths]


def landmarks_from_video(path, predictor, max_frames=None, progress=False):
    """Landmarks of every frame of a video (offline use: all frames held in memory).

    Returns mu (F, L, 2) and sigma (F, L) pixels (NaN where no face was found), presence (F,),
    image_size (width, height) and fps.
    """
    reader = path if hasattr(path, "fps") else VideoReader(path)
    predictor.reset()
    mus, sigmas, pres = [], [], []
    size = None
    pbar = _progress(progress, reader.n_frames_hint, f"{reader.name} landmarks")
    for frame in reader:
        if max_frames is not None and len(mus) >= max_frames:
            break
        size = (frame.shape[1], frame.shape[0])
        p = predictor.track(frame)
        n = predictor.vertex_ids.size
        mus.append(p.mu if p is not None else np.full((n, 2), np.nan))
        sigmas.append(p.sigma if p is not None else np.full(n, np.nan))
        pres.append(p.presence if p is not None else 0.0)
        if pbar is not None:
            pbar.update(1)
    if pbar is not None:
        pbar.close()
    if not mus:
        raise ValueError(f"{getattr(reader, 'path', reader.name)}: video has no frames")
    return np.stack(mus), np.stack(sigmas), np.array(pres), size, reader.fps
