"""Face detection with MediaPipe's BlazeFace (short range) on onnxruntime, and the ONNX sessions
every network of the landmark front end (:mod:`lmfit3d.predict`) runs in.

:class:`FaceDetector` finds faces in a whole image (letterboxed), then, when it holds none, in ever
smaller overlapping windows; overlapping candidates are merged with MediaPipe's weighted NMS.  Each
:class:`Detection` gives the landmark network's first ROI (:meth:`Detection.roi`).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .imaging import ROI, crop
from .paths import cache_dir


# whole-frame face score under which the detector also searches the frame turned by 90, 180 and 270
# degrees (upright faces score 0.9+ in their upright window; a face upside down scores ~0.65 unturned)
ORIENTATION_SCORE = 0.8


class ModelMissingError(ValueError):
    """An ONNX file named by a manifest is not in the cache (set-up step not run)."""


def mediapipe_dir():
    return cache_dir() / "mediapipe"


def _session(path, threads=1):
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise ModelMissingError(f"{path}: ONNX model not found; run `python tools/convert_mediapipe.py` first")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


# ----------------------------------------------------------------------------------------------
# Face detection (BlazeFace short range)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Detection:
    """A detected face: box (x0, y0, x1, y1) pixels, 6 keypoints (6, 2) pixels, score in [0, 1].

    Keypoints 0 and 1 are the eyes (subject's right eye, then left eye).
    """
    box: np.ndarray
    keypoints: np.ndarray
    score: float

    def roi(self, strategy="aligned", scale=1.5):
        """The landmark network's ROI around this face (MediaPipe: box x1.5, square)."""
        x0, y0, x1, y1 = self.box
        size = max(x1 - x0, y1 - y0) * scale
        d = self.keypoints[1] - self.keypoints[0]
        rot = float(np.arctan2(-d[1], d[0]))
        if strategy != "aligned":       # "axis": the nearest quarter turn (upright, or a rotated video)
            rot = float(np.round(rot / (np.pi / 2)) * (np.pi / 2)) + 0.0
        return ROI(float((x0 + x1) / 2), float((y0 + y1) / 2), float(size), rot)


def _blazeface_anchors(size=128, layers=((8, 2), (16, 6))):
    """BlazeFace's SSD anchor centres, normalised (n, 2): per layer (stride, anchors per cell)."""
    anchors = []
    for stride, per_cell in layers:
        g = size // stride
        yy, xx = np.mgrid[0:g, 0:g]
        c = np.stack([(xx.ravel() + 0.5) / g, (yy.ravel() + 0.5) / g], 1)
        anchors.append(np.repeat(c, per_cell, axis=0))
    return np.concatenate(anchors)            # short range: (896, 2); full range: (2304, 2)


# BlazeFace models: ONNX file stem, input side (pixels), anchor layers (stride, anchors per cell)
DETECTORS = {"short": ("face_detection_short_range", 128, ((8, 2), (16, 6))),
             "full": ("face_detection_full_range", 192, ((4, 1),))}


class FaceDetector:
    """MediaPipe BlazeFace (letterboxed input in [-1, 1]).

    ``kind``: "short" (short range, 128 x 128: faces larger than about a tenth of the window) or
    "full" (full range, 192 x 192: small and distant faces too, ~7x the cost).  ``far``: a short-range
    detector that, when the whole frame holds no face, also runs the full-range model on the whole
    frame beside its window search (when the full-range ONNX file was converted; see
    :meth:`__call__`).
    """

    def __init__(self, path=None, score_threshold=0.5, nms_threshold=0.3, threads=1, kind="short", far=False):
        if kind not in DETECTORS:
            raise ValueError(f"kind must be one of {tuple(DETECTORS)}, got {kind!r}")
        stem, self.size, layers = DETECTORS[kind]
        self.session = _session(path or mediapipe_dir() / f"{stem}.onnx", threads)
        self.input_name = self.session.get_inputs()[0].name
        self.anchors = _blazeface_anchors(self.size, layers)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._buf = np.empty((1, 3, self.size, self.size), np.float32)
        far_path = mediapipe_dir() / f"{DETECTORS['full'][0]}.onnx"
        # the full-range detector's session is made on first use (most videos never need it)
        self._far_args = ((far_path, score_threshold, nms_threshold, threads, "full")
                          if far and kind == "short" and far_path.is_file() else None)
        self._far = None

    @property
    def far(self):
        """The full-range detector beside this one (None when not asked for or not converted)."""
        if self._far is None and self._far_args is not None:
            self._far = FaceDetector(*self._far_args)
        return self._far

    def _raw(self, image, roi):
        """Candidate boxes (n, 4), keypoints (n, 6, 2) in image pixels and scores of one square window."""
        crop(image, roi, self.size, scale=2.0 / 255.0, offset=-1.0, out=self._buf[0])
        reg, cls = self.session.run(None, {self.input_name: self._buf})
        scores = _sigmoid(cls[0, :, 0].astype(np.float64))
        keep = np.flatnonzero(scores >= self.score_threshold)
        r = reg[0, keep].astype(np.float64) / self.size
        a = self.anchors[keep]
        cxy = r[:, 0:2] + a
        wh = r[:, 2:4]
        m = roi.matrix(1.0)                     # window coordinates in [0, 1] -> image pixels
        corners = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1).reshape(-1, 2, 2) @ m[:, :2].T + m[:, 2]
        corners = np.concatenate([corners.min(1), corners.max(1)], 1)    # a quarter-turned window swaps them
        kps = (r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]) @ m[:, :2].T + m[:, 2]
        return corners, kps, scores[keep]

    def __call__(self, image, levels=4, exhaustive=False, far=None):
        """Faces in an (H, W, 3) uint8 RGB image, largest first (list of :class:`Detection`).

        The whole image is searched first (letterboxed); when it holds no face, ever smaller
        overlapping windows are searched (``levels`` - 1 more levels, each half the window size
        with half-window strides), since the short-range model only finds faces larger than about
        a tenth of its input.  ``exhaustive``: every level is searched even when faces were found
        (small faces beside large ones; video newcomers).  When the whole image's best score is
        under ``ORIENTATION_SCORE``, it is also searched turned by a quarter, a half and three
        quarters, and the turn with the highest score is kept for it and the smaller windows (faces
        upside down, videos whose rotation was lost).  With a full-range model (``self.far``), a
        search of more than one level whose whole image holds no face (or an ``exhaustive`` one) also
        runs it on the whole image (small and distant faces the windows miss); ``far`` True / False
        runs it / does not, whatever the levels.
        """
        h, w = image.shape[:2]
        side = float(max(h, w))
        found, turn = [self._raw(image, ROI(w / 2.0, h / 2.0, side, 0.0))], 0.0
        if _best(found[0]) < ORIENTATION_SCORE:
            # BlazeFace sees an upside-down face as an upright one with its mouth for eyes (score 0.65
            # on a 180-degree turned clip, 0.96 in its upright window): search the quarter turns
            for q in (1, 2, 3):
                cand = self._raw(image, ROI(w / 2.0, h / 2.0, side, q * np.pi / 2))
                if _best(cand) > _best(found[0]):
                    found, turn = [cand], q * np.pi / 2
        if far is None:
            far = levels > 1 and (exhaustive or not found[0][2].size)
        far = [self.far._raw(image, ROI(w / 2.0, h / 2.0, side, turn))] if far and self._far_args else []
        for level in range(1, levels):
            if not exhaustive and sum(f[2].size for f in found):
                break
            win = side / 2 ** level
            for cy in _window_centres(h, win):
                for cx in _window_centres(w, win):
                    found.append(self._raw(image, ROI(cx, cy, win, turn)))
        found += far
        boxes = np.concatenate([f[0] for f in found])
        if boxes.shape[0] == 0:
            return []
        kps = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found])
        dets = [Detection(b, k, float(s)) for b, k, s in _weighted_nms(boxes, kps, scores, self.nms_threshold)]
        return sorted(dets, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))


