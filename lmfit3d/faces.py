"""Every face of a video (pass 1 of :func:`lmfit3d.track.track_video` for several faces): the
disk-backed landmark stores, one follower state and one identity tracker per face track, and the
association of tracks into faces with stable ids.

A *tracklet* is one face followed without a break: it starts at a detection (the first frame, after
a scene cut, and the newcomer search every ``DETECT_EVERY`` frames, with small windows every
``DEEP_EVERY`` frames) and ends when the landmark network's face score drops, at a scene cut
(:func:`scene_cut` on a grey thumbnail of the frame, or a jump of its landmarks,
:func:`lmfit3d.temporal.is_cut`), or when its landmarks fall onto a face followed since earlier (two
tracks converged).  Each live tracklet occupies a *slot* (a landmark store of its own; the first
face uses slot 0, as the single-face path does) and has its own real-time :class:`lmfit3d.fit.Tracker`
refitting its identity on its own keyframes.

After pass 1, :func:`assign_faces` links tracklets into faces by the fitted identity (after an
occlusion, a cut or leaving the frame): a tracklet joins the face whose identity is nearest
(:func:`identity_distance`, mm over the landmark vertices) when it is under ``REID_THRESHOLD_MM``
(learnt on renders by ``bench/reid_threshold.py``) and the face is not visible at the same time;
else it starts a new face.  Faces are numbered by screen presence (the sum over frames of the face's
size): face 0 is the main face.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .paths import new_file, reserve
from .temporal import is_cut

DETECT_EVERY = 10        # frames between newcomer searches of the whole frame while faces are followed
DEEP_EVERY = 100         # frames between newcomer searches that include small windows (slow: ~35 windows)
MIN_FACE_FRAMES = 5      # a tracklet this short that matches no face is dropped (a spurious detection)
SCENE_CUT_GREY = 30.0    # mean absolute difference (0..255) of 16 x 16 grey thumbnails at a scene cut
# re-identification (:func:`reid_score`): units of the identity distance (mm RMS over the landmark
# vertices) and of the colour distance (RGB 0..1) whose sum is 1 at the threshold; learnt on renders
# (bench/reid_threshold.py: same person / different people, pass-1 tracklets)
REID_IDENTITY_MM = 4.0
REID_COLOUR = 0.08


def _memmap(path, shape):
    """A float32 array of ``shape`` mapped to the new file ``path`` (created exclusively, its disk
    space allocated at once: a full disk is an OSError here, not a SIGBUS later)."""
    new_file(path)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    reserve(path, os.path.getsize(path))
    return arr


class LandmarkStore:
    """Pass 1's disk-backed landmark array (F, L, 6): mu, sigma, presence, fitted uv; grows by doubling.

    ``fill_to``: frames [0, fill_to) are set to NaN at once (a store started mid-video)."""

    def __init__(self, path, cap, n_landmarks, fill_to=0):
        self.path = Path(path)
        self.arr = _memmap(self.path, (max(cap, fill_to, 1), n_landmarks, 6))
        for a in range(0, fill_to, 256):
            self.arr[a:min(fill_to, a + 256)] = np.nan

    def put(self, f, rec):
        if f >= self.arr.shape[0]:
            tmp = self.path.with_suffix(".grow.npy")
            new = _memmap(tmp, (max(2 * f, 64),) + self.arr.shape[1:])
            new[:f] = self.arr[:f]
            new.flush()
            self.arr = None
            os.replace(tmp, self.path)
            self.arr = new
        self.arr[f] = rec

    def close(self):
        self.arr = None


def scene_cut(frame, prev):
    """Grey 16 x 16 thumbnail (float32) of an (H, W, 3) frame and whether it differs from ``prev``
    (None: the first frame) by more than ``SCENE_CUT_GREY`` on average (a scene cut)."""
    h, w = frame.shape[:2]
    ys = ((np.arange(32) + 0.5) * h / 32).astype(np.int64)
    xs = ((np.arange(32) + 0.5) * w / 32).astype(np.int64)
    g = frame[ys[:, None], xs[None, :]].astype(np.float32).mean(2)
    thumb = g.reshape(16, 2, 16, 2).mean((1, 3))
    return thumb, prev is not None and float(np.abs(thumb - prev).mean()) > SCENE_CUT_GREY


def _box(mu):
    return np.nanmin(mu, 0), np.nanmax(mu, 0)


def _inside(c, mu):
    lo, hi = _box(mu)
    return bool(np.all((c >= lo) & (c <= hi)))


@dataclass
class Tracklet:
    """One face followed without a break: frames ``start..end`` in landmark store ``slot``; its
    follower ``state``, identity ``tracker`` (pass 1), summed size (pixels x frames) and face id."""
    index: int
    slot: int
    start: int
    end: int
    state: object = None
    tracker: object = None
    size: float = 0.0
    centre: object = None
    face: int = -1
    colour: object = None       # summed colour layouts (:func:`face_colour`), over ``colour_n`` frames per cell
    colour_n: object = 0

    @property
    def frames(self):
        return self.end - self.start + 1

    def identity(self):
        return None if self.tracker is None or not self.tracker.keyframes else self.tracker.identity

    def appearance(self):
        """Colour layout (:func:`face_colour`) averaged over the tracklet's frames (None: unseen)."""
        return None if self.colour is None else self.colour / np.maximum(self.colour_n, 1)


