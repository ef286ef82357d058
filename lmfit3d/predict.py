"""Landmark prediction with ONNX networks (onnxruntime only): dense landmarks and their sigma, from
the first ROI of the face detector (:mod:`lmfit3d.detect`) or of the previous frame's landmarks.

One abstraction serves every landmark network: a :class:`Manifest` says where the ONNX file is,
its input size and normalisation, how its outputs are laid out (mu, and sigma when the network
predicts one), how its landmarks map onto model vertices, and which ROI strategy crops its input.
:class:`LandmarkPredictor` runs a manifest's network on an ROI and returns image-space Gaussians
(mu, sigma) in pixels, in the order of the manifest's ``vertex_ids``.

Backends:

* ``mediapipe``: MediaPipe's BlazeFace detector, face mesh (468 points) and iris models (Apache-2.0),
  converted to ONNX at set-up by ``tools/convert_mediapipe.py`` into ``$LMFIT3D_HOME/mediapipe``.
  MediaPipe predicts no uncertainty; sigma comes from a per-landmark error table learnt on renders of
  the face model with known ground truth (``data/mediapipe/``, made by
  ``tools/make_mediapipe_correspondence.py``), scaled by the ROI size, optionally combined with the
  spread of the predictions under jitter of the crop (``sigma_jitter`` > 0).
* ``network``: lmfit3d's own probabilistic dense320 network (paper sec. 3.1; trained on synthetic
  renders by ``tools/train_landmarks.py``, shipped in ``data/lmfit3d_dense320/``), which predicts a
  sigma per landmark (:class:`NetworkLandmarks`).

ROI strategies (paper sec. 3.3): ``"aligned"`` (real time: the crop is rotated so the eyes are level
and scaled to the face) and ``"axis"`` (offline: no rotation, uniform scale, no distortion).
"""
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from .detect import FaceDetector, ModelMissingError, _session, _window_centres, mediapipe_dir
from .imaging import ROI, affine_points, as_image, crop, warp_chw
from .paths import cache_dir, data_dir

ROI_STRATEGIES = ("aligned", "axis")


def _sigmoid1(x):
    """:func:`lmfit3d.detect._sigmoid` of one number (a Python float; no NumPy scalar overhead on the hot path)."""
    return 1.0 / (1.0 + math.exp(-min(max(float(x), -80.0), 80.0)))


