"""One compiled Levenberg-Marquardt loop for the per-frame tracking problem (paper sec. 3.3.1).

:func:`lmfit3d.solvers.levenberg_marquardt` is the general solver: it calls back into Python for
every cost and J^T J evaluation (pose chain, landmark + temporal term, priors, intersection
term), dozens of Python-level calls per frame.  When the identity and the focal length are held
(the per-frame tracking problem, where ``terms.tracking_plan`` gives a plan) the whole solve runs
here instead, in one numba call: the same energy, the same algorithm step for step (damping rule,
active-set bounded step, termination tests and their order), hence the same iterations, costs
and parameters (bit for bit; ``tests/test_fit_kernels.py`` checks it against the general solver).

The problem is passed as four tuples of plain arrays and scalars (built by
:meth:`lmfit3d.fit.FrameProblem._compiled_args` and its neighbours) and one of workspaces:

* ``prob``: ``(cx, cy, t_beta, expr_idx, expr_blocks, weights, anc, joints, parents, mu, inv_sigma,
  temporal_sqrtw, prev, col_map, jac_threshold, expr_inv, joint_inv, zero_e, zero_j, e0,
  j0, j1)``, the arguments of the terms in ``FrameProblem.accumulate_full``;
* ``plan``: the arrays of ``terms.TrackingPlan`` in field order;
* ``inter``: ``(use, t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
  sqrtw, skip_base, skip_proj, skip_block, far_base, far_proj, far_ptr, far_chunks, far_out)`` of the
  intersection term (``use`` False: term off); the last five: the outside-test of
  :func:`intersection_far` and its work buffer (``fit._Intersection._far_test``);
* ``soa``: ``(t_beta_t, col_of, ptr, shape_idx, blocks, weights_t, ranges, acc, complement,
  zero_ranges, wsub, mu_t, isg_t, prev_t)``: the template at the current identity in kernel order,
  the kernel column of each table landmark, the arrays of ``terms.TableSoA`` / ``skinning.SoaSkin``
  and the frame's mu, 1/sigma and previous positions in kernel order;
* ``ws``: ``(rot, chain, chain_t, frame, xyz_t, rm_t, jpose, jexpr, t_work, sub, ybuf, pj, qe)``:
  joint rotations (J, 3), the buffers of ``terms.table_points_buffers`` (jpose's constant entries
  written there), pj (``terms.PJ_ROWS``, L) and qe (2, N).
"""
import numpy as np
from numba import njit

from .simd import W, vaxpy
from .solvers import damping_update, lm_trial, projected_gradient_inf, termination_status, trial_workspace
from .terms import (PJ_NC, SKIP_MARGIN, diagonal_prior, expression_jacobian, frame_columns,
                    intersection_term, landmark_gradient_soa, landmark_positions_soa, pose_threshold_soa,
                    project_columns_soa, project_soa, symmetrize_upper, table_points, table_points_jacobian,
                    vertex_term_tracking)


@njit(cache=True)
def frame_inputs(order, mu, sigma, prev, inv_sigma, mu_t, isg_t, prev_t):
    """A frame's data for the kernels in one call: inv_sigma (L,) = 1 / sigma (L,) out, then
    ``terms.frame_columns`` (mu (L, 2), inv_sigma, prev (L, 3) -> mu_t (2, L), isg_t (L,), prev_t (3, L))."""
    for i in range(sigma.shape[0]):
        inv_sigma[i] = 1.0 / sigma[i]
    frame_columns(order, mu, inv_sigma, prev, mu_t, isg_t, prev_t)


