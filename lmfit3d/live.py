"""Live capture (``lmfit3d live``): a camera, a stream or a file in; ARKit blendshapes and head pose out,
every frame, to Live Link Face (UDP), VMC (OSC) and an optional recording.

* **Sources** (:class:`LiveSource`): ffmpeg through imageio-ffmpeg; a camera (v4l2, avfoundation or
  dshow), a stream URL, or a file played at its own frame rate.  A reader thread decodes and hands
  the newest frame over in a one-frame slot: when tracking falls behind, the frame it has not taken
  is replaced (a *drop*, counted), never queued.  ``pace=False`` (``--as-fast-as-possible``) reads a
  file frame by frame in the tracking thread instead (no drops).  No frame for ``stall_s`` seconds:
  a one-line error.
* **Causal tracking** (:class:`LiveTracker`): the landmark front end and :class:`lmfit3d.fit.Tracker`
  frame by frame, as ``track``'s first pass: identity (and the focal length when unknown) refitted on
  keyframes until the keyframe set is full or ``identity_seconds`` have passed, then held
  (``--identity FILE.npz`` holds one from ``track`` from the start).  No smoothing over the future:
  each landmark's sigma is widened by the shot's frame-to-frame noise estimated from the frames so
  far (``temporal.frame_noise_variance``'s estimator, causal), with the temporal term of ``track``'s
  second pass (weight 0).
* **Outputs** (:mod:`lmfit3d.streams`): Live Link Face packets, VMC bundles; ``record``: the
  ``NAME.csv``, ``NAME_arkit.csv`` and ``NAME.npz`` of ``track`` (``lmfit3d.outputs``), renamed into
  place when capture ends (end of input, Ctrl-C, SIGTERM), removed on an error.
"""
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fit import Tracker
from .media import _check_out_dir, _short
from .outputs import FrameRows, RunSummary, _Outputs
from .paths import read_npz, work_dir
from .streams import (LIVELINK_PORT, VMC_PORT, UdpSender, axis_angle_quaternion, encode_livelink,
                      livelink_values, parse_destination, vmc_bundle)
from .temporal import is_cut
from .track import TrackOptions, make_predictor

NOISE_WINDOW = 60           # frames of the running frame-noise estimate


@dataclass(frozen=True)
class LiveOptions:
    """Options of :func:`run_live` (CLI flags of ``lmfit3d live``).

    ``track``: the landmark front end's and the fitter's options, those of ``lmfit3d track`` (``backend``,
    ``iris``, ``focal_px``; ``max_frames``: stop after that many frames tracked)."""
    camera: int = None
    source: str = None
    pace: bool = True
    track: TrackOptions = TrackOptions(progress=False)
    identity_file: str = None
    identity_seconds: float = 10.0
    calibrate_neutral: float = 0.0
    livelink: str = None
    subject: str = "lmfit3d"
    vmc: str = None
    record: str = None
    stall_s: float = 5.0
    status: bool = True
    refit_worker: bool = True

    def __post_init__(self):
        if (self.camera is None) == (self.source is None):
            raise ValueError("give one of --camera N or --source FILE|URL")
        if self.camera is not None and self.camera < 0:
            raise ValueError(f"--camera must be >= 0, got {self.camera}")
        for name in ("identity_seconds", "calibrate_neutral"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 seconds, got {v}")
        if not (self.stall_s > 0):
            raise ValueError(f"stall_s must be > 0, got {self.stall_s}")
        if not self.subject:
            raise ValueError("--subject must not be empty")


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------

def camera_input(index):
    """(ffmpeg input parameters, input name) of camera ``index`` on this platform."""
    if sys.platform.startswith("linux"):
        return ["-f", "v4l2"], f"/dev/video{index}"
    if sys.platform == "darwin":
        return ["-f", "avfoundation", "-framerate", "30"], f"{index}:none"
    if sys.platform.startswith("win"):
        import re
        import subprocess

        import imageio_ffmpeg
        proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-list_devices", "true", "-f",
                               "dshow", "-i", "dummy"], capture_output=True, text=True, timeout=20)
        names = re.findall(r'"([^"]+)"\s*\(video\)', proc.stderr)
        if index >= len(names):
            raise ValueError(f"camera {index}: not found ({len(names)} video devices)")
        return ["-f", "dshow"], f"video={names[index]}"
    raise ValueError(f"--camera is not supported on {sys.platform} (use --source)")


