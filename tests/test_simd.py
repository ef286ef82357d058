"""lmfit3d.simd: the compiled W-wide updates equal their Python definitions bit for bit."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from lmfit3d.simd import W, n_chunks, padded, vaxpy, vaxpy2, vaxpy3, vdot, vset2


def _all_py(y, yo, a, x0, x1, x2, xo):
    vaxpy(y, yo, a[0], x0, xo)
    vaxpy2(y, yo + 3, a[1], x0, a[2], x1, xo + 1)
    vaxpy3(y, yo + W, a[3], x0, a[4], x1, a[5], x2, xo)
    vset2(y, yo + 2 * W + 1, a[1], x1, a[3], x2, xo)


_all = njit(_all_py)


@njit
def _rows(ee, qds, starts, stops):
    """ee[s, s:t] += q0[s] q0[s:t] + q1[s] q1[s:t] in W-wide chunks, (q0, q1) = qds[r] zero outside [s, t)."""
    for r in range(starts.size):
        s = starts[r]
        row = ee[s]
        q0 = qds[r, 0]
        q1 = qds[r, 1]
        for c in range(s, stops[r], W):
            vaxpy2(row, c, q0[s], q0, q1[s], q1, c)


def test_compiled_equals_python(rng):
    for yo, xo in ((0, 0), (5, 2), (13, 9)):
        y = rng.normal(size=48)
        x = rng.normal(size=(3, 24))
        a = rng.normal(size=6)
        y_jit, y_py = y.copy(), y.copy()
        _all(y_jit, yo, a, x[0], x[1], x[2], xo)
        _all_py(y_py, yo, a, x[0], x[1], x[2], xo)
        np.testing.assert_array_equal(y_jit, y_py)
        assert not np.array_equal(y_jit, y)                   # something was added
        # untouched outside the updated lanes
        np.testing.assert_array_equal(y_jit[:yo], y[:yo])
        np.testing.assert_array_equal(y_jit[yo + 3 * W + 1:], y[yo + 3 * W + 1:])
        np.testing.assert_array_equal(y_jit[yo + 2 * W + 1:yo + 3 * W + 1],      # vset2 overwrote
                                      a[1] * x[1, xo:xo + W] + a[3] * x[2, xo:xo + W])


def test_chunked_rows_equal_numpy_rows(rng):
    """Rows of any start and length, run as whole chunks over a zero-padded buffer, equal plain row updates."""
    ne = 37
    width = padded(ne)
    assert width % W == 0 and width >= ne + W - 1
    starts = rng.integers(0, ne, size=200)
    stops = np.minimum(starts + rng.integers(1, 20, size=200), ne)
    qds = np.zeros((200, 2, width))
    ee = np.zeros((ne, width))
    ref = np.zeros((ne, ne))
    for r, (s, t) in enumerate(zip(starts, stops)):
        qds[r, :, s:t] = rng.normal(size=(2, t - s))
        q0, q1 = qds[r, 0], qds[r, 1]
        ref[s, s:t] += q0[s] * q0[s:t] + q1[s] * q1[s:t]
    _rows(ee, qds, starts, stops)
    np.testing.assert_allclose(ee[:, :ne], ref, rtol=1e-13, atol=1e-13)
    assert not ee[:, ne:].any()                                # padding only ever gained zeros
    assert n_chunks(4 * W + 1) == 5 and n_chunks(4 * W) == 4 and n_chunks(0) == 0


@njit
def _dots(x, y, offsets):
    out = np.empty(offsets.shape[0])
    for k in range(offsets.shape[0]):
        out[k] = vdot(x, offsets[k, 0], y, offsets[k, 1])
    return out


def test_vdot_equals_python_and_numpy(rng):
    """The compiled vdot equals its Python definition bit for bit and np.dot to rounding."""
    x = rng.normal(size=40) * np.exp(rng.normal(scale=3.0, size=40))      # wide magnitudes: order matters
    y = rng.normal(size=33)
    offsets = np.array([[0, 0], [5, 2], [31, 25], [17, 9]], np.int64)
    got = _dots(x, y, offsets)
    ref = np.array([vdot(x, a, y, b) for a, b in offsets])
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got, [x[a:a + W] @ y[b:b + W] for a, b in offsets], rtol=1e-12)
    assert isinstance(vdot(x, 0, y, 0), float)


def test_rejects_non_contiguous_or_wrong_dtype():
    @njit
    def f(y, x):
        vaxpy(y, 0, 1.0, x, 0)

    with pytest.raises(TypingError):
        f(np.zeros(16), np.zeros((2, 16))[:, 0])               # strided view
    with pytest.raises(TypingError):
        f(np.zeros(16), np.zeros(16, np.float32))

    @njit
    def g(y, x):
        return vdot(y, 0, x, 0)

    with pytest.raises(TypingError):
        g(np.zeros(16), np.zeros((2, 16))[:, 0])
