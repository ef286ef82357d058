"""Every face of a video (pass 1 of :func:`lmfit3d.track.track_video` for several faces): the
disk-backed landmark stores, one follower state and one identity tracker per face track, and the
association of tracks into faces with stable ids.

A *tracklet* is one face followed without a break: it starts at a detection (the first frame, after
a scene cut, and the newcomer search every ``DETECT_EVERY`` frames, with small windows every
``DEEP_EVERY`` frames) and ends when the landmark network's face score drops and the detector does
not find the face again in the same frame inside its last landmark box, at a scene cut
(:func:`scene_cut` on a grey thumbnail of the frame, unless the face is still there with the same
colour, ``COLOUR_SAME``, and colour layout, ``LAYOUT_SAME``; a jump of its landmarks,
:func:`lmfit3d.temporal.is_cut`, or of the colour at them, ``COLOUR_JUMP``), or when its landmarks
fall onto a face followed since earlier (two tracks converged).  Each live tracklet occupies a
*slot* (a landmark store of its own; the first face uses slot 0, as the single-face path does) and
has its own :class:`lmfit3d.fit.Tracker` collecting keyframes (no refits in pass 1), as many as its
identity fit may use (:func:`keyframe_budget`: a face seen briefly or small costs a small fit).

After pass 1, :func:`fit_identities` refits each tracklet's identity once on its own keyframes (the
focal length fitted on the largest tracklet, held for the others; a short tracklet only when a
comparison needs it), and :func:`assign_faces` links
tracklets into faces (after an occlusion, a cut or leaving the frame) by :func:`reid_score`: the
distance of their identities (mm over the landmark vertices, weighted down for small faces) and of
their colours, in units learnt on renders by ``bench/reid_threshold.py``; a tracklet joins the
nearest face not visible at the same time when the score is under 1, else it starts a new face.
:func:`face_identity` gives each face its identity from its tracklets' keyframes (a refit only when
they span tracklets).  Faces are numbered by screen presence (the sum over frames of the face's
size): face 0 is the main face.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .energy import ROOT_ROTATION
from .fit import turned_from
from .paths import new_file, reserve
from .temporal import is_cut

# frames between newcomer searches of the whole frame while faces are followed (both detectors: 4-6 ms
# a search; every 10 frames that was 0.5 ms a frame, 8 % of the tracking of a 1080p one-face clip, now
# the default mode), and between those that include small windows too (~36 windows, 40-50 ms)
DETECT_EVERY = 60
DEEP_EVERY = 300
# a detector candidate beside the followed faces whose landmarks were rejected (a profile, a back of a
# head, not a face) is not tried again by the newcomer searches of the next this many frames
FAILED_KEEP = DETECT_EVERY
MIN_FACE_FRAMES = 5      # a tracklet this short that matches no face is dropped (a spurious detection)
# an identity fit (:func:`keyframe_budget`) uses one keyframe, plus one per this many frames of the
# face (weighted by its size): a fit's cost grows with its keyframes, and a face seen on a few frames
# must not pay for the five of a face seen throughout (short_hamilton_clip.mp4: audience tracklets of
# 5-22 frames had 3-4 keyframes each)
KEYFRAME_FRAMES = 20
# a face's identity is refitted on keyframes pooled from its tracklets (:func:`face_identity`) only when
# they are at least this many more than its best tracklet's (renders, bench/faces_eval.py: identities
# from the best tracklet's one keyframe against refits on two, mean error 4.22 / 4.24 mm)
FACE_REFIT_GAIN = 2
SCENE_CUT_GREY = 30.0    # mean absolute difference (0..255) of 16 x 16 grey thumbnails at a scene cut
# a tracklet ends where the mean colour at its landmarks changes by more (RGB 0..1) from one frame to the
# next: another face in the same place after a cut the thumbnails missed (the same face: <= 0.042 on
# renders of 2-3 heads and on short_hamilton_clip.mp4; faces swapped at such a cut: 0.17, 0.42)
COLOUR_JUMP = 0.1
# at a scene cut (thumbnails) a followed face goes on only within this colour distance of its last
# frame (same face from frame to frame: median 0.004-0.017; different people's tracklets >= 0.041)
COLOUR_SAME = 0.025
# ... and its colour layout on a LAYOUT_GRID x LAYOUT_GRID grid of its landmark box within LAYOUT_SAME:
# two people of like mean colour swapped at a cut (bench/faces_eval.py --pair, B's colours matched to
# A's: mean 0.032-0.055 apart, layouts 0.14-0.16) while the same face from one frame to the next on the
# shared real clips has layouts <= 0.047 apart (W040, W023, QoT0S2vu9m4_00002)
LAYOUT_GRID = 3
LAYOUT_SAME = 0.08
# re-identification (:func:`reid_score`): units of the identity distance (mm RMS over the landmark
# vertices) and of the colour distance (RGB 0..1) whose sum is 1 at the threshold; learnt on renders
# (bench/reid_threshold.py: same person / different people, pass-1 tracklets)
REID_IDENTITY_MM = 4.0
REID_COLOUR = 0.08
REID_FACE_PX = 115.0     # mean tracklet face size (landmark box, px) of those renders (90-px heads)
REID_GROUP = 1.5         # assign_faces: the score under which the last ones left of a group are matched


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
    refits: int = 0             # identity refits made (:func:`fit_identities`)
    box: object = None          # (lo, hi) pixels: the landmark box of its last frame
    last_colour: object = None  # colour layout of its last frame (:func:`face_colour`)
    last_mu: object = None      # its landmarks on its last frame (L, 2) pixels

    @property
    def frames(self):
        return self.end - self.start + 1

    def identity(self):
        """The identity (K,) refitted on the tracklet's keyframes (None: never refitted)."""
        return None if self.tracker is None or not self.tracker.keyframes or not self.refits else self.tracker.identity

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
    px = p.astype(np.int64)
    rgb = frame[px[:, 1], px[:, 0]].astype(np.float64) / 255.0
    if grid == 1:                       # one cell (the tracker's layout): the mean
        return rgb.mean(0)[None]
    lo, hi = p.min(0), p.max(0)
    cell = np.minimum(((p - lo) / np.maximum(hi - lo, 1e-9) * grid).astype(np.int64), grid - 1)
    idx = cell[:, 1] * grid + cell[:, 0]
    out = np.full((grid * grid, 3), np.nan)
    cnt = np.bincount(idx, minlength=grid * grid)
    for c in range(3):
        out[:, c] = np.bincount(idx, rgb[:, c], minlength=grid * grid) / np.where(cnt, cnt, np.nan)
    return out


