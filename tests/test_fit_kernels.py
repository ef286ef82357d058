"""Fast-path kernels of the fitter against NumPy references: Cholesky and the bounded LM step,
position-only skinning, the intersection outside-test, unordered free columns, the sparse-table
Jacobian, and the per-frame problem re-use of the tracker."""
import numpy as np
import pytest
from conftest import run_without_jit

from lmfit3d.fit import FitConfig, Tracker
from lmfit3d.context import FitContext
from lmfit3d.problem import FrameProblem, masks, params_to_vector
from lmfit3d.intersection import SKIP_BLOCK, IntersectionTerm, intersection_term
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.model import Params
from lmfit3d.skinning import (POSE_DIM, ancestry, evaluate_points, pose, single_joint_frame, single_joint_of,
                              skin_point, skin_vertex, skin_vertex_single)
from lmfit3d.solvers import bounded_step, cholesky_solve, trial_workspace
from lmfit3d.sparsity import build_sparsity
from lmfit3d.synthetic import make_frame, random_params
from lmfit3d.tracking_normal import tracking_plan
from lmfit3d.tracking_points import (expression_jacobian, table_points, table_points_buffers, table_points_jacobian,
                                     table_soa)

IDS = np.r_[np.arange(0, 11248, 97), np.arange(21451, 24590, 211)]
EMPTY2, EMPTY1 = np.zeros((0, 0)), np.zeros(0)


def _spd(rng, n):
    a = rng.normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


