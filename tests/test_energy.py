"""One energy: every fast path (the general LM problem, the tracking kernels, the offline capture cost)
against the NumPy reference of ``lmfit3d.energy`` at the same points, for the squared and the Cauchy
landmark loss; the layouts; the robust loss's effect on a fit with outliers."""
from dataclasses import replace

import numpy as np
import pytest

from lmfit3d.capture import CaptureConfig, CaptureProblem, validate_multiview
from lmfit3d.energy import (LOSSES, CaptureLayout, FrameLayout, antagonist_pairs, capture_terms, expression_prior,
                            expression_prior_scales, frame_residuals, frame_terms, landmark_loss, loss_parameter,
                            loss_reference)
from lmfit3d.fit import FitConfig, fit_landmarks
from lmfit3d.intersection import IntersectionTerm
from lmfit3d.context import FitContext
from lmfit3d.problem import FrameProblem, masks
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.rotation import matrix_to_axis_angle
from lmfit3d.sparsity import layout
from lmfit3d.synthetic import make_frame, make_multiview, random_params

IDS = np.r_[np.arange(0, 11248, 97), np.arange(21451, 24590, 211)]   # face, head, both eyeballs
# (the second also turns the antagonist pairs of the expression prior on)
CONFIGS = {"squared": FitConfig(), "cauchy": FitConfig(landmark_loss="cauchy", loss_scale=2.0, w_antagonist=0.4)}


def test_layouts(model, rng):
    lay = FrameLayout.of(model)
    sl, n = layout(model)
    assert lay.size == n and lay.slices() == sl
    p = random_params(model, rng)
    x = lay.pack(p, 1234.0)
    beta, psi, rot, trans, focal = lay.unpack(x)
    np.testing.assert_array_equal(beta, p.identity)
    np.testing.assert_array_equal(psi, p.expression)
    np.testing.assert_array_equal(rot, p.rotations)
    assert focal == 1234.0 and x[-1] == 1234.0
    cap = CaptureLayout.of(model, n_frames=3, n_cameras=2)
    assert cap.size == model.n_identity + 3 * (lay.pose_dim + model.n_expression) + 2 * 7
    assert cap.camera_block(1).stop == cap.size and cap.frame_block(0).start == model.n_identity
    z = np.arange(cap.size, dtype=float)
    xf = cap.frame_vector(z, 2, 500.0)
    np.testing.assert_array_equal(xf[lay.expression], z[cap.expression_block(2)])
    np.testing.assert_array_equal(xf[lay.identity], z[cap.identity])


def test_landmark_loss(rng):
    s = rng.uniform(0.0, 50.0, 200)
    for c in (0.0, 0.5, 3.0):
        rho = np.array([landmark_loss(v, c)[0] for v in s])
        drho = np.array([landmark_loss(v, c)[1] for v in s])
        np.testing.assert_allclose(rho, loss_reference(s, c), rtol=1e-13)
        h = 1e-6
        fd = (loss_reference(s + h, c) - loss_reference(s - h, c)) / (2 * h)
        np.testing.assert_allclose(drho, fd, rtol=1e-6)
    assert landmark_loss(4.0, 0.0) == (4.0, 1.0)
    assert loss_reference(1e6, 2.0) < 100.0                     # far outliers count little
    with pytest.raises(ValueError, match="landmark_loss"):
        FitConfig(landmark_loss="huber")
    with pytest.raises(ValueError, match="loss_scale"):
        loss_parameter("cauchy", 0.0)
    assert set(CONFIGS) == set(LOSSES)


def _frame_problem(model, rng, cfg, strong=True):
    ids = load_landmark_set("dense320")
    p = random_params(model, rng, n_active=8)
    fr = make_frame(model, p, ids, rng, noise_px=2.0, outlier_fraction=0.1, outlier_sigma_px=25.0)
    ctx = FitContext(model, ids, 0.01)
    inter = IntersectionTerm(model, p.identity, 0.01)
    prev = fr.vertices[ids] + rng.normal(scale=0.5, size=(ids.size, 3))
    prev[::17] = np.nan                                      # some landmarks without a previous position
    mu = fr.mu.copy()
    mu[::23] = np.nan                                        # and some missing
    prob = FrameProblem(ctx, mu, fr.sigma, (fr.camera.width, fr.camera.height), cfg, prev, inter)
    lay = FrameLayout.of(model)
    x = lay.pack(fr.params, fr.camera.focal)
    x[lay.pose] += rng.normal(scale=0.02, size=lay.pose_dim)
    x[lay.identity] += rng.normal(scale=0.3, size=model.n_identity)
    if strong:
        x[lay.expression] = rng.uniform(0.0, 1.0, model.n_expression)   # intersections fire
    return prob, x, prev, inter


