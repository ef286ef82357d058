"""One compiled Levenberg-Marquardt loop for the per-frame tracking problem (paper sec. 3.3.1).

:func:`lmfit3d.solvers.levenberg_marquardt` is the general solver: it calls back into Python for
every cost and J^T J evaluation (pose chain, landmark + temporal term, priors, intersection
term), dozens of Python-level calls per frame.  When the identity and the focal length are held
(the per-frame tracking problem, where ``tracking_normal.tracking_plan`` gives a plan) the whole solve runs
here instead, in one numba call: the same energy, the same algorithm step for step (damping rule,
active-set bounded step, termination tests and their order), hence the same iterations, costs
and parameters (bit for bit; ``tests/test_fit_kernels.py`` checks it against the general solver).

The problem is passed as four named tuples of plain arrays and scalars (built once per frame
problem by :class:`lmfit3d.problem.FrameProblem`) and one of workspaces: :class:`FrameState` (the
terms of ``FrameProblem.accumulate_full``), :class:`~lmfit3d.tracking_normal.TrackingPlan`,
:class:`IntersectionState`, :class:`SoaState` (the tables in kernel order) and :class:`Workspace`.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .energy import Intersection
from .intersection import intersection_far, intersection_term
from .skinning import SoaSkin
from .solvers import (F_COST, I_IT, I_NH, I_NJTJ, I_STATUS, LM_DONE, LM_EVAL_COST, LM_EVAL_FULL, lm_advance,
                      lm_state)
from .terms import diagonal_prior, pair_prior, symmetrize_upper
from .tracking_normal import vertex_term_tracking
from .tracking_points import (PJ_ISG, PJ_NC, expression_jacobian, frame_columns, landmark_gradient_soa,
                              landmark_positions_soa, pose_threshold_soa, project_columns_soa, project_soa,
                              table_points, table_points_jacobian)


class FrameState(NamedTuple):
    """The frame problem's terms: intrinsics, identity state, sparsity table, frame data, weights."""

    cx: float                   # principal point (pixels)
    cy: float
    t_beta: np.ndarray          # (L, 3) template T(beta) at the landmarks (mm)
    expr_idx: np.ndarray        # (L, D) int64 sparsity table
    expr_blocks: np.ndarray     # (L, D, 3)
    weights: np.ndarray         # (L, J) skin weights
    anc: np.ndarray             # (J, J) ancestry
    joints: np.ndarray          # (J, 3) bind joint locations J(beta)
    parents: np.ndarray         # (J,) int64
    mu: np.ndarray              # (L, 2) landmark means (pixels), NaN missing
    inv_sigma: np.ndarray       # (L,) 1/sigma
    temporal_sqrtw: float       # sqrt(2 w_t), 0: no temporal term
    loss_c: float               # landmark loss (energy.landmark_loss): 0 squared, c > 0 Cauchy
    prev: np.ndarray            # (L, 3) previous positions (mm)
    col_map: np.ndarray         # (P,) int64 free index per full index, -1 held
    jac_threshold: float
    expr_inv: np.ndarray        # (E,) per-shape residual scale of the expression prior (energy.expression_prior_scales)
    joint_inv: np.ndarray       # (3 (J - 1),) sqrt(2 w_j)
    zero_e: np.ndarray          # (E,) prior means
    zero_j: np.ndarray          # (3 (J - 1),)
    pairs: np.ndarray           # (P, 2) int64 antagonist pairs (energy.antagonist_pairs), (0, 2) when off
    pair_sqrtw: float           # their residual scale sqrt(2 w_a)
    e0: int                     # first expression index of the full vector
    j0: int                     # joints slice [j0, j1)
    j1: int