def _best(found):
    """The highest score of one window's candidates (0 when it has none)."""
    return float(found[2].max()) if found[2].size else 0.0


def _window_centres(length, win):
    """Centres of windows of size ``win`` covering [0, length] with half-window strides."""
    if win >= length:
        return [length / 2.0]
    n = int(np.ceil((length - win) / (win / 2))) + 1
    return list(np.linspace(win / 2, length - win / 2, n))


def _iou(b, boxes):
    x0 = np.maximum(b[0], boxes[:, 0])
    y0 = np.maximum(b[1], boxes[:, 1])
    x1 = np.minimum(b[2], boxes[:, 2])
    y1 = np.minimum(b[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda q: (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])  # noqa: E731
    return inter / np.maximum(area(b) + area(boxes) - inter, 1e-12)


def _weighted_nms(boxes, kps, scores, threshold):
    """MediaPipe's weighted NMS: overlapping boxes are averaged with their scores as weights."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    out = []
    alive = np.ones(scores.size, bool)
    for i in range(scores.size):
        if not alive[i]:
            continue
        ov = _iou(boxes[i], boxes) > threshold
        grp = np.flatnonzero(ov & alive)
        alive[grp] = False
        wts = scores[grp][:, None]
        out.append(((boxes[grp] * wts).sum(0) / wts.sum(), (kps[grp] * wts[:, :, None]).sum(0) / wts.sum(),
                    scores[i]))
    return out
