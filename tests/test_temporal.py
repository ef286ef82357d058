"""The zero-lag landmark smoother (lmfit3d.temporal): kernel against a matrix reference, lag, range
of motion under blinks and talking, steadiness on still points, validation."""
import numpy as np
import pytest

from conftest import run_without_jit
from lmfit3d.temporal import process_noise, smooth_tracks


def rts_reference(z, q, r):
    """Textbook Kalman filter + RTS smoother (2x2 matrices) of one series z (F,), q (F,)."""
    f = np.array([[1.0, 1.0], [0.0, 1.0]])
    n = z.size
    xf, pf, xp, pp = np.zeros((n, 2)), np.zeros((n, 2, 2)), np.zeros((n, 2)), np.zeros((n, 2, 2))
    x, p = np.array([z[0], 0.0]), np.diag([r, 1e6])
    for t in range(n):
        if t:
            x = f @ x
            p = f @ p @ f.T + q[t] * np.array([[1 / 3, 1 / 2], [1 / 2, 1.0]])
        xp[t], pp[t] = x, p
        k = p[:, 0] / (p[0, 0] + r)
        x = x + k * (z[t] - x[0])
        p = p - np.outer(k, p[0])
        xf[t], pf[t] = x, p
    xs, ps = xf.copy(), pf.copy()
    for t in range(n - 2, -1, -1):
        c = pf[t] @ f.T @ np.linalg.inv(pp[t + 1])
        xs[t] = xf[t] + c @ (xs[t + 1] - xp[t + 1])
        ps[t] = pf[t] + c @ (ps[t + 1] - pp[t + 1]) @ c.T
    return xs[:, 0], ps[:, 0, 0]


def test_smoother_equals_the_matrix_reference(rng):
    """The scalar kernel equals the 2x2 matrix Kalman/RTS recursion (positions and variances),
    with the adaptive q of ``process_noise``; both coordinates of a landmark share its q."""
    nf, nl = 80, 3
    z = np.cumsum(np.cumsum(rng.normal(size=(nf, nl, 2)), 0), 0) * 0.3 + rng.normal(size=(nf, nl, 2))
    sm, var = smooth_tracks(z, 1.0)
    q = np.empty((nf, nl))
    process_noise(np.ascontiguousarray(z.reshape(nf, 2 * nl)), 1.0, 9, 0.05, 1.0, q)
    assert (q > 0).all()
    for l in range(nl):
        vs = []
        for c in range(2):
            ref, pvar = rts_reference(z[:, l, c], q[:, l], 1.0)
            np.testing.assert_allclose(sm[:, l, c], ref, atol=1e-8)
            vs.append(pvar)
        np.testing.assert_allclose(var[:, l], np.mean(vs, axis=0), rtol=1e-8)


def test_smoother_kernels_without_jit():
    """The same test on the kernels' Python source (NUMBA_DISABLE_JIT=1)."""
    out = run_without_jit(__file__, "equals_the_matrix_reference")
    assert "1 passed" in out


def _blinks_and_talk(rng, nf=600, noise=1.0):
    t = np.arange(nf)
    blink = np.zeros(nf)
    for c in range(40, nf, 90):                    # 5-frame blinks, 10 px deep
        blink[c - 2:c + 3] = -10 * np.array([0.3, 0.8, 1.0, 0.8, 0.3])
    talk = 15 * np.maximum(0, np.sin(2 * np.pi * t / 7)) * (np.sin(2 * np.pi * t / 200) > 0)
    still = np.zeros(nf)
    truth = np.stack([blink, talk, still], axis=1)[:, :, None] * np.array([0.0, 1.0]) + 100.0
    return truth, truth + rng.normal(scale=noise, size=truth.shape)


def _range(x):
    return np.percentile(x, 99) - np.percentile(x, 1)


def test_fast_motion_keeps_its_range_and_still_points_are_steadied(rng):
    """A blinking lid, a talking lip and a still point with 1 px noise: the blink and the talking
    keep >= 90 % of their range, every track gets closer to the truth than the raw one, and the
    still point's second differences shrink >= 5x."""
    truth, z = _blinks_and_talk(rng)
    sm, var = smooth_tracks(z, 1.0)
    for l in (0, 1):
        assert _range(sm[:, l, 1]) > 0.9 * _range(truth[:, l, 1])
    err_raw = np.sqrt(((z - truth) ** 2).mean(axis=(0, 2)))
    err_sm = np.sqrt(((sm - truth) ** 2).mean(axis=(0, 2)))
    assert (err_sm < 0.85 * err_raw).all(), (err_raw, err_sm)
    d2 = lambda x: np.median(np.abs(x[2:] - 2 * x[1:-1] + x[:-2]))  # noqa: E731
    assert d2(z[:, 2, 1]) > 5 * d2(sm[:, 2, 1])
    assert (var > 0).all() and (var < 1.0).all()           # posterior variance below the noise


def test_smoother_has_no_lag(rng):
    """A step and a ramp are followed without delay: the smoothed track crosses the half-way point
    of a step at the step's frame."""
    nf = 120
    x = np.where(np.arange(nf) < 60, 0.0, 20.0)
    z = np.stack([x, x], axis=1)[:, None, :] + rng.normal(scale=0.5, size=(nf, 1, 2))
    sm, _ = smooth_tracks(z, 0.25)
    half = np.flatnonzero(sm[:, 0, 0] > 10.0)[0]
    assert half in (59, 60)


def test_zero_noise_and_short_tracks_are_returned_unchanged(rng):
    z = rng.normal(size=(30, 4, 2))
    np.testing.assert_array_equal(smooth_tracks(z, 0.0)[0], z)
    np.testing.assert_array_equal(smooth_tracks(z[:2], 1.0)[0], z[:2])


@pytest.mark.parametrize("mu, noise, message", [
    (np.zeros((5, 3)), 1.0, "shape"),
    (np.full((5, 3, 2), np.nan), 1.0, "finite"),
    (np.zeros((5, 3, 2)), -1.0, "noise_var"),
])
def test_smoother_rejects_bad_input(mu, noise, message):
    with pytest.raises(ValueError, match=message):
        smooth_tracks(mu, noise)