class LiveSource:
    """Frames of a camera, stream URL or video file, decoded by ffmpeg (imageio-ffmpeg).

    Attributes: ``name``, ``fps``, ``size`` (width, height), ``drops`` (frames replaced before
    tracking took them).  Iterating yields ``(index, frame (H, W, 3) uint8, t_ready)``: the source's
    frame number and the ``time.perf_counter()`` at which the decoded frame was ready.
    """

    def __init__(self, camera=None, source=None, pace=True, stall_s=5.0):
        import imageio_ffmpeg
        if camera is not None:
            params, path = camera_input(camera)
            self.name, self.kind = f"camera{camera}", "camera"
            self.label = f"camera {camera} ({path})"
        else:
            path, params = str(source), []
            self.label = path
            self.kind = "stream" if "://" in path else "file"
            if self.kind == "file" and not Path(path).exists():
                raise ValueError(f"{path}: file not found")
            self.name = Path(path).stem if self.kind == "file" else "stream"
        self.pace = pace or self.kind != "file"       # a camera or stream cannot be slowed down
        self.stall_s = stall_s
        self.drops = 0
        self._gen = imageio_ffmpeg.read_frames(path, input_params=params)
        try:
            meta = next(self._gen)
        except Exception as exc:
            self._gen.close()
            raise ValueError(f"{self.label}: cannot open ({_ffmpeg_reason(exc)})") from None
        self.size = tuple(int(v) for v in meta["size"])
        self.fps = float(meta.get("fps") or 30.0)
        self._slot = None
        self._cond = threading.Condition()
        self._done = False
        self._error = None
        self._stop = False

    def _frame(self, raw):
        w, h = self.size
        return np.frombuffer(raw, np.uint8).reshape(h, w, 3)

    def _reader(self):
        """Reader thread: decode, pace a file at its frame rate, keep the newest frame in the slot."""
        t0 = time.perf_counter()
        try:
            for i, raw in enumerate(self._gen):
                if self._stop:
                    break
                if self.kind == "file":
                    wait = t0 + i / self.fps - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                frame = self._frame(raw)
                with self._cond:
                    if self._slot is not None:
                        self.drops += 1
                    self._slot = (i, frame, time.perf_counter())
                    self._cond.notify()
        except Exception as exc:
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self):
        if not self.pace:
            for i, raw in enumerate(self._gen):
                yield i, self._frame(raw), time.perf_counter()
            return
        threading.Thread(target=self._reader, name="lmfit3d-live-reader", daemon=True).start()
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._slot is not None or self._done, self.stall_s):
                    raise ValueError(f"{self.label}: no frame for {self.stall_s:g} s (source stalled)")
                item, self._slot = self._slot, None
                if item is None:
                    if self._error is not None:
                        raise ValueError(f"{self.label}: cannot decode ({_ffmpeg_reason(self._error)})")
                    return
            yield item

    def close(self):
        self._stop = True
        if not self.pace:
            self._gen.close()


def _ffmpeg_reason(exc):
    """The informative line of an imageio-ffmpeg error (ffmpeg's last stderr line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("===")]
    return _short(lines[-1] if lines else exc)


# --------------------------------------------------------------------------------------------
# causal tracking
# --------------------------------------------------------------------------------------------

class CausalNoise:
    """Running frame-to-frame landmark noise of the current shot (variance, pixels^2 per axis): the
    estimator of ``temporal.frame_noise_variance`` (median over landmarks of |second difference|^2
    / 12 ln 2) over the shot's last ``NOISE_WINDOW`` frames, from past frames only."""

    def __init__(self, window=NOISE_WINDOW):
        self.window = window
        self.reset()

    def reset(self):
        self.last = []
        self.meds = []

    def __call__(self, mu):
        if self.last and np.array_equal(mu, self.last[-1], equal_nan=True):
            return self.value()                # a repeated frame
        if len(self.last) == 2:
            d2 = ((mu - 2 * self.last[1] + self.last[0]) ** 2).sum(1)
            d2 = d2[np.isfinite(d2)]
            if d2.size:
                self.meds = (self.meds + [float(np.median(d2))])[-self.window:]
        self.last = (self.last + [mu])[-2:]
        return self.value()

    def value(self):
        return float(np.median(self.meds)) / (12.0 * np.log(2.0)) if self.meds else 0.0


_WORKER = {}


def _refit_init(model_path, vertex_ids, image_size, config):
    """Worker process: load the model once (its Numba kernels come from the cache)."""
    from .model import load_model
    from .context import FitContext
    model = load_model(model_path)
    _WORKER["args"] = (model, vertex_ids, image_size, config)
    _WORKER["context"] = FitContext(model, vertex_ids, config.sparsity_threshold_mm)     # for every refit


