"""Zero-lag smoothing of landmark tracks for offline video: an adaptive constant-velocity model.

Each landmark coordinate of a shot is a constant-velocity process (position ``p``, velocity ``v``)
driven by white acceleration of spectral density ``q_t`` and observed with white noise of variance
``r`` (the shot's frame-to-frame landmark noise, :func:`frame_noise_variance`).  A Kalman filter
runs forward and the Rauch-Tung-Striebel smoother backward, so the estimate at frame t uses the
frames before and after it: no lag, and fast motion keeps its range.

The process noise adapts to the motion: for white-acceleration motion the second difference
``d2_t = z_(t+1) - 2 z_t + z_(t-1)`` has variance ``2/3 q`` plus ``6 r`` from the noise, so

    q_t = 1.5 max(mean over a centred window of d2^2 (both coordinates of the landmark) - 6 r,
                  q_floor r),

large while a mouth opens or a lid blinks (the smoother follows) and small while the point is
still (it averages the noise away).  Units: pixels, frames.

The kernel runs on plain C-contiguous float64 arrays; :func:`smooth_tracks` validates and calls it.
Shots (:func:`shot_segments`: scene cuts, frames without a face), their noise
(:func:`frame_noise_variance`) and the smoothing of a whole clip's disk-backed landmark store
(:func:`smooth_shots`) are here too: video tracking (``lmfit3d.track``) calls them.
"""
import numpy as np
from numba import njit

WINDOW = 9          # frames of the centred window that estimates q_t
Q_FLOOR = 0.05      # q_t >= Q_FLOOR * r: still points are averaged over ~1/sqrt(Q_FLOOR) frames
NOISE_SHARE = 1.0   # share of the noise's 6 r subtracted from the windowed d2^2


@njit(cache=True)
def process_noise(z, r, window, q_floor, noise_share, out):
    """Adaptive acceleration density q (F, P) of P landmarks with coordinates z (F, 2P) pixels."""
    nf, npts = out.shape
    d2 = np.zeros(nf)
    half = window // 2
    for p in range(npts):
        for t in range(nf):
            d2[t] = 0.0
        for t in range(1, nf - 1):
            acc = 0.0
            for c in range(2):
                k = 2 * p + c
                a = z[t + 1, k] - 2.0 * z[t, k] + z[t - 1, k]
                acc += a * a
            d2[t] = 0.5 * acc
        if nf >= 3:
            d2[0] = d2[1]
            d2[nf - 1] = d2[nf - 2]
        for t in range(nf):
            lo, hi = max(t - half, 0), min(t + half + 1, nf)
            s = 0.0
            for u in range(lo, hi):
                s += d2[u]
            m = s / (hi - lo) - noise_share * 6.0 * r
            out[t, p] = 1.5 * max(m, q_floor * r)


