"""The compiled per-frame LM loop (``frame_lm.tracking_lm``) against the general solver, the compiled
frame evaluation against the term-by-term Python composition, and the plan's expression order."""
import numpy as np
import pytest
from conftest import run_without_jit

from lmfit3d.fit import FitConfig, Tracker
from lmfit3d.context import FitContext
from lmfit3d.problem import FrameProblem, masks, params_to_vector
from lmfit3d.intersection import IntersectionTerm, intersection_far, intersection_term
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.skinning import POSE_DIM
from lmfit3d.sparsity import build_sparsity
from lmfit3d.synthetic import make_frame, random_params
from lmfit3d.terms import symmetrize_upper
from lmfit3d.tracking_normal import expression_order, tracking_plan


def _clip(model, rng, name, n_frames=4):
    """A short synthetic clip with head motion and expression drift; returns (ids, true params, frames)."""
    ids = load_landmark_set(name)
    p0 = random_params(model, rng, yaw_deg=12.0)
    d_expr = np.where(p0.expression > 0, rng.uniform(-0.05, 0.05, size=model.n_expression), 0.0)
    frames = []
    for f in range(n_frames):
        rot = p0.rotations.copy()
        rot[0, 1] += np.radians(1.5 * f)
        psi = np.clip(p0.expression + f * d_expr, 0.0, 1.0)
        frames.append(make_frame(model, p0.replace(rotations=rot, expression=psi), ids, rng, noise_px=1.0,
                                 outlier_fraction=0.1))
    return ids, p0, frames


def _same_fit(a, b):
    (xa, ra), (xb, rb) = a, b
    assert ra.iterations == rb.iterations and ra.status == rb.status and ra.jtj_evals == rb.jtj_evals
    assert ra.cost == rb.cost
    np.testing.assert_array_equal(ra.history, rb.history)
    np.testing.assert_array_equal(ra.x, rb.x)
    np.testing.assert_array_equal(xa, xb)


@pytest.mark.parametrize("name,eyes,w_inter", [("dense320", True, 10.0), ("dense703", True, 10.0),
                                               ("dense320", False, 0.0)])
def test_tracking_lm_equals_general_solver(model, rng, name, eyes, w_inter):
    """Same iterations, status, cost history and parameters, bit for bit, on the frames of a tracked clip
    (the tracker's own frame masks), from a cold pose-only start, and when max_iter stops the solve."""
    ids, p0, frames = _clip(model, rng, name)
    cam = frames[0].camera
    cfg = FitConfig(fit_eyes=eyes, w_intersection=w_inter)
    tr = Tracker(model, ids, (cam.width, cam.height), cam.focal, cfg, identity=p0.identity)
    seen_iters = set()
    kept = 0
    for f, fr in enumerate(frames):
        x_prev, prev = (tr.x.copy(), tr.prev.copy()) if tr.x is not None else (None, None)
        tr.step(fr.mu, fr.sigma)
        if x_prev is None:
            continue
        prob = tr._problem(fr.mu, fr.sigma, prev)
        for max_iter in (cfg.max_iter, 1):
            fast = prob.solve(x_prev, tr._frame_mask, max_iter)
            slow = prob.solve(x_prev, tr._frame_mask, max_iter, compiled=False)
            _same_fit(fast, slow)
            seen_iters.add(fast[1].iterations)
            kept += fast[1].jtj_evals < fast[1].iterations
            np.testing.assert_array_equal(prob.landmark_positions(fast[0])[0], tr._problem(
                fr.mu, fr.sigma, prev).landmark_positions(fast[0])[0])
    assert len(seen_iters) >= 2                       # converged solves and stopped ones
    assert kept > 0                                   # J^T J re-use (FitConfig default) took part
    # cold start: pose only, no temporal term (the tracker's initialisation solves)
    fr = frames[0]
    prob = tr._problem(fr.mu, fr.sigma, None)
    x0 = params_to_vector(model, p0.replace(expression=np.zeros(model.n_expression)), cam.focal)
    x0[0:3] = 0.0
    _same_fit(prob.solve(x0, masks(model, "pose"), 30), prob.solve(x0, masks(model, "pose"), 30, compiled=False))


