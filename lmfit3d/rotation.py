"""Axis-angle rotations (Rodrigues) and their exact derivatives, as numba kernels.

For omega in R^3, theta = |omega|, K = [omega]_x::

    R(omega)   = I + A K + B K^2                 A = sin(theta)/theta, B = (1 - cos(theta))/theta^2
    J_l(omega) = I + B K + C K^2                 C = (theta - sin(theta))/theta^3

J_l is the left Jacobian of SO(3): R(omega + d) = R(J_l d) R(omega) + O(|d|^2), so
dR/domega_i = [J_l e_i]_x R.  For theta < 0.1 the coefficients come from their Taylor series
(truncation error < 1e-16), never from adding an epsilon to theta.
"""
import numpy as np
from numba import njit

SERIES_THETA = 0.1


@njit(cache=True, inline="always")
def rotation_coeffs(w):
    """(A, B, C) of the Rodrigues formula for axis-angle w (3,)."""
    t2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
    if t2 < SERIES_THETA * SERIES_THETA:
        a = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0)))
        b = 0.5 - t2 / 24.0 * (1.0 - t2 / 30.0 * (1.0 - t2 / 56.0 * (1.0 - t2 / 90.0)))
        c = 1.0 / 6.0 - t2 / 120.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0 * (1.0 - t2 / 110.0)))
    else:
        t = np.sqrt(t2)
        s = np.sin(t)
        a = s / t
        b = (1.0 - np.cos(t)) / t2
        c = (t - s) / (t2 * t)
    return a, b, c


@njit(cache=True, inline="always")
def _fill(w, p, q, out):
    """out = I + p K + q K^2 with K = [w]_x."""
    x, y, z = w[0], w[1], w[2]
    xx, yy, zz, xy, xz, yz = x * x, y * y, z * z, x * y, x * z, y * z
    out[0, 0] = 1.0 - q * (yy + zz)
    out[0, 1] = -p * z + q * xy
    out[0, 2] = p * y + q * xz
    out[1, 0] = p * z + q * xy
    out[1, 1] = 1.0 - q * (xx + zz)
    out[1, 2] = -p * x + q * yz
    out[2, 0] = -p * y + q * xz
    out[2, 1] = p * x + q * yz
    out[2, 2] = 1.0 - q * (xx + yy)


@njit(cache=True)
def rodrigues_into(w, r_out, jl_out):
    """Rotation matrix R(w) and left Jacobian J_l(w) into preallocated (3, 3) arrays."""
    a, b, c = rotation_coeffs(w)
    _fill(w, a, b, r_out)
    _fill(w, b, c, jl_out)


@njit(cache=True)
def rodrigues_batch(w, r_out):
    """R for each row of w (N, 3) into r_out (N, 3, 3)."""
    for i in range(w.shape[0]):
        a, b, _ = rotation_coeffs(w[i])
        _fill(w[i], a, b, r_out[i])


def rodrigues(w):
    """Rotation matrices of axis-angle vectors.

    Parameters
    ----------
    w : array_like, shape (3,) or (N, 3)
        Axis-angle (radians).

    Returns
    -------
    ndarray, shape (3, 3) or (N, 3, 3), float64
    """
    w = np.asarray(w, dtype=np.float64)
    if w.shape[-1:] != (3,) or w.ndim > 2:
        raise ValueError(f"axis-angle must have shape (3,) or (N, 3), got {w.shape}")
    flat = np.ascontiguousarray(w.reshape(-1, 3))
    out = np.empty((flat.shape[0], 3, 3))
    rodrigues_batch(flat, out)
    return out.reshape(w.shape[:-1] + (3, 3))


def left_jacobian(w):
    """Left Jacobian J_l(w) of SO(3), shape (3, 3)."""
    w = np.ascontiguousarray(w, dtype=np.float64)
    if w.shape != (3,):
        raise ValueError(f"axis-angle must have shape (3,), got {w.shape}")
    r, jl = np.empty((3, 3)), np.empty((3, 3))
    rodrigues_into(w, r, jl)
    return jl


def matrix_to_axis_angle(r):
    """Inverse of :func:`rodrigues` for a rotation matrix (3, 3); angle in [0, pi]."""
    r = np.asarray(r, dtype=np.float64)
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / 2.0
    s = np.linalg.norm(v)
    angle = np.arctan2(s, cos)
    if s < 1e-7 and cos > 0:
        return v  # angle ~ sin(angle): first-order exact
    if s < 1e-7:  # angle ~ pi: axis from the symmetric part
        m = ((r + r.T) / 2.0 + np.eye(3)) / 2.0
        axis = m[np.argmax(np.diag(m))]
        axis = axis / np.linalg.norm(axis)
        if axis @ v < 0:
            axis = -axis
        return axis * angle
    return v / s * angle
