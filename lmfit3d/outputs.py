"""Per-frame outputs of a fitted face: the ``NAME.csv`` and ``NAME_arkit.csv`` rows, their streaming
writers with ``NAME.npz``, meshes and the overlay video, and the overlay renderer.

:class:`FrameRows` turns one frame's fit into its rows; :class:`_Outputs` streams them to temporary
files and renames every output when complete (``lmfit3d track``, ``lmfit3d capture --videos``);
:func:`write_npz` writes an ``.npz`` atomically (``NAME.npz``, ``capture.npz``).

Pose columns (README "Conventions"): ``pose_T*`` is the root translation (model origin in camera
coordinates, mm); ``pose_R*`` the root rotation (axis-angle, radians, camera axes); ``head_R*`` the
head's global rotation root*neck*head (axis-angle); gaze angles are the yaw (about the head's y axis,
positive towards the subject's left) and pitch (about x, positive up) of each eye's forward axis in the
head frame, radians.  ARKit head/eye yaw, pitch, roll are in degrees as in Live Link Face.
"""
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .camera import Camera
from .problem import GAZE_SHAPES
from .landmarks import load_landmark_set
from .points68 import Points68
from .paths import atomic_write, commit_outputs, new_file
from .render import draw_points, draw_wireframe, model_albedo, quad_edges, render_over, shade, visible_faces
from .rotation import matrix_to_axis_angle, rodrigues

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
    cols += [f"{a}_{i}" for a in "XYZ" for i in range(68)]
    return cols


def _timecode(t, fps):
    h, rem = divmod(t, 3600.0)
    m, s = divmod(rem, 60.0)
    fr = int((s - int(s)) * fps + 1e-6)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d}:{fr:02d}.{int(round((t % 1) * 1000)) % 1000:03d}"


def track_output_names(name):
    """File and folder names of one tracked video's output set (``lmfit3d track``; the main face's
    and the set's own, :func:`face_output_names` for the other faces), and the regular expression
    matching every member, any face count (a rerun replaces the whole set)."""
    names = (f"{name}.csv", f"{name}_arkit.csv", f"{name}.npz", f"{name}_overlay.mp4", f"{name}_meshes",
             f"{name}.glb", f"{name}_report.html")
    faces = rf"{re.escape(name)}_faces\.csv|{re.escape(name)}_face\d+(\.csv|_arkit\.csv|\.npz|_meshes)"
    return names, "|".join(re.escape(n) for n in names) + "|" + faces


def face_output_names(name, k):
    """Output names of face k (>= 1) of a tracked video NAME: NAME_faceK.csv, NAME_faceK_arkit.csv,
    NAME_faceK.npz, NAME_faceK_meshes; and NAME_faces.csv (every face, one row per face per frame)."""
    stem = f"{name}_face{k}"
    return (f"{stem}.csv", f"{stem}_arkit.csv", f"{stem}.npz", f"{stem}_meshes", f"{name}_faces.csv")


@dataclass
class RunSummary:
    """The counts every run reports (``track.TrackSummary``, ``live.LiveSummary``): frames tracked, frames
    with a fit, the output files written."""
    frames: int = field(default=0, kw_only=True)
    success: int = field(default=0, kw_only=True)
    outputs: list = field(default_factory=list, kw_only=True)

    @property
    def success_rate(self):
        return self.success / self.frames if self.frames else 0.0