def _refit_job(identity, focal, identity_fixed, focal_known, keyframes):
    from .fit import refit_keyframes
    model, ids, size, cfg = _WORKER["args"]
    return refit_keyframes(model, ids, size, cfg, identity, focal, identity_fixed, focal_known, keyframes,
                           context=_WORKER["context"])


class BackgroundRefit:
    """The live tracker's identity / focal refits in a worker process (the second core): the capture
    loop never waits for one (a refit of the keyframes takes 70-840 ms; run in the loop it dropped up to
    50 frames of a 60 frames/s source in the first seconds).  :meth:`poll` once a frame hands a
    finished refit to the tracker and starts the next when keyframes are waiting."""

    def __init__(self, tracker, model_path):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        self.tracker = tracker
        tracker.refit_in_step = False
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_refit_init,
                                        initargs=(str(model_path), tracker.table.vertex_ids, tracker.image_size,
                                                  tracker.cfg))
        self.job = None
        self.refits = 0
        self.failed = False

    def start(self):
        """Start the worker process now (it loads the model while the capture warms up)."""
        self.pool.submit(int, 0)

    def poll(self, accept=True):
        """Apply a finished refit (when ``accept``) and submit the waiting keyframes."""
        tr = self.tracker
        if self.failed:
            return
        if self.job is not None and self.job.done():
            try:
                identity, focal, xs = self.job.result()
            except Exception:           # the worker died (e.g. a script without a __main__ guard)
                self.job, self.failed = None, True
                tr.refit_in_step = True     # refits back in the loop, the waiting keyframes now
                if tr.refit_pending:
                    tr.refit_identity()
                    tr.refit_pending = False
                return
            self.job = None
            self.refits += 1
            if accept:
                tr.apply_refit(identity, focal, xs)
        if self.job is None and tr.refit_pending and not (tr.identity_fixed and tr.focal_known):
            self.job = self.pool.submit(_refit_job, tr.identity, tr.focal, tr.identity_fixed, tr.focal_known,
                                        list(tr.keyframes))
            tr.refit_pending = False

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


class LiveTracker:
    """Landmarks + :class:`lmfit3d.fit.Tracker`, one frame at a time, from past frames only.

    ``step(frame, t)`` returns ``(prediction, fit)`` (either None without a face); ``t`` (seconds since
    the start) decides when the identity is held (``identity_seconds``).  With ``model_path`` (the
    model file) the identity refits run in a worker process (:class:`BackgroundRefit`).
    """

    def __init__(self, model, image_size, options, predictor=None, identity=None, focal=None, model_path=None):
        opt = options.track
        self.predictor = predictor or make_predictor(opt)
        self.cfg = opt.config()
        focal = opt.focal_px if opt.focal_px is not None else focal
        self.tracker = Tracker(model, self.predictor.vertex_ids, image_size, focal, self.cfg, identity)
        self.identity_seconds = options.identity_seconds
        self.noise = CausalNoise()
        self.prev_c = None
        self.cut_threshold = opt.cut_threshold
        self.background = (BackgroundRefit(self.tracker, model_path)
                           if model_path is not None and not (self.tracker.identity_fixed and self.tracker.focal_known)
                           else None)

    def close(self):
        if self.background is not None:
            self.background.close()

    def warm(self, model, image_size):
        """Run the front end and a throwaway tracker once on a rendered face before the capture starts:
        the first real frame then pays no session start-up or kernel loading (about 1 s, which dropped
        the first second of a source), and the refit worker starts meanwhile."""
        from .synthetic import render_random_face
        if self.background is not None:
            self.background.start()
        w, h = image_size
        side = int(max(64, min(w, h)))
        img = render_random_face(model, np.random.default_rng(1), expressive=False, image_px=side,
                                 face_px=0.6 * side, yaw_deg=5.0, pitch_deg=5.0, roll_deg=3.0).image
        frame = np.zeros((h, w, 3), np.uint8)
        y0, x0 = (h - side) // 2, (w - side) // 2
        frame[y0:y0 + side, x0:x0 + side] = img
        pred = None
        for _ in range(2):
            pred = self.predictor.track(frame) or pred
        self.predictor.reset()
        if pred is not None:
            tr = self.tracker
            scratch = Tracker(tr.model, self.predictor.vertex_ids, image_size, tr.focal, self.cfg, tr.identity.copy(),
                              context=tr.context)
            for _ in range(2):
                scratch.step(pred.mu, np.where(np.isfinite(pred.sigma), pred.sigma, 1.0))

    @property
    def held(self):
        t = self.tracker
        return (t.identity_fixed and t.focal_known) or len(t.keyframes) >= self.cfg.max_keyframes

    def step(self, frame, t):
        tr = self.tracker
        if self.background is not None:
            self.background.poll()
        if not self.held and t >= self.identity_seconds and tr.keyframes:
            tr.identity_fixed = tr.focal_known = True           # hold what the keyframes gave
        pred = self.predictor.track(frame)
        if pred is None:
            self.prev_c = None
            self.noise.reset()
            tr.reset()
            return None, None
        self.prev_c, cut = is_cut(pred.mu, self.prev_c, self.cut_threshold)
        if cut:
            tr.reset()
            self.noise.reset()
        s2 = self.noise(np.asarray(pred.mu, np.float64))
        sigma = np.where(np.isfinite(pred.sigma), pred.sigma, 1.0)
        fit = tr.step(pred.mu, np.sqrt(sigma * sigma + s2) if s2 > 0 else sigma)
        return pred, fit


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------