@njit(cache=True)
def rts_smooth(z, q, r, out, var, work):
    """Constant-velocity Kalman filter + RTS smoother of every column of z (F, 2P).

    q : (F, P) acceleration density per frame and landmark (both coordinates); r : noise variance.
    out, var : (F, 2P) smoothed positions and their posterior variance; work : (F, 10) scratch.
    """
    nf, ncol = z.shape
    for k in range(ncol):
        p = k // 2
        # forward filter; work[t] = filtered (x, v, P00, P01, P11), predicted (x, v, P00, P01, P11)
        x, v = z[0, k], 0.0
        p00, p01, p11 = r, 0.0, 1e6
        for t in range(nf):
            if t > 0:
                qt = q[t, p]
                x, v = x + v, v
                p00, p01, p11 = (p00 + 2.0 * p01 + p11 + qt / 3.0, p01 + p11 + 0.5 * qt, p11 + qt)
            work[t, 5], work[t, 6], work[t, 7], work[t, 8], work[t, 9] = x, v, p00, p01, p11
            s = p00 + r
            k0, k1 = p00 / s, p01 / s
            e = z[t, k] - x
            x, v = x + k0 * e, v + k1 * e
            p00, p01, p11 = (1.0 - k0) * p00, (1.0 - k0) * p01, p11 - k1 * p01
            work[t, 0], work[t, 1], work[t, 2], work[t, 3], work[t, 4] = x, v, p00, p01, p11
        out[nf - 1, k], var[nf - 1, k] = x, p00
        sx, sv, s00, s01, s11 = x, v, p00, p01, p11
        # backward pass: C = P_f F^T P_pred^-1
        for t in range(nf - 2, -1, -1):
            f00, f01, f11 = work[t, 2], work[t, 3], work[t, 4]
            n00, n01, n11 = work[t + 1, 7], work[t + 1, 8], work[t + 1, 9]
            det = n00 * n11 - n01 * n01
            # P_f F^T: [[f00 + f01, f01], [f01 + f11, f11]]
            a00, a01, a10, a11 = f00 + f01, f01, f01 + f11, f11
            c00 = (a00 * n11 - a01 * n01) / det
            c01 = (a01 * n00 - a00 * n01) / det
            c10 = (a10 * n11 - a11 * n01) / det
            c11 = (a11 * n00 - a10 * n01) / det
            dx, dv = sx - work[t + 1, 5], sv - work[t + 1, 6]
            d00, d01, d11 = s00 - n00, s01 - n01, s11 - n11
            sx = work[t, 0] + c00 * dx + c01 * dv
            sv = work[t, 1] + c10 * dx + c11 * dv
            # P_s = P_f + C (P_s' - P_pred') C^T
            m00 = c00 * d00 + c01 * d01
            m01 = c00 * d01 + c01 * d11
            m10 = c10 * d00 + c11 * d01
            m11 = c10 * d01 + c11 * d11
            s00 = f00 + m00 * c00 + m01 * c01
            s01 = f01 + m00 * c10 + m01 * c11
            s11 = f11 + m10 * c10 + m11 * c11
            out[t, k], var[t, k] = sx, s00
    return out


