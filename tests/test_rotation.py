"""Rodrigues' formula, its left Jacobian and the inverse map, against SciPy and finite differences."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lmfit3d.rotation import SERIES_THETA, left_jacobian, matrix_to_axis_angle, rodrigues

# Magnitudes on both sides of the series/closed-form switch at SERIES_THETA = 0.1, and large angles.
MAGNITUDES = [0.0, 1e-12, 1e-6, 0.05, 0.0999, 0.1, 0.1001, 0.5, 1.0, 2.0, 3.0, np.pi - 1e-6]


def _random_rotvecs(rng, magnitude, n=25):
    d = rng.normal(size=(n, 3))
    return magnitude * d / np.linalg.norm(d, axis=1, keepdims=True)


def _hat(v):
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def test_series_threshold_is_the_documented_one():
    assert SERIES_THETA == 0.1  # the magnitudes above straddle it


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_rodrigues_matches_scipy(rng, magnitude):
    w = _random_rotvecs(rng, magnitude)
    r = rodrigues(w)
    assert r.shape == (len(w), 3, 3)
    # 4e-15: the series for sin(t)/t stops at t^6, whose t^8/9! remainder is 2.8e-14 at t = 0.1
    # (2.7e-15 in R); see the rotation.py note in the report.  Elsewhere the agreement is ~1e-16.
    np.testing.assert_allclose(r, Rotation.from_rotvec(w).as_matrix(), rtol=0, atol=4e-15)
    # single vector form
    np.testing.assert_allclose(rodrigues(w[0]), r[0], rtol=0, atol=0)


def test_tiny_rotation_keeps_full_relative_precision():
    """No epsilon added to theta: R - I = K + K^2 / 2 to relative precision even at |w| ~ 1e-12."""
    w = np.array([1e-12, -2e-12, 3e-12])
    k = _hat(w)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose((rodrigues(w) - np.eye(3))[off], (k + k @ k / 2.0)[off], rtol=1e-14, atol=0)
    np.testing.assert_allclose(left_jacobian(w)[off], (np.eye(3) + k / 2.0 + k @ k / 6.0)[off],
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_rodrigues_is_a_rotation(rng, magnitude):
    r = rodrigues(_random_rotvecs(rng, magnitude))
    np.testing.assert_allclose(np.einsum("nji,njk->nik", r, r), np.broadcast_to(np.eye(3), r.shape),
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_left_jacobian_matches_integral(rng, magnitude):
    """J_l(w) = integral over s in [0, 1] of R(s w) ds (Gauss-Legendre, exact to rounding here)."""
    nodes, weights = np.polynomial.legendre.leggauss(40)
    s = 0.5 * (nodes + 1.0)
    for w in _random_rotvecs(rng, magnitude, n=5):
        ref = 0.5 * np.einsum("s,sij->ij", weights, Rotation.from_rotvec(s[:, None] * w).as_matrix())
        np.testing.assert_allclose(left_jacobian(w), ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("magnitude", [0.0, 1e-6, 0.05, 0.0999, 0.1, 0.1001, 0.7, 2.5])
def test_rotation_derivative_is_left_jacobian_times_rotation(rng, magnitude):
    """dR/dw_i = [J_l e_i]_x R, against central differences that may cross the series threshold.

    With h = 1e-5 the difference quotient is good to ~2e-11; a jump of size d between the series and
    closed-form branches adds d / (2 h) (currently 2.7e-15 / 2e-5 = 1.4e-10 at |w| = 0.1).
    """
    h = 1e-5
    for w in _random_rotvecs(rng, magnitude, n=5):
        r, jl = rodrigues(w), left_jacobian(w)
        for i in range(3):
            e = np.zeros(3)
            e[i] = h
            fd = (rodrigues(w + e) - rodrigues(w - e)) / (2.0 * h)
            np.testing.assert_allclose(_hat(jl[:, i]) @ r, fd, rtol=0, atol=5e-10)


@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-9, 1e-7, 1e-4, 0.0999, 0.1001, 1.0, 2.0, 3.0, np.pi - 1e-3])
def test_axis_angle_round_trip(rng, angle):
    for w in _random_rotvecs(rng, angle, n=20):
        back = matrix_to_axis_angle(rodrigues(w))
        np.testing.assert_allclose(back, w, rtol=0, atol=1e-9)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-8, 1e-10, 0.0])
def test_axis_angle_near_pi(rng, eps):
    """At pi - eps the axis is recovered up to sign (w and -w agree at pi); the rotation round trips."""
    for w in _random_rotvecs(rng, np.pi - eps, n=50):
        r = rodrigues(w)
        back = matrix_to_axis_angle(r)
        assert np.linalg.norm(back) == pytest.approx(np.pi - eps, abs=1e-9)
        assert abs(abs(back @ w) / (np.linalg.norm(back) * np.linalg.norm(w)) - 1.0) < 1e-9
        # 2.5e-7: the near-pi branch picks the axis sign from the symmetric part only, which costs
        # up to 2 * eps (< 2e-7) in the reconstructed rotation; see the rotation.py note in the report.
        np.testing.assert_allclose(rodrigues(back), r, rtol=0, atol=2.5e-7)


@pytest.mark.parametrize("bad", [np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 3))])
def test_rodrigues_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="axis-angle must have shape"):
        rodrigues(bad)