class Recorder:
    """``--record``: ``track``'s CSV, ARKit CSV and NPZ of every tracked frame (``lmfit3d.outputs``),
    streamed into the run's private folder (``paths.work_dir``) and moved into place as one set by
    :meth:`commit`; :meth:`abort` removes them."""

    def __init__(self, out_dir, name, model, fps, vertex_ids):
        _check_out_dir(out_dir)
        self.model = model
        self.fps = fps
        self.vids = np.asarray(vertex_ids)
        self._stack = ExitStack()
        work = self._stack.enter_context(work_dir(out_dir, name))
        self.outs = _Outputs(out_dir, name, model, fps, TrackOptions(progress=False), work)
        self.rows = None
        self._key = None
        self.data = {k: [] for k in ("frame_index", "timestamp_s", "expression", "rotations", "translation",
                                     "success", "confidence", "cost", "iterations", "status", "landmarks68",
                                     "landmarks68_3d", "fit_rms_px", "mu", "sigma", "landmarks_fitted", "latency_ms")}

    def frame_rows(self, identity, focal, image_size):
        key = (identity.tobytes(), focal)
        if key != self._key:                   # identity / focal refitted: 68 points and camera anew
            self.rows = FrameRows(self.model, identity, focal, image_size, self.fps, derive_gaze=True)
            self._key = key
        return self.rows

    def write(self, f, pred, fit, rows, latency_ms):
        """Append frame ``f`` (source frame number) with its prediction and fit (either may be None)."""
        m, L = self.model, self.vids.size
        mu = pred.mu if pred is not None else np.full((L, 2), np.nan)
        presence = pred.presence if pred is not None else 0.0
        row, ark, vals = rows(f, fit, mu, presence)
        self.outs.write_frame(f, row, ark)
        d = self.data
        ok = vals is not None
        d["frame_index"].append(f)
        d["timestamp_s"].append(f / self.fps)
        d["success"].append(ok)
        d["expression"].append(fit.params.expression if ok else np.full(m.n_expression, np.nan))
        d["rotations"].append(fit.params.rotations if ok else np.full((m.n_joints, 3), np.nan))
        d["translation"].append(fit.params.translation if ok else np.full(3, np.nan))
        d["cost"].append(fit.cost if ok else np.nan)
        d["iterations"].append(fit.iterations if ok else 0)
        d["status"].append(fit.status if ok else -2)
        d["confidence"].append(vals["confidence"] if ok else 0.0)
        d["landmarks68"].append(vals["landmarks68"] if ok else np.full((68, 2), np.nan))
        d["landmarks68_3d"].append(vals["landmarks68_3d"] if ok else np.full((68, 3), np.nan))
        d["fit_rms_px"].append(vals["fit_rms_px"] if ok else np.nan)
        d["mu"].append(np.asarray(mu, np.float32))
        d["sigma"].append(np.asarray(pred.sigma if pred is not None else np.full(L, np.nan), np.float32))
        d["landmarks_fitted"].append(np.asarray(fit.uv if ok else np.full((L, 2), np.nan), np.float32))
        d["latency_ms"].append(latency_ms)

    def commit(self, identity, focal, image_size, neutral):
        d = {k: np.array(v) for k, v in self.data.items()}
        rot = d.pop("rotations").reshape(-1, self.model.n_joints, 3)
        npz = dict(d, identity=identity, focal_px=np.array(focal), image_size=np.array(image_size),
                   fps=np.array(self.fps), expression_names=np.array(self.model.expression_names),
                   joint_names=np.array(self.model.joint_names[1:]), root_rotation=rot[:, 0],
                   joint_rotations=rot[:, 1:], vertex_ids=self.vids, neutral_arkit=neutral,
                   units=np.array("mm"))
        try:
            self.outs.commit(npz)
        finally:
            self._stack.close()
        return [str(p) for p in self.outs.final]

    def abort(self):
        try:
            self.outs.abort()
        finally:
            self._stack.close()