def _colour_jump(t, col, limit=None):
    """Whether the colour layout ``col`` (:func:`face_colour`) of a face differs from tracklet ``t``'s
    last frame by more than ``limit`` (default ``COLOUR_JUMP``): another person in the same place
    (an undetected cut)."""
    limit = COLOUR_JUMP if limit is None else limit
    return t.last_colour is not None and col is not None and colour_distance(col, t.last_colour) > limit


def _layout_jump(prev_frame, prev_mu, frame, mu):
    """Whether a face's colour layout (:func:`face_colour` on ``LAYOUT_GRID`` cells) changed by more
    than ``LAYOUT_SAME`` from ``prev_mu`` on ``prev_frame`` to ``mu`` on ``frame``: at a scene cut,
    another person of like colour in the same place (computed at scene cuts only)."""
    if prev_frame is None or prev_mu is None:
        return False
    a, b = face_colour(prev_frame, prev_mu, LAYOUT_GRID), face_colour(frame, mu, LAYOUT_GRID)
    return a is not None and b is not None and colour_distance(a, b) > LAYOUT_SAME


def colour_distance(a, b):
    """Distance (RGB 0..1) of two colour layouts (:func:`face_colour`): the mean over the cells both
    have of the colour difference's norm."""
    d = np.linalg.norm(a - b, axis=1)
    return float(np.nanmean(d)) if np.isfinite(d).any() else np.inf


