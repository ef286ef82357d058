"""Per-camera frame offsets of unsynchronised multi-view landmarks (videos started by hand).

Convention: camera j's frame ``t + offset[j]`` shows the instant of the reference camera's frame t
(the reference has offset 0).  :func:`estimate_frame_offsets` finds the offsets from the landmarks'
motion alone; :func:`apply_frame_offsets` re-indexes every camera onto the reference's frames (NaN
where a camera has no such frame: a missing landmark to ``lmfit3d.capture``).

The signal: per camera and frame, the distances between fixed pairs of landmarks divided by the face's
size in that frame (its RMS spread): the mouth opening, the eye apertures, the jaw ... move with the
performance and change with the viewpoint only by about a constant factor, which the correlation (per
pair, z-scored over time) ignores.  The offset maximises the mean correlation over pairs, over the frames
both cameras share (at least ``min_overlap``).
"""
import numpy as np


def _shape_signal(mu, pairs):
    """(F, P) z-scored distances of landmark pairs over the face size; NaN where missing."""
    c = mu - np.nanmean(mu, axis=1, keepdims=True)
    size = np.sqrt(np.nanmean((c ** 2).sum(-1), axis=1))                       # (F,)
    d = np.linalg.norm(mu[:, pairs[:, 0]] - mu[:, pairs[:, 1]], axis=-1) / size[:, None]
    d = d - np.nanmean(d, axis=0)
    return d / np.maximum(np.nanstd(d, axis=0), 1e-12)


def _local_pairs(mu, n_pairs, rng, k=12):
    """Pairs (a, b) with b among the k landmarks nearest to a in the median shape: local distances
    (lips, lids, brows) follow the expression more than the head's turn."""
    with np.errstate(invalid="ignore"), _quiet():
        shape = np.nanmedian(mu, axis=0)                                        # (L, 2)
    ok = np.flatnonzero(np.isfinite(shape).all(1))
    if ok.size < 3:
        raise ValueError("the reference camera has fewer than 3 landmarks seen in its frames")
    d = np.linalg.norm(shape[ok, None] - shape[None, ok], axis=-1)
    near = np.argsort(d, axis=1)[:, 1:min(k, ok.size - 1) + 1]
    a = rng.integers(0, ok.size, size=n_pairs)
    b = near[a, rng.integers(0, near.shape[1], size=n_pairs)]
    return np.stack([ok[a], ok[b]], 1)