def test_tracking_lm_with_active_bounds_and_no_plan(model, rng):
    """Expressions pushed onto their bounds (active set in the bounded step) give the same solve; with
    the identity free there is no tracking plan and both paths are the general solver."""
    ids, p0, frames = _clip(model, rng, "dense320", n_frames=1)
    fr = frames[0]
    ctx = FitContext(model, ids, 0.01)
    cfg = FitConfig()
    inter = IntersectionTerm(model, p0.identity, 0.01)
    prev = fr.vertices[ids] + rng.normal(scale=0.3, size=(ids.size, 3))
    prob = FrameProblem(ctx, fr.mu, fr.sigma, (fr.camera.width, fr.camera.height), cfg, prev, inter)
    x = params_to_vector(model, p0, fr.camera.focal)
    e = slice(POSE_DIM, POSE_DIM + model.n_expression)
    x[e] = np.where(rng.random(model.n_expression) < 0.5, 0.0, 1.0)
    mask = masks(model, "pose", "joints", "expression")
    fast, slow = prob.solve(x, mask, 10), prob.solve(x, mask, 10, compiled=False)
    _same_fit(fast, slow)
    assert ((fast[0][e] == 0.0) | (fast[0][e] == 1.0)).any()
    mask_id = masks(model, "pose", "expression", "identity")
    prob.set_free(mask_id, x)
    assert prob.plan is None
    _same_fit(prob.solve(x, mask_id, 2), prob.solve(x, mask_id, 2, compiled=False))


@pytest.mark.parametrize("tw", [0.05, 0.0])
def test_compiled_frame_cost_equals_terms(model, rng, tw):
    """FrameProblem.accumulate (the compiled evaluation when tracking) equals the term-by-term
    composition accumulate_full + symmetrisation: cost to rounding, J^T J and J^T r to 1e-10."""
    ids, p0, frames = _clip(model, rng, "dense320", n_frames=1)
    fr = frames[0]
    ctx = FitContext(model, ids, 0.01)
    table = ctx.table
    cfg = FitConfig(w_temporal=tw)
    inter = IntersectionTerm(model, p0.identity, 0.01)
    prev = fr.vertices[ids] + rng.normal(scale=0.5, size=(ids.size, 3))
    prob = FrameProblem(ctx, fr.mu, fr.sigma, (fr.camera.width, fr.camera.height), cfg, prev, inter)
    x = params_to_vector(model, p0, fr.camera.focal)
    e = slice(POSE_DIM, POSE_DIM + model.n_expression)
    x[e] = rng.uniform(0.0, 1.0, model.n_expression)       # strong expressions: intersections fire
    prob.set_free(masks(model, "pose", "joints", "expression"), x)
    z = x[prob.free]
    n = z.size
    a, b = np.zeros((n, n)), np.zeros(n)
    cost = prob.accumulate(z, a, b, True)
    a_ref, b_ref = np.zeros((n, n)), np.zeros(n)
    cost_ref = prob.accumulate_full(prob.full(z), a_ref, b_ref, True)
    symmetrize_upper(a_ref)
    assert cost == pytest.approx(cost_ref, rel=1e-13)
    np.testing.assert_allclose(a, a_ref, rtol=1e-10, atol=1e-12 * np.abs(a_ref).max())
    np.testing.assert_allclose(b, b_ref, rtol=1e-10, atol=1e-12 * np.abs(b_ref).max())
    empty2, empty1 = np.zeros((0, 0)), np.zeros(0)
    assert prob.accumulate(z, empty2, empty1, False) == pytest.approx(cost_ref, rel=1e-13)
    it = prob.inter                                           # the intersection term fired
    e0 = POSE_DIM
    inter_cost = intersection_term(prob.full(z), e0, it.t_beta, it.table.expr_idx, it.table.expr_blocks,
                                   it.sphere_c, it.sphere_r, it.sphere_of, it.planes, it.hull_of,
                                   np.sqrt(2.0 * cfg.w_intersection), prob.col_map, False, False, empty2, empty1)
    assert inter_cost > 0.0


