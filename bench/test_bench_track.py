"""Video pipeline benchmarks (pytest-benchmark), one thread: detect / landmarks / fit / write, end to end.

Run::

    python -m pytest bench/test_bench_track.py -q --benchmark-only
    python bench/track_report.py                    # markdown table with the goals and ratios

Per-frame stages on frames of the 1080p clip ``W040_level_3_happy_029.mp4``:

* ``detect``          BlazeFace on the whole frame (run on the first frame and when tracking is lost);
* ``landmarks_mesh``  face mesh on the tracked ROI (crop + network);
* ``landmarks``       face mesh + both iris crops (``predict``: a still, or ``--iris-both``);
* ``landmarks_track`` ``MediaPipeLandmarks.track`` on consecutive frames: the per-frame landmark cost
                      of video tracking with the default iris policy (one eye per frame, alternating)
                      and the next ROI;
  ``landmarks_track_attention`` the same with MediaPipe's attention mesh (``--backend
                      mediapipe-attention``: one network for mesh, lips, eyes and irises);
* ``fit``             ``Tracker.step`` on the MediaPipe landmarks (470 points, identity and focal held,
                      warm start from the previous frame); ``fit_classic`` the same with J^T J re-use
                      off (``FitConfig.jtj_reuse_rho = inf``, the previous solver);
* ``write``           building and writing one frame's CSV and ARKit CSV rows (68 fitted points, gaze);
* ``decode``          decoding one 1080p frame with imageio/ffmpeg.
* ``end_to_end``      ``track_video`` over ``N_E2E`` pre-decoded frames (both passes: landmarks + identity
                      keyframes, then the held-identity fit and the outputs), per frame;
  ``end_to_end_decode`` the same reading the file; ``end_to_end_no_iris`` pre-decoded, ``--no-iris``.

Baselines in the same run: ``fit`` is compared with ``decode`` and ``landmarks`` (what dominates a frame),
and with ``fit_classic``.
Goals (issue 4): fit <= 0.5 ms, landmarks <= 3.5 ms, end to end >= 100 frames/s without decoding.
"""
import copy
import dataclasses
import inspect
import itertools

import numpy as np
import pytest

from lmfit3d.fit import Tracker
from lmfit3d.paths import shared_media_dir
from lmfit3d.detect import FaceDetector
from lmfit3d.predict import MediaPipeLandmarks
from lmfit3d.media import FrameList, VideoReader
from lmfit3d.track import TrackOptions, track_video

CLIP = shared_media_dir() / "W040_level_3_happy_029.mp4"
N_WARM = 8
N_FIT = 16              # fit: frames N_WARM .. N_WARM + N_FIT - 1, in turn (one frame's path is not typical)
N_E2E = 80


@pytest.fixture(scope="module")
def frames():
    return list(itertools.islice(iter(VideoReader(CLIP)), N_E2E))


@pytest.fixture(scope="module")
def tracked(frames, model):
    """Landmarks of the first frames and a tracker warm at frame N_WARM (identity from keyframes)."""
    mp = MediaPipeLandmarks()
    preds = [mp.track(f) for f in frames[:N_WARM + N_FIT]]
    t = Tracker(model, mp.vertex_ids, (frames[0].shape[1], frames[0].shape[0]))
    for p in preds[:N_WARM]:
        t.step(p.mu, p.sigma)
    held = Tracker(model, mp.vertex_ids, (frames[0].shape[1], frames[0].shape[0]), t.focal, TrackOptions().config(),
                   t.identity)
    for p in preds[:N_WARM]:
        held.step(p.mu, p.sigma)
    return mp, preds, held


def _info(benchmark, kind, goal_ms=None):
    benchmark.extra_info.update(kind=kind, goal_ms=goal_ms)


def test_detect(benchmark, frames):
    det = FaceDetector()
    _info(benchmark, "detect")
    out = benchmark(det, frames[N_WARM])
    assert len(out) == 1


def test_landmarks_mesh(benchmark, frames, tracked):
    mp, preds, _ = tracked
    mesh_only = MediaPipeLandmarks(iris=False)
    _info(benchmark, "landmarks_mesh", 3.5)
    pred = benchmark(mesh_only.predict, frames[N_WARM], preds[N_WARM - 1].roi)
    assert pred.presence > 0.5 and np.isnan(pred.points[468:]).all()


def test_landmarks(benchmark, frames, tracked):
    mp, preds, _ = tracked
    _info(benchmark, "landmarks", 3.5)
    pred = benchmark(mp.predict, frames[N_WARM], preds[N_WARM - 1].roi)
    assert pred.presence > 0.5 and np.isfinite(pred.mu).all()


def test_landmarks_track(benchmark, frames):
    mp = MediaPipeLandmarks()
    seq = itertools.cycle(frames[N_WARM:])
    mp.track(frames[N_WARM - 1])
    _info(benchmark, "landmarks_track", 3.5)
    pred = benchmark(lambda: mp.track(next(seq)))
    assert pred is not None and pred.presence > 0.5 and np.isfinite(pred.mu).all()


