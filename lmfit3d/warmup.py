"""Compile the Numba kernels of ``lmfit3d track`` / ``lmfit3d fit`` ahead of the first real run.

The kernels use ``cache=True``: compiled once, they are loaded from Numba's cache by every later
process (worker processes too).  :func:`warm_up` (run by ``lmfit3d model build``, and again by
``tools/convert_mediapipe.py`` once the networks exist) tracks a short synthetic clip through the
real :func:`lmfit3d.track.track_video` (fitter, smoothing, outputs, meshes, overlay renderer), so
the kernels compile with the argument types of a real run, and runs the MediaPipe front end on one
rendered face when its networks are built.  Kernels of rarely used paths (``capture``, the
NumPy-reference checks) still compile on first use.
"""
import tempfile
import time

import numpy as np

from .landmarks import load_landmark_set
from .media import FrameList
from .predict import Prediction


class _SyntheticLandmarks:
    """A landmark source for a synthetic clip: the model's landmarks projected per frame (float64
    mu and sigma like the networks' predictions), with the predictor interface of track_video."""

    def __init__(self, mu, sigma, vertex_ids):
        self.mu, self.sigma, self.vertex_ids = mu, sigma, vertex_ids
        self.k = 0
        self.timings = {}
        self.tracking = False

    def reset(self):
        self.k = 0

    def track(self, frame):
        mu = self.mu[self.k % len(self.mu)]
        self.k += 1
        return Prediction(mu.copy(), self.sigma.copy(), 0.9, mu.copy(), None)

    # the interface of every face's tracking (lmfit3d.faces): one face, found on the first frame
    def follow(self, frame):
        return self.track(frame) if self.tracking else None

    def detect(self, frame, max_candidates=3, levels=4, exhaustive=False, far=None):
        from .imaging import ROI
        return [ROI(frame.shape[1] / 2.0, frame.shape[0] / 2.0, float(min(frame.shape[:2])), 0.0)]

    def start(self, frame, roi):
        self.tracking = True
        return self.track(frame)

    def get_state(self):
        return (self.tracking,)

    def set_state(self, state=None):
        self.tracking = bool(state and state[0])


def synthetic_clip(model, n_frames=12, size=256, rng=None):
    """(FrameList of grey frames, predictor) of a synthetic face opening its jaw over ``n_frames``."""
    from .synthetic import make_frame, random_params
    rng = rng or np.random.default_rng(0)
    ids = np.asarray(load_landmark_set("dense320"))
    base = random_params(model, rng)
    jaw = list(model.expression_names).index("jawOpen")
    mus = []
    for k in range(n_frames):
        expr = base.expression.copy()
        expr[jaw] = 0.5 * k / max(n_frames - 1, 1)
        mus.append(make_frame(model, base.replace(expression=expr), ids, rng, noise_px=0.3, face_px=size / 2,
                              image_px=size).mu)
    frames = [np.full((size, size, 3), 110, np.uint8) for _ in range(n_frames)]
    return FrameList(frames, fps=25.0, name="warmup"), _SyntheticLandmarks(np.stack(mus), np.full(ids.size, 1.5),
                                                                            ids)


def warm_up(model, front_end=True):
    """Compile (into Numba's cache) the kernels that ``track`` and ``fit`` use; returns seconds spent.

    front_end : also run the MediaPipe front end on a rendered face, when its networks are built
    (``tools/convert_mediapipe.py``); skipped silently otherwise.
    """
    from .track import TrackOptions, track_video
    t0 = time.perf_counter()
    clip, predictor = synthetic_clip(model)
    with tempfile.TemporaryDirectory(prefix="lmfit3d-warmup-") as tmp:
        track_video(clip, tmp, TrackOptions(progress=False, overlay=True, mesh_every=4), model, predictor)
    if front_end:
        warm_front_end(model)
    return time.perf_counter() - t0


def warm_front_end(model):
    """Run the MediaPipe front end (detector, mesh and iris crops) on one rendered face; nothing when
    its networks are not built yet."""
    from .detect import mediapipe_dir
    if not (mediapipe_dir() / "face_landmark.onnx").is_file():
        return
    from .synthetic import render_random_face
    from .track import TrackOptions, make_predictor
    img = render_random_face(model, np.random.default_rng(1), expressive=False, image_px=320, face_px=170.0,
                             yaw_deg=5.0, pitch_deg=5.0, roll_deg=3.0).image
    mp = make_predictor(TrackOptions())
    for _ in range(3):                  # detector, then the ROI from landmarks (both iris eyes)
        mp.track(img)


class count_compilations:
    """Context manager counting the Numba compilations in this process while it is open (``.n``):
    a kernel loaded from Numba's cache is not a compilation, one compiled from its source is
    (batch workers and bench/batch_report.py check that a task compiles nothing)."""

    def __enter__(self):
        from numba.core import event

        outer = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                outer.n += 1

            def on_end(self, ev):
                pass
        self.n = 0
        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event
        event.unregister("numba:compile", self._listener)
        return False