def face_colour(frame, mu, grid=1):
    """Colour layout of a face: the mean RGB in 0..1 of ``frame`` at the landmarks mu (L, 2) pixels
    in each cell of a ``grid`` x ``grid`` division of their box, (grid * grid, 3) (NaN: an empty
    cell), or None when no landmark is inside the frame."""
    h, w = frame.shape[:2]
    p = mu[np.isfinite(mu).all(1)]
    p = p[(p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)]
    if not len(p):
        return None
    lo, hi = p.min(0), p.max(0)
    cell = np.minimum(((p - lo) / np.maximum(hi - lo, 1e-9) * grid).astype(np.int64), grid - 1)
    idx = cell[:, 1] * grid + cell[:, 0]
    px = p.astype(np.int64)
    rgb = frame[px[:, 1], px[:, 0]].astype(np.float64) / 255.0
    out = np.full((grid * grid, 3), np.nan)
    cnt = np.bincount(idx, minlength=grid * grid)
    for c in range(3):
        out[:, c] = np.bincount(idx, rgb[:, c], minlength=grid * grid) / np.where(cnt, cnt, np.nan)
    return out


def colour_distance(a, b):
    """Distance (RGB 0..1) of two colour layouts (:func:`face_colour`): the mean over the cells both
    have of the colour difference's norm."""
    d = np.linalg.norm(a - b, axis=1)
    return float(np.nanmean(d)) if np.isfinite(d).any() else np.inf