class FaceFollower:
    """Pass 1 for several faces: follows every face (at most ``options.face_limit(True)`` at a time),
    records each tracklet's landmarks in its slot's :class:`LandmarkStore` and feeds its identity
    tracker (its keyframes: the refits come after pass 1, :func:`fit_identities`).

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
        self._frame = None      # the previous frame (its faces' layouts at a scene cut)
        self._lost = 0
        self._failed = []       # (frame, ROI) of the candidates beside followed faces that did not start
        self._n_landmarks = len(predictor.vertex_ids)

    def step(self, frame, n):
        """Follow, end and start tracklets on frame ``n``; returns [(tracklet, Prediction)], oldest first."""
        self._thumb, cut = scene_cut(frame, self._thumb)
        found, lost, ended = [], [], cut and bool(self.live)
        for t in self.live:
            self.mp.set_state(t.state)
            pred = self.mp.follow(frame)
            t.state = self.mp.get_state()
            if pred is None:
                if not cut:
                    lost.append(t)          # the face score dropped: re-acquired by the detector below?
                ended = True
                continue
            c, jump = is_cut(pred.mu, t.centre, self.opt.cut_threshold)
            col = face_colour(frame, pred.mu)
            # at a scene cut only the same face in the same place goes on (a head leaving a small
            # frame changes its thumbnail as much as a cut): colour within COLOUR_SAME, layout within
            # LAYOUT_SAME
            if jump or _colour_jump(t, col, COLOUR_SAME if cut else COLOUR_JUMP) or any(
                    _inside(c, p.mu) for _, p in found) or (
                    cut and _layout_jump(self._frame, t.last_mu, frame, pred.mu)):
                ended = True
                continue
            t.centre, t.last_colour, t.last_mu = c, col, pred.mu
            found.append((t, pred))
        if len(found) < self.max_faces and (not found or ended or n % DETECT_EVERY == 0):
            found += self._newcomers(frame, n, found, lost)
        self.live = [t for t, _ in found]
        self._frame = frame
        self._record(found, n, frame)
        return found

    def _newcomers(self, frame, n, found, lost=()):
        """Tracklets started on faces the detector finds outside every followed face.  A face found
        inside the last landmark box of a tracklet ``lost`` on this frame (its face score dropped)
        continues that tracklet, as the single-face tracker's detector restart does: one face, one
        tracklet, one identity fit, rather than a new tracklet to re-identify."""
        deep = bool(found) and n % DEEP_EVERY == 0
        if found:
            levels, exhaustive = (3, True) if deep else (1, False)
        else:       # nothing followed: as the single-face search (small windows every search_every-th frame)
            levels = 4 if self._lost % getattr(self.mp, "search_every", 5) == 0 else 1
            exhaustive = False
            self._lost += 1
        new = []
        lost = list(lost)
        self._failed = [(f, r) for f, r in self._failed if n - f <= FAILED_KEEP]
        # beside followed faces small heads are looked for every DEEP_EVERY frames: the small windows and
        # the full-range detector's whole-frame pass (its session's first run costs ~0.2 s CPU, which a
        # one-face clip need not pay)
        for roi in self.mp.detect(frame, 3 * self.max_faces, levels=levels, exhaustive=exhaustive,
                                  far=True if found and deep else None):
            if len(found) + len(new) >= self.max_faces:
                break
            c = np.array([roi.cx, roi.cy])
            if any(_inside(c, p.mu) for _, p in found + new) or (found and any(
                    abs(roi.cx - r.cx) + abs(roi.cy - r.cy) < 0.5 * r.size for _, r in self._failed)):
                continue
            self.mp.set_state(None)
            pred = self.mp.start(frame, roi)
            if pred is None:
                if found:
                    self._failed.append((n, roi))
                continue
            c = np.nanmean(pred.mu, 0)
            if any(_inside(c, p.mu) for _, p in found + new):
                continue
            col = face_colour(frame, pred.mu)
            back = [t for t in lost if t.box is not None and bool(np.all((c >= t.box[0]) & (c <= t.box[1])))
                    and not is_cut(pred.mu, t.centre, self.opt.cut_threshold)[1] and not _colour_jump(t, col)]
            if back:
                t = back[0]
                lost.remove(t)
                t.state, t.centre = self.mp.get_state(), c
            else:
                used = {t.slot for t, _ in found + new} | {t.slot for t in lost}
                slot = min(set(range(len(used) + 1)) - used)
                t = Tracklet(len(self.tracklets), slot, n, n, self.mp.get_state(), centre=c)
                self.tracklets.append(t)
            t.last_colour, t.last_mu = col, pred.mu
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
                    t.box = _box(pred.mu[ok])
                col = t.last_colour             # this frame's (:meth:`step`, :meth:`_newcomers`)
                if col is not None:
                    ok = np.isfinite(col[:, :1])
                    t.colour = np.where(ok, col, 0.0) + (0.0 if t.colour is None else t.colour)
                    t.colour_n = t.colour_n + ok
                if t.tracker is None:
                    t.tracker = self.new_tracker()
                    t.tracker.refit_in_step = False         # keyframes only: :func:`fit_identities` after pass 1
                # identity: every ``stride``-th frame of the tracklet while it holds fewer keyframes than
                # its fit may use so far (:func:`keyframe_budget`) and one more to choose from; paused
                # (the tracker started afresh when it resumes) while it holds as many
                if len(t.tracker.keyframes) >= min(self.max_keyframes, keyframe_budget([t], self.max_keyframes) + 1):
                    t.tracker.reset()
                elif (n - t.start) % self.opt.identity_stride == 0:
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


def _face_px(t):
    """Mean face size of a tracklet (pixels: the larger side of its landmark box)."""
    return t.size / max(t.frames, 1)


def identity_weight(a, b, face_px=REID_FACE_PX):
    """Weight of the identity distance of tracklets ``a`` and ``b`` in :func:`reid_score`: 1 when
    both faces are at least ``face_px`` (the size the units were learnt at), else (smaller / face_px)
    squared, so that the colour decides more.  An identity fitted from a small face of a real video
    is the less reliable one (short_hamilton_clip.mp4: the singer at 50 px in a wide shot and at 100
    px in a close-up, 3.7 mm apart, colour 0.03; without the weight, two ids).  Renders show no such
    scatter (45-px heads: same person 1.0-2.2 mm, as at 90 px) and there the weight leaves more
    pairs to the colour (``bench/reid_threshold.py --face-px 45 --face-px2 90``: 4 pairs of
    different people under 1 against 1 unweighted; no id switch once matched one to one,
    ``bench/faces_eval.py --face-px 45 --face-px2 90``)."""
    return min(1.0, min(_face_px(a), _face_px(b)) / face_px) ** 2


def reid_score(model, vertex_ids, a, b, id_mm=REID_IDENTITY_MM, colour=REID_COLOUR, fit=None):
    """How far apart two tracklets are as people (< 1: the same person): the distance of their fitted
    identities (:func:`identity_distance`) in units of ``id_mm``, weighted by the faces' size
    (:func:`identity_weight`), plus that of their mean colours at the landmarks
    (:func:`colour_distance`, RGB 0..1, the appearance tie-breaker) in units of ``colour``; inf when
    either is unknown.  ``fit``: callable (tracklet), fits a tracklet's identity where it has none
    (a short one, :func:`fit_identity`) when the colours alone leave the score under 1 (a short
    tracklet is matched only so: one identity fit, ~45 ms, for each plausible match)."""
    ca, cb = a.appearance(), b.appearance()
    if ca is None or cb is None:
        return np.inf
    c = colour_distance(ca, cb) / colour
    if fit is not None and c < 1.0:
        for t in (a, b):
            if t.identity() is None:
                fit(t)
    ia, ib = a.identity(), b.identity()
    if ia is None or ib is None:
        return np.inf
    return identity_weight(a, b) * identity_distance(model, vertex_ids, ia, ib) / id_mm + c


def assign_faces(tracklets, score, max_faces, min_frames=MIN_FACE_FRAMES, group_limit=REID_GROUP):
    """Link tracklets into faces: sets each ``Tracklet.face`` (-1: dropped) and returns the faces,
    lists of tracklets, main face (largest summed size) first, at most ``max_faces``.

    Tracklets are taken in order of their first frame; those starting on the same frame (a group:
    the people of a new shot) are matched together, best pair first.  A tracklet joins the face (not
    visible on any of its frames) with the lowest ``score(tracklet, face's tracklet with the largest
    faces)`` (:func:`reid_score`) when it is under 1; then, when some of the group were so
    recognised (people returning together, e.g. after a cut), a tracklet and a face still unmatched
    that are each other's best are joined when their score is under ``group_limit`` (renders: the
    last head of a returning pair or trio scored 1.14-1.26 where colour and identity both varied);
    else the tracklet starts a new face.  A new face seen on fewer than ``min_frames`` frames is dropped."""
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
                    pairs.append((score(t, max(face, key=_information)), t.index, j))
        pairs.sort()
        taken, used = set(), set()
        for limit, mutual in ((1.0, False), (group_limit, True)):
            if mutual and not taken:
                break               # no one of the group recognised: not a returning group
            for d, ti, j in pairs:
                if d >= limit or ti in taken or j in used:
                    continue
                if mutual and any(e < d for e, u, i in pairs if (u == ti) != (i == j) and u not in taken
                                  and i not in used):
                    continue            # not each other's best among those left
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


def _keyframes_with(tr, kfs):
    """Tracker ``tr``'s keyframes set to ``kfs`` [(x, mu, sigma)], each x with ``tr``'s identity and focal."""
    sl = tr._sl
    tr.keyframes = []
    for x, mu, sg in kfs:
        x = x.copy()
        x[sl["identity"]] = tr.identity
        x[sl["focal"]] = tr.focal
        tr.keyframes.append((x, mu, sg))


def keyframe_budget(tracklets, max_keyframes):
    """Keyframes an identity fit on ``tracklets`` (one face's) may use: one, plus one per
    ``KEYFRAME_FRAMES`` of their frames counted at their size (each frame min(1, face px /
    ``REID_FACE_PX``)), at most ``max_keyframes``.  A face seen on a few frames, or small, tells
    little of its identity: its fit (whose cost grows with its keyframes) is kept as small."""
    frames = sum(t.frames * min(1.0, _face_px(t) / REID_FACE_PX) for t in tracklets)
    return int(min(max_keyframes, 1 + frames // KEYFRAME_FRAMES))


def spread_keyframes(kfs, k):
    """At most ``k`` of the keyframes ``kfs`` [(x, mu, sigma)], in their order: the first, then each
    time the one whose head rotation (``x[ROOT_ROTATION]``) is farthest from those chosen."""
    if len(kfs) <= k:
        return list(kfs)
    rot = np.array([kf[0][ROOT_ROTATION] for kf in kfs])
    chosen = [0]
    far = np.linalg.norm(rot - rot[0], axis=1)
    while len(chosen) < k:
        i = int(np.argmax(far))
        chosen.append(i)
        far = np.minimum(far, np.linalg.norm(rot - rot[i], axis=1))
    return [kfs[i] for i in sorted(chosen)]


def fit_identities(tracklets, focal=None, min_frames=MIN_FACE_FRAMES):
    """After pass 1: one identity refit per tracklet of at least ``min_frames`` frames (or the only
    tracklet), on its own keyframes (``Tracklet.identity``; :func:`reid_score` needs it), as many as
    :func:`keyframe_budget` allows, the most varied head rotations (:func:`spread_keyframes`).  The focal
    length, unless given (``focal``), is fitted on the tracklet of most screen presence (summed size)
    first and held at that for all the others: one camera, measured on its largest face.  Returns
    the focal length (None: no tracklet to fit).  A shorter tracklet is fitted when a comparison
    needs it (:func:`fit_identity`, ``fit`` of :func:`reid_score`).

    Pass 1 only collects keyframes (``Tracker.refit_in_step`` False): a tracklet costs one refit,
    none when it is a spurious detection, and the single-face tracker's refit at every keyframe
    (``max_keyframes`` refits, which only steer pass 1's own pose fits) is not repeated per tracklet."""
    todo = [t for t in tracklets if t.frames >= min_frames or len(tracklets) == 1]
    for t in sorted(todo, key=lambda t: -t.size):
        focal = fit_identity(t, focal)
    return focal


def fit_identity(t, focal=None):
    """Refit tracklet ``t``'s identity once on its keyframes (:func:`fit_identities`), the focal length
    held at ``focal`` (None: fitted too).  Returns the focal length (``focal`` unless it was None and
    ``t`` could be fitted); nothing is done for a tracklet already fitted or without keyframes."""
    tr = t.tracker
    if tr is None or not tr.keyframes or t.refits:
        return focal
    tr.keyframes = spread_keyframes(tr.keyframes, keyframe_budget([t], len(tr.keyframes)))
    if focal is not None and not (tr.focal_known and tr.focal == focal):
        tr.focal, tr.focal_known = float(focal), True
        _keyframes_with(tr, tr.keyframes)
    tr.refit_identity()
    tr.refit_pending = False
    t.refits += 1
    return tr.focal if focal is None else focal


def _information(t):
    """How much a tracklet's landmarks tell of its identity, for the choice of a face's keyframes and
    of the tracklet a newcomer is compared with: its mean face size (pixels), then its frames."""
    return (t.size / max(t.frames, 1), t.frames)


def face_identity(face, tracker_like, focal=None, max_keyframes=5):
    """(identity, focal) of one face from its tracklets' keyframes only (their identities refitted
    by :func:`fit_identities`, one focal length).  The face's keyframes are chosen as the single-face
    tracker chooses them (:func:`lmfit3d.fit.turned_from`: a head rotation at least
    ``keyframe_angle_deg`` from every one so far, at most ``max_keyframes``) from its tracklets'
    keyframes, the tracklets with the largest faces first (:func:`_information`), as many as
    :func:`keyframe_budget` allows.  When they are fewer than ``FACE_REFIT_GAIN`` more than the first
    tracklet's own, its identity as is (no refit); else a refit on them, warm from that tracklet's
    identity, by ``tracker_like.fresh`` (a pass-1 Tracker).  ``focal``: that of a face
    never fitted (whose identity is then the prior's mean)."""
    tracks = sorted((t for t in face if t.identity() is not None), key=_information, reverse=True)
    if not tracks:                              # never fitted (too few landmarks): the prior's mean
        return np.zeros_like(tracker_like.identity), tracker_like.focal if focal is None else focal
    base = tracks[0].tracker
    max_keyframes = keyframe_budget(face, max_keyframes)
    kfs = list(base.keyframes[:max_keyframes])
    for t in tracks[1:]:
        for kf in t.tracker.keyframes:
            if len(kfs) < max_keyframes and turned_from(kf[0], kfs, tracker_like.cfg.keyframe_angle_deg):
                kfs.append(kf)
    if len(kfs) < len(base.keyframes) + FACE_REFIT_GAIN:
        return base.identity.copy(), base.focal
    tr = tracker_like.fresh(base.focal)
    tr.identity = base.identity.copy()
    tr.identity_fixed = False
    _keyframes_with(tr, kfs)
    tr.refit_identity()
    return tr.identity.copy(), tr.focal