def test_cholesky_solve_matches_numpy(rng):
    for n in (1, 2, 3, 4, 5, 8, 9, 40, 71):               # the blocked factorisation's edge cases
        a, b = _spd(rng, n), rng.normal(size=n)
        np.testing.assert_allclose(cholesky_solve(a, b), np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
        junk = np.triu(a) + np.tril(rng.normal(size=(n, n)), -1)      # only the upper triangle is read
        np.testing.assert_array_equal(cholesky_solve(junk, b), cholesky_solve(a, b))
    assert cholesky_solve(-np.eye(3), np.ones(3)) is None            # not positive definite
    assert cholesky_solve(np.diag([1.0, 0.0, 1.0]), np.ones(3)) is None
    with pytest.raises(ValueError, match="n, n"):
        cholesky_solve(np.ones((2, 3)), np.ones(2))


def _bounded_step_reference(jtj, jtr, damp, z, lo, hi):
    """The previous NumPy implementation (index sets + LAPACK solve)."""
    fixed = ((z <= lo) & (jtr > 0)) | ((z >= hi) & (jtr < 0))
    step = np.zeros(z.size)
    for _ in range(z.size + 1):
        free = np.flatnonzero(~fixed)
        a = jtj[np.ix_(free, free)] + np.diag(damp[free])
        rhs = -jtr[free] - jtj[np.ix_(free, np.flatnonzero(fixed))] @ step[fixed]
        step[free] = np.linalg.solve(a, rhs)
        zt = z + step
        cross = ~fixed & ((zt < lo) | (zt > hi))
        if not cross.any():
            return step
        step[cross] = np.clip(zt[cross], lo[cross], hi[cross]) - z[cross]
        fixed |= cross
    return step


@pytest.mark.parametrize("n", [12, 45])
def test_bounded_step_matches_reference(rng, n):
    n_pinned = 0
    for trial in range(20):
        jtj = _spd(rng, n)
        jtr = rng.normal(scale=5.0, size=n)
        damp = 1e-3 * np.diag(jtj)
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        lo[6:], hi[6:] = 0.0, 1.0                                   # bounded block, as the expression
        z = rng.uniform(0.0, 1.0, size=n)
        z[6:n:5] = 0.0                                              # at the lower bound
        z[8:n:7] = 1.0                                              # at the upper bound
        step = np.empty(n)
        assert bounded_step(jtj, jtr, damp, z, lo, hi, step, trial_workspace(n))
        ref = _bounded_step_reference(jtj, jtr, damp, z, lo, hi)
        np.testing.assert_allclose(step, ref, rtol=1e-9, atol=1e-12)
        assert np.all(z + step >= lo - 1e-12) and np.all(z + step <= hi + 1e-12)
        n_pinned += int(np.sum((z + step == lo) | (z + step == hi)))
    assert n_pinned > 20                                            # bounds were active / crossed
    step = np.empty(2)
    assert not bounded_step(-np.eye(2), np.ones(2), np.zeros(2), np.zeros(2), np.full(2, -np.inf),
                            np.full(2, np.inf), step, trial_workspace(2))


def _posed(model, rng):
    """(pose state, template (V, 3), joint ancestry, skin_vertex's outputs and workspaces) of random
    parameters: what the skinning-kernel tests share."""
    p = random_params(model, rng)
    nj = model.n_joints
    work = (np.empty(3), np.empty((3, 3)), np.empty((3, POSE_DIM)), np.empty(nj), np.empty((nj + 5, 3)))
    return pose(model, p), model.template(p.identity, p.expression), ancestry(model.joint_parents), work


def test_skin_point_equals_skin_vertex(model, rng):
    st, t_all, anc, (x, rm, dpose, wsub, work) = _posed(model, rng)
    xp = np.empty(3)
    for v in IDS:
        t = np.ascontiguousarray(t_all[v], dtype=np.float64)
        w = model.skin_weights[v].astype(np.float64)
        skin_vertex(t, w, anc, st.r0, st.translation, st.rg, st.tg, st.gpos, st.bm, x, rm, dpose, wsub, work)
        skin_point(t, w, st.r0, st.translation, st.rg, st.tg, xp)
        np.testing.assert_array_equal(xp, x)                       # bit for bit: same operations


def test_skin_vertex_single_matches_skin_vertex(model, rng):
    """The one-joint skinning kernel: positions bit for bit, rm and the pose Jacobian to rounding."""
    st, t_all, anc, (x, rm, dpose, wsub, work) = _posed(model, rng)
    nj = model.n_joints
    w_all = model.skin_weights.astype(np.float64)
    single = single_joint_of(w_all)
    rmk, r0bm, rgm = np.empty((nj, 3, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3))
    single_joint_frame(st.r0, st.rg, st.gpos, st.bm, rmk, r0bm, rgm)
    xs = np.empty(3)
    rms, dps = np.empty((3, 3)), np.full((3, POSE_DIM), np.nan)
    seen = set()
    for k in range(nj):
        for v in rng.choice(np.flatnonzero(single == k), size=5) if (single == k).any() else []:
            t = np.ascontiguousarray(t_all[v], dtype=np.float64)
            skin_vertex(t, w_all[v], anc, st.r0, st.translation, st.rg, st.tg, st.gpos, st.bm, x, rm, dpose,
                        wsub, work)
            skin_vertex_single(t, k, anc, st.r0, st.translation, st.rg, st.tg, rmk, r0bm, rgm, xs, rms, dps,
                               POSE_DIM)
            np.testing.assert_array_equal(xs, x)                   # same operations as skin_point
            np.testing.assert_allclose(rms, rm, rtol=0, atol=1e-14)
            np.testing.assert_allclose(dps, dpose, rtol=1e-12, atol=1e-12 * np.abs(dpose).max())
            seen.add(k)
    assert {0, 1, 2, 3, 4} - seen <= {0}, seen                     # neck, head and both eyes exercised
    assert single_joint_of(np.array([[0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.99, 0.0]])).tolist() == [1, -1, -1]


def _tracking_case(model, rng, mask_blocks, eyes=True, tw=0.2, missing=0, no_prev=0, jac_threshold=0.0):
    ids = load_landmark_set("dense320")
    fr = make_frame(model, random_params(model, rng), ids, rng, noise_px=1.0)
    ctx = FitContext(model, ids, 0.01)
    prev = fr.vertices[ids] + rng.normal(size=(ids.size, 3))
    prev[rng.choice(ids.size, no_prev, replace=False)] = np.nan
    mu = fr.mu.copy()
    mu[rng.choice(ids.size, missing, replace=False)] = np.nan
    cfg = FitConfig(w_temporal=tw, jac_threshold=jac_threshold)
    prob = FrameProblem(ctx, mu, fr.sigma, (fr.camera.width, fr.camera.height), cfg, prev, None)
    x = params_to_vector(model, fr.params, fr.camera.focal)
    x[0:3] += 0.03
    x[18:71] = np.clip(x[18:71] + rng.uniform(-0.1, 0.1, 53), 0.0, 1.0)
    prob.set_free(masks(model, *mask_blocks, eyes=eyes), x)
    return prob, x


def _both_kernels(prob, x, n):
    """(cost, jtj, jtr, uv, xyz) of vertex_term and of vertex_term_tracking on the same state."""
    out = []
    for fast in (False, True):
        prob.plan = tracking_plan(prob.table, prob.col_map, POSE_DIM) if fast else None
        a, b = np.zeros((n, n)), np.zeros(n)
        c = prob._vertex_term(x, a, b, True)
        out.append((c, a, b, prob.uv.copy(), prob.xyz.copy()))
    return out


@pytest.mark.parametrize("case", ["plain", "no_eyes", "no_temporal", "missing", "threshold", "pose_only",
                                  "permuted"])
def test_vertex_term_tracking_matches_vertex_term(model, rng, case):
    """The tracking kernel equals the generic one: cost, positions, J^T J and J^T r to rounding.

    (Round 4: the tracking evaluation poses the landmarks with the structure-of-arrays kernels, which
    may reassociate and fuse multiply-adds (``skinning.SIMD_MATH``), so cost and positions agree to
    rounding, 1e-13 relative, no longer bit for bit.)"""
    kw = dict(no_eyes=dict(eyes=False), no_temporal=dict(tw=0.0), missing=dict(missing=40, no_prev=30),
              threshold=dict(jac_threshold=0.05)).get(case, {})
    blocks = ("pose",) if case == "pose_only" else ("pose", "joints", "expression")
    prob, x = _tracking_case(model, rng, blocks, **kw)
    n = prob.free.size
    if case == "permuted":
        prob.col_map[prob.free] = rng.permutation(n)
    (c0, a0, b0, uv0, xyz0), (c1, a1, b1, uv1, xyz1) = _both_kernels(prob, x, n)
    assert c1 == pytest.approx(c0, rel=1e-13)
    np.testing.assert_allclose(uv1, uv0, rtol=0, atol=1e-13 * np.abs(uv0).max())
    np.testing.assert_allclose(xyz1, xyz0, rtol=0, atol=1e-13 * np.abs(xyz0).max())
    assert np.abs(xyz1 - xyz0).max() < 1e-9          # mm: a scale check on the tolerance above
    assert np.all(np.tril(a1, -1) == 0.0)
    np.testing.assert_allclose(a1, a0, rtol=1e-10, atol=1e-12 * np.abs(a0).max())
    np.testing.assert_allclose(b1, b0, rtol=1e-10, atol=1e-12 * np.abs(b0).max())
    if case == "threshold":                  # the threshold dropped some columns, so it was exercised
        ref, _ = _tracking_case(model, np.random.default_rng(12345), blocks)
        a2 = _both_kernels(ref, x, n)[0][1]
        assert np.abs(a2 - a0).max() > 0


def test_tracking_plan(model, rng):
    """None with identity or focal free; the static temporal Gram is the NumPy sum over one-joint landmarks."""
    prob, x = _tracking_case(model, rng, ("pose", "joints", "expression"))
    for extra in ("identity", "focal"):
        prob.set_free(masks(model, "pose", "joints", "expression", extra), x)
        assert tracking_plan(prob.table, prob.col_map, POSE_DIM) is None
    prob.set_free(masks(model, "pose", "expression"), x)
    plan = tracking_plan(prob.table, prob.col_map, POSE_DIM)
    t = prob.table
    ref = np.zeros((53, 53))
    for p in np.flatnonzero(single_joint_of(t.weights) >= 0):
        ok = t.expr_idx[p] >= 0
        b = np.zeros((3, 53))
        b[:, t.expr_idx[p, ok]] = t.expr_blocks[p, ok].T
        ref += b.T @ b
    o = plan.expr_order                      # buffers are indexed by position in expr_order
    assert sorted(o.tolist()) == list(range(53))
    np.testing.assert_allclose(plan.ee_static, np.triu(ref[np.ix_(o, o)]), rtol=1e-12, atol=1e-12)
    assert (plan.pose_free[:6] == np.arange(6)).all() and (plan.pose_free[6:] == -1).all()
    assert (plan.expr_free == 6 + o).all()
    for p in range(t.n_landmarks):           # e_idx: ascending positions of the landmark's entries
        e = plan.e_idx[p, :plan.e_count[p]]
        assert (np.diff(e) > 0).all()
        np.testing.assert_array_equal(o[e], t.expr_idx[p, plan.e_pos[p, :plan.e_count[p]]])
    assert plan.pose_ncols.max() == POSE_DIM and plan.pose_ncols.min() >= 6


def test_intersection_skip_changes_nothing(model, rng):
    """The linear outside-test only skips vertices that contribute nothing (cost, J^T J, J^T r equal)."""
    inter = IntersectionTerm(model, 0.5 * rng.normal(size=model.n_identity), 0.01)
    it = inter.table
    e0 = POSE_DIM
    n_exp = model.n_expression
    x = np.zeros(POSE_DIM + n_exp + model.n_identity + 1)
    col_map = np.full(x.size, -1, np.int64)
    col_map[e0:e0 + n_exp] = np.arange(n_exp)
    seen_inside = False
    for scale in (0.0, 0.3, 1.0, 2.5):
        x[e0:e0 + n_exp] = scale * rng.uniform(0.0, 1.0, size=n_exp) * (rng.random(n_exp) < 0.4)
        out = []
        for extra in ((), (inter.skip_base, inter.skip_proj), (inter.skip_base, inter.skip_proj, inter.skip_block)):
            jtj, jtr = np.zeros((n_exp, n_exp)), np.zeros(n_exp)
            c = intersection_term(x, e0, inter.t_beta, it.expr_idx, it.expr_blocks, inter.sphere_c,
                                  inter.sphere_r, inter.sphere_of, inter.planes, inter.hull_of, 2.0, col_map,
                                  True, True, jtj, jtr, *extra)
            out.append((c, jtj, jtr))
        for o in out[1:]:
            assert out[0][0] == o[0]
            np.testing.assert_array_equal(out[0][1], o[1])
            np.testing.assert_array_equal(out[0][2], o[2])
        seen_inside |= out[0][0] > 0
        bound = inter.skip_base + x[e0:e0 + n_exp] @ inter.skip_proj
        if scale == 0.0:
            assert (bound >= 1e-9).mean() > 0.9                    # at rest nearly all are skipped
    assert seen_inside


def test_intersection_skip_blocks_bound_every_vertex(model, rng):
    """The block bound is at most the per-vertex bound of each vertex of its block, for weights of
    either sign; at rest it already proves most blocks outside."""
    inter = IntersectionTerm(model, 0.5 * rng.normal(size=model.n_identity), 0.01)
    base, proj, blk = inter.skip_base, inter.skip_proj, inter.skip_block
    ne, n = proj.shape
    assert blk.shape == (2 * ne + 1, -(-n // SKIP_BLOCK))
    for scale in (0.0, 0.5, 2.0):
        psi = scale * rng.normal(size=ne) * (rng.random(ne) < 0.5)
        vertex = base + psi @ proj
        block = blk[0] + np.where(psi >= 0, psi, 0) @ blk[1:ne + 1] + np.where(psi < 0, psi, 0) @ blk[ne + 1:]
        per_block_min = np.array([vertex[b * SKIP_BLOCK:(b + 1) * SKIP_BLOCK].min() for b in range(block.size)])
        assert (block <= per_block_min + 1e-12).all()
        if scale == 0.0:
            assert (block >= 1e-9).mean() > 0.5


def _skip_test_reference(t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of, ne):
    """One vertex at a time, as the docstring of intersection_skip_test states it."""
    n = t_beta.shape[0]
    base, proj = np.full(n, -np.inf), np.zeros((ne, n))
    for p in range(n):
        if sphere_of[p] >= 0:
            v = t_beta[p] - sphere_c[sphere_of[p]]
            u = v / np.linalg.norm(v)
            base[p] = np.linalg.norm(v) - sphere_r[sphere_of[p]]
        elif hull_of[p] >= 0:
            out = planes[hull_of[p], :, :3] @ t_beta[p] - planes[hull_of[p], :, 3]
            u, base[p] = planes[hull_of[p], np.argmax(out), :3], out.max()
        else:
            continue
        ok = expr_idx[p] >= 0
        proj[expr_idx[p, ok], p] = expr_blocks[p, ok] @ u
    return base, proj


def test_intersection_skip_test_matches_reference(model, rng):
    inter = IntersectionTerm(model, 0.5 * rng.normal(size=model.n_identity), 0.01)
    it = inter.table
    base, proj = _skip_test_reference(inter.t_beta, it.expr_idx, it.expr_blocks, inter.sphere_c, inter.sphere_r,
                                      inter.sphere_of, inter.planes, inter.hull_of, model.n_expression)
    assert (inter.sphere_of >= 0).any() and (inter.hull_of >= 0).any()
    np.testing.assert_allclose(inter.skip_base, base, rtol=0, atol=1e-12)
    np.testing.assert_allclose(inter.skip_proj, proj, rtol=0, atol=1e-12)


def test_context_is_passed_along_and_never_shared(model, rng):
    """A tracker builds a context (sparsity table, kernel-order table, plans, intersection terms) or takes
    the one it is given; contexts of other models, landmark sets or thresholds share nothing."""
    ids = load_landmark_set("dense320")
    a = Tracker(model, ids, (640, 480))
    b = Tracker(model, ids, (800, 600), context=a.context)
    assert b.context is a.context and b.table is a.table
    other = Tracker(model, ids, (640, 480))                        # no context given: a new one
    assert other.context is not a.context and other.table is not a.table
    assert other.context.soa is not a.context.soa
    with pytest.raises(ValueError, match="context"):
        Tracker(model, ids[:100], (640, 480), context=a.context)   # another landmark set
    with pytest.raises(ValueError, match="context"):
        Tracker(model, ids, (640, 480), None, FitConfig(sparsity_threshold_mm=0.02), context=a.context)
    beta = rng.normal(size=model.n_identity)
    d = a.context.intersection(beta)
    assert a.context.intersection(beta.copy()) is d                 # same identity bytes: built once
    assert a.context.intersection(beta + 1e-6) is not d
    assert other.context.intersection(beta) is not d                # never across contexts
    col_map = np.full(d.table.n_expression + POSE_DIM + model.n_identity + 1, -1, np.int64)
    col_map[:POSE_DIM] = np.arange(POSE_DIM)
    plan = a.context.plan(col_map)
    assert plan is not None and a.context.plan(col_map.copy()) is plan and other.context.plan(col_map) is not plan
    free_identity = col_map.copy()
    free_identity[-2] = POSE_DIM                                    # an identity column free: no plan, none kept
    assert a.context.plan(free_identity) is None and len(a.context._plans) == 1


def test_context_reused_across_passes(model, rng, monkeypatch):
    """fit_landmarks' two passes (and their frame problems) use one context: its table and intersection
    term are built once, and its plans are the ones the solves ran with."""
    from lmfit3d import context as context_module
    from lmfit3d import fit as fit_module
    built = []
    real = context_module.FitContext.__init__

    def counting(self, *args, **kw):
        built.append(self)
        real(self, *args, **kw)
    monkeypatch.setattr(context_module.FitContext, "__init__", counting)
    seen = []
    real_track = fit_module._track
    monkeypatch.setattr(fit_module, "_track", lambda tr, *a: seen.append(tr) or real_track(tr, *a))
    p = random_params(model, rng, n_active=6)
    frames = [make_frame(model, p, IDS, rng, noise_px=1.0) for _ in range(3)]
    mu = np.stack([f.mu for f in frames])
    out = fit_module.fit_landmarks(mu, vertex_ids=IDS, image_size=(512, 512), model=model)
    assert len(built) == 1 and len(seen) == 2                       # two passes, one context
    ctx = built[0]
    assert all(tr.context is ctx for tr in seen) and seen[0] is not seen[1]
    assert seen[1].inter is ctx.intersection(out.identity)          # pass 2's term is the context's
    assert seen[1]._frame_prob.plan is ctx.plan(seen[1]._frame_prob.col_map)


def test_unordered_free_columns_match_ordered(model, rng):
    """Free columns in another order (as KeyframeProblem's shared-first layout) give the permuted system."""
    fr = make_frame(model, random_params(model, rng), IDS, rng, noise_px=1.0)
    ctx = FitContext(model, IDS, 0.01)
    prev = fr.vertices[IDS] + rng.normal(size=(IDS.size, 3))
    prob = FrameProblem(ctx, fr.mu, fr.sigma, (512, 512), FitConfig(), prev, None)
    x = params_to_vector(model, fr.params, fr.camera.focal)
    x[0:3] += 0.05
    prob.set_free(masks(model, "pose", "joints", "expression", "identity", "focal"), x)
    n = prob.free.size
    a, b = np.zeros((n, n)), np.zeros(n)
    c1 = prob.accumulate_full(x, a, b, True)
    perm = rng.permutation(n)                                      # free column of full index i
    prob.col_map[prob.free] = perm
    a2, b2 = np.zeros((n, n)), np.zeros(n)
    c2 = prob.accumulate_full(x, a2, b2, True)
    assert c1 == c2
    assert np.all(np.tril(a2, -1) == 0.0)                          # upper triangle only
    sym = lambda m: np.triu(m) + np.triu(m, 1).T
    np.testing.assert_allclose(sym(a2)[np.ix_(perm, perm)], sym(a), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(b2[perm], b, rtol=1e-12, atol=1e-9)


def _table_points(model, table, p):
    """table_points_jacobian + expression_jacobian for Params p, in the layout of evaluate_points:
    x (L, 3), jpose (L, 3, POSE_DIM), jexpr (L, 3, E) (dropped shapes 0), R_root M (L, 3, 3)."""
    soa = table_soa(table, model.joint_parents)
    sk = soa.skin
    chain, chain_t, frame, xyz, rm, jpose, jexpr, t_work, sub, ybuf = table_points_buffers(soa, model.n_joints)
    t_beta_t = soa.to_columns(table.mean + table.identity_blocks @ p.identity)
    rot = np.ascontiguousarray(p.rotations, dtype=np.float64)
    for _ in range(2):                                             # re-used buffers give the same values
        table_points_jacobian(rot, model.joints(p.identity), model.joint_parents.astype(np.int64),
                              np.asarray(p.translation, float), np.asarray(p.expression, float), t_beta_t, soa.ptr,
                              soa.shape_idx, soa.blocks, sk.weights_t, sk.ranges, sk.acc, sk.complement,
                              sk.zero_ranges, sk.wsub, chain, chain_t, frame, xyz, rm, jpose, t_work, sub, ybuf)
        expression_jacobian(soa.ptr, soa.blocks, rm, jexpr)
    lm, e = soa.entries()
    assert np.array_equal(np.bincount(lm, minlength=table.n_landmarks), (table.expr_idx >= 0).sum(1))
    dense = np.zeros((table.n_landmarks, 3, model.n_expression))
    dense[lm, :, e] = jexpr.T
    return soa.to_rows(xyz), soa.to_rows(jpose).transpose(0, 2, 1), dense, soa.to_rows(rm).reshape(-1, 3, 3)


@pytest.mark.parametrize("name", ["dense320", "dense703"])
def test_table_points_jacobian_matches_dense(model, rng, name):
    ids = load_landmark_set(name)
    p = random_params(model, rng)
    p = Params(p.identity, p.expression, p.rotations + rng.normal(scale=0.1, size=p.rotations.shape),
               p.translation)                                      # every joint rotated
    table = build_sparsity(model, ids, 0.0)                        # every shape: equals the dense kernel
    xyz, jp, je, rm = _table_points(model, table, p)
    ref_x, ref_j = evaluate_points(model, p, ids)
    np.testing.assert_allclose(xyz, ref_x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(jp, ref_j[:, :, :POSE_DIM], rtol=0, atol=1e-9)
    np.testing.assert_allclose(je, ref_j[:, :, POSE_DIM:], rtol=0, atol=1e-9)
    # d x / d t = R_root M: a template displacement moves the posed point by rm @ displacement
    eb = model.expression_basis[ids].astype(np.float64)
    np.testing.assert_allclose(np.einsum("nij,nje->nie", rm, eb), ref_j[:, :, POSE_DIM:], atol=1e-9)
    # thresholded table: the kept entries are the dense ones, dropped shapes give zero columns;
    # positions leave out the dropped (< 0.01 mm) shapes
    sparse = build_sparsity(model, ids, 0.01)
    x2, jp2, je2, _ = _table_points(model, sparse, p)
    assert 0 < np.abs(x2 - ref_x).max() < 0.05
    kept = np.zeros((ids.size, model.n_expression), bool)
    rows, cols = np.nonzero(sparse.expr_idx >= 0)
    kept[rows, sparse.expr_idx[rows, cols]] = True
    np.testing.assert_allclose(je2.transpose(0, 2, 1)[kept], ref_j[:, :, POSE_DIM:].transpose(0, 2, 1)[kept],
                               rtol=0, atol=1e-9)
    assert np.all(je2.transpose(0, 2, 1)[~kept] == 0.0)


@pytest.mark.parametrize("name", ["dense320", "dense703"])
def test_table_points_equals_table_points_jacobian(model, rng, name):
    """The positions-only pass (the cost-only evaluations of the tracking loop) gives the positions of
    the Jacobian pass bit for bit, so cost-only and J^T J evaluations at one x agree exactly."""
    ids = load_landmark_set(name)
    p = random_params(model, rng)
    p = Params(p.identity, p.expression, p.rotations + rng.normal(scale=0.1, size=p.rotations.shape),
               p.translation)
    table = build_sparsity(model, ids, 0.01)
    ref = _table_points(model, table, p)[0]
    soa = table_soa(table, model.joint_parents)
    chain, chain_t, frame, xyz, _, _, _, t_work, _, ybuf = table_points_buffers(soa, model.n_joints)
    xyz[:] = np.nan
    table_points(np.ascontiguousarray(p.rotations, dtype=np.float64), model.joints(p.identity),
                 model.joint_parents.astype(np.int64), np.asarray(p.translation, float),
                 np.asarray(p.expression, float), soa.to_columns(table.mean + table.identity_blocks @ p.identity),
                 soa.ptr, soa.shape_idx, soa.blocks, soa.skin.weights_t, soa.skin.ranges, chain, chain_t, frame, xyz,
                 t_work, ybuf)
    np.testing.assert_array_equal(soa.to_rows(xyz), ref)
    ref_x, _ = evaluate_points(model, p, ids)
    assert np.abs(ref - ref_x).max() < 0.05                        # and they are the landmark positions


def test_vertex_term_tracking_without_jit():
    """The tracking accumulation's Python source (NUMBA_DISABLE_JIT=1, simd's NumPy definitions) gives
    the same values: this also shows every W-wide row stays inside its padded buffer (a NumPy slice
    past the end would not broadcast), which the compiled kernels do not check."""
    out = run_without_jit(__file__, "vertex_term_tracking_matches_vertex_term")
    assert "7 passed" in out


def test_table_points_jacobian_without_jit():
    """The SoA kernels' Python source (NUMBA_DISABLE_JIT=1) gives the same values."""
    out = run_without_jit(__file__, "table_points_jacobian_matches_dense and dense320")
    assert "1 passed" in out


def test_solver_kernels_without_jit():
    """The padded factorisation and bounded step in their Python source (NUMBA_DISABLE_JIT=1, the
    simd helpers' NumPy definitions) also solve: the padding keeps every W-wide slice in bounds."""
    out = run_without_jit(__file__, "cholesky_solve_matches_numpy or bounded_step_matches_reference")
    assert "3 passed" in out


def test_tracker_reuses_problem_with_same_results(model, rng):
    """A tracker's re-used per-frame problem gives the fits of a fresh problem per frame."""
    ids = load_landmark_set("dense320")
    base = random_params(model, rng, yaw_deg=10)
    frames = []
    for f in range(3):
        rot = base.rotations.copy()
        rot[0, 1] += np.radians(2.0 * f)
        frames.append(make_frame(model, base.replace(rotations=rot), ids, rng, noise_px=1.0))
    cam = frames[0].camera
    tr = Tracker(model, ids, (cam.width, cam.height), cam.focal, identity=base.identity)
    for f, fr in enumerate(frames):
        x_prev, prev = (tr.x.copy(), tr.prev.copy()) if tr.x is not None else (None, None)
        fit = tr.step(fr.mu, fr.sigma)
        assert tr._frame_prob is not None
        if x_prev is None:
            continue
        fresh = tr._problem(fr.mu, fr.sigma, prev)
        x, res = fresh.solve(x_prev, tr._frame_mask, tr.cfg.max_iter)
        assert fit.cost == res.cost
        np.testing.assert_array_equal(tr.x, x)
        xyz, uv = fresh.landmark_positions(x)                      # cached evaluation == fresh evaluation
        fresh._positions_at = None
        xyz2, uv2 = fresh.landmark_positions(x)
        np.testing.assert_array_equal(xyz, xyz2)
        np.testing.assert_array_equal(uv, uv2)
        np.testing.assert_array_equal(tr.prev, xyz)