class _Outputs:
    """Streaming writers of one video's outputs, in the run's private folder ``work``
    (:func:`lmfit3d.paths.work_dir`); :meth:`commit` moves them into ``out_dir`` as one set.

    ``whole_set``: the set of :func:`track_output_names` is replaced as a whole (members this run does
    not write are removed, except the paths in ``keep``); otherwise only the written files.
    """

    def __init__(self, out_dir, name, model, fps, options, work, whole_set=True, keep=(), n_faces=1):
        self.out_dir = Path(out_dir)
        self.work = Path(work)
        self.name = name
        self.fps = fps
        self.model = model
        self.opt = options
        self.whole_set = whole_set
        self.keep = keep
        self._names = []
        self.final = []
        self._files = []
        header = csv_header(model.expression_names)
        ark_header = ["Timecode", "BlendShapeCount"] + list(ARKIT_NAMES) + list(ARKIT_POSE)
        self.streams = []           # per face: (NAME.csv writer, NAME_arkit.csv writer)
        for k in range(n_faces):
            stem = name if k == 0 else f"{name}_face{k}"
            c, a = csv.writer(self._open(f"{stem}.csv")), csv.writer(self._open(f"{stem}_arkit.csv"))
            c.writerow(header)
            a.writerow(ark_header)
            self.streams.append((c, a))
        self.csv, self.ark = self.streams[0]
        self.all_faces = None       # NAME_faces.csv: one row per fitted face per frame
        if n_faces > 1:
            self.all_faces = csv.writer(self._open(f"{name}_faces.csv"))
            self.all_faces.writerow(header[:1] + ["face_id"] + header[1:])
        self.writer = None
        if options.overlay:
            import imageio.v2 as imageio
            path = new_file(self.work / f"{name}_overlay.mp4")
            self._names.append(path.name)
            self.writer = imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264",
                                             quality=7, macro_block_size=1, ffmpeg_log_level="error")
        self.mesh_dirs = []
        if options.mesh_every:
            for k in range(n_faces):
                d = self.work / (f"{name}_meshes" if k == 0 else f"{name}_face{k}_meshes")
                d.mkdir()
                self._names.append(d.name)
                self.mesh_dirs.append(d)
        self.mesh_dir = self.mesh_dirs[0] if self.mesh_dirs else None

    def _open(self, fname):
        self._names.append(fname)
        fh = open(self.work / fname, "x", newline="")
        self._files.append(fh)
        return fh

    def add(self, fname):
        """Register a finished file ``fname`` written into ``work`` (moved into place by :meth:`commit`)."""
        if not (self.work / fname).is_file():
            raise ValueError(f"{self.work / fname}: no such output")
        self._names.append(fname)

    def write_frame(self, f, row, arkit_row, face=0):
        """Append frame f's rows of face ``face`` to its NAME.csv and NAME_arkit.csv (NAME_faceK.*),
        and a fitted face's row to NAME_faces.csv."""
        c, a = self.streams[face]
        c.writerow(row)
        a.writerow(arkit_row)
        if self.all_faces is not None and row[2] == 1:
            self.all_faces.writerow(row[:1] + [face] + row[1:])

    def commit(self, npz=None):
        """Close the streams, write NAME.npz (unless ``npz`` is None; a list: one dict per face, face
        K >= 1 as NAME_faceK.npz) and move every output into ``out_dir``
        (:func:`lmfit3d.paths.commit_outputs`)."""
        for fh in self._files:
            fh.close()
        if self.writer is not None:
            self.writer.close()
        if npz is not None:
            for k, d in enumerate(npz if isinstance(npz, list) else [npz]):
                fname = f"{self.name}.npz" if k == 0 else f"{self.name}_face{k}.npz"
                with open(self.work / fname, "xb") as fh:
                    np.savez(fh, **d)
                self._names.append(fname)
        stale = track_output_names(self.name)[1] if self.whole_set else None
        self.final = commit_outputs(self.out_dir, self.work, self._names, stale, self.keep)

    def abort(self):
        """Close the streams (the private folder and its files are removed by its owner)."""
        for fh in self._files:
            try:
                fh.close()
            except Exception:
                pass
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass


def fit_arrays(model, res):
    """The ``fit-landmarks`` .npz keys of a fit result (``fit.SequenceFit`` or ``capture.CaptureResult``):
    ``vertices`` (F, V, 3) float32 mm (NaN for frames with ``status`` < 0), ``identity``, ``expression``
    and ``expression_names``, ``root_rotation``, ``translation``, ``joint_rotations`` and ``joint_names``,
    ``focal_px``, ``cost``, ``iterations``, ``status``, ``landmarks_fitted``, ``vertex_ids``, ``units``."""
    nf = res.expression.shape[0]
    verts = np.stack([res.vertices(model, f).astype(np.float32) if res.status[f] >= 0
                      else np.full((model.n_vertices, 3), np.nan, np.float32) for f in range(nf)])
    return dict(vertices=verts, identity=res.identity, expression=res.expression,
                expression_names=np.array(res.expression_names), root_rotation=res.rotations[:, 0],
                translation=res.translation, joint_rotations=res.rotations[:, 1:],
                joint_names=np.array(model.joint_names[1:]), focal_px=res.focal, cost=res.cost,
                iterations=np.broadcast_to(res.iterations, (nf,)).copy(), status=res.status,
                landmarks_fitted=res.uv, vertex_ids=res.vertex_ids, units=np.array("mm"))


def write_npz(path, arrays):
    """Write the dict ``arrays`` to the .npz file ``path`` atomically (a temporary file renamed)."""
    with atomic_write(Path(path), "wb") as fh:
        np.savez(fh, **arrays)


def _format(*arrays):
    """CSV fields ('%.6g'; empty for NaN/inf) of the values of one or more arrays, in order."""
    vals = np.concatenate([np.ravel(a) for a in arrays]).tolist()
    return ["" if (v != v or v in (_INF, -_INF)) else f"{v:.6g}" for v in vals]