def test_landmarks_track_attention(benchmark, frames):
    mp = MediaPipeLandmarks(attention=True)
    seq = itertools.cycle(frames[N_WARM:])
    mp.track(frames[N_WARM - 1])
    _info(benchmark, "landmarks_track_attention", 3.5)
    pred = benchmark(lambda: mp.track(next(seq)))
    assert pred is not None and pred.presence > 0.5 and np.isfinite(pred.mu).all()


@pytest.mark.parametrize("classic", [False, True], ids=["reuse", "classic"])
def test_fit(benchmark, tracked, model, classic):
    """``fit``; ``fit_classic``: the same frames with J^T J re-use off (the previous solver, a same-run
    baseline).  Each call fits the next of N_FIT consecutive frames from its own warm state (the
    tracker's state after the frame before), so the median is a typical frame's, not one frame's."""
    _, preds, held = tracked
    warm = copy.deepcopy(held)
    states = []
    for p in preds[N_WARM:N_WARM + N_FIT]:
        states.append((warm.x.copy(), warm.prev.copy(), p))
        warm.step(p.mu, p.sigma)
    tr = held
    if classic:                 # the same warm states, solved by a tracker with the re-use off
        cfg = dataclasses.replace(held.cfg, jtj_reuse_rho=float("inf"))
        tr = Tracker(model, held.table.vertex_ids, held.image_size, held.focal, cfg, held.identity)
    turn = itertools.cycle(states)
    fits = []

    def step():
        x0, prev0, p = next(turn)
        tr.x, tr.prev = x0.copy(), prev0.copy()
        fits.append(tr.step(p.mu, p.sigma))
        return fits[-1]

    _info(benchmark, "fit_classic" if classic else "fit", None if classic else 0.5)
    benchmark(step)
    n = min(len(fits), N_FIT)        # pytest-benchmark may call fewer times (slow machine, --benchmark-disable)
    its = sum(f.iterations for f in fits[:n])
    jtj = sum(f.jtj_evals for f in fits[:n])
    benchmark.extra_info.update(iterations=round(its / n, 2), jtj_evals=round(jtj / n, 2))
    assert all(f.status >= 0 for f in fits)
    # classic: a fresh J^T J after every accepted step (a rejected one re-uses it with more damping)
    assert (n <= jtj <= its) if classic else (jtj < its)


def test_decode(benchmark):
    reader = iter(VideoReader(CLIP))
    next(reader)
    _info(benchmark, "decode")
    frame = benchmark.pedantic(lambda: next(reader), rounds=60, iterations=1)
    assert frame.shape == (1080, 1920, 3)


def test_write(benchmark, model, tracked, tmp_path):
    """One frame's output rows (CSV + ARKit CSV) through the same writer the tracker uses."""
    from lmfit3d.outputs import FrameRows, _Outputs
    _, preds, held = tracked
    fit = held.step(preds[N_WARM].mu, preds[N_WARM].sigma)
    outs = _Outputs(tmp_path, "bench", model, 25.0, TrackOptions())
    rows = FrameRows(model, held.identity, held.focal, (1920, 1080), 25.0)

    def write():
        row, ark, _ = rows(N_WARM, fit, preds[N_WARM].mu, 1.0)
        outs.write_frame(N_WARM, row, ark)

    _info(benchmark, "write")
    benchmark(write)
    outs.abort()


@pytest.mark.parametrize("decode, iris", [(False, True), (True, True), (False, False)],
                         ids=["frames", "decode", "frames-no-iris"])
def test_end_to_end(benchmark, frames, model, tmp_path, decode, iris, tracked):
    """``track_video`` per frame.  The rounds re-use one fit context (``context=``, as the videos of a
    batch may): what a revision with the process-wide caches of earlier versions (no ``context``
    argument) re-used implicitly, so that ab_report compares like with like."""
    source = VideoReader(CLIP) if decode else FrameList(frames, 25.0, "bench")
    opt = TrackOptions(progress=False, max_frames=N_E2E, iris=iris)
    kw = {}
    if "context" in inspect.signature(track_video).parameters:
        from lmfit3d.context import FitContext
        kw["context"] = FitContext(model, tracked[0].vertex_ids, opt.config().sparsity_threshold_mm)
    _info(benchmark, "end_to_end_decode" if decode else ("end_to_end" if iris else "end_to_end_no_iris"))
    s = benchmark.pedantic(track_video, args=(source, tmp_path, opt, model), kwargs=kw, rounds=3, iterations=1)
    benchmark.extra_info.update(frames=s.frames, stage_ms={k: 1e3 * v / s.frames for k, v in s.timings.items()})
    assert s.frames == N_E2E and s.success == N_E2E