@njit(cache=True)
def landmark_terms(x, want_jac, jtj, jtr, prob, plan, soa, ws, uv, xyz):
    """Landmark + temporal terms of the tracking problem at the full vector x (cost returned).

    Vectorised structure-of-arrays passes over the landmarks (kernel order): pose chain, template
    points, positions, R_root M and pose Jacobian (``terms.table_points_jacobian``; positions only,
    ``terms.table_points``, when ``want_jac`` is False), projections, residuals and costs
    (``terms.project_soa``); for J^T J also the expression columns (``terms.expression_jacobian``),
    their projections (``terms.project_columns_soa``) and the pose-column threshold test
    (``terms.pose_threshold_soa``); then ``terms.vertex_term_tracking`` adds the upper triangle of
    J^T J and J^T r into jtj, jtr; with an empty (0, 0) jtj ``terms.landmark_gradient_soa`` adds
    J^T r alone.  Positions of x in uv (L, 2), xyz (L, 3), table order.
    """
    (cx, cy, t_beta, expr_idx, expr_blocks, weights, anc, joints, parents, mu, inv_sigma, tw, prev, col_map,
     jac_threshold, expr_inv, joint_inv, zero_e, zero_j, e0, j0, j1) = prob
    single, pose_ncols, pose_free, e_count, e_idx, e_pos, expr_free, ee_static = plan
    (t_beta_t, col_of, ptr, shape_idx, blocks, weights_t, ranges, acc, complement, zero_ranges, wsub, mu_t, isg_t,
     prev_t) = soa
    rot, chain, chain_t, frame, xyz_t, rm_t, jpose, jexpr, t_work, sub, ybuf, pj, qe = ws
    nj = rot.shape[0]
    focal = x[x.shape[0] - 1]
    for i in range(3):
        rot[0, i] = x[i]
    for k in range(1, nj):
        for i in range(3):
            rot[k, i] = x[3 + 3 * k + i]
    trans = x[3:6]
    psi = x[e0:e0 + expr_inv.shape[0]]
    if not want_jac:
        table_points(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges, chain,
                     chain_t, frame, xyz_t, t_work, ybuf)
        cost = project_soa(focal, cx, cy, tw, xyz_t, mu_t, isg_t, prev_t, pj)
        landmark_positions_soa(xyz_t, pj, col_of, uv, xyz)
        return cost
    table_points_jacobian(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges,
                          acc, complement, zero_ranges, wsub, chain, chain_t, frame, xyz_t, rm_t, jpose, t_work,
                          sub, ybuf)
    cost = project_soa(focal, cx, cy, tw, xyz_t, mu_t, isg_t, prev_t, pj)
    if jtj.shape[0] == 0:               # J^T r alone (the solver keeps its J^T J); t_work, ybuf: free now
        landmark_gradient_soa(focal, tw, xyz_t, rm_t, jpose, pj, prev_t, isg_t, ptr, shape_idx, blocks, col_map,
                              e0, t_work, ybuf, jtr)
        landmark_positions_soa(xyz_t, pj, col_of, uv, xyz)
        return cost
    expression_jacobian(ptr, blocks, rm_t, jexpr)
    project_columns_soa(focal, ptr, jexpr, pj, isg_t, qe)
    if jac_threshold > 0.0:
        for p in range(col_of.shape[0]):
            pj[PJ_NC, col_of[p]] = pose_ncols[p]
        pose_threshold_soa(focal, jac_threshold, jpose, pj, isg_t)
    vertex_term_tracking(focal, xyz_t, jpose, jexpr, qe, pj, ptr, col_of, expr_blocks, anc, chain[0], trans,
                         chain[2:2 + nj], chain_t[1], chain[2 + nj:2 + 2 * nj], inv_sigma, tw, prev, single,
                         pose_ncols, pose_free, e_count, e_idx, e_pos, expr_free, ee_static, jac_threshold, jtj,
                         jtr, uv, xyz)
    return cost