class IntersectionState(NamedTuple):
    """The intersection term's geometry (``energy.Intersection``, ``use`` False: term off), its residual
    scale, the term's vertex skip test and the outside-test of :func:`intersection.intersection_far`
    with its work buffer ``far_out`` (``intersection.IntersectionTerm._far_test``)."""

    use: bool
    geom: Intersection
    sqrtw: float
    skip_base: np.ndarray
    skip_proj: np.ndarray
    skip_block: np.ndarray
    far_base: np.ndarray
    far_proj: np.ndarray
    far_ptr: np.ndarray
    far_chunks: np.ndarray
    far_out: np.ndarray


class SoaState(NamedTuple):
    """The table in kernel order (``tracking_points.TableSoA`` and its ``skinning.SoaSkin``), the template
    at the current identity and the frame's mu, 1/sigma, previous positions in kernel order."""

    t_beta_t: np.ndarray
    col_of: np.ndarray
    ptr: np.ndarray
    shape_idx: np.ndarray
    blocks: np.ndarray
    skin: SoaSkin
    mu_t: np.ndarray
    isg_t: np.ndarray
    prev_t: np.ndarray


class Workspace(NamedTuple):
    """Work buffers of :func:`landmark_terms`: joint rotations (J, 3), the buffers of
    ``tracking_points.table_points_buffers`` (jpose's constant entries written there),
    pj (``tracking_points.PJ_ROWS``, L),
    qe (2, N)."""

    rot: np.ndarray
    chain: np.ndarray
    chain_t: np.ndarray
    frame: np.ndarray
    xyz_t: np.ndarray
    rm_t: np.ndarray
    jpose: np.ndarray
    jexpr: np.ndarray
    t_work: np.ndarray
    sub: np.ndarray
    ybuf: np.ndarray
    pj: np.ndarray
    qe: np.ndarray


@njit(cache=True)
def frame_inputs(order, mu, sigma, prev, inv_sigma, mu_t, isg_t, prev_t):
    """A frame's data for the kernels in one call: inv_sigma (L,) = 1 / sigma (L,) out, then
    ``tracking_points.frame_columns`` (mu (L, 2), inv_sigma, prev (L, 3) -> mu_t (2, L), isg_t (L,), prev_t (3, L))."""
    for i in range(sigma.shape[0]):
        inv_sigma[i] = 1.0 / sigma[i]
    frame_columns(order, mu, inv_sigma, prev, mu_t, isg_t, prev_t)


