"""The fitter: Jacobians of every term, sparse accumulation, the LM step, recovery, validation."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfit3d.fit import FitConfig, fit_landmarks, validate_landmarks
from lmfit3d.intersection import IntersectionTerm
from lmfit3d.context import FitContext
from lmfit3d.problem import FrameProblem, masks, params_to_vector
from lmfit3d.solvers import damping_update, levenberg_marquardt, termination_status
from lmfit3d.sparsity import layout
from lmfit3d.synthetic import make_frame, random_params, rigid_align_error

IDS = np.r_[np.arange(0, 11248, 97), np.arange(21451, 24590, 211)]   # face, head, both eyeballs
BLOCKS = {"pose": slice(0, 6), "joints": slice(6, 18), "expression": slice(18, 71),
          "identity": slice(71, 171), "focal": slice(171, 172)}
EMPTY2, EMPTY1 = np.zeros((0, 0)), np.zeros(0)


@pytest.fixture
def frame(model, rng):
    p = random_params(model, rng)
    return make_frame(model, p, IDS, rng, noise_px=2.0)


def _problem(model, frame, rng, threshold=0.0, temporal=True, intersection=True):
    cfg = FitConfig(sparsity_threshold_mm=threshold, jac_threshold=0.0, w_temporal=0.1)
    ctx = FitContext(model, IDS, threshold)
    prev = frame.vertices[IDS] + rng.normal(size=(IDS.size, 3)) if temporal else None
    inter = IntersectionTerm(model, frame.params.identity, threshold) if intersection else None
    prob = FrameProblem(ctx, frame.mu, frame.sigma, (512, 512), cfg, prev, inter)
    x = params_to_vector(model, frame.params, frame.camera.focal)
    x[0:3] += 0.05
    x[18:71] = np.clip(x[18:71] + 0.1, 0.0, 1.0)
    x[71:171] += 0.1
    x[-1] *= 1.05
    prob.set_free(masks(model, *BLOCKS), x)
    return prob, x


def _fd_jacobian(fun, z, h=1e-6):
    cols = []
    for i in range(z.size):
        step = h * max(1.0, abs(z[i]))
        zp, zm = z.copy(), z.copy()
        zp[i] += step
        zm[i] -= step
        cols.append((fun(zp) - fun(zm)) / (2 * step))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_gradient_matches_central_differences(model, frame, rng, block):
    """J^T r of all terms (landmarks, temporal, priors, intersection) equals the FD gradient."""
    prob, x = _problem(model, frame, rng)
    z = x[prob.free]
    n = z.size
    jtj, jtr = np.zeros((n, n)), np.zeros(n)
    prob.accumulate(z, jtj, jtr, True)
    sl = BLOCKS[block]
    cost = lambda zz: np.array(prob.accumulate(np.concatenate([z[:sl.start], zz, z[sl.stop:]]), EMPTY2, EMPTY1, False))
    g = _fd_jacobian(cost, z[sl].copy())
    np.testing.assert_allclose(jtr[sl], g, rtol=2e-5, atol=1e-4 * np.abs(g).max())


@pytest.mark.parametrize("block", list(BLOCKS))
def test_landmark_jacobian_and_dense_jtj(model, frame, rng, block):
    """Per-landmark projection Jacobians (FD) assembled densely equal the sparse J^T J (threshold 0)."""
    prob, x = _problem(model, frame, rng, temporal=False, intersection=False)
    mask = np.zeros(prob.n_full, bool)
    mask[BLOCKS[block]] = True
    prob.set_free(mask, x)
    z = x[prob.free]

    def uv(zz):
        prob.accumulate(zz, EMPTY2, EMPTY1, False)
        return (prob.uv * prob.inv_sigma[:, None]).ravel()

    jac = _fd_jacobian(uv, z.copy())
    dense = jac.T @ jac
    n = z.size
    jtj, jtr = np.zeros((n, n)), np.zeros(n)
    prob.accumulate(z, jtj, jtr, True)
    if block in ("expression", "joints"):
        reg = {"expression": 2 * prob.cfg.w_expression, "joints": 2 * prob.cfg.w_joints}[block]
        dense += reg * np.eye(n)
    if block == "identity":
        dense += prob.cfg.w_identity * np.eye(n)
    np.testing.assert_allclose(jtj, dense, rtol=1e-5, atol=1e-6 * np.abs(dense).max())


def test_thresholded_sparsity_changes_little(model, frame, rng):
    """Dropping expression entries below 0.01 mm keeps J^T J within 1% and shrinks the table."""
    full, x = _problem(model, frame, rng, threshold=0.0)
    sparse, _ = _problem(model, frame, rng, threshold=0.01)
    assert sparse.table.sizes().mean() < 0.8 * full.table.sizes().mean()
    n = full.free.size
    a, b = np.zeros((n, n)), np.zeros((n, n))
    full.accumulate(x[full.free], a, np.zeros(n), True)
    sparse.accumulate(x[sparse.free], b, np.zeros(n), True)
    assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()


def test_one_lm_step_equals_dense_step(model, frame, rng):
    prob, x = _problem(model, frame, rng, intersection=False)
    prob.set_free(masks(model, "pose", "joints"), x)       # unbounded block: plain LM step
    z0 = x[prob.free]
    n = z0.size
    jtj, jtr = np.zeros((n, n)), np.zeros(n)
    prob.accumulate(z0, jtj, jtr, True)
    lam = 1e-3
    step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj)), -jtr)
    res = levenberg_marquardt(prob.accumulate, z0, max_iter=1, lambda0=lam)
    assert res.cost < res.history[0]
    np.testing.assert_allclose(res.x, z0 + step, rtol=1e-9, atol=1e-12)


def test_termination_logic():
    assert termination_status(10.0, np.nan, 1.0, 1.0, 1.0, 1e-6, 1e-8, 1e-8) == -1
    assert termination_status(10.0, 9.0, 1.0, 1.0, 1e-9, 1e-6, 1e-8, 1e-8) == 3
    assert termination_status(10.0, 10.0 - 1e-9, 1.0, 1.0, 1.0, 1e-6, 1e-8, 1e-8) == 1
    assert termination_status(10.0, 5.0, 1e-12, 1.0, 1.0, 1e-6, 1e-8, 1e-8) == 2
    assert termination_status(10.0, 5.0, 1.0, 1.0, 1.0, 1e-6, 1e-8, 1e-8) == 0
    # damping: good steps shrink lambda by at most 3x, bad steps grow it geometrically
    assert damping_update(1.0, 2.0, 1.0) == (1.0 / 3.0, 2.0)
    assert damping_update(1.0, 2.0, -1.0) == (2.0, 4.0)
    lam, _ = damping_update(1.0, 2.0, 0.25)
    assert 1.0 < lam < 2.0


def test_lm_solves_rosenbrock_with_bounds():
    def acc(z, jtj, jtr, want):
        r = np.array([10 * (z[1] - z[0] ** 2), 1 - z[0]])
        if want:
            j = np.array([[-20 * z[0], 10.0], [-1.0, 0.0]])
            jtj += j.T @ j
            jtr += j.T @ r
        return 0.5 * r @ r

    res = levenberg_marquardt(acc, np.array([-1.2, 1.0]), max_iter=200, ftol=1e-15, xtol=1e-15, gtol=1e-12)
    assert res.success and np.allclose(res.x, 1.0, atol=1e-6)
    assert np.all(np.diff(res.history) <= 1e-12)          # never accepts an uphill step
    res_b = levenberg_marquardt(acc, np.array([-1.2, 1.0]), np.array([-2.0, -2.0]), np.array([0.5, 2.0]),
                                max_iter=200)
    assert res_b.x[0] <= 0.5 and abs(res_b.x[0] - 0.5) < 1e-6


def _rosenbrock_log(calls):
    """Rosenbrock residuals; logs (mode, z) per call, mode 'cost', 'grad' (grad_only) or 'full'."""
    def acc(z, jtj, jtr, want, grad_only=False):
        calls.append(("cost" if not want else ("grad" if grad_only else "full"), z.copy()))
        r = np.array([10 * (z[1] - z[0] ** 2), 1 - z[0]])
        if want:
            j = np.array([[-20 * z[0], 10.0], [-1.0, 0.0]])
            if not grad_only:
                jtj += j.T @ j
            jtr += j.T @ r
        return 0.5 * r @ r
    return acc


@pytest.mark.parametrize("reuse_rho", [0.75, 1e-3])
def test_lm_jtj_reuse_policy(reuse_rho):
    """J^T J re-use: converges to the same minimum downhill; J^T r alone only at accepted points;
    a step that fails with a kept J^T J is followed by a fresh J^T J at the current point."""
    calls = []
    kw = dict(max_iter=500, ftol=1e-15, xtol=1e-15, gtol=1e-12)
    res = levenberg_marquardt(_rosenbrock_log(calls), np.array([-1.2, 1.0]), reuse_rho=reuse_rho, **kw)
    assert res.success and np.allclose(res.x, 1.0, atol=1e-6)
    assert np.all(np.diff(res.history) <= 1e-12)
    modes = [m for m, _ in calls]
    assert res.jtj_evals == modes.count("full") and "grad" in modes
    current = calls[0][1]                    # the accepted point
    stale = refreshed = 0
    for (m_prev, z_prev), (m, z) in zip(calls, calls[1:]):
        if m == "grad":                     # at the trial point just evaluated (accepted)
            assert m_prev == "cost"
            np.testing.assert_array_equal(z, z_prev)
            current, stale = z, True
        elif m == "full":
            if stale and m_prev == "cost" and not np.array_equal(z, z_prev):
                np.testing.assert_array_equal(z, current)       # refresh after a failed step
                refreshed += 1
            current, stale = z, False
    if reuse_rho < 0.01:
        assert refreshed > 0                 # aggressive re-use: the refresh path ran
    classic = levenberg_marquardt(_rosenbrock_log([]), np.array([-1.2, 1.0]), **kw)
    assert classic.jtj_evals > res.jtj_evals
    np.testing.assert_allclose(res.x, classic.x, atol=1e-6)


def test_tracking_with_jtj_reuse_recovers_noiseless_clip(model, rng):
    """Tracked frames (J^T J re-use on, its default) of a noiseless moving clip: < 0.1 mm, and J^T J
    was kept on some frames (fewer J^T J accumulations than iterations)."""
    from lmfit3d.fit import Tracker
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.skinning import evaluate_mesh
    ids = load_landmark_set("dense320")
    p0 = random_params(model, rng, yaw_deg=10.0)
    d_expr = np.where(p0.expression > 0, rng.uniform(-0.04, 0.04, size=model.n_expression), 0.0)
    cfg = FitConfig()
    assert cfg.jtj_reuse_rho < 1.0
    face = model.face_mask()
    tr, kept = None, 0
    for f in range(5):
        rot = p0.rotations.copy()
        rot[0, 1] += np.radians(2.0 * f)
        psi = np.clip(p0.expression + f * d_expr, 0.0, 1.0)
        fr = make_frame(model, p0.replace(rotations=rot, expression=psi), ids, rng, noise_px=0.0)
        if tr is None:
            tr = Tracker(model, ids, (fr.camera.width, fr.camera.height), fr.camera.focal, cfg,
                         identity=p0.identity)
        fit = tr.step(fr.mu, np.full(ids.size, 0.02))
        assert fit.success and 1 <= fit.jtj_evals <= fit.iterations
        assert np.abs(evaluate_mesh(model, fit.params) - fr.vertices)[face].max() < 0.1
        kept += fit.jtj_evals < fit.iterations
    assert kept > 0


@pytest.mark.parametrize("name", ["dense703", "dense320"])
def test_noiseless_recovery_below_tenth_mm(model, rng, name):
    from lmfit3d.landmarks import load_landmark_set
    ids = load_landmark_set(name)
    fr = make_frame(model, random_params(model, rng), ids, rng, noise_px=0.0)
    res = fit_landmarks(fr.mu, np.full(ids.size, 0.02), landmark_set=name, image_size=(512, 512),
                        focal_px=fr.camera.focal, model=model)
    verts = res.vertices(model, 0)
    face = model.face_mask()
    assert res.status[0] >= 0                                  # no solver failure
    assert np.abs(verts - fr.vertices)[face].max() < 0.1      # absolute, camera space, mm


def test_missing_landmarks_are_ignored(model, rng):
    """NaN landmarks give exactly the fit of the present subset alone (and NaN sigma is allowed there)."""
    from lmfit3d.landmarks import load_landmark_set
    ids = load_landmark_set("dense320")
    fr = make_frame(model, random_params(model, rng), ids, rng, noise_px=0.5)
    mu = fr.mu.copy()
    missing = rng.random(ids.size) < 0.3
    mu[missing] = np.nan
    sigma = np.where(missing, np.nan, 0.5)
    kw = dict(image_size=(512, 512), focal_px=fr.camera.focal, model=model)
    res = fit_landmarks(mu, sigma, landmark_set="dense320", **kw)
    sub = fit_landmarks(fr.mu[~missing], np.full((~missing).sum(), 0.5), vertex_ids=ids[~missing], **kw)
    np.testing.assert_allclose(res.expression, sub.expression, atol=1e-6)
    np.testing.assert_allclose(res.translation, sub.translation, atol=1e-6)
    assert np.isnan(res.uv).sum() == 0                         # fitted positions exist for all
    err = rigid_align_error(res.vertices(model, 0), fr.vertices, model.face_mask())
    assert np.median(err) < 1.0                                # single view, 0.5 px noise


def test_sequence_tracking_with_unknown_focal(model, rng):
    """A short clip: temporal term on, focal unknown (45 deg start), identity from keyframes."""
    from lmfit3d.landmarks import load_landmark_set
    ids = load_landmark_set("dense320")
    base = random_params(model, rng, yaw_deg=5)
    mus, gts = [], []
    for f in range(6):
        rot = base.rotations.copy()
        rot[0, 1] = np.radians(-25 + 10 * f)                  # head turns: focal becomes observable
        p = base.replace(rotations=rot)
        fr = make_frame(model, p, ids, rng, noise_px=0.3)
        mus.append(fr.mu)
        gts.append(fr.vertices)
    res = fit_landmarks(np.stack(mus), np.full((6, ids.size), 0.3), landmark_set="dense320",
                        image_size=(512, 512), model=model)
    assert (res.status >= 0).all()
    assert abs(res.focal[-1] - fr.camera.focal) / fr.camera.focal < 0.15
    errs = [np.median(rigid_align_error(res.vertices(model, f), gts[f], model.face_mask())) for f in range(6)]
    assert max(errs) < 1.0


def test_intersection_term_penalises_eyelids_inside_eyeballs(model):
    inter = IntersectionTerm(model, np.zeros(model.n_identity), 0.01)
    ctx = FitContext(model, IDS, 0.01)
    prob = FrameProblem(ctx, np.full((IDS.size, 2), np.nan), np.ones(IDS.size), (512, 512),
                        FitConfig(w_expression=0.0), None, inter)
    sl, n = layout(model)
    x = np.zeros(n)
    x[-1] = 500.0
    x[5] = -600.0
    prob.set_free(masks(model, "expression"), x)
    rest = prob.accumulate(x[prob.free], EMPTY2, EMPTY1, False)
    single = x.copy()
    single[sl["expression"]][model.expression_names.index("eyeBlink_L")] = 1.0    # a valid full blink
    inside = x.copy()
    inside[sl["expression"]][model.expression_names.index("eyeBlink_L")] = 2.5    # lid pushed through
    assert prob.accumulate(single[prob.free], EMPTY2, EMPTY1, False) == pytest.approx(0.0, abs=1e-9)
    deeper = x.copy()
    deeper[sl["expression"]][model.expression_names.index("eyeBlink_L")] = 4.0
    assert rest == pytest.approx(0.0, abs=1e-9)
    c_in = prob.accumulate(inside[prob.free], EMPTY2, EMPTY1, False)
    c_deep = prob.accumulate(deeper[prob.free], EMPTY2, EMPTY1, False)
    assert 0.0 < c_in < c_deep


_finite = st.floats(0.1, 10.0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.sampled_from([0.0, -1.0, np.inf, -np.inf, np.nan]), f=st.integers(0, 2), l=st.integers(0, 4))
def test_invalid_sigma_on_present_landmark_is_rejected(bad, f, l):
    mu = np.ones((3, 5, 2))
    sigma = np.ones((3, 5))
    sigma[f, l] = bad
    with pytest.raises(ValueError, match="sigma"):
        validate_landmarks(mu, sigma)
    mu[f, l] = np.nan                                    # the same sigma on a missing landmark is fine
    validate_landmarks(mu, sigma)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_invalid_mu_shapes_are_rejected(shape):
    mu = np.zeros(shape)
    if mu.ndim in (2, 3) and mu.shape[-1] == 2:
        validate_landmarks(mu, None)
    else:
        with pytest.raises(ValueError, match="mu"):
            validate_landmarks(mu, None)


def test_fit_landmarks_rejects_bad_arguments(model):
    mu = np.zeros((1, 68, 2))
    with pytest.raises(ValueError, match="landmark set has 320"):
        fit_landmarks(mu, landmark_set="dense320", image_size=(64, 64), model=model)
    with pytest.raises(ValueError, match="image_size"):
        fit_landmarks(mu, landmark_set="ibug68", image_size=(0, 64), model=model)
    with pytest.raises(ValueError, match="focal_px"):
        fit_landmarks(mu, landmark_set="ibug68", image_size=(64, 64), focal_px=-1.0, model=model)
    with pytest.raises(ValueError, match="exactly one"):
        fit_landmarks(mu, image_size=(64, 64), model=model)
    with pytest.raises(ValueError, match="unknown landmark set"):
        fit_landmarks(mu, landmark_set="nope", image_size=(64, 64), model=model)


@pytest.mark.parametrize("field,value", [("jtj_reuse_rho", 0.0), ("jtj_reuse_rho", -0.5),
                                         ("jtj_reuse_rho", float("nan")), ("w_temporal", -1.0),
                                         ("jac_threshold", float("inf")), ("max_iter", 0)])
def test_fit_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        FitConfig(**{field: value})
    FitConfig(jtj_reuse_rho=float("inf"))                  # the classic LM: allowed


def test_intersection_term_without_lids_near_the_eyes(model):
    """No eyelid vertex near an eyeball (here: eyeballs shrunk to 1 um, so the 4 mm search window holds
    no face vertex; in use: a wild identity, |beta| ~ 100, fitted to landmarks with many outliers):
    the term is built with nothing to test there instead of failing."""
    from dataclasses import replace
    tiny_eyes = replace(model, eye_radius=np.full(2, 1e-3))
    it = IntersectionTerm(tiny_eyes, np.zeros(model.n_identity), 0.01)
    assert (it.sphere_of < 0).all() and np.isfinite(it.sphere_r).all()
    assert (it.hull_of >= 0).any()                       # the lips are still tested