def _reference(prob, x, prev, inter, free_blocks):
    terms = frame_terms(x, prob.layout, prob.table, prob.model, prob.mu, prob.inv_sigma, (prob.cx, prob.cy),
                        prob.cfg, prev, inter.geometry())
    used = ["landmarks", "temporal"] + [b for b in ("expression", "joints", "identity") if b in free_blocks]
    if "expression" in free_blocks:
        used.append("intersection")
    return sum(terms[k] for k in used), terms


def _check_gradient(fun, z, jtr, idx, rel=2e-4):
    """J^T r (the cost's gradient) at the free coordinates idx against central differences of fun."""
    for i in idx:
        h = 1e-6 * max(1.0, abs(z[i]))
        zp, zm = z.copy(), z.copy()
        zp[i] += h
        zm[i] -= h
        fd = (fun(zp) - fun(zm)) / (2 * h)
        assert jtr[i] == pytest.approx(fd, rel=rel, abs=1e-4 * max(1.0, np.abs(jtr).max() * 1e-3)), i


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("path", ["general", "tracking"])
def test_frame_problem_equals_reference(model, rng, loss, path):
    """FrameProblem's cost equals the reference at the same point; its J^T r equals the reference's
    central differences.  ``general``: identity free (terms.vertex_term); ``tracking``: identity
    and focal held (the compiled structure-of-arrays kernels of frame_lm)."""
    cfg = CONFIGS[loss]
    prob, x, prev, inter = _frame_problem(model, rng, cfg)
    blocks = ("pose", "joints", "expression") + (("identity",) if path == "general" else ())
    prob.set_free(masks(model, *blocks), x)
    assert (prob.plan is None) == (path == "general")
    z = x[prob.free]
    n = z.size
    jtj, jtr = np.zeros((n, n)), np.zeros(n)
    cost = prob.accumulate(z, jtj, jtr, True)
    ref, terms = _reference(prob, x, prev, inter, blocks)
    assert terms["intersection"] > 0 and terms["temporal"] > 0
    assert cost == pytest.approx(ref, rel=1e-10)

    def ref_cost(zz):
        return _reference(prob, prob.full(zz), prev, inter, blocks)[0]

    lay = prob.layout
    cols = np.r_[0:6, 6:lay.pose_dim:4, lay.expression.start + np.arange(0, model.n_expression, 5)]
    if path == "general":
        cols = np.r_[cols, lay.identity.start + np.arange(0, model.n_identity, 17)]
    free_idx = prob.col_map[cols]
    free_idx = free_idx[(free_idx >= 0) & (z[np.maximum(free_idx, 0)] > 1e-5)]   # off the expression bound
    _check_gradient(ref_cost, z, jtr, free_idx)


def test_kernels_weight_the_loss_alike(model, rng):
    """Under the Cauchy loss the tracking kernels' J^T J and J^T r equal the general kernel's on the
    pose and expression columns (the general one with identity free, identity prior excluded)."""
    cfg = CONFIGS["cauchy"]
    prob, x, prev, inter = _frame_problem(model, rng, replace(cfg, w_identity=0.0), strong=False)
    prob.set_free(masks(model, "pose", "joints", "expression"), x)
    n = prob.free.size
    a, b = np.zeros((n, n)), np.zeros(n)
    prob.accumulate(x[prob.free], a, b, True)
    prob.set_free(masks(model, "pose", "joints", "expression", "identity"), x)
    m = prob.free.size
    a2, b2 = np.zeros((m, m)), np.zeros(m)
    prob.accumulate(x[prob.free], a2, b2, True)
    np.testing.assert_allclose(a2[:n, :n], a, rtol=1e-9, atol=1e-9 * np.abs(a).max())
    np.testing.assert_allclose(b2[:n], b, rtol=1e-9, atol=1e-9 * np.abs(b).max())


def test_scipy_residuals_are_the_reference(model, rng):
    """frame_residuals (the SciPy baseline's residual vector) gives 1/2 |r|^2 = the summed terms."""
    for cfg in CONFIGS.values():
        prob, x, prev, inter = _frame_problem(model, rng, cfg)
        r = frame_residuals(x, prob.layout, prob.table, model, prob.mu, prob.inv_sigma, (prob.cx, prob.cy), cfg,
                            prev, inter.geometry())
        ref, _ = _reference(prob, x, prev, inter, ("expression", "joints"))
        assert 0.5 * float(r @ r) == pytest.approx(ref, rel=1e-12)


@pytest.fixture(scope="module")
def one_camera(model):
    return make_multiview(model, IDS, np.random.default_rng(11), n_cameras=1, n_frames=3, noise_px=2.0)