def smooth_tracks(mu, noise_var, window=WINDOW, q_floor=Q_FLOOR, noise_share=NOISE_SHARE):
    """Smooth the landmark tracks of one shot (no lag; see the module docstring).

    Parameters
    ----------
    mu : (F, L, 2) float, landmark positions of consecutive frames (pixels), all finite.
    noise_var : float >= 0, frame-to-frame noise variance per coordinate (pixels^2); 0 returns mu.
    window : int >= 1, frames of the window that estimates the process noise.
    q_floor : float > 0, lower bound of q / noise_var.

    Returns
    -------
    smoothed : (F, L, 2) float64 pixels; variance : (F, L) float64, posterior variance (pixels^2,
    mean of the two coordinates).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 3 or mu.shape[2] != 2:
        raise ValueError(f"mu must have shape (F, L, 2), got {mu.shape}")
    if not np.isfinite(mu).all():
        raise ValueError("mu must be finite (split shots at frames without landmarks)")
    if not (np.isfinite(noise_var) and noise_var >= 0):
        raise ValueError(f"noise_var must be a finite number >= 0, got {noise_var}")
    if window < 1 or not q_floor > 0:
        raise ValueError("window must be >= 1 and q_floor > 0")
    nf, nl, _ = mu.shape
    if noise_var == 0 or nf < 3:
        return mu.copy(), np.zeros((nf, nl))
    z = np.ascontiguousarray(mu.reshape(nf, 2 * nl))
    q = np.empty((nf, nl))
    process_noise(z, float(noise_var), int(window), float(q_floor), float(noise_share), q)
    out, var = np.empty_like(z), np.empty_like(z)
    rts_smooth(z, q, float(noise_var), out, var, np.empty((nf, 10)))
    return out.reshape(nf, nl, 2), var.reshape(nf, nl, 2).mean(axis=2)


# --------------------------------------------------------------------------------------------
# shots of a clip
# --------------------------------------------------------------------------------------------

def is_cut(mu, prev_centre, threshold):
    """Landmark centroid (2,) and whether it jumped by more than ``threshold`` x the landmarks' extent
    since the previous frame (a scene cut: the tracker then starts afresh)."""
    c = np.nanmean(mu, 0)
    extent = float((np.nanmax(mu, 0) - np.nanmin(mu, 0)).max())
    return c, prev_centre is not None and np.hypot(*(c - prev_centre)) > threshold * extent


def shot_segments(mu, cut_threshold, breaks=()):
    """Shot of each frame (n,) int64 (-1: fewer than 3 landmarks) from mu (n, L, 2): a new shot starts
    after a frame without a face, at a scene cut (:func:`is_cut`) and at the frames ``breaks`` (the
    starts of a face's tracks, :mod:`lmfit3d.faces`); the second pass starts the tracker afresh at each."""
    breaks = set(int(b) for b in breaks)
    seg = np.full(mu.shape[0], -1, np.int64)
    cur, prev_c = -1, None
    for f in range(mu.shape[0]):
        m = np.asarray(mu[f], dtype=np.float64)
        if np.isfinite(m).all(1).sum() < 3:
            prev_c = None
            continue
        prev_c, cut = is_cut(m, prev_c, cut_threshold)
        if cut or f == 0 or seg[f - 1] < 0 or f in breaks:
            cur += 1
        seg[f] = cur
    return seg


def frame_noise_variance(mu, seg):
    """Frame-to-frame noise of the landmarks, per shot: (n,) float64 variance (pixels^2, per axis);
    mu (n, L, 2) pixels (NaN: missing; read a frame at a time, so a memmap stays on disk), seg (n,)
    from :func:`shot_segments`.

    The learnt sigma (``predict``) is the error of a single prediction, mostly a bias that moves with
    the face; the detector's frame-to-frame noise on real video is about the same in image pixels for
    small and large faces, so on small faces it exceeds that sigma and the fit follows it.  Estimate:
    the second difference d = mu_(t+1) - 2 mu_t + mu_(t-1) of white noise of variance s^2 per axis
    has |d|^2 = 6 s^2 chi^2_2, median 12 ln(2) s^2; smooth motion adds little at video rates.  Per
    triple of consecutive distinct frames of a shot (a frame equal to the one before, from frame-rate
    conversion, is skipped) the median of |d|^2 over the landmarks, per shot the median over its
    triples, divided by 12 ln 2.  A shot with no such triple gets 0.  The second pass fits with
    sigma^2 + this variance.
    """
    n = mu.shape[0]
    out = np.zeros(n)
    per = {}                                            # shot -> medians of its triples
    last = []                                           # the shot's last two distinct frames
    for f in range(n):
        s = seg[f]
        if s < 0:
            last = []
            continue
        if f == 0 or seg[f - 1] != s:
            last = []
        m = np.asarray(mu[f], dtype=np.float64)
        if last and np.array_equal(m, last[-1], equal_nan=True):
            continue                                    # a repeated frame
        if len(last) == 2:
            d2 = ((m - 2 * last[1] + last[0]) ** 2).sum(1)
            d2 = d2[np.isfinite(d2)]
            if d2.size:
                per.setdefault(s, []).append(np.median(d2))
        last = (last + [m])[-2:]
    for s, vals in per.items():
        out[seg == s] = np.median(vals) / (12.0 * np.log(2.0))
    return out


def smooth_shots(arr, n, seg, noise, block=64, out=None):
    """Smoothed landmark tracks of every shot (``temporal.smooth_tracks``), block by block.

    Parameters
    ----------
    arr : (>= n, L, >= 2) float array, mu in columns 0:2 (the disk-backed landmark store).
    seg : (n,) int shot of each frame (-1: no face); noise : (n,) frame noise variance (pixels^2).

    Returns
    -------
    (n, L, 3) float32 array (``out`` if given, e.g. disk-backed): smoothed x, y (pixels) and posterior
    variance (pixels^2); frames outside any shot are nan.  Memory: one shot of ``block`` landmarks.
    """
    L = arr.shape[1]
    out = np.empty((n, L, 3), np.float32) if out is None else out
    out[:] = np.nan
    for s in np.unique(seg[seg >= 0]):
        frames = np.flatnonzero(seg == s)
        a, b = frames[0], frames[-1] + 1
        for c in range(0, L, block):
            mu = np.asarray(arr[a:b, c:c + block, 0:2], dtype=np.float64)
            ok = np.isfinite(mu).all(axis=2)
            if not ok.all():                    # points a network did not return: stay missing
                filled = np.where(ok[..., None], mu, 0.0)
                mean = filled.sum(axis=0) / np.maximum(ok.sum(axis=0), 1)[:, None]
                mu = np.where(ok[..., None], mu, mean[None])
            sm, var = smooth_tracks(mu, float(noise[a]))
            out[a:b, c:c + block, 0:2] = np.where(ok[..., None], sm, np.nan)
            out[a:b, c:c + block, 2] = var
    return out
