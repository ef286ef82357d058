"""Levenberg-Marquardt on the whole offline problem (lmfit3d.capture_gn): the analytic Jacobians against
the energy's gradient, the Gauss-Newton matrix against differences of that gradient, bounded steps,
and the solver's convergence."""
from dataclasses import replace

import numpy as np
import pytest

from lmfit3d import capture_gn
from lmfit3d.capture import CaptureConfig, CaptureInit, CaptureSolver, LbfgsSettings, fit_capture
from lmfit3d.rotation import matrix_to_axis_angle

from test_capture import IDS, _problem, views  # noqa: F401  (the same problems and views fixture)


def test_jacobian_rows_give_the_energy_gradient(model, views, rng):
    """J^T r of the analytic rows (world-point Jacobian chained with each camera's projection rows, camera
    rows, Cauchy IRLS weights) equals the kernel's landmark gradient, every block."""
    off = dict(w_expression=0.0, w_joints=0.0, w_identity=0.0, w_temporal=0.0, w_intersection=0.0)
    prob, z = _problem(model, views, rng, landmark_loss="cauchy", loss_scale=1.0, **off)
    _, grad, _ = prob.energy(z)
    jx, srow, crow, res = capture_gn.jacobians(prob, z)
    assert ((res ** 2).sum(-1) > 0.5).sum() > 10     # s / (1 + s) > 0.5: landmarks in the loss's robust range
    g = np.zeros(prob.n)
    per_frame = np.einsum("fli,flin->fn", np.einsum("fclai,fcla->fli", srow, res), jx)
    for f in range(prob.n_frames):
        g[prob.frame_slice(f)] += per_frame[f, :prob.psize]
        g[:prob.nk] += per_frame[f, prob.psize:]
    cam = np.einsum("fclak,fcla->ck", crow, res)
    for j in range(prob.n_cameras):
        g[prob.camera_slice(j)] += cam[j]
    np.testing.assert_allclose(g, grad, rtol=1e-9, atol=1e-9 * np.abs(grad).max())