_INF = float("inf")


class FrameRows:
    """Builds one frame's ``NAME.csv`` and ``NAME_arkit.csv`` rows from a fit (see the module docstring).

    Calling it with ``(f, fit, mu, presence)`` returns ``(row, arkit_row, values)``; ``values`` holds
    the 68 fitted points, the RMS reprojection error (pixels) and the confidence, or is None for a
    frame without a fit (a row with success=0 and empty fields).
    """

    def __init__(self, model, identity, focal, image_size, fps, derive_gaze=False):
        self.model = model
        # eyeLook* columns from the eye joints (the fit held those shapes at 0)
        self.gaze_ids = ([i for i, n in enumerate(model.expression_names) if n in GAZE_SHAPES]
                         if derive_gaze else [])
        self.points68 = Points68(model, identity)
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
        uv68, xyz68 = self.points68(p, self.cam)
        rms = float(np.sqrt(np.nanmean(np.sum((fit.uv - mu) ** 2, 1))))
        gz = gaze_angles(self.model, p.rotations)
        conf = float(presence) if np.isfinite(presence) else 0.0
        expr, weights, angles, g = self.arkit_values(p)
        row += [f"{conf:.4f}"] + _format(p.translation, p.rotations[0], matrix_to_axis_angle(g[2]), gz.mean(0),
                                          gz, [self.focal, rms], expr, uv68[:, 0], uv68[:, 1], xyz68[:, 0],
                                          xyz68[:, 1], xyz68[:, 2])
        ark += [f"{v:.4f}" for v in weights] + [f"{v:.4f}" for v in angles]
        return row, ark, dict(landmarks68=uv68, landmarks68_3d=xyz68, fit_rms_px=rms, confidence=conf)

    def arkit_values(self, p):
        """One frame's ARKit values from its parameters ``p``: the expression weights (E,) (eyeLook*
        derived from the eye joints when the fit held them), the 52 ARKit weights, the 9 head and eye
        yaw/pitch/roll (degrees: the head's global rotation in camera axes, the eyes in the head) and
        the joints' global rotation matrices (J, 3, 3)."""
        g = _global_rotations(self.model, p.rotations)
        expr = p.expression
        if self.gaze_ids:
            expr = expr.copy()
            expr[self.gaze_ids] = gaze_blendshapes(self.model, p.rotations)[self.gaze_ids]
        # ARKit (degrees): head yaw/pitch/roll of the head's global rotation in camera axes; eyes in the head
        angles = [yaw_pitch_roll(g[2])] + [yaw_pitch_roll(rodrigues(p.rotations[j])) for j in (3, 4)]
        return expr, self.ark_map @ expr, np.degrees(np.array(angles).ravel()), g


OVERLAY_STYLES = ("shaded", "wireframe", "landmarks")


class _OverlayRenderer:
    """Draws the fitted mesh over a frame (``--overlay-style``): ``shaded`` (semi-transparent, shaded),
    ``wireframe`` (the edges the camera sees; the face stays visible) or ``landmarks`` (the fitted
    landmark vertices in red over the detected landmarks in green)."""

    def __init__(self, model, style="shaded", vertex_ids=None):
        if style not in OVERLAY_STYLES:
            raise ValueError(f"--overlay-style must be one of {', '.join(OVERLAY_STYLES)}, got {style!r}")
        if style == "landmarks" and vertex_ids is None:
            vertex_ids = load_landmark_set("ibug68")
        self.style = style
        self.vertex_ids = None if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64)
        self.faces = visible_faces(model)
        self.albedo = model_albedo(model) if style == "shaded" else None
        self.edges = quad_edges(model.vertices, self.faces) if style == "wireframe" else None

    def __call__(self, frame, v, focal, detected=None, fitted=None):
        """The frame with the camera-space mesh v (V, 3) mm drawn over it (the frame itself when v is None);
        ``landmarks`` style: ``detected`` (L, 2) pixels, the landmarks the fit saw, and ``fitted`` (L, 2)
        their fitted projections (default: the ``vertex_ids`` projected)."""
        if v is None:
            return frame
        if self.style == "wireframe":
            return draw_wireframe(frame, v, self.faces, focal, edges=self.edges)
        if self.style == "landmarks":
            out = frame if detected is None else draw_points(frame, detected, (60, 220, 60))
            if fitted is None:
                fitted = Camera(focal, frame.shape[1], frame.shape[0]).project(v[self.vertex_ids])
            return draw_points(out, fitted, (255, 40, 40))
        return render_over(frame, v, self.faces, shade(v, self.faces, self.albedo), focal, alpha=0.55)