class FaceFollower:
    """Pass 1 for several faces: follows every face (at most ``options.face_limit(True)`` at a time),
    records each tracklet's landmarks in its slot's :class:`LandmarkStore` and feeds its identity tracker.

    Parameters
    ----------
    predictor : MediaPipeLandmarks or NetworkLandmarks (``follow``, ``start``, ``detect``,
        ``get_state``, ``set_state``).
    new_tracker : callable () -> Tracker, a fresh identity tracker (focal as the options give).
    new_store : callable (slot, fill_to) -> LandmarkStore.
    options : :class:`lmfit3d.track.TrackOptions`: ``face_limit(True)`` faces at most, ``identity_stride``,
        ``cut_threshold`` and the keyframe count of ``config()``.
    timings : dict, seconds (``"fit"`` added to).
    """

    def __init__(self, predictor, new_tracker, new_store, options, timings=None):
        self.mp, self.new_tracker, self.new_store, self.opt = predictor, new_tracker, new_store, options
        self.max_faces, self.max_keyframes = options.face_limit(True), options.config().max_keyframes
        self.tm = timings if timings is not None else {}
        self.live = []
        self.tracklets = []
        self.stores = []
        self._thumb = None
        self._lost = 0
        self._n_landmarks = len(predictor.vertex_ids)

    def step(self, frame, n):
        """Follow, end and start tracklets on frame ``n``; returns [(tracklet, Prediction)], oldest first."""
        self._thumb, cut = scene_cut(frame, self._thumb)
        found, ended = [], cut and bool(self.live)
        for t in self.live:
            pred = None
            if not cut:
                self.mp.set_state(t.state)
                pred = self.mp.follow(frame)
                t.state = self.mp.get_state()
            if pred is not None:
                c, jump = is_cut(pred.mu, t.centre, self.opt.cut_threshold)
                if jump or any(_inside(c, p.mu) for _, p in found):
                    pred = None
            if pred is None:
                ended = True
                continue
            t.centre = c
            found.append((t, pred))
        if len(found) < self.max_faces and (not found or ended or n % DETECT_EVERY == 0):
            found += self._newcomers(frame, n, found)
        self.live = [t for t, _ in found]
        self._record(found, n, frame)
        return found

    def _newcomers(self, frame, n, found):
        """Tracklets started on faces the detector finds outside every followed face."""
        if found:
            deep = n % DEEP_EVERY == 0
            levels, exhaustive = (3, True) if deep else (1, False)
        else:       # nothing followed: as the single-face search (small windows every search_every-th frame)
            levels = 4 if self._lost % getattr(self.mp, "search_every", 5) == 0 else 1
            exhaustive = False
            self._lost += 1
        new = []
        for roi in self.mp.detect(frame, 3 * self.max_faces, levels=levels, exhaustive=exhaustive):
            if len(found) + len(new) >= self.max_faces:
                break
            if any(_inside(np.array([roi.cx, roi.cy]), p.mu) for _, p in found + new):
                continue
            self.mp.set_state(None)
            pred = self.mp.start(frame, roi)
            if pred is None:
                continue
            c = np.nanmean(pred.mu, 0)
            if any(_inside(c, p.mu) for _, p in found + new):
                continue
            used = {t.slot for t, _ in found + new}
            slot = min(set(range(len(used) + 1)) - used)
            t = Tracklet(len(self.tracklets), slot, n, n, self.mp.get_state(), centre=c)
            self.tracklets.append(t)
            new.append((t, pred))
            self._lost = 0
        return new

    def _record(self, found, n, frame):
        """Each slot's landmarks of frame n (NaN where empty); identity steps and colours of the tracklets."""
        import time
        by_slot = {t.slot: (t, p) for t, p in found}
        while len(self.stores) <= max(by_slot, default=-1):
            self.stores.append(self.new_store(len(self.stores), n))
        for s, store in enumerate(self.stores):
            rec = np.full((self._n_landmarks, 6), np.nan, np.float32)
            if s in by_slot:
                t, pred = by_slot[s]
                rec[:, 0:2] = pred.mu
                rec[:, 2] = pred.sigma
                rec[:, 3] = pred.presence
                t.end = n
                ok = np.isfinite(pred.mu).all(1)
                if ok.any():
                    t.size += float(np.ptp(pred.mu[ok], 0).max())
                col = face_colour(frame, pred.mu)
                if col is not None:
                    ok = np.isfinite(col[:, :1])
                    t.colour = np.where(ok, col, 0.0) + (0.0 if t.colour is None else t.colour)
                    t.colour_n = t.colour_n + ok
                if t.tracker is None:
                    t.tracker = self.new_tracker()
                # identity: every ``stride``-th frame of the tracklet, until its keyframe set is full
                if (n - t.start) % self.opt.identity_stride == 0 and len(t.tracker.keyframes) < self.max_keyframes:
                    t0 = time.perf_counter()
                    t.tracker.step(pred.mu, pred.sigma)
                    self.tm["fit"] = self.tm.get("fit", 0.0) + time.perf_counter() - t0
            store.put(n, rec)

    def close(self):
        for s in self.stores:
            s.close()


def identity_distance(model, vertex_ids, a, b):
    """Distance of two identities (K,): RMS (mm) over the landmark vertices ``vertex_ids`` of the
    shape difference sum_k (a_k - b_k) S_k."""
    basis = model.identity_basis[np.asarray(vertex_ids)]                # (L, 3, K)
    d = basis.astype(np.float64) @ (np.asarray(a, float) - np.asarray(b, float))
    return float(np.sqrt(np.mean(np.sum(d * d, 1))))