@pytest.mark.parametrize("tw", [0.05, 0.0])
def test_gradient_alone_equals_full_evaluation(model, rng, tw):
    """J^T r alone (``grad_only``: the solver's J^T J re-use; the jtj passed is left untouched) equals the J^T r of the full evaluation
    without Jacobian thresholding (to 1e-10), with the same cost and positions, with landmarks and
    previous positions missing and the intersection term firing."""
    ids, p0, frames = _clip(model, rng, "dense320", n_frames=1)
    fr = frames[0]
    ctx = FitContext(model, ids, 0.01)
    table = ctx.table
    inter = IntersectionTerm(model, p0.identity, 0.01)
    mu = fr.mu.copy()
    mu[rng.random(ids.size) < 0.1] = np.nan
    prev = fr.vertices[ids] + rng.normal(scale=0.5, size=(ids.size, 3))
    prev[rng.random(ids.size) < 0.1] = np.nan
    x = params_to_vector(model, p0, fr.camera.focal)
    x[POSE_DIM:POSE_DIM + model.n_expression] = rng.uniform(0.0, 1.0, model.n_expression)
    for jac_threshold, rtol in ((0.0, 1e-10), (1e-8, 1e-6)):
        cfg = FitConfig(w_temporal=tw, jac_threshold=jac_threshold)
        prob = FrameProblem(ctx, mu, fr.sigma, (fr.camera.width, fr.camera.height), cfg, prev, inter)
        prob.set_free(masks(model, "pose", "joints", "expression"), x)
        z = x[prob.free]
        n = z.size
        a, b = np.zeros((n, n)), np.zeros(n)
        cost = prob.accumulate(z, a, b, True)
        uv = prob.uv.copy()
        g, kept = np.zeros(n), np.full((n, n), 7.0)
        assert prob.accumulate(z, kept, g, True, grad_only=True) == cost
        assert (kept == 7.0).all()
        np.testing.assert_array_equal(prob.uv, uv)
        np.testing.assert_allclose(g, b, rtol=rtol, atol=rtol * np.abs(b).max())
        assert np.abs(b).max() > 0
    it, empty2, empty1 = prob.inter, np.zeros((0, 0)), np.zeros(0)      # the intersection term fired
    assert intersection_term(prob.full(z), POSE_DIM, it.t_beta, it.table.expr_idx, it.table.expr_blocks,
                             it.sphere_c, it.sphere_r, it.sphere_of, it.planes, it.hull_of,
                             np.sqrt(2.0 * cfg.w_intersection), prob.col_map, False, False, empty2, empty1) > 0.0


def test_gradient_alone_needs_the_tracking_evaluation(model, rng):
    """With the identity free (no tracking plan) J^T r alone is refused."""
    ids, p0, frames = _clip(model, rng, "dense320", n_frames=1)
    fr = frames[0]
    prob = FrameProblem(FitContext(model, ids, 0.01), fr.mu, fr.sigma,
                        (fr.camera.width, fr.camera.height), FitConfig(), None, None)
    x = params_to_vector(model, p0, fr.camera.focal)
    prob.set_free(masks(model, "pose", "expression", "identity"), x)
    assert prob.plan is None
    with pytest.raises(ValueError, match="tracking evaluation"):
        n = prob.free.size
        prob.accumulate(x[prob.free], np.zeros((n, n)), np.zeros(n), True, grad_only=True)


def test_gradient_alone_without_jit():
    """The same under NUMBA_DISABLE_JIT (the kernels' Python source)."""
    out = run_without_jit(__file__, "gradient_alone_equals_full_evaluation")
    assert "2 passed" in out