# ----------------------------------------------------------------------------------------------
# Landmark networks
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """How to run one ONNX landmark network and read its outputs.

    Attributes
    ----------
    name : str
    onnx : str, path of the ONNX file (absolute, or relative to ``$LMFIT3D_HOME``).
    input_size : int, side of the square input crop (pixels).
    scale, offset : float, input normalisation ``pixel * scale + offset`` (pixel in 0..255, RGB, NCHW).
    mu_output : str, output holding the landmark positions (N, >= 2 per point, crop pixels).
    point_dim : int, numbers per point in ``mu_output`` (2 or 3).
    sigma_output : str or None, output holding log sigma per point (crop pixels), None if the network
        predicts none.
    presence_output : str or None, output holding a face-presence logit.
    vertex_ids : (L,) int64, model vertex of each landmark (landmark order of the predictor's output).
    points : (L,) int64, index of each landmark among the network's outputs.
    sigma_table : (L,) float64, per-landmark sigma in crop pixels used when the network predicts none.
    roi_scale : float, ROI side relative to the landmarks' bounding box (tracking) .
    roi_strategy : "aligned" or "axis".
    eye_points : (2, 2) int, network points of the two eye corners that define the aligned ROI's
        rotation (subject's right outer corner, left outer corner).
    """
    name: str
    onnx: str
    input_size: int
    scale: float
    offset: float
    mu_output: str
    point_dim: int
    vertex_ids: np.ndarray
    points: np.ndarray
    sigma_table: np.ndarray
    sigma_output: str = None
    presence_output: str = None
    roi_scale: float = 1.5
    roi_strategy: str = "aligned"
    eye_points: tuple = (33, 263)
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path):
        """Read a manifest JSON (see ``data/mediapipe/manifest.json``); relative paths are resolved
        against the manifest's folder (tables) and ``$LMFIT3D_HOME`` (ONNX files)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable manifest ({exc})") from None
        table = np.loadtxt(path.parent / d.pop("table"), ndmin=2)
        if table.shape[1] != 3:
            raise ValueError(f"{path}: correspondence table must have columns point, vertex, sigma")
        onnx = d.pop("onnx")
        onnx = onnx if os.path.isabs(onnx) else str(cache_dir() / onnx)
        return cls(onnx=onnx, points=table[:, 0].astype(np.int64), vertex_ids=table[:, 1].astype(np.int64),
                   sigma_table=table[:, 2].astype(np.float64), eye_points=tuple(d.pop("eye_points", (33, 263))),
                   **d)


class LandmarkPredictor:
    """Runs a :class:`Manifest`'s network on ROIs; returns image-space Gaussians.

    Parameters
    ----------
    manifest : Manifest
    sigma_jitter : int, extra crops (shifted and scaled by a few percent) whose prediction spread is
        added to the table sigma; 0 = table only (fast).
    threads : onnxruntime intra-op threads (1 = one CPU thread).
    """

    def __init__(self, manifest, sigma_jitter=0, threads=1, seed=0):
        self.m = manifest
        self.session = _session(manifest.onnx, threads)
        self.input_name = self.session.get_inputs()[0].name
        outs = [o.name for o in self.session.get_outputs()]
        for o in (manifest.mu_output, manifest.sigma_output, manifest.presence_output):
            if o is not None and o not in outs:
                raise ValueError(f"{manifest.onnx}: no output {o!r} (outputs: {outs})")
        self.sigma_jitter = int(sigma_jitter)
        self._rng_seed = seed
        s = manifest.input_size
        self._buf = np.empty((1, 3, s, s), np.float32)
        self._names = [manifest.mu_output] + [o for o in (manifest.sigma_output, manifest.presence_output)
                                              if o is not None]

    def _forward(self, image, roi):
        """Crop ``roi`` of a checked image (:func:`as_image`) into the input tensor and run the
        network; its outputs in the order mu, sigma, presence (those the manifest names)."""
        m = self.m
        warp_chw(image, roi.matrix(m.input_size), m.input_size, False, m.scale, m.offset, self._buf[0])
        return self.session.run(self._names, {self.input_name: self._buf})

    def _extras(self, res):
        """log sigma (N,) float64 or None, and presence, from the outputs of :meth:`_forward`."""
        m = self.m
        k = 1
        logsig = None
        if m.sigma_output is not None:
            logsig = res[k].reshape(-1).astype(np.float64)
            k += 1
        presence = 1.0 if m.presence_output is None else _sigmoid1(res[k].reshape(-1)[0])
        return logsig, presence

    def _run(self, image, roi):
        """Network points (N, 2) float64 crop pixels, log sigma (N,) or None, presence."""
        res = self._forward(image, roi)
        pts = res[0].reshape(-1, self.m.point_dim)[:, :2].astype(np.float64)
        return (pts,) + self._extras(res)

    def image_points(self, image, roi, out=None):
        """Every network point in image pixels, without mu/sigma selection (the tracking hot path).

        Parameters
        ----------
        image : (H, W, 3) uint8 RGB; roi : ROI;
        out : (>= N, 2) float64, optional; rows 0..N-1 receive the points.

        Returns
        -------
        points : (N, 2) float64 image pixels (a view of ``out`` when given); log sigma (N,) float64 or
        None; presence : float in [0, 1].
        """
        m = self.m
        res = self._forward(as_image(image), roi)
        mu = res[0].reshape(-1)
        n = mu.size // m.point_dim
        if out is None:
            out = np.empty((n, 2))
        elif out.ndim != 2 or out.shape[0] < n or out.shape[1] != 2 or out.dtype != np.float64:
            raise ValueError(f"out must be (>= {n}, 2) float64, got {out.shape} {out.dtype}")
        pts = out[:n]
        affine_points(mu, m.point_dim, roi.matrix(m.input_size), pts)
        return (pts,) + self._extras(res)

    def __call__(self, image, roi):
        """Predict on one ROI.

        Returns
        -------
        mu : (L, 2) float64 image pixels; sigma : (L,) float64 pixels; presence : float in [0, 1];
        all_points : (N, 2) every network point in image pixels (for the next ROI).
        """
        m = self.m
        image = as_image(image)
        img_pts, logsig, presence = self.image_points(image, roi)
        px = roi.size / m.input_size            # image pixels per crop pixel
        if logsig is not None:
            sig2 = (np.exp(logsig[m.points]) * px) ** 2
        else:
            sig2 = (m.sigma_table * px) ** 2
        if self.sigma_jitter > 0:
            sig2 = sig2 + self.jitter_variance(image, roi, img_pts, self.sigma_jitter)[m.points]
        return img_pts[m.points], np.sqrt(sig2), presence, img_pts

    def jitter_variance(self, image, roi, points, k):
        """Per-point variance (N,) (pixels^2, per axis) of the network's points over the ROI and
        ``k`` copies shifted by up to 4 % and scaled by up to 5 % (fixed offsets, seeded)."""
        offsets = np.random.default_rng(self._rng_seed).uniform(-1, 1, size=(k, 3)) * np.array([0.04, 0.04, 0.05])
        samples = [points]
        for dx, dy, ds in offsets:
            r = ROI(roi.cx + dx * roi.size, roi.cy + dy * roi.size, roi.size * (1 + ds), roi.rotation)
            samples.append(r.to_image(self._run(as_image(image), r)[0], self.m.input_size))
        return np.stack(samples).var(0).sum(1) / 2.0

    def roi_from_points(self, pts):
        """Next frame's ROI from this frame's network points (N, 2) in image pixels."""
        m = self.m
        return roi_from_points(pts, m.eye_points, m.roi_scale, m.roi_strategy)


def roi_from_points(pts, eye_points=(33, 263), scale=1.5, strategy="aligned"):
    """Square ROI around landmarks (N, 2) pixels: their bounding box (in the frame rotated so that
    ``pts[eye_points[0]] -> pts[eye_points[1]]`` is horizontal when ``strategy`` is "aligned"),
    longest side times ``scale``.  Non-finite points are ignored."""
    pts = np.ascontiguousarray(pts, dtype=np.float64)
    rot = 0.0
    if strategy == "aligned":
        a, b = pts[eye_points[0]].tolist(), pts[eye_points[1]].tolist()
        rot = math.atan2(-(b[1] - a[1]), b[0] - a[0])
    cx, cy, side = _rotated_box(pts, rot)
    return ROI(cx, cy, side * scale, rot)


@njit(cache=True)
def _rotated_box(pts, rot):
    """Centre (image pixels) and longest side of the bounding box of the finite points (N, 2) in
    the crop axes of rotation ``rot``: a0 = (cos, -sin), a1 = (sin, cos) (columns of the crop map)."""
    c, s = np.cos(rot), np.sin(rot)
    lo0 = lo1 = np.inf
    hi0 = hi1 = -np.inf
    for k in range(pts.shape[0]):
        x, y = pts[k, 0], pts[k, 1]
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        p0 = c * x - s * y               # coordinates along a0 and a1
        p1 = s * x + c * y
        lo0, hi0 = min(lo0, p0), max(hi0, p0)
        lo1, hi1 = min(lo1, p1), max(hi1, p1)
    m0, m1 = (lo0 + hi0) / 2, (lo1 + hi1) / 2
    return c * m0 + s * m1, -s * m0 + c * m1, max(hi0 - lo0, hi1 - lo1)


def load_manifest(name="mediapipe"):
    """The manifest of a named landmark backend shipped in ``data/<name>/manifest.json``."""
    path = data_dir() / name / "manifest.json"
    if not path.is_file():
        raise ValueError(f"unknown landmark backend {name!r}: {path} not found")
    return Manifest.load(path)


class IrisPredictor:
    """MediaPipe iris model (64 x 64 eye crops): iris centres and eyelid contours of both eyes.

    MediaPipe's iris network is trained on one eye side; the other eye's crop is mirrored.  The
    converted model (``tools/convert_mediapipe.py``) takes a dynamic batch, so both eyes run in one
    call; a model with a fixed batch of 1 (older conversions) is run once per eye.  Its eye-contour
    head (71 points: the eyelid contour, the rings around the eye and the brow, :data:`EYE_POINTS`
    order) closes with the lids where the face mesh does not (issue 13); conversions without that
    head give no contours.
    """

    # face-mesh points of the eye corners: subject's right eye (33, 133), left eye (362, 263)
    CORNERS = ((33, 133), (362, 263))
    OUTPUT = "output_iris"
    LIDS_OUTPUT = "output_eyes_contours_and_brows"
    # face-mesh points of the eye-contour head's 71 points (MediaPipe's iris refinement), subject's
    # right eye, then left eye: lower lid corner to corner, upper lid, two rings around the eye
    # (lower, upper), the brow region.  Checked against the mesh's nearest points on real photos.
    EYE_POINTS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
                   130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
                   226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
                   35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
                   156, 70, 63, 105, 66, 107, 55, 193),
                  (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
                   359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
                   446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
                   265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
                   383, 300, 293, 334, 296, 336, 285, 417))

    def __init__(self, path=None, threads=1, roi_scale=2.3):
        self.session = _session(path or mediapipe_dir() / "iris_landmark.onnx", threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        outs = [o.name for o in self.session.get_outputs()]
        if self.OUTPUT not in outs:
            raise ValueError(f"iris model: no output {self.OUTPUT!r} (outputs: {outs})")
        self.has_lids = self.LIDS_OUTPUT in outs
        self._outputs = [self.OUTPUT] + ([self.LIDS_OUTPUT] if self.has_lids else [])
        self.batched = not isinstance(inp.shape[0], int)       # a symbolic (dynamic) batch dimension
        self.roi_scale = roi_scale
        self._buf = np.empty((2, 3, 64, 64), np.float32)
        self._corners = np.array(self.CORNERS, np.int64).ravel()

    def eye_roi(self, a, b):
        """The eye crop's ROI from its two corners a, b (2,) pixels: centred between them, side
        ``roi_scale`` times their distance, rotated so a -> b is horizontal."""
        ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
        dx, dy = bx - ax, by - ay
        return ROI((ax + bx) / 2, (ay + by) / 2, math.hypot(dx, dy) * self.roi_scale, math.atan2(-dy, dx))

    def eye_rois(self, mesh_points):
        """The two eye ROIs (subject's right eye, left eye) from the face-mesh points (N, 2) pixels."""
        q = mesh_points[self._corners].tolist()
        return [self.eye_roi(q[0], q[1]), self.eye_roi(q[2], q[3])]

    def crop_points(self, image, rois, eyes=(0, 1)):
        """Iris centres (len(eyes), 2) in crop pixels (0..64, unmirrored) of the eyes ``eyes``."""
        return self.crop_landmarks(image, rois, eyes)[0]

    def crop_landmarks(self, image, rois, eyes=(0, 1)):
        """Iris centres (n, 2) and eye contours (n, 71, 2, :data:`EYE_POINTS` order; None without
        the contour head) in crop pixels (0..64, unmirrored) of the n eyes ``eyes``."""
        for k, e in enumerate(eyes):
            crop(image, rois[e], 64, scale=1.0 / 255.0, offset=0.0, mirror=e == 1, out=self._buf[k])
        n = len(eyes)
        if self.batched:
            res = self.session.run(self._outputs, {self.input_name: self._buf[:n]})
        else:
            runs = [self.session.run(self._outputs, {self.input_name: self._buf[k:k + 1]}) for k in range(n)]
            res = [np.concatenate([r[j] for r in runs]) for j in range(len(self._outputs))]
        p = res[0].reshape(n, 5, 3)[:, 0, :2].astype(np.float64)
        lids = res[1].reshape(n, 71, 3)[:, :, :2].astype(np.float64) if self.has_lids else None
        for k, e in enumerate(eyes):
            if e == 1:
                p[k, 0] = 64.0 - p[k, 0]
                if lids is not None:
                    lids[k, :, 0] = 64.0 - lids[k, :, 0]
        return p, lids

    def __call__(self, image, mesh_points):
        """Iris centres (2, 2) image pixels (subject's right eye, left eye) and the eye crops' sizes (2,)."""
        rois = self.eye_rois(mesh_points)
        p = self.crop_points(image, rois)
        out = np.stack([rois[e].to_image(p[e:e + 1], 64)[0] for e in range(2)])
        return out, np.array([r.size for r in rois])


IRIS_POLICIES = ("alternate", "both")
# MediaPipe's attention mesh (tools/convert_mediapipe.py, tools/mediapipe_custom_ops.py): its refined
# 478-point output (crop pixels, x y z), face-presence logit, and its iris centres (subject's right
# eye, left eye)
ATTENTION_ONNX = "mediapipe/face_landmark_with_attention.onnx"
ATTENTION_OUTPUT = "landmarks_refined"
ATTENTION_PRESENCE = "conv_faceflag"
ATTENTION_IRIS_CENTRES = [468, 473]
# how many of the iris network's 71 eye-contour points replace the mesh's (IrisPredictor.EYE_POINTS
# order: 16 lid points, 32 in the two rings around the eye, 23 towards the brow)
REFINED_EYE_POINTS = 48


@dataclass(frozen=True)
class Prediction:
    """Landmarks of one face in one image.

    mu : (L, 2) pixels; sigma : (L,) pixels; presence : float in [0, 1] (network face score);
    points : (N, 2) every raw network point in pixels (mesh + iris centres); roi : the ROI used.
    """
    mu: np.ndarray
    sigma: np.ndarray
    presence: float
    points: np.ndarray
    roi: ROI


class MediaPipeLandmarks:
    """The MediaPipe backend: BlazeFace detection, 468-point face mesh and iris centres.

    Landmark order and model vertices come from the manifest (``data/mediapipe/manifest.json``):
    raw point index k < 468 is face-mesh point k; 468 and 469 are the iris centres of the subject's
    right and left eye.

    Parameters
    ----------
    manifest : Manifest, default ``load_manifest("mediapipe")``.
    roi_strategy : "aligned" (eyes level, real time) or "axis" (no rotation, offline).
    sigma_jitter : int, extra jittered crops for the sigma estimate (0 = table sigma only).
    iris : bool, run the iris network (gaze); without it the iris landmarks are missing (NaN).
    iris_policy : "alternate" (default) or "both".  With "both", :meth:`track` runs the iris network
        on both eyes of every frame (one batched call).  With "alternate", a tracked frame runs it on
        one eye, the eyes taking turns; the other eye's iris centre is carried over from its last
        measurement in the coordinates of its eye crop (fixed to the current frame's eye corners),
        so head motion and eyelids are followed at once and only an eye rotation shows one frame
        late in that eye.  It halves the iris cost (docs/history/NOTES_frontend.md: accuracy).  Frames after
        a detection and :meth:`predict` always run both eyes.
    presence_threshold : float, face score under which tracking is lost and the detector runs again.
    fixed_sigma : bool, give every landmark the table's median sigma (ablation: no uncertainty).
    attention : bool, run MediaPipe's attention mesh (``face_landmark_with_attention``, converted by
        ``tools/convert_mediapipe.py``) instead of the face mesh and the iris network: one network
        whose lips, eyes and iris heads refine the mesh (478 points; raw points 468 and 469 are its
        iris centres 468 and 473), with its own correspondence table and sigmas
        (``data/mediapipe_attention/``, same format as the face mesh's).  ``iris_policy`` and
        ``refine_lids`` then do not apply; ``iris=False`` drops its iris points.
    """

    def __init__(self, manifest=None, roi_strategy="aligned", sigma_jitter=0, iris=True, threads=1,
                 presence_threshold=0.5, fixed_sigma=False, iris_policy="alternate", refine_lids=True,
                 attention=False):
        if roi_strategy not in ROI_STRATEGIES:
            raise ValueError(f"roi_strategy must be one of {ROI_STRATEGIES}, got {roi_strategy!r}")
        if iris_policy not in IRIS_POLICIES:
            raise ValueError(f"iris_policy must be one of {IRIS_POLICIES}, got {iris_policy!r}")
        self.iris_policy = iris_policy
        self._iris_crop = None          # last measured iris centres (2, 2) in eye-crop pixels
        self._iris_next = 0             # the eye measured on the next alternating frame
        self.refine_lids = refine_lids
        self.refined_eye_points = REFINED_EYE_POINTS
        self._lid_delta = np.zeros((2, 71, 2))  # iris-net eye contour - mesh points, eye-crop pixels
        m = manifest or load_manifest("mediapipe_attention" if attention else "mediapipe")
        from dataclasses import replace
        self.attention = bool(attention)
        if self.attention:
            m = replace(m, onnx=str(cache_dir() / ATTENTION_ONNX), mu_output=ATTENTION_OUTPUT,
                        presence_output=ATTENTION_PRESENCE)
        self.manifest = replace(m, roi_strategy=roi_strategy)
        if fixed_sigma:
            self.manifest = replace(self.manifest, sigma_table=np.full_like(m.sigma_table, np.median(m.sigma_table)))
        self.mesh = LandmarkPredictor(replace(self.manifest, points=np.arange(468),
                                              vertex_ids=np.arange(468), sigma_table=np.ones(468)),
                                      sigma_jitter=0, threads=threads)
        self.detector = FaceDetector(threads=threads, far=True)
        self.iris = IrisPredictor(threads=threads) if iris and not self.attention else None
        self.attention_iris = bool(iris) and self.attention
        self._net = np.empty((478, 2))          # the attention mesh's points (image pixels)
        self.sigma_jitter = int(sigma_jitter)
        self.presence_threshold = presence_threshold
        self.search_every = 5
        self.roi = None
        self._lost = 0
        self.timings = {"detect": 0.0, "landmarks": 0.0}

    @property
    def vertex_ids(self):
        return self.manifest.vertex_ids

    def detect(self, image, max_candidates=3, levels=4, exhaustive=False, far=None):
        """ROIs of the detected faces, largest (the main subject) first, at most ``max_candidates``.

        ``levels`` > 1 lets the detector search smaller windows when the whole frame holds no face
        (always, with ``exhaustive``: :class:`lmfit3d.detect.FaceDetector`); ``far``: the full-range
        detector's whole-frame pass (None: when the search goes below the whole frame).
        """
        t = time.perf_counter()
        dets = self.detector(image, levels, exhaustive, far)
        self.timings["detect"] += time.perf_counter() - t
        return [d.roi(self.manifest.roi_strategy, scale=self.manifest.roi_scale) for d in dets[:max_candidates]]

    def predict(self, image, roi, eyes=(0, 1), min_presence=0.0):
        """Landmarks of the face in ``roi`` (a :class:`Prediction`).

        ``eyes``: the eyes (0: subject's right, 1: left) whose iris network runs; the iris centre
        of an eye not run is carried from its last measurement (see ``iris_policy``).
        ``min_presence``: under this face score the prediction is one its caller rejects and the
        iris networks do not run (its iris points NaN; the iris state untouched).
        """
        t = time.perf_counter()
        m = self.manifest
        image = as_image(image)
        raw = np.empty((470, 2))
        if self.attention:
            pts, _, presence = self.mesh.image_points(image, roi, out=self._net)
            raw[:468] = pts[:468]
            raw[468:] = pts[ATTENTION_IRIS_CENTRES] if self.attention_iris else np.nan
        else:
            pts, _, presence = self.mesh.image_points(image, roi, out=raw)       # raw[:468]
        if self.iris is not None and presence < min_presence:
            raw[468:] = np.nan
        elif self.iris is not None:
            rois = self.iris.eye_rois(pts)
            if self._iris_crop is None:
                eyes = (0, 1)
            c = self._iris_crop if self._iris_crop is not None else np.empty((2, 2))
            c[list(eyes)], lids = self.iris.crop_landmarks(image, rois, eyes)
            self._iris_crop = c
            for e in range(2):
                affine_points(c[e], 2, rois[e].matrix(64), raw[468 + e:469 + e])
            if lids is not None and self.refine_lids:
                self._refine_lids(raw, rois, eyes, lids)
        elif not self.attention:
            raw[468:] = np.nan
        px = roi.size / m.input_size
        if self.sigma_jitter > 0:
            var = np.concatenate([self.mesh.jitter_variance(image, roi, pts, self.sigma_jitter)[:468], np.zeros(2)])
            sigma = np.sqrt((m.sigma_table * px) ** 2 + var[m.points])
        else:
            sigma = np.sqrt((m.sigma_table * px) ** 2)      # not table * px: the same bits as before
        self.timings["landmarks"] += time.perf_counter() - t
        return Prediction(raw[m.points], sigma, presence, raw, roi)

    def _refine_lids(self, raw, rois, eyes, lids):
        """Replace the mesh's 2 x 71 eye-region points in ``raw`` by the iris network's contours (as
        MediaPipe's iris refinement does).  An eye not run this frame keeps its mesh points moved by
        the last measured offset (iris-net lids - mesh lids, in its eye crop's pixels), so the lids
        follow this frame's mesh at once."""
        n = self.refined_eye_points
        for e in range(2):
            idx = list(IrisPredictor.EYE_POINTS[e][:n])
            mesh = rois[e].to_crop(raw[idx], 64)
            if e in eyes:
                self._lid_delta[e, :n] = lids[list(eyes).index(e), :n] - mesh
            raw[idx] = rois[e].to_image(mesh + self._lid_delta[e, :n], 64)

    def reset(self):
        """Forget the tracked face (the next frame runs the full detector search): the state of a
        fresh predictor, so one predictor serves video after video (:mod:`lmfit3d.batch`)."""
        self.set_state(None)

    def track(self, image):
        """Next frame of a video: ROI from the previous frame's landmarks, detector when lost.

        While no face is tracked, the detector searches the whole frame on every frame and also
        smaller windows (small faces) on every ``search_every``-th frame.  A candidate ROI (the
        detector's box x1.5, then x1.2) is accepted when the landmark network's face score reaches
        ``presence_threshold``; the detector's candidates are tried largest first.  Returns a
        :class:`Prediction`, or None when no face is found.
        """
        pred = self.follow(image)
        if pred is not None:
            return pred
        # while lost, the (slow) small-face window search runs on every ``search_every``-th frame only
        deep = self._lost % self.search_every == 0
        self._lost += 1
        for roi in self.detect(image, levels=4 if deep else 1):
            pred = self.start(image, roi)
            if pred is not None:
                return pred
        return None

    def follow(self, image):
        """The tracked face in this frame (its ROI from the previous frame's landmarks), or None
        (the face is lost: the tracking state is cleared; no detector runs)."""
        if self.roi is not None:
            eyes = (0, 1)
            if self.iris_policy == "alternate":
                eyes = (self._iris_next,)
                self._iris_next ^= 1
            pred = self.predict(image, self.roi, eyes, self.presence_threshold)
            if pred.presence >= self.presence_threshold:
                self.roi = self.mesh.roi_from_points(pred.points[:468])
                return pred
        self.roi = None
        self._iris_crop = None
        return None

    def start(self, image, roi):
        """Start tracking the face of a detector candidate ``roi`` (tried as given, then x0.8, a
        tighter crop that rescues some turned or small faces): its :class:`Prediction` when the face
        score reaches ``presence_threshold`` (the tracking state then follows it), else None."""
        for r in (roi, roi.scaled(0.8)):
            pred = self.predict(image, r, min_presence=self.presence_threshold)
            if pred.presence >= self.presence_threshold:
                self.roi = self.mesh.roi_from_points(pred.points[:468])
                self._lost = 0
                return pred
        return None

    _STATE = ("roi", "_lost", "_iris_crop", "_iris_next", "_lid_delta")

    def get_state(self):
        """The tracking state of the followed face (a tuple; :meth:`set_state` restores it), so one
        predictor follows several faces in turn (:mod:`lmfit3d.faces`)."""
        return tuple(getattr(self, k) for k in self._STATE)

    def set_state(self, state=None):
        """Restore a state of :meth:`get_state`; None: a fresh state (no face followed)."""
        if state is None:
            state = (None, 0, None, 0, np.zeros((2, 71, 2)))
        for k, v in zip(self._STATE, state):
            setattr(self, k, v)

    def faces(self, image, max_faces=10):
        """Every face of a still image, largest first (at most ``max_faces``): the detector's
        candidates with the small-face window search, each confirmed by the face score as in
        :meth:`track` (box x1.5, then x1.2), then refined once from its own landmarks, both irises.
        A candidate whose centre falls inside a face already found is a duplicate.  Starts from and
        ends with a fresh tracking state.  Returns a list of :class:`Prediction`."""
        self.reset()

        def confirm(roi):
            for r in (roi, roi.scaled(0.8)):
                self._iris_crop = None
                pred = self.predict(image, r, min_presence=self.presence_threshold)
                if pred.presence >= self.presence_threshold:
                    self._iris_crop = None
                    ref = self.predict(image, self.mesh.roi_from_points(pred.points[:468]))
                    return ref if ref.presence >= self.presence_threshold else pred
            return None

        found = _distinct_faces(self.detect(image, max_candidates=3 * max_faces, levels=4), confirm, max_faces)
        self.reset()
        return found


def _distinct_faces(rois, confirm, max_faces):
    """Confirmed predictions of candidate ROIs (in order), skipping those whose landmark centre lies
    in the landmark box of a face already found."""
    found = []
    for roi in rois:
        if len(found) >= max_faces:
            break
        pred = confirm(roi)
        if pred is None:
            continue
        c = np.nanmean(pred.mu, 0)
        if any(np.all((c >= np.nanmin(f.mu, 0)) & (c <= np.nanmax(f.mu, 0))) for f in found):
            continue
        found.append(pred)
    return found


# ----------------------------------------------------------------------------------------------
# Our own dense landmark network (issue 6): mu and sigma predicted per landmark
# ----------------------------------------------------------------------------------------------

def load_network_manifest(name="lmfit3d_dense320"):
    """Manifest of a network shipped in ``data/<name>/``; a relative ONNX path is looked up next to
    the manifest first, then in ``$LMFIT3D_HOME``."""
    from dataclasses import replace
    m = load_manifest(name)
    local = data_dir() / name / Path(m.onnx).name
    if not Path(m.onnx).is_file() and local.is_file():
        m = replace(m, onnx=str(local))
    return m


class NetworkLandmarks:
    """Backend of lmfit3d's own probabilistic landmark network (paper sec. 3.1): per landmark a mean
    and a sigma, both in image pixels; same interface as :class:`MediaPipeLandmarks`.

    The first ROI comes from the BlazeFace detector when its ONNX file is set up (else from the
    multi-scale window search of the paper, :meth:`search`); each ROI is refined by running the
    network and re-cropping around its own landmarks (``refine`` passes).  While tracking, the next
    ROI is the box of the ibug68 subset of the landmarks (``extra.roi_points``) times ``roi_scale``,
    rotated so the eye corners are level when ``roi_strategy`` is "aligned".  ``presence`` is
    ``1 / (1 + (median sigma / presence_sigma_px)^2)`` with sigma in crop pixels: a crop without
    a face gives large sigmas.

    Parameters
    ----------
    manifest : Manifest, default ``load_network_manifest()``.
    roi_strategy : "aligned" or "axis".
    threads : onnxruntime threads.
    presence_threshold : float, tracking is lost (detector again) under this presence.
    fixed_sigma : bool, replace every sigma by the median of the frame's sigmas (ablation).
    refine : int, extra network passes that re-centre a detector/search ROI.
    """

    def __init__(self, manifest=None, roi_strategy="aligned", threads=1, presence_threshold=0.5,
                 fixed_sigma=False, refine=1):
        if roi_strategy not in ROI_STRATEGIES:
            raise ValueError(f"roi_strategy must be one of {ROI_STRATEGIES}, got {roi_strategy!r}")
        from dataclasses import replace
        m = manifest or load_network_manifest()
        if m.sigma_output is None:
            raise ValueError(f"manifest {m.name!r} has no sigma_output; use MediaPipeLandmarks for such networks")
        self.manifest = replace(m, roi_strategy=roi_strategy)
        self.net = LandmarkPredictor(self.manifest, threads=threads)
        ex = self.manifest.extra
        n = int(self.manifest.points.max()) + 1
        self.roi_points = np.asarray(ex.get("roi_points", np.arange(n)), dtype=np.int64)
        self.roi_eye_points = tuple(ex.get("roi_eye_points", self.manifest.eye_points))
        self.presence_sigma = float(ex.get("presence_sigma_px", 4.0))
        self.presence_threshold = float(presence_threshold)
        self.fixed_sigma = bool(fixed_sigma)
        self.refine = int(refine)
        self.threads = threads
        self._detector = None
        self.roi = None
        self.timings = {"detect": 0.0, "landmarks": 0.0}

    @property
    def vertex_ids(self):
        return self.manifest.vertex_ids

    def roi_from_points(self, pts):
        """ROI for the network around its own points (N, 2) image pixels."""
        m = self.manifest
        return roi_from_points(pts[self.roi_points], self.roi_eye_points, m.roi_scale, m.roi_strategy)

    def _presence(self, sigma_img, roi):
        s = float(np.median(sigma_img)) * self.manifest.input_size / roi.size
        return 1.0 / (1.0 + (s / self.presence_sigma) ** 2)

    def predict(self, image, roi):
        """Landmarks of the face in ``roi`` (a :class:`Prediction`; sigma in image pixels)."""
        t = time.perf_counter()
        mu, sigma, _, pts = self.net(image, roi)
        presence = self._presence(sigma, roi)
        if self.fixed_sigma:
            sigma = np.full_like(sigma, np.median(sigma))
        self.timings["landmarks"] += time.perf_counter() - t
        return Prediction(mu, sigma, presence, pts, roi)

    def _refined(self, image, roi):
        pred = self.predict(image, roi)
        for _ in range(self.refine):
            nxt = self.predict(image, self.roi_from_points(pred.points))
            if nxt.presence < pred.presence:
                break
            pred = nxt
        return pred

    def search(self, image, sizes=(0.9, 0.6, 0.4, 0.27, 0.18)):
        """The paper's ROI search for stills: square windows at several scales (fractions of the
        shorter image side, half-window strides); the window whose prediction has the lowest median
        sigma (relative to the window) wins.  Returns a list with that ROI (empty for no face)."""
        t = time.perf_counter()
        h, w = image.shape[:2]
        best, best_s = None, np.inf
        for f in sizes:
            win = f * min(h, w)
            for cy in _window_centres(h, win):
                for cx in _window_centres(w, win):
                    roi = ROI(cx, cy, win, 0.0)
                    _, sigma, _, _ = self.net(image, roi)
                    s = float(np.median(sigma)) / win
                    if s < best_s:
                        best, best_s = roi, s
        self.timings["detect"] += time.perf_counter() - t
        return [] if best is None else [best]

    def detect(self, image, max_candidates=3, levels=4, exhaustive=False, far=None):
        """Candidate ROIs, largest face first: BlazeFace when set up (``levels``, ``exhaustive``,
        ``far``: :class:`lmfit3d.detect.FaceDetector`), else :meth:`search`."""
        t = time.perf_counter()
        if self._detector is None:
            try:
                self._detector = FaceDetector(threads=self.threads, far=True)
            except ModelMissingError:
                self._detector = False
        if self._detector is False:
            return self.search(image)
        dets = self._detector(image, levels, exhaustive, far)
        self.timings["detect"] += time.perf_counter() - t
        return [d.roi(self.manifest.roi_strategy, scale=self.manifest.roi_scale) for d in dets[:max_candidates]]

    def reset(self):
        self.roi = None

    def track(self, image):
        """Next frame of a video: ROI from the previous landmarks, detector (or search) when lost.
        Returns a :class:`Prediction`, or None when no face is found."""
        pred = self.follow(image)
        if pred is not None:
            return pred
        for roi in self.detect(image):
            pred = self.start(image, roi)
            if pred is not None:
                return pred
        return None

    def follow(self, image):
        """The tracked face in this frame, or None (lost; the state is cleared)."""
        if self.roi is not None:
            pred = self.predict(image, self.roi)
            if pred.presence >= self.presence_threshold:
                self.roi = self.roi_from_points(pred.points)
                return pred
        self.roi = None
        return None

    def start(self, image, roi):
        """Start tracking the face of a detector candidate ``roi`` (refined): its prediction, or None."""
        pred = self._refined(image, roi)
        if pred.presence >= self.presence_threshold:
            self.roi = self.roi_from_points(pred.points)
            return pred
        return None

    def get_state(self):
        """The tracking state of the followed face (see :meth:`MediaPipeLandmarks.get_state`)."""
        return (self.roi,)

    def set_state(self, state=None):
        self.roi = None if state is None else state[0]

    def faces(self, image, max_faces=10):
        """Every face of a still image, largest first (at most ``max_faces``): detector (or search)
        candidates, each refined as in :meth:`track` and kept when its presence reaches the threshold;
        duplicates (centre inside a face already found) dropped.  Returns a list of :class:`Prediction`."""
        def confirm(roi):
            pred = self._refined(image, roi)
            return pred if pred.presence >= self.presence_threshold else None

        found = _distinct_faces(self.detect(image, max_candidates=3 * max_faces), confirm, max_faces)
        self.reset()
        return found