class Neutral:
    """``--calibrate-neutral S``: the mean ARKit weights over the first S seconds of tracked frames,
    then removed from every frame: w' = clip((w - n) / (1 - n), 0, 1), as VTuber tools calibrate."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.sum = np.zeros(52)
        self.n = 0
        self.t0 = None
        self.value = None if seconds > 0 else np.zeros(52)

    def __call__(self, weights, t):
        if self.value is None:
            self.t0 = t if self.t0 is None else self.t0
            if t - self.t0 < self.seconds:
                self.sum += weights
                self.n += 1
                return weights
            self.value = np.clip(self.sum / max(self.n, 1), 0.0, 0.95)
        return np.clip((weights - self.value) / (1.0 - self.value), 0.0, 1.0)


class Senders:
    """The network outputs of one capture (Live Link Face, VMC); destinations checked when built."""

    def __init__(self, options, fps):
        self.fps = fps
        self.subject = options.subject
        self.livelink = self.vmc = None
        ll = parse_destination(options.livelink, LIVELINK_PORT, "--livelink") if options.livelink else None
        vm = parse_destination(options.vmc, VMC_PORT, "--vmc") if options.vmc else None
        if vm is not None:
            from importlib.util import find_spec
            if find_spec("pythonosc") is None:
                raise ValueError("--vmc needs python-osc (pip install python-osc, or the `live` extra)")
        import uuid
        self.device_id = str(uuid.uuid4())
        self.livelink = UdpSender(ll[2]) if ll else None
        self.vmc = UdpSender(vm[2]) if vm else None

    def send(self, f, t, weights, angles_deg, rotations):
        """Send one frame: ARKit weights (52,), head/eye angles (9,) degrees, the local joint rotations
        (J, 3) axis-angle (root, neck, head, eye_L, eye_R: the head is root x neck x head, the eyes are
        in the head)."""
        if self.livelink is not None:
            self.livelink.send(encode_livelink(livelink_values(weights, angles_deg), f, self.fps, self.subject,
                                               self.device_id))
        if self.vmc is not None:
            from .rotation import matrix_to_axis_angle, rodrigues
            head = rodrigues(rotations[0]) @ rodrigues(rotations[1]) @ rodrigues(rotations[2])
            q = axis_angle_quaternion(matrix_to_axis_angle(head))
            eyes = [axis_angle_quaternion(rotations[j]) for j in (3, 4)]
            self.vmc.send(vmc_bundle(weights, q, eyes, t))

    @property
    def errors(self):
        return sum(s.errors for s in (self.livelink, self.vmc) if s is not None)

    def close(self):
        for s in (self.livelink, self.vmc):
            if s is not None:
                s.close()


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------

@dataclass
class LiveSummary(RunSummary):
    """What :func:`run_live` did: frames tracked (``outputs.RunSummary``) and dropped, latencies (ms,
    decoded frame to packets sent), CPU time of the tracking thread per frame (ms), how it ended."""
    name: str = ""
    drops: int = 0
    send_errors: int = 0
    frame_index: list = field(default_factory=list)
    latency_ms: list = field(default_factory=list)
    cpu_ms: list = field(default_factory=list)
    held_from: int = None
    seconds: float = 0.0
    ended: str = "end of input"

    def drops_after(self, skip):
        """Frames dropped after the first ``skip`` tracked frames (gaps in ``frame_index``)."""
        idx = np.asarray(self.frame_index[skip:])
        return int((np.diff(idx) - 1).sum()) if idx.size > 1 else 0

    def percentile(self, q, skip=0):
        v = np.asarray(self.latency_ms[skip:])
        return float(np.percentile(v, q)) if v.size else float("nan")


class _Stop(Exception):
    """SIGTERM: end the capture as Ctrl-C does."""


def _on_sigterm(signum, frame):
    raise _Stop()


def _read_identity(path, model):
    data = read_npz(path, required=("identity",))
    ident = np.asarray(data["identity"], np.float64).ravel()
    if ident.size != model.n_identity or not np.isfinite(ident).all():
        raise ValueError(f"{path}: identity must hold {model.n_identity} finite values, got {ident.size}")
    focal = data.get("focal_px")
    focal = float(np.ravel(focal)[0]) if focal is not None and np.ravel(focal).size else None
    return ident, (focal if focal is not None and np.isfinite(focal) and focal > 0 else None)


def run_live(options, model=None, predictor=None, status=None):
    """Capture until the input ends, ``max_frames``, Ctrl-C or SIGTERM; returns a :class:`LiveSummary`.

    Parameters
    ----------
    options : LiveOptions
    model : FaceModel (default: the cached model); predictor : landmark front end (default from options).
    status : callable(str) for the live status line (None: silent).
    """
    from .model import default_model_path, load_model
    opt = options
    # identity refits in a worker process, which loads the cached model itself (a model object given
    # here may be another one: then the refits stay in the loop)
    # (only for a paced source: as fast as possible, nothing is dropped and the refits stay in order)
    model_path = default_model_path() if model is None and opt.refit_worker and opt.pace else None
    model = model or load_model()
    ident, focal = _read_identity(opt.identity_file, model) if opt.identity_file else (None, None)
    senders = Senders(opt, 30.0)               # bad destinations fail before the source opens
    try:
        src = LiveSource(opt.camera, opt.source, opt.pace, opt.stall_s)
    except BaseException:
        senders.close()
        raise
    senders.fps = src.fps
    try:
        live = LiveTracker(model, src.size, opt, predictor, ident, focal, model_path)
    except BaseException:
        src.close()
        senders.close()
        raise
    try:
        live.warm(model, src.size)
    except BaseException:
        src.close()
        senders.close()
        live.close()
        raise
    rec = Recorder(opt.record, src.name, model, src.fps, live.predictor.vertex_ids) if opt.record else None
    summary = LiveSummary(src.name)
    old = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        _loop(src, live, senders, rec, opt, summary, status)
    except (KeyboardInterrupt, _Stop) as exc:
        summary.ended = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
    except BaseException:
        if rec is not None:
            rec.abort()
        raise
    finally:
        src.close()
        senders.close()
        live.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    summary.drops = src.drops
    summary.send_errors = senders.errors
    if rec is not None:
        t = live.tracker
        summary.outputs = rec.commit(t.identity.copy(), t.focal, src.size, _neutral_of(summary))
    return summary


def _neutral_of(summary):
    n = getattr(summary, "_neutral", None)
    return np.zeros(52) if n is None or n.value is None else n.value


def _loop(src, live, senders, rec, opt, summary, status):
    neutral = Neutral(opt.calibrate_neutral)
    summary._neutral = neutral
    rows = None
    t_start = time.perf_counter()
    last_status = t_start
    stamps = []
    for f, frame, t_ready in src:
        if opt.track.max_frames is not None and summary.frames >= opt.track.max_frames:
            break
        c0 = time.thread_time()
        t = f / src.fps
        pred, fit = live.step(frame, t)
        tr = live.tracker
        if rows is None:                        # ARKit values only: identity and focal do not matter
            rows = FrameRows(tr.model, tr.identity, tr.focal, src.size, src.fps, derive_gaze=True)
        if fit is not None and fit.status >= 0:
            _, weights, angles, _ = rows.arkit_values(fit.params)
            senders.send(f, t, neutral(weights, t), angles, fit.params.rotations)
            summary.success += 1
        latency = (time.perf_counter() - t_ready) * 1e3
        summary.latency_ms.append(latency)
        summary.frame_index.append(f)
        summary.cpu_ms.append((time.thread_time() - c0) * 1e3)
        if summary.held_from is None and live.held:
            summary.held_from = summary.frames
        summary.frames += 1
        if rec is not None:
            rec.write(f, pred, fit, rec.frame_rows(tr.identity, tr.focal, src.size), latency)
        now = time.perf_counter()
        stamps = (stamps + [now])[-31:]
        if status is not None and now - last_status >= 0.5 and len(stamps) > 1:
            last_status = now
            status(f"{src.name}: frame {f}, {(len(stamps) - 1) / (stamps[-1] - stamps[0]):.1f} fps, latency "
                   f"{np.median(summary.latency_ms[-30:]):.1f} ms, dropped {src.drops}"
                   + ("" if live.held else ", refining identity"))
    summary.seconds = time.perf_counter() - t_start