def _correlation(a, b):
    """Mean over pairs of the correlation of two (T, P) signals (rows with NaN left out per pair)."""
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(0)
    use = n >= 3
    if not use.any():
        return -np.inf
    a, b = np.where(ok, a, 0.0)[:, use], np.where(ok, b, 0.0)[:, use]
    n = n[use]
    a = np.where(ok[:, use], a - a.sum(0) / n, 0.0)
    b = np.where(ok[:, use], b - b.sum(0) / n, 0.0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return float(np.mean(np.where(den > 0, (a * b).sum(0) / np.maximum(den, 1e-300), 0.0)))


def estimate_frame_offsets(mu, sigma=None, reference=0, max_offset=None, min_overlap=None, n_pairs=400, seed=0):
    """Integer frame offset of every camera relative to ``reference`` from the landmarks' motion.

    Parameters
    ----------
    mu : (C, F, L, 2) float pixels (NaN: missing), or a list of C arrays (F_j, L, 2).
    sigma : matching (C, F, L) or list, optional: landmarks with sigma over twice the camera's median
        are left out (occluded or unsure points would only add noise).
    reference : int, the camera whose frames are the time base.
    max_offset : int, largest |offset| tried (default: a third of the shortest clip).
    min_overlap : int, fewest shared frames for an offset to be tried (default: half the shortest
        clip, at least 3).
    n_pairs : int, landmark pairs in the signal (drawn once with ``seed``).

    Returns
    -------
    offsets : (C,) int64, camera j's frame t + offsets[j] is the reference's frame t.
    score : (C,) float, the mean correlation at that offset (1 for the reference; below ~0.3 the
        estimate is not to be trusted: too little motion, or different performances).
    """
    cams = [np.asarray(m, dtype=np.float64) for m in mu]
    if len(cams) == 0 or any(m.ndim != 3 or m.shape[2] != 2 for m in cams):
        raise ValueError("mu must be (C, F, L, 2) or a list of (F, L, 2) arrays")
    nl = cams[0].shape[1]
    if any(m.shape[1] != nl for m in cams):
        raise ValueError("every camera must have the same landmarks")
    if not 0 <= reference < len(cams):
        raise ValueError(f"reference camera {reference} is not one of the {len(cams)} cameras")
    shortest = min(m.shape[0] for m in cams)
    max_offset = shortest // 3 if max_offset is None else int(max_offset)
    min_overlap = max(3, shortest // 2) if min_overlap is None else int(min_overlap)
    if sigma is not None:
        for j, m in enumerate(cams):
            sg = np.asarray(sigma[j], dtype=np.float64)
            if sg.shape != m.shape[:2]:
                raise ValueError(f"sigma of camera {j} must have shape {m.shape[:2]}, got {sg.shape}")
            with np.errstate(invalid="ignore"):
                cams[j] = np.where((sg > 2.0 * np.nanmedian(sg))[..., None], np.nan, m)
    pairs = _local_pairs(cams[reference], n_pairs, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        sig = [_shape_signal(m, pairs) for m in cams]
    ref = sig[reference]
    offsets = np.zeros(len(cams), np.int64)
    score = np.ones(len(cams))
    for j, s in enumerate(sig):
        if j == reference:
            continue
        lags = np.arange(-max_offset, max_offset + 1)
        curve = np.full(lags.size, -np.inf)
        for i, o in enumerate(lags):
            t0, t1 = max(0, -o), min(ref.shape[0], s.shape[0] - o)        # ref frames t: s frame t + o
            if t1 - t0 >= min_overlap:
                curve[i] = _correlation(ref[t0:t1], s[t0 + o:t1 + o])
        if not np.isfinite(curve).any():
            raise ValueError(f"camera {j} shares fewer than {min_overlap} frames with the reference at any offset")
        offsets[j], score[j] = _peak(lags, curve)
    return offsets, score


def _peak(lags, curve, half=3):
    """(offset, correlation) at the curve's peak: a parabola fitted to the finite points within
    ``half`` lags of the maximum, its vertex rounded (a noisy, broad peak is found to the frame)."""
    i = int(np.argmax(curve))
    sel = np.arange(max(0, i - half), min(lags.size, i + half + 1))
    sel = sel[np.isfinite(curve[sel])]
    if sel.size >= 3:
        a, b, _ = np.polyfit(lags[sel] - lags[i], curve[sel], 2)
        if a < 0 and abs(b / (2 * a)) <= half:
            return int(lags[i] + np.round(-b / (2 * a))), float(curve[i])
    return int(lags[i]), float(curve[i])


def apply_frame_offsets(mu, sigma, offsets, n_frames=None):
    """Camera j's frames re-indexed onto the reference's: out[j, t] = in[j, t + offsets[j]].

    Parameters
    ----------
    mu : (C, F, L, 2) or a list of (F_j, L, 2); sigma : matching (C, F, L) / list, or None.
    offsets : (C,) int.
    n_frames : output frames (default: the longest span any camera covers, from frame 0 of the
        reference's time base).

    Returns
    -------
    (mu (C, T, L, 2), sigma (C, T, L) or None), NaN mu (and sigma 1) where a camera has no frame.
    """
    cams = [np.asarray(m, dtype=np.float64) for m in mu]
    offsets = np.asarray(offsets, dtype=np.int64).ravel()
    if offsets.shape != (len(cams),):
        raise ValueError(f"need one frame offset per camera ({len(cams)}), got {offsets.size}")
    if n_frames is None:
        n_frames = max(m.shape[0] - o for m, o in zip(cams, offsets))
    nl = cams[0].shape[1]
    out = np.full((len(cams), n_frames, nl, 2), np.nan)
    sg = None if sigma is None else np.ones((len(cams), n_frames, nl))
    for j, (m, o) in enumerate(zip(cams, offsets)):
        t0, t1 = max(0, -o), min(n_frames, m.shape[0] - o)
        if t1 > t0:
            out[j, t0:t1] = m[t0 + o:t1 + o]
            if sg is not None:
                sg[j, t0:t1] = np.asarray(sigma[j], dtype=np.float64)[t0 + o:t1 + o]
    return out, sg


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings for frames without a face."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