@njit(cache=True)
def intersection_far(x, e0, far_base, far_proj, far_ptr, far_chunks, far_out):
    """True when the outside-test of ``terms.intersection_term`` skips every vertex at x: the term
    then adds nothing (cost 0, no J^T J entries) and need not run.  False: run it.

    far_base (N,), far_proj (E, N), N a multiple of ``simd.W``: the term's ``skip_base`` and
    ``skip_proj`` for the vertices that can come near when psi is in [0, 1] (the others are skipped by
    the term for every such psi), zero padded; far_chunks[far_ptr[e]:far_ptr[e + 1]]: the W-wide
    chunks of far_proj[e] holding non-zero entries; far_out (N,) work.  far_out = far_base + sum_e
    psi_e far_proj[e] over the non-zero psi_e in the term's order, each entry by the term's own
    operations (one multiply and one add per expression, W lanes at a time; the chunks left out
    would add zeros), so a vertex passes here exactly when the term skips it.  A psi outside [0, 1]
    returns False.
    """
    ne = far_proj.shape[0]
    for e in range(ne):
        we = x[e0 + e]
        if not (we >= 0.0 and we <= 1.0):
            return False
    nw = far_base.shape[0]
    for c in range(nw):
        far_out[c] = far_base[c]
    for e in range(ne):
        we = x[e0 + e]
        if we != 0.0:
            pe = far_proj[e]
            for k in range(far_ptr[e], far_ptr[e + 1]):
                c = far_chunks[k]
                vaxpy(far_out, c, we, pe, c)
    for c in range(nw):
        if not (far_out[c] >= SKIP_MARGIN):
            return False
    return True


@njit(cache=True)
def frame_cost(x, want_jac, full, jtj, jtr, prob, plan, inter, soa, ws, uv, xyz):
    """``FrameProblem.accumulate_full`` + symmetrisation for the tracking problem, compiled.

    x (P,) full vector; when ``want_jac`` adds J^T J and J^T r into the zeroed jtj (n, n), jtr (n,):
    full and symmetric when ``full``, else the upper triangle only (all that ``solvers.lm_trial``
    reads); J^T r alone when jtj is empty (0, 0).  Leaves the landmark positions of x in uv (L, 2)
    and xyz (L, 3).
    ``soa`` and ``ws``: the tables and workspaces of :func:`landmark_terms`.  Returns the cost.
    """
    (cx, cy, t_beta, expr_idx, expr_blocks, weights, anc, joints, parents, mu, inv_sigma, tw, prev, col_map,
     jac_threshold, expr_inv, joint_inv, zero_e, zero_j, e0, j0, j1) = prob
    cost = landmark_terms(x, want_jac, jtj, jtr, prob, plan, soa, ws, uv, xyz)
    if col_map[e0] >= 0:
        cost += diagonal_prior(x, e0, zero_e, expr_inv, col_map, want_jac, jtj, jtr)
    if col_map[j0] >= 0 or col_map[j1 - 1] >= 0:
        cost += diagonal_prior(x, j0, zero_j, joint_inv, col_map, want_jac, jtj, jtr)
    (use, it_beta, it_idx, it_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of, sqrtw, skip_base,
     skip_proj, skip_block, far_base, far_proj, far_ptr, far_chunks, far_out) = inter
    if use and col_map[e0] >= 0 and not intersection_far(x, e0, far_base, far_proj, far_ptr, far_chunks, far_out):
        cost += intersection_term(x, e0, it_beta, it_idx, it_blocks, sphere_c, sphere_r, sphere_of, planes,
                                  hull_of, sqrtw, col_map, want_jac, jtj, jtr, skip_base, skip_proj, skip_block)
    if want_jac and full:
        symmetrize_upper(jtj)
    return cost


@njit(cache=True)
def _set_full(x, free, z):
    for i in range(free.shape[0]):
        x[free[i]] = z[i]