def test_normal_matrix_is_the_gauss_newton_matrix(model, views, rng):
    """H v equals central differences of the energy's own gradient with the landmarks moved onto their
    projections (``_gauss_newton_gradient``: its Hessian is J^T J there), for random directions over
    every block: landmarks, the temporal term (frames coupled), expression / antagonist / joint priors."""
    prob, z = _problem(model, views, rng, same_frames=True, w_identity=0.0, w_intersection=0.0, w_temporal=0.3,
                       w_antagonist=0.1)
    h = capture_gn.normal_matrix(prob, z)
    np.testing.assert_allclose(h, h.T, rtol=0, atol=1e-9 * np.abs(h).max())
    gradient = prob._gauss_newton_gradient(z)
    for _ in range(3):
        v = rng.normal(size=prob.n)
        v[prob.layout.cameras_start:] *= 0.01          # focal in pixels: a step of the same size as the rest
        step = 1e-5
        fd = (gradient(z + step * v) - gradient(z - step * v)) / (2 * step)
        np.testing.assert_allclose(h @ v, fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def test_bounded_step_keeps_the_bounds_and_solves_the_rest(rng):
    """_bounded_step: within the box, and the entries left inside solve their rows of the system."""
    a = rng.normal(size=(30, 12))
    h = a.T @ a
    g = rng.normal(size=12) * 10.0
    x = rng.uniform(0.2, 0.8, 12)
    lo, hi = np.zeros(12), np.ones(12)
    dz = capture_gn._bounded_step(h, g, np.zeros(12), x, lo, hi)
    new = x + dz
    assert (new >= lo).all() and (new <= hi).all()
    inside = (new > 1e-12) & (new < 1 - 1e-12)
    assert 0 < inside.sum() < 12                       # some entries on a bound, some inside
    np.testing.assert_allclose((h @ dz + g)[inside], 0.0, atol=1e-8 * np.abs(g).max())


def test_lm_converges_where_lbfgs_stops_at_its_cap(model, views):
    """Uncalibrated (focal known): LM converges (status 1) in a few iterations to a lower cost than
    L-BFGS reaches in 150, and returns (z, cost, iterations, status) with z within the bounds."""
    from lmfit3d.calibration import Calibration
    cal = replace(Calibration.unknown(views.image_size), focal=views.focal.copy())
    lm = fit_capture(views.mu, views.sigma, vertex_ids=IDS, calibration=cal, model=model,
                     config=CaptureConfig(init=CaptureInit(frames=2), solver=CaptureSolver("lm", max_iter=150)))
    lb = fit_capture(views.mu, views.sigma, vertex_ids=IDS, calibration=cal, model=model,
                     config=CaptureConfig(init=CaptureInit(frames=2), solver=CaptureSolver("lbfgs", max_iter=150)))
    assert lm.converged and (lm.status == 1).all() and lm.iterations < 40, lm.message
    assert lm.message.startswith("LM: CONVERGENCE")
    assert lm.total_cost < lb.total_cost
    assert (lm.expression >= 0).all() and (lm.expression <= 1).all()


def test_lm_returns_a_plain_tuple(model, views, rng):
    """levenberg_marquardt_capture(prob, z0, free, ...) -> (z, cost, iterations, status); held entries keep
    their start, the cost is the energy at z, and a cap of 1 iteration ends with status 0."""
    prob, z0 = _problem(model, views, rng)
    free = np.ones(prob.n, bool)
    free[prob.camera_slice(0)] = False
    z, cost, it, status = capture_gn.levenberg_marquardt_capture(prob, z0, free, 1, 1e-9)
    assert (it, status) == (1, 0)
    np.testing.assert_array_equal(z[~free], z0[~free])
    assert cost == pytest.approx(prob.energy(z, want_grad=False)[0]) and cost < prob.energy(z0, False)[0]
    # the stopping rule ends within its threshold of where LM stops finding decreases (status 2)
    threshold = capture_gn.stop_threshold(prob)
    _, stopped, it_stop, status_stop = capture_gn.levenberg_marquardt_capture(prob, z0, free, 100, threshold)
    _, bottom, it_all, status_all = capture_gn.levenberg_marquardt_capture(prob, z0, free, 100, 0.0)
    assert (status_stop, status_all) == (1, 2) and it_stop < it_all
    assert bottom <= stopped < bottom + threshold


def test_solver_options_are_checked():
    """Each option group checks its values; CaptureConfig checks that it holds the groups (a flat option
    such as ``solver="lm"`` names the group to use)."""
    with pytest.raises(ValueError, match="CaptureSolver.method"):
        CaptureSolver(method="newton")
    with pytest.raises(ValueError, match="CaptureSolver.max_iter"):
        CaptureSolver(max_iter=0)
    with pytest.raises(ValueError, match="LbfgsSettings.identity_hold"):
        LbfgsSettings(identity_hold=1.0)
    with pytest.raises(ValueError, match="LbfgsSettings.maxcor"):
        LbfgsSettings(maxcor=0)
    with pytest.raises(ValueError, match="CaptureInit.frames"):
        CaptureInit(frames=0)
    with pytest.raises(ValueError, match="CaptureConfig.solver must be a CaptureSolver"):
        CaptureConfig(solver="lm")


def test_intersection_rows_give_the_terms_gradient(model, views, rng):
    """rows^T r of the intersection residuals equals the gradient of the intersection term (the energy
    with the term on minus off), expression and identity blocks; the state has intersecting vertices."""
    on, z = _problem(model, views, rng, w_intersection=10.0)
    off, _ = _problem(model, views, rng, w_intersection=0.0)
    frame, rows, res = capture_gn.intersection_jacobian(on, z)
    assert res.size > 3 and (res > 0).all()
    grad = on.energy(z)[1] - off.energy(z)[1]
    g = np.zeros((on.n_frames, rows.shape[1]))
    np.add.at(g, frame, rows * res[:, None])
    for f in range(on.n_frames):
        np.testing.assert_allclose(g[f, :on.ne], grad[on.layout.expression_block(f)], rtol=1e-8,
                                   atol=1e-9 * np.abs(grad).max())
    np.testing.assert_allclose(g[:, on.ne:].sum(0), grad[:on.nk], rtol=1e-8, atol=1e-9 * np.abs(grad).max())


def test_large_uncalibrated_problem_finds_cameras_on_keyframes(model, views):
    """Above ``lm_max_unknowns`` with free cameras: LM on keyframes (2 of 3 here) finds the cameras and the
    identity, then L-BFGS fits every frame with them held; the cameras come out right, the fit converges
    and its cost is within 5 % of LM's on the whole problem (3 % measured)."""
    from lmfit3d.calibration import Calibration
    cal = replace(Calibration.unknown(views.image_size), focal=views.focal.copy())
    cfg = CaptureConfig(init=CaptureInit(frames=2), solver=CaptureSolver(max_iter=150, lm_max_unknowns=300))
    res = fit_capture(views.mu, views.sigma, vertex_ids=IDS, calibration=cal, model=model, config=cfg)
    whole = fit_capture(views.mu, views.sigma, vertex_ids=IDS, calibration=cal, model=model,
                        config=replace(cfg, solver=replace(cfg.solver, lm_max_unknowns=3000)))
    assert "on keyframes, cameras and identity then held; L-BFGS" in res.message
    assert res.converged and res.iterations <= cfg.solver.max_iter
    for j in (1, 2):
        ang = np.degrees(np.linalg.norm(matrix_to_axis_angle(res.camera_rotation[j] @ views.rotation[j].T)))
        assert ang < 1.0
    assert whole.message.startswith("LM: CONVERGENCE") and whole.total_cost < res.total_cost < 1.05 * whole.total_cost
    assert capture_gn.spread_frames(10, 4).tolist() == [0, 3, 6, 9]