@njit(cache=True)
def landmark_terms(x, want_jac, want_jtj, jtj, jtr, prob, plan, soa, ws, uv, xyz):
    """Landmark + temporal terms of the tracking problem at the full vector x (cost returned).

    Vectorised structure-of-arrays passes over the landmarks (kernel order): pose chain, template
    points, positions, R_root M and pose Jacobian (``tracking_points.table_points_jacobian``; positions only,
    ``tracking_points.table_points``, when ``want_jac`` is False), projections, residuals and costs
    (``tracking_points.project_soa``); for J^T J also the expression columns (``tracking_points.expression_jacobian``),
    their projections (``tracking_points.project_columns_soa``) and the pose-column threshold test
    (``tracking_points.pose_threshold_soa``); then ``tracking_normal.vertex_term_tracking`` adds the upper triangle of
    J^T J and J^T r into jtj, jtr; with ``want_jtj`` False ``tracking_points.landmark_gradient_soa`` adds
    J^T r alone (jtj untouched).  Positions of x in uv (L, 2), xyz (L, 3), table order.
    """
    cx, cy, tw, loss_c, e0, col_map = prob.cx, prob.cy, prob.temporal_sqrtw, prob.loss_c, prob.e0, prob.col_map
    joints, parents, jac_threshold = prob.joints, prob.parents, prob.jac_threshold
    t_beta_t, col_of, ptr, shape_idx, blocks = soa.t_beta_t, soa.col_of, soa.ptr, soa.shape_idx, soa.blocks
    weights_t, ranges, mu_t, isg_t, prev_t = soa.skin.weights_t, soa.skin.ranges, soa.mu_t, soa.isg_t, soa.prev_t
    rot, chain, chain_t, frame, xyz_t, rm_t = ws.rot, ws.chain, ws.chain_t, ws.frame, ws.xyz_t, ws.rm_t
    jpose, jexpr, t_work, sub, ybuf, pj, qe = ws.jpose, ws.jexpr, ws.t_work, ws.sub, ws.ybuf, ws.pj, ws.qe
    nj = rot.shape[0]
    focal = x[x.shape[0] - 1]               # layout: energy.FrameLayout (focal last, joints after the root)
    for i in range(3):
        rot[0, i] = x[i]
    for k in range(1, nj):
        for i in range(3):
            rot[k, i] = x[prob.j0 + 3 * (k - 1) + i]
    trans = x[3:6]
    psi = x[e0:e0 + prob.expr_inv.shape[0]]
    if not want_jac:
        table_points(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges, chain,
                     chain_t, frame, xyz_t, t_work, ybuf)
        cost = project_soa(focal, cx, cy, tw, loss_c, xyz_t, mu_t, isg_t, prev_t, pj)
        landmark_positions_soa(xyz_t, pj, col_of, uv, xyz)
        return cost
    sk = soa.skin
    table_points_jacobian(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges,
                          sk.acc, sk.complement, sk.zero_ranges, sk.wsub, chain, chain_t, frame, xyz_t, rm_t,
                          jpose, t_work, sub, ybuf)
    cost = project_soa(focal, cx, cy, tw, loss_c, xyz_t, mu_t, isg_t, prev_t, pj)
    isg_w = pj[PJ_ISG]                  # 1/sigma weighted by the loss: what the Jacobian rows use
    if not want_jtj:                    # J^T r alone (the solver keeps its J^T J); t_work, ybuf: free now
        landmark_gradient_soa(focal, tw, xyz_t, rm_t, jpose, pj, prev_t, isg_w, ptr, shape_idx, blocks, col_map,
                              e0, t_work, ybuf, jtr)
        landmark_positions_soa(xyz_t, pj, col_of, uv, xyz)
        return cost
    expression_jacobian(ptr, blocks, rm_t, jexpr)
    project_columns_soa(focal, ptr, jexpr, pj, isg_w, qe)
    if jac_threshold > 0.0:
        for p in range(col_of.shape[0]):
            pj[PJ_NC, col_of[p]] = plan.pose_ncols[p]
        pose_threshold_soa(focal, jac_threshold, jpose, pj, isg_w)
    vertex_term_tracking(focal, xyz_t, jpose, jexpr, qe, pj, ptr, col_of, prob.expr_blocks, prob.anc, chain[0],
                         trans, chain[2:2 + nj], chain_t[1], chain[2 + nj:2 + 2 * nj], tw, prob.prev, plan.single,
                         plan.pose_ncols, plan.pose_free, plan.e_count, plan.e_idx, plan.e_pos, plan.expr_free,
                         plan.ee_static, jac_threshold, jtj, jtr, uv, xyz)
    return cost