@njit(cache=True)
def tracking_lm(z, base, free, lo, hi, max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho,
                prob, plan, inter, soa, ws, uv, xyz, x_last, history):
    """:func:`lmfit3d.solvers.levenberg_marquardt` on the tracking problem, in one compiled call.

    Parameters
    ----------
    z : (n,) float64, in/out: start (projected onto [lo, hi] here), final free parameters on return.
    base : (P,) float64, full vector supplying the held parameters; free : (n,) int64 its free indices.
    lo, hi : (n,) float64 box bounds.
    max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho : as in ``levenberg_marquardt``
        (J^T J re-use: the gradient evaluations run :func:`landmark_terms` with an empty jtj).
    prob, plan, inter, soa : problem tuples (module docstring); ws : workspaces of :func:`landmark_terms`.
    uv (L, 2), xyz (L, 3) : out, landmark positions of the last evaluation, made at x_last (P,) (out).
    history : (max_iter + 1,) float64 out, cost after each iteration (history[0] = start).

    Returns
    -------
    (cost, iterations, status, n_history, jtj_evals) : float, int, int (``solvers.STATUS_MESSAGES``), int,
    int.
    """
    n = z.shape[0]
    for i in range(n):
        z[i] = min(max(z[i], lo[i]), hi[i])
    x = base.copy()
    jtj = np.zeros((n, n))
    jtr = np.zeros(n)
    empty2 = np.zeros((0, 0))
    empty1 = np.zeros(0)
    step = np.empty(n)
    damp = np.empty(n)
    z_new = np.empty(n)
    work = trial_workspace(n)
    # want_jac as run-time booleans: a literal True/False argument makes numba compile a separate
    # specialisation of frame_cost, measured 15 % slower (and not bit-identical to the Python path's)
    jac = n >= 0
    no_jac = not jac            # also frame_cost's ``full``: lm_trial reads the upper triangle only
    _set_full(x, free, z)
    cost = frame_cost(x, jac, no_jac, jtj, jtr, prob, plan, inter, soa, ws, uv, xyz)
    n_jtj = 1
    fresh = True
    x_last[:] = x
    history[0] = cost
    nh = 1
    if not np.isfinite(cost):
        return cost, 0, -1, nh, n_jtj
    lam = lambda0
    nu = 2.0
    status = 0
    it = 0
    while it < max_iter:
        it += 1
        if projected_gradient_inf(z, jtr, lo, hi) <= gtol:
            status = 3
            history[nh] = cost
            nh += 1
            break
        ok, pred, dz_norm, z_norm = lm_trial(jtj, jtr, lam, diag_floor, z, lo, hi, step, damp, z_new, work)
        if not ok:
            lam, nu = damping_update(lam, nu, -1.0)
            history[nh] = cost
            nh += 1
            if lam > lambda_max:
                status = 4
                break
            continue
        _set_full(x, free, z_new)
        cost_new = frame_cost(x, no_jac, no_jac, empty2, empty1, prob, plan, inter, soa, ws, uv, xyz)
        x_last[:] = x
        rho = (cost - cost_new) / pred if pred > 0 else -1.0
        accepted = rho > 0 and np.isfinite(cost_new)
        if not accepted and not fresh:      # a kept J^T J failed: refresh it at z, same lambda
            _set_full(x, free, z)
            jtj[:] = 0.0
            jtr[:] = 0.0
            cost = frame_cost(x, jac, no_jac, jtj, jtr, prob, plan, inter, soa, ws, uv, xyz)
            x_last[:] = x
            n_jtj += 1
            fresh = True
            history[nh] = cost
            nh += 1
            continue
        lam, nu = damping_update(lam, nu, rho)
        if accepted:
            status = termination_status(cost, cost_new, dz_norm, z_norm, np.inf, ftol, xtol, 0.0)
            z[:] = z_new
            cost = cost_new
            history[nh] = cost
            nh += 1
            if status != 0:
                break                       # converged: J^T J at z is not needed
            jtr[:] = 0.0
            fresh = not rho >= reuse_rho
            if fresh:
                jtj[:] = 0.0
                n_jtj += 1
                cost = frame_cost(x, jac, no_jac, jtj, jtr, prob, plan, inter, soa, ws, uv, xyz)
            else:                           # J^T r alone (empty jtj), J^T J kept
                cost = frame_cost(x, jac, no_jac, empty2, jtr, prob, plan, inter, soa, ws, uv, xyz)
            history[nh - 1] = cost
        else:
            history[nh] = cost
            nh += 1
            if lam > lambda_max:
                status = 4
                break
    return cost, it, status, nh, n_jtj