@pytest.mark.parametrize("loss", LOSSES)
def test_capture_cost_equals_reference(model, rng, one_camera, loss):
    """The offline cost (one camera, three frames, every term on) and its gradient equal the reference."""
    views = one_camera
    mu, inv = validate_multiview(views.mu, views.sigma, IDS.size)
    fc = replace(CONFIGS[loss], w_temporal=0.3, sparsity_threshold_mm=0.0)
    prob = CaptureProblem(model, IDS, mu, inv, views.image_size, CaptureConfig(fit=fc), views.params[0].identity)
    lay = CaptureLayout.of(model, prob.n_frames, prob.n_cameras)
    assert lay.size == prob.n
    z = np.zeros(prob.n)
    z[lay.identity] = views.params[0].identity + rng.normal(scale=0.2, size=model.n_identity)
    fl = lay.frame
    for f, p in enumerate(views.params):
        blk = lay.frame_block(f).start
        z[blk:blk + fl.pose_dim] = fl.pack(p, 1.0)[fl.pose] + rng.normal(scale=0.02, size=fl.pose_dim)
        z[lay.expression_block(f)] = rng.uniform(0.0, 1.0, model.n_expression)
    c = lay.camera_block(0).start
    z[c:c + 3] = matrix_to_axis_angle(views.rotation[0]) + 0.02
    z[c + 3:c + 6] = views.translation[0] + 3.0
    z[c + 6] = views.focal[0] * 1.05
    obs = prob.obs.astype(np.float64)                                  # as the kernel stores them
    mu_ref = np.transpose(obs[:, :, :2], (1, 0, 3, 2))
    inv_ref = np.transpose(obs[:, :, 2], (1, 0, 2))

    def ref_cost(zz):
        terms = capture_terms(zz, lay, prob.table, model, mu_ref, inv_ref, prob.centre, fc, prob.geometry)
        return sum(terms.values()), terms

    cost, grad, _ = prob.energy(z)
    ref, terms = ref_cost(z)
    assert all(terms[k] > 0 for k in ("landmarks", "temporal", "expression", "joints", "intersection"))
    assert cost == pytest.approx(ref, rel=1e-9)
    idx = np.r_[0:model.n_identity:23, lay.frame_block(1).start + np.arange(0, fl.pose_dim, 2),
                lay.expression_block(2).start + np.arange(0, model.n_expression, 7), c + np.arange(7)]
    _check_gradient(lambda zz: ref_cost(zz)[0], z, grad, idx)


def test_cauchy_fit_shrugs_off_outliers(model, rng):
    """With 15 % of the landmarks 60 px off, the Cauchy fit stays closer to the truth than the squared."""
    ids = load_landmark_set("dense320")
    p = random_params(model, rng, n_active=4, yaw_deg=15.0)
    fr = make_frame(model, p, ids, rng, noise_px=1.0)
    mu = fr.mu.copy()
    out = rng.random(ids.size) < 0.15
    mu[out] += rng.normal(scale=60.0, size=(out.sum(), 2))
    sigma = np.full(ids.size, 1.5)
    err = {}
    for loss, cfg in CONFIGS.items():
        res = fit_landmarks(mu[None], sigma[None], vertex_ids=ids, image_size=(fr.camera.width, fr.camera.height),
                            focal_px=fr.camera.focal, model=model, config=cfg)
        err[loss] = float(np.median(np.linalg.norm(res.uv[0][~out] - fr.clean[~out], axis=1)))
    assert err["cauchy"] < 0.7 * err["squared"], err


def test_antagonist_prior_as_squares(model, rng):
    """The expression prior with antagonist pairs written as squared residuals equals
    w_e |psi|^2 + 2 w_a sum psi_a psi_b; it costs co-activation only; too large a w_a is refused."""
    pairs = antagonist_pairs(model.expression_names)
    assert pairs.shape[1] == 2 and len(pairs) >= 12
    names = model.expression_names
    assert ("eyeBlink_L", "eyeWide_L") in {(names[a], names[b]) for a, b in pairs}
    cfg = FitConfig(w_expression=3.0, w_antagonist=1.2)
    per_shape, per_pair = expression_prior_scales(model.n_expression, pairs, cfg.w_expression, cfg.w_antagonist)
    for _ in range(5):
        psi = rng.uniform(0.0, 1.0, model.n_expression)
        r = np.r_[per_shape * psi, per_pair * (psi[pairs[:, 0]] + psi[pairs[:, 1]])]
        assert 0.5 * r @ r == pytest.approx(expression_prior(psi, pairs, cfg), rel=1e-12)
    single = np.zeros(model.n_expression)
    single[names.index("eyeBlink_L")] = 0.8
    both = single.copy()
    both[names.index("eyeWide_L")] = 0.8
    off = replace(cfg, w_antagonist=0.0)
    assert expression_prior(single, pairs, cfg) == pytest.approx(expression_prior(single, pairs, off))
    assert expression_prior(both, pairs, cfg) > expression_prior(both, pairs, off) + 1.0
    with pytest.raises(ValueError, match="w_antagonist"):
        expression_prior_scales(model.n_expression, pairs, 1.0, 0.6)