def _overlaps(t, face):
    return any(t.start <= u.end and u.start <= t.end for u in face)


def reid_score(model, vertex_ids, a, b, id_mm=REID_IDENTITY_MM, colour=REID_COLOUR):
    """How far apart two tracklets are as people (< 1: the same person): the distance of their fitted
    identities (:func:`identity_distance`) in units of ``id_mm`` plus that of their mean colours at the
    landmarks (:func:`colour_distance`, RGB 0..1, the appearance tie-breaker) in units of ``colour``; inf when either is unknown."""
    ia, ib, ca, cb = a.identity(), b.identity(), a.appearance(), b.appearance()
    if ia is None or ib is None or ca is None or cb is None:
        return np.inf
    return identity_distance(model, vertex_ids, ia, ib) / id_mm + colour_distance(ca, cb) / colour


def assign_faces(tracklets, score, max_faces, min_frames=MIN_FACE_FRAMES):
    """Link tracklets into faces: sets each ``Tracklet.face`` (-1: dropped) and returns the faces,
    lists of tracklets, main face (largest summed size) first, at most ``max_faces``.

    Tracklets are taken in order of their first frame; those starting on the same frame are matched
    together, best pair first.  A tracklet joins the face (not visible on any of its frames) with the
    lowest ``score(tracklet, face's longest tracklet)`` (:func:`reid_score`) when it is under 1;
    else it starts a new face.  A new face seen on fewer than ``min_frames`` frames is dropped."""
    faces = []
    order = sorted(tracklets, key=lambda t: (t.start, t.index))
    k = 0
    while k < len(order):
        group = [t for t in order[k:] if t.start == order[k].start]
        k += len(group)
        pairs = []
        for t in group:
            for j, face in enumerate(faces):
                if not _overlaps(t, face):
                    d = score(t, max(face, key=lambda u: u.frames))
                    if d < 1.0:
                        pairs.append((d, t.index, j))
        taken, used = set(), set()
        for d, ti, j in sorted(pairs):
            if ti in taken or j in used:
                continue
            faces[j].append(next(u for u in group if u.index == ti))
            taken.add(ti)
            used.add(j)
        for t in group:
            if t.index not in taken:
                faces.append([t])
    faces = [f for f in faces if sum(t.frames for t in f) >= min_frames or len(tracklets) == 1]
    faces.sort(key=lambda f: -sum(t.size for t in f))
    faces = faces[:max_faces]
    for t in tracklets:
        t.face = -1
    for j, face in enumerate(faces):
        face.sort(key=lambda t: t.start)
        for t in face:
            t.face = j
    return faces


def face_identity(face, tracker_like, focal=None, max_keyframes=5):
    """(identity, focal) of one face from its tracklets' keyframes only: the tracklet's own when it
    is one and ``focal`` is None (the pass-1 result as is); else a refit on the keyframes of its
    tracklets (longest first, at most ``max_keyframes``) with the focal length held at ``focal``
    when given (one camera: the main face's), by ``tracker_like.fresh`` (a pass-1 Tracker)."""
    lone = face[0].tracker if len(face) == 1 else None
    if lone is not None and (focal is None or lone.focal_known):
        return lone.identity.copy(), lone.focal
    tracks = sorted((t for t in face if t.tracker is not None and t.tracker.keyframes), key=lambda t: -t.frames)
    if not tracks:                              # never fitted (too few landmarks): the prior's mean
        return np.zeros_like(tracker_like.identity), tracker_like.focal if focal is None else focal
    kfs = []
    for t in tracks:
        kfs += t.tracker.keyframes
    kfs = kfs[:max_keyframes]
    base = tracks[0].tracker
    tr = tracker_like.fresh(focal)
    sl = tr._sl
    tr.identity = base.identity.copy()
    tr.identity_fixed = False
    if focal is None:
        tr.focal, tr.focal_known = base.focal, base.focal_known
    tr.keyframes = []
    for x, mu, sg in kfs:
        x = x.copy()
        x[sl["identity"]] = tr.identity
        x[sl["focal"]] = tr.focal
        tr.keyframes.append((x, mu, sg))
    tr.refit_identity()
    return tr.identity.copy(), tr.focal