@njit(cache=True)
def frame_cost(x, want_jac, want_jtj, full, jtj, jtr, prob, plan, inter, soa, ws, uv, xyz):
    """``FrameProblem.accumulate_full`` + symmetrisation for the tracking problem, compiled.

    x (P,) full vector; when ``want_jac`` adds J^T r into the zeroed jtr (n,) and, when ``want_jtj``,
    J^T J into the zeroed jtj (n, n): full and symmetric when ``full``, else the upper triangle only (all
    that ``solvers.lm_trial`` reads); ``want_jtj`` False: J^T r alone, jtj untouched.  Leaves the landmark positions of x in uv (L, 2)
    and xyz (L, 3).
    ``soa`` and ``ws``: the tables and workspaces of :func:`landmark_terms`.  Returns the cost.
    """
    col_map, e0, j0, j1 = prob.col_map, prob.e0, prob.j0, prob.j1
    cost = landmark_terms(x, want_jac, want_jtj, jtj, jtr, prob, plan, soa, ws, uv, xyz)
    if col_map[e0] >= 0:
        cost += diagonal_prior(x, e0, prob.zero_e, prob.expr_inv, col_map, want_jac, want_jtj, jtj, jtr)
        if prob.pairs.shape[0] > 0:
            cost += pair_prior(x, e0, prob.pairs, prob.pair_sqrtw, col_map, want_jac, want_jtj, jtj, jtr)
    if col_map[j0] >= 0 or col_map[j1 - 1] >= 0:
        cost += diagonal_prior(x, j0, prob.zero_j, prob.joint_inv, col_map, want_jac, want_jtj, jtj, jtr)
    it = inter
    if it.use and col_map[e0] >= 0 and not intersection_far(x, e0, it.far_base, it.far_proj, it.far_ptr,
                                                            it.far_chunks, it.far_out):
        g = it.geom
        cost += intersection_term(x, e0, g.template, g.expr_idx, g.expr_blocks, g.sphere_c, g.sphere_r,
                                  g.sphere_of, g.planes, g.hull_of, it.sqrtw, col_map, want_jac, want_jtj, jtj, jtr,
                                  it.skip_base, it.skip_proj, it.skip_block)
    if want_jac and want_jtj and full:
        symmetrize_upper(jtj)
    return cost


@njit(cache=True)
def _set_full(x, free, z):
    for i in range(free.shape[0]):
        x[free[i]] = z[i]


@njit(cache=True)
def tracking_lm(z, base, free, lo, hi, max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho,
                prob, plan, inter, soa, ws, uv, xyz, x_last, history):
    """:func:`lmfit3d.solvers.levenberg_marquardt` on the tracking problem, in one compiled call: the
    same algorithm (``solvers.lm_advance``, written once) with this problem's evaluations.

    Parameters
    ----------
    z : (n,) float64, in/out: start (projected onto [lo, hi]), final free parameters on return.
    base : (P,) float64, full vector supplying the held parameters; free : (n,) int64 its free indices.
    lo, hi : (n,) float64 box bounds.
    max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho : as in ``levenberg_marquardt``.
    prob, plan, inter, soa : :class:`FrameState`, ``tracking_normal.TrackingPlan``, :class:`IntersectionState`,
        :class:`SoaState`; ws : :class:`Workspace` of :func:`landmark_terms`.
    uv (L, 2), xyz (L, 3) : out, landmark positions of the last evaluation, made at x_last (P,) (out).
    history : (max_iter + 1,) float64 out, cost after each iteration (history[0] = start).

    Returns
    -------
    (cost, iterations, status, n_history, jtj_evals)
    """
    st = lm_state(z, lo, hi, max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho)
    x = base.copy()
    # the flags as run-time booleans: a literal True/False argument makes numba compile a separate
    # specialisation of frame_cost, measured 15 % slower (and not bit-identical to the Python path's)
    jac = z.shape[0] >= 0
    no_jac = not jac            # also frame_cost's ``full``: lm_trial reads the upper triangle only
    req = lm_advance(st, 0.0)
    while req != LM_DONE:
        if req == LM_EVAL_COST:     # the cost alone: jtj and jtr untouched
            _set_full(x, free, st.z_new)
            cost = frame_cost(x, no_jac, no_jac, no_jac, st.jtj, st.jtr, prob, plan, inter, soa, ws, uv, xyz)
        else:                   # LM_EVAL_FULL: J^T J and J^T r; LM_EVAL_GRAD: J^T r alone, J^T J kept
            _set_full(x, free, st.z)
            cost = frame_cost(x, jac, req == LM_EVAL_FULL, no_jac, st.jtj, st.jtr, prob, plan, inter, soa, ws, uv,
                              xyz)
        x_last[:] = x
        req = lm_advance(st, cost)
    z[:] = st.z
    nh = st.i[I_NH]
    history[:nh] = st.history[:nh]
    return st.f[F_COST], st.i[I_IT], st.i[I_STATUS], nh, st.i[I_NJTJ]