def test_expression_order(model, rng):
    """A permutation with the free expressions first when some are held, never more work than the
    natural order (the work measure of the docstring, recomputed here)."""
    ids = load_landmark_set("dense320")
    table = build_sparsity(model, ids, 0.01)
    ne = model.n_expression

    def work(order, free):
        pos = np.empty(ne, int)
        pos[order] = np.arange(ne)
        total = 0
        for r in table.expr_idx:
            q = pos[r[(r >= 0) & np.isin(r, free)]]
            total += int((q.max() + 1 - q).sum()) if q.size else 0
        return total

    for free in (np.arange(ne), np.sort(rng.choice(ne, 30, replace=False))):
        order = expression_order(table.expr_idx, free, ne)
        assert sorted(order.tolist()) == list(range(ne))
        assert work(order, free) <= work(np.arange(ne), free)
        if free.size < ne:
            assert set(order[free.size:].tolist()) == set(range(ne)) - set(free.tolist())
    full = expression_order(table.expr_idx, np.arange(ne), ne)
    assert work(full, np.arange(ne)) < 0.8 * work(np.arange(ne), np.arange(ne))     # the ordering pays
    col_map = np.full(POSE_DIM + ne + model.n_identity + 1, -1, np.int64)
    col_map[:POSE_DIM + ne] = np.arange(POSE_DIM + ne)
    plan = tracking_plan(table, col_map, POSE_DIM)
    np.testing.assert_array_equal(plan.expr_order, full)


def test_intersection_far_without_jit():
    """intersection_far's Python source (NUMBA_DISABLE_JIT=1, simd.vaxpy's NumPy definition) agrees too."""
    out = run_without_jit(__file__, "intersection_far_is_the_terms_own_skip_test")
    assert "1 passed" in out


def test_intersection_far_is_the_terms_own_skip_test(model, rng):
    """intersection_far says True exactly when every tested vertex passes the term's outside-test
    (summed in the term's order, NumPy reference), and the term then adds nothing; psi outside
    [0, 1] answers False (the pruned vertex set assumes bounded weights)."""
    inter = IntersectionTerm(model, random_params(model, rng).identity, 0.01)
    e0, ne = POSE_DIM, model.n_expression
    tested = (inter.sphere_of >= 0) | (inter.hull_of >= 0)
    args = (inter.far_base, inter.far_proj, inter.far_ptr, inter.far_chunks, np.empty_like(inter.far_base))
    assert inter.far_base.size < inter.skip_base.size                   # some vertices are never near
    seen = set()
    for trial in range(60):
        x = np.zeros(POSE_DIM + ne + 1)
        scale = (0.05, 0.3, 1.0)[trial % 3]
        x[e0:e0 + ne] = np.where(rng.random(ne) < 0.5, 0.0, rng.uniform(0.0, scale, ne))
        out = inter.skip_base.copy()
        for e in range(ne):
            if x[e0 + e] != 0.0:
                out = out + x[e0 + e] * inter.skip_proj[e]
        expect = bool(np.all(out[tested] >= 1e-9))
        got = intersection_far(x, e0, *args)
        assert got == expect
        seen.add(got)
        if got:
            col_map = np.full(x.size, -1, np.int64)
            col_map[e0:e0 + ne] = np.arange(ne)
            jtj, jtr = np.zeros((ne, ne)), np.zeros(ne)
            assert intersection_term(x, e0, inter.t_beta, inter.table.expr_idx, inter.table.expr_blocks,
                                     inter.sphere_c, inter.sphere_r, inter.sphere_of, inter.planes, inter.hull_of,
                                     1.0, col_map, True, True, jtj, jtr, inter.skip_base, inter.skip_proj) == 0.0
            assert not jtj.any() and not jtr.any()
    assert seen == {True, False}
    x[e0] = -0.1
    assert not intersection_far(x, e0, *args)
