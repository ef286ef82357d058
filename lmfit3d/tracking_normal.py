"""Normal equations of the tracking problem: J^T J and J^T r of the landmark and temporal terms
when the identity and focal length are held (:func:`vertex_term_tracking`).

:class:`TrackingPlan` holds the static tables for one sparsity table and one free mask: which
pose columns each landmark has, its free expression columns and their positions, single-joint
landmark groups (whose pose rows are summed per joint, :func:`_joint_group_add`) and the static
expression Gram blocks of the temporal term.  Inputs come from the passes of ``tracking_points``.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .simd import W, padded, vaxpy2, vaxpy3
from .skinning import single_joint_frame, single_joint_of
from .terms import drop_small_columns, landmark_metric
from .tracking_points import PJ_A, PJ_B, PJ_IZ, PJ_ISG, PJ_LM, PJ_PZ, PJ_RU, PJ_RV, PJ_TMP, PJ_U, PJ_V


class TrackingPlan(NamedTuple):
    """Static tables of :func:`vertex_term_tracking` for one sparsity table and one free mask (a named
    tuple: the kernels take it as it is).

    Attributes
    ----------
    single : (L,) int64, joint of a landmark skinned to one joint with weight 1, else -1.
    pose_ncols : (L,) int64, leading pose columns that can move the landmark (6 + 3 * last joint).
    pose_free : (POSE_DIM,) int64, free index of each pose column or -1.
    e_count : (L,) int64, free expression entries per landmark.
    e_idx, e_pos : (L, D) int64, their positions in ``expr_order`` (ascending) and table positions.
    expr_free : (E,) int64, free index of the expression weight at each position of ``expr_order``, or -1.
    ee_static : (E, E) float64, upper triangle (positions of ``expr_order``) of sum_p B_p^T B_p over
        the single-joint landmarks (B_p their free expression blocks): their temporal expression
        block is w B_p^T R^T R B_p with R a rotation, so it does not change from frame to frame.
    expr_order : (E,) int64, expression index at each position (:func:`expression_order`); the
        expression buffers of :func:`vertex_term_tracking` are indexed by position.
    """

    single: np.ndarray
    pose_ncols: np.ndarray
    pose_free: np.ndarray
    e_count: np.ndarray
    e_idx: np.ndarray
    e_pos: np.ndarray
    expr_free: np.ndarray
    ee_static: np.ndarray
    expr_order: np.ndarray


def tracking_plan(table, col_map, pose_dim):
    """:class:`TrackingPlan` of ``table`` (a ``SparsityTable``) for ``col_map``, or None.

    None when the identity or the focal length is free (:func:`vertex_term` handles those).
    """
    col_map = np.asarray(col_map, dtype=np.int64)
    ne = table.n_expression
    if (col_map[pose_dim + ne:] >= 0).any():
        return None
    nl, nd = table.expr_idx.shape
    order = expression_order(table.expr_idx, np.flatnonzero(col_map[pose_dim:pose_dim + ne] >= 0), ne)
    pos_of = np.empty(ne, np.int64)
    pos_of[order] = np.arange(ne)
    single = single_joint_of(table.weights)
    act = table.joint_active
    last = np.where(act[:, 1:].any(1), act.shape[1] - 1 - np.argmax(act[:, :0:-1], axis=1), 0)
    pose_ncols = (6 + 3 * last).astype(np.int64)
    expr_free = np.ascontiguousarray(col_map[pose_dim + order])
    # per landmark its free entries, sorted by position in ``order`` (stable: table order on ties)
    idx0 = np.maximum(table.expr_idx, 0)
    ok = (table.expr_idx >= 0) & (col_map[pose_dim + idx0] >= 0)
    key = np.where(ok, pos_of[idx0], ne)
    srt = np.argsort(key, axis=1, kind="stable")
    e_count = ok.sum(1).astype(np.int64)
    valid = np.arange(nd)[None, :] < e_count[:, None]
    e_pos = np.where(valid, srt, -1).astype(np.int64)
    e_idx = np.where(valid, np.take_along_axis(key, srt, axis=1), -1).astype(np.int64)
    ee_static = np.zeros((ne, ne))
    _static_gram(table.expr_blocks, e_idx, e_pos, e_count, single, ee_static)
    return TrackingPlan(single, pose_ncols, np.ascontiguousarray(col_map[:pose_dim]), e_count, e_idx, e_pos,
                        expr_free, ee_static, order)


def expression_order(expr_idx, free, ne):
    """An order of the E expression weights in which each landmark's free entries lie close together.

    :func:`vertex_term_tracking` adds a landmark's expression x expression block over the contiguous
    position range from each entry to the landmark's last one (zeros in between), so the work is
    sum over landmarks and entries of (last - position + 1).  Candidates: the natural order and the
    spectral (Fiedler vector) order of the co-occurrence graph of the free expressions, both
    directions; the cheapest is returned.  ``free`` lists the free expression indices; the held ones
    go last.  Returns (E,) int64, the expression index at each position.
    """
    free = np.sort(np.asarray(free, dtype=np.int64))
    held = np.setdiff1d(np.arange(ne), free)
    expr_idx = np.asarray(expr_idx)
    member = np.zeros((expr_idx.shape[0], ne), bool)          # landmark x expression: a free entry
    rows, cols = np.nonzero(expr_idx >= 0)
    member[rows, expr_idx[rows, cols]] = True
    is_free = np.zeros(ne, bool)
    is_free[free] = True
    member &= is_free[None, :]
    cands = [np.concatenate([free, held])]
    if free.size > 2:
        k = member[:, free].astype(np.float64)
        co = k.T @ k                                            # co-occurrence counts
        lap = np.diag(co.sum(1)) - co
        fied = np.linalg.eigh(lap)[1][:, 1]
        for f in (fied, -fied):
            cands.append(np.concatenate([free[np.argsort(f, kind="stable")], held]))
    count = member.sum(1)

    def work(order):
        pos = np.empty(ne, np.int64)
        pos[order] = np.arange(ne)
        last = np.where(member, pos[None, :], -1).max(1)
        return int((count * (last + 1) - (member * pos[None, :]).sum(1)).sum())

    return np.ascontiguousarray(min(cands, key=work), dtype=np.int64)


@njit(cache=True)
def _static_gram(blocks, e_idx, e_pos, e_count, single, ee):
    """ee += B_a . B_b over the free entry pairs of every one-joint landmark (``single`` >= 0)."""
    for p in range(e_idx.shape[0]):
        if single[p] >= 0 and e_count[p] > 0:
            _add_gram(blocks[p], e_idx[p], e_pos[p], e_count[p], 1.0, ee)


@njit(cache=True)
def _add_gram(blocks, e_idx, e_pos, n, scale, ee):
    """ee[e_a, e_b] += scale B_a . B_b for a <= b < n (B_a = blocks[e_pos[a]], e_idx ascending)."""
    for a in range(n):
        ea = e_idx[a]
        da = e_pos[a]
        for b in range(a, n):
            db = e_pos[b]
            ee[ea, e_idx[b]] += scale * (blocks[da, 0] * blocks[db, 0] + blocks[da, 1] * blocks[db, 1]
                                         + blocks[da, 2] * blocks[db, 2])


@njit(cache=True, inline="always")
def _expression_column(jexpr, base, e_pos, a):
    """(c0, c1, c2): a landmark's expression column a, jexpr[:, base + e_pos[a]] (its entries start at
    ``base``; e_pos its table positions)."""
    j = base + e_pos[a]
    return jexpr[0, j], jexpr[1, j], jexpr[2, j]


@njit(cache=True, inline="always")
def _explicit_pose_rows(nc, n, e_idx, dpose, am, g, jexpr, base, e_pos, ap, pp, pe, gp, ge):
    """A landmark's pose x pose, expression x pose and gradient rows from its pose Jacobian
    dpose (3, nc), metric am (3, 3), 3D gradient g (3,) and expression columns
    jexpr[:, base + e_pos[a]] (a < n).
    ap (3, P'), pp (POSE_DIM, P') and pe (E, P') have P' = simd.padded(POSE_DIM) columns."""
    for c in range(nc):
        d0 = dpose[0, c]
        d1 = dpose[1, c]
        d2 = dpose[2, c]
        ap[0, c] = am[0, 0] * d0 + am[0, 1] * d1 + am[0, 2] * d2
        ap[1, c] = am[1, 0] * d0 + am[1, 1] * d1 + am[1, 2] * d2
        ap[2, c] = am[2, 0] * d0 + am[2, 1] * d1 + am[2, 2] * d2
        gp[c] += d0 * g[0] + d1 * g[1] + d2 * g[2]
    # rows in W-wide chunks over the padded buffers: ap is zero from column nc on
    for i in range(3):
        for c in range(nc, ap.shape[1]):
            ap[i, c] = 0.0
    ap0 = ap[0]
    ap1 = ap[1]
    ap2 = ap[2]
    for a in range(nc):
        row = pp[a]
        d0 = dpose[0, a]
        d1 = dpose[1, a]
        d2 = dpose[2, a]
        for c in range(a, nc, W):
            vaxpy3(row, c, d0, ap0, d1, ap1, d2, ap2, c)
    for a in range(n):
        ea = e_idx[a]
        c0, c1, c2 = _expression_column(jexpr, base, e_pos, a)
        ge[ea] += c0 * g[0] + c1 * g[1] + c2 * g[2]
        row = pe[ea]
        for c in range(0, nc, W):
            vaxpy3(row, c, c0, ap0, c1, ap1, c2, ap2, c)


HL = 8                  # lanes per expression of the joint-group sums (a multiple of simd.W)


@njit(cache=True, inline="always")
def _joint_group_add(k, xv, trans, am, g, jexpr, base, e_pos, e_idx, n, gsum, hs, srow):
    """Pose rows of a landmark skinned to joint k alone, through per-joint sums.

    Its pose Jacobian is D = S K_k + C_k with S = -[rv]_x (rv = x - translation) and K_k, C_k
    (3, POSE_DIM) the same for every landmark of joint k (``skinning.skin_vertex_single``), so
    D^T A D, D^T g and col^T A D need only the sums over the group of S^T A S, S^T A, A, S^T g, g
    (gsum[k], 3 x 3 blocks and 3-vectors) and of col^T A S, col^T A and col^T g per expression
    (col = jexpr[:, base + e_pos[a]] for a < n; hs[k] (E * HL,): HL = 8 lanes per expression, the
    last one 0; srow (3, HL) work); :func:`_joint_group_finish` multiplies them out once per call.
    """
    r0 = xv[0] - trans[0]
    r1 = xv[1] - trans[1]
    r2 = xv[2] - trans[2]
    # A S, S = -[r]_x = [[0, r2, -r1], [-r2, 0, r0], [r1, -r0, 0]]
    as00 = -am[0, 1] * r2 + am[0, 2] * r1
    as01 = am[0, 0] * r2 - am[0, 2] * r0
    as02 = -am[0, 0] * r1 + am[0, 1] * r0
    as10 = -am[1, 1] * r2 + am[1, 2] * r1
    as11 = am[1, 0] * r2 - am[1, 2] * r0
    as12 = -am[1, 0] * r1 + am[1, 1] * r0
    as20 = -am[2, 1] * r2 + am[2, 2] * r1
    as21 = am[2, 0] * r2 - am[2, 2] * r0
    as22 = -am[2, 0] * r1 + am[2, 1] * r0
    gs = gsum[k]
    # rows 0-2: S^T A S; rows 3-5: S^T A; rows 6-8: A; row 9: S^T g; row 10: g
    for j in range(3):
        a0 = as00 if j == 0 else (as01 if j == 1 else as02)
        a1 = as10 if j == 0 else (as11 if j == 1 else as12)
        a2 = as20 if j == 0 else (as21 if j == 1 else as22)
        gs[0, j] += -r2 * a1 + r1 * a2
        gs[1, j] += r2 * a0 - r0 * a2
        gs[2, j] += -r1 * a0 + r0 * a1
    gs[3, 0] += as00
    gs[3, 1] += as10
    gs[3, 2] += as20
    gs[4, 0] += as01
    gs[4, 1] += as11
    gs[4, 2] += as21
    gs[5, 0] += as02
    gs[5, 1] += as12
    gs[5, 2] += as22
    for i in range(3):
        for j in range(3):
            gs[6 + i, j] += am[i, j]
    gs[9, 0] += -r2 * g[1] + r1 * g[2]
    gs[9, 1] += r2 * g[0] - r0 * g[2]
    gs[9, 2] += -r1 * g[0] + r0 * g[1]
    for i in range(3):
        gs[10, i] += g[i]
    # per expression entry HL lanes of hs[k]: col^T A S (3), col^T A (3), col^T g, 0
    s0 = srow[0]
    s1 = srow[1]
    s2 = srow[2]
    s0[0], s0[1], s0[2], s0[3], s0[4], s0[5], s0[6] = as00, as01, as02, am[0, 0], am[0, 1], am[0, 2], g[0]
    s1[0], s1[1], s1[2], s1[3], s1[4], s1[5], s1[6] = as10, as11, as12, am[1, 0], am[1, 1], am[1, 2], g[1]
    s2[0], s2[1], s2[2], s2[3], s2[4], s2[5], s2[6] = as20, as21, as22, am[2, 0], am[2, 1], am[2, 2], g[2]
    h = hs[k]
    for a in range(n):
        o = HL * e_idx[a]
        c0, c1, c2 = _expression_column(jexpr, base, e_pos, a)
        for c in range(0, HL, W):
            vaxpy3(h, o + c, c0, s0, c1, s1, c2, s2, c)


@njit(cache=True)
def _joint_group_finish(k, anc, r0bm, rgm, gsum, hs, pp, pe, gp, ge):
    """Add joint k's group sums (:func:`_joint_group_add`) into pp, pe and gp.

    K_k, C_k (3, POSE_DIM): root rotation columns K = J_l0 (``r0bm[0]``), C = 0; translation K = 0,
    C = I; joint m (an ancestor of k, or k) K = R_root bm_m, C = [R_root g_m]_x R_root bm_m; other
    joints 0.  pp += K^T (SAS K + SA C) + C^T (SA^T K + A C), gp += K^T S^T g + C^T g,
    pe += H_S K + H_A C, ge += the gradient lane of hs[k].
    """
    nj = anc.shape[0]
    pd = pp.shape[0]
    kk = np.zeros((3, pe.shape[1]))        # padded like pe (zeros past pd) for the W-wide pe rows
    cc = np.zeros((3, pe.shape[1]))
    for i in range(3):
        for j in range(3):
            kk[i, j] = r0bm[0, i, j]
        cc[i, 3 + i] = 1.0
    for m in range(1, nj):
        if anc[k, m] == 0.0:
            continue
        c = 6 + 3 * (m - 1)
        u0 = rgm[m, 0]
        u1 = rgm[m, 1]
        u2 = rgm[m, 2]
        for j in range(3):
            b0 = r0bm[m, 0, j]
            b1 = r0bm[m, 1, j]
            b2 = r0bm[m, 2, j]
            kk[0, c + j] = b0
            kk[1, c + j] = b1
            kk[2, c + j] = b2
            cc[0, c + j] = u1 * b2 - u2 * b1
            cc[1, c + j] = u2 * b0 - u0 * b2
            cc[2, c + j] = u0 * b1 - u1 * b0
    gs = gsum[k]
    t1 = np.zeros((3, pd))
    t2 = np.zeros((3, pd))
    for i in range(3):
        for c in range(pd):
            s1 = 0.0
            s2 = 0.0
            for q in range(3):
                s1 += gs[i, q] * kk[q, c] + gs[3 + i, q] * cc[q, c]
                s2 += gs[3 + q, i] * kk[q, c] + gs[6 + i, q] * cc[q, c]
            t1[i, c] = s1
            t2[i, c] = s2
    for a in range(pd):
        gp[a] += (kk[0, a] * gs[9, 0] + kk[1, a] * gs[9, 1] + kk[2, a] * gs[9, 2]
                  + cc[0, a] * gs[10, 0] + cc[1, a] * gs[10, 1] + cc[2, a] * gs[10, 2])
        for b in range(a, pd):
            pp[a, b] += (kk[0, a] * t1[0, b] + kk[1, a] * t1[1, b] + kk[2, a] * t1[2, b]
                         + cc[0, a] * t2[0, b] + cc[1, a] * t2[1, b] + cc[2, a] * t2[2, b])
    h = hs[k]
    kk0, kk1, kk2, cc0, cc1, cc2 = kk[0], kk[1], kk[2], cc[0], cc[1], cc[2]
    for e in range(ge.shape[0]):
        o = HL * e
        h0 = h[o]
        h1 = h[o + 1]
        h2 = h[o + 2]
        h3 = h[o + 3]
        h4 = h[o + 4]
        h5 = h[o + 5]
        ge[e] += h[o + 6]
        if h0 == 0.0 and h1 == 0.0 and h2 == 0.0 and h3 == 0.0 and h4 == 0.0 and h5 == 0.0:
            continue
        row = pe[e]
        for c in range(0, pd, W):
            vaxpy3(row, c, h0, kk0, h1, kk1, h2, kk2, c)
            vaxpy3(row, c, h3, cc0, h4, cc1, h5, cc2, c)


@njit(cache=True)
def _work(anc, r0, rg, gpos, bm, ne, pd):
    """The workspaces of one :func:`vertex_term_tracking` call (see there), a tuple:
    pp, pe, gp, ge, ee, gsum, hs, srow, used, r0bm, rgm, nck, xv, dx, g, am, dpose, ap, qd, acd.

    Zeroed dense sums (pose x pose pp (POSE_DIM, P'), expression x pose pe (E, P'), gradients gp,
    ge, expression x expression ee (E, E'), P' = simd.padded(POSE_DIM), E' = simd.padded(E): a row
    from any position runs in whole W-wide chunks over zeros past its end), the per-joint sums of
    :func:`_joint_group_add` (gsum, hs, srow; used: joints with a landmark in them), the joint frames
    r0bm, rgm of the pose chain (r0, rg, gpos, bm; ``skinning.single_joint_frame``), nck (J,) the pose
    columns of a landmark skinned to joint k alone, and one landmark's position xv, projection
    Jacobian dx, gradient g, metric am, pose Jacobian dpose, A dpose ap, and its projected and
    A-weighted expression columns qd (2, E'), acd (3, E') dense over positions (zero between landmarks).

    Plain arrays, unpacked into locals of the kernel and passed to its inlined helpers one by one,
    not as a named tuple: reading an array field of a tuple in the landmark loop takes a reference
    count (an atomic add) each time, which made the kernel 2.5x slower, and numba's dead-code
    elimination after inlining (``inline="always"``) can drop a write into a field of a tuple built
    in the same function (the field is not taken for an alias of the tuple).
    """
    nj = anc.shape[0]
    pdp = padded(pd)
    nep = padded(ne)
    rmk = np.empty((nj, 3, 3))
    r0bm = np.empty((nj, 3, 3))
    rgm = np.empty((nj, 3))
    single_joint_frame(r0, rg, gpos, bm, rmk, r0bm, rgm)
    nck = np.zeros(nj, np.int64)
    for kj in range(nj):
        for m in range(1, nj):
            if anc[kj, m] != 0.0:
                nck[kj] = 6 + 3 * m
        if nck[kj] == 0:
            nck[kj] = 6
    return (np.zeros((pd, pdp)), np.zeros((ne, pdp)), np.zeros(pd), np.zeros(ne), np.zeros((ne, nep)),
            np.zeros((nj, 11, 3)), np.zeros((nj, ne * HL)), np.zeros((3, HL)), np.zeros(nj, np.bool_), r0bm, rgm,
            nck, np.empty(3), np.empty((2, 3)), np.empty(3), np.empty((3, 3)), np.zeros((3, pd)),
            np.empty((3, pdp)), np.zeros((2, nep)), np.zeros((3, nep)))


@njit(cache=True, inline="always")
def _landmark_state(p, q, focal, xyz_t, pj, temporal_sqrtw, prev, uv_out, xyz_out, xv, dx, g):
    """Landmark p (kernel column q): its position into xv (3,), uv_out[p] and xyz_out[p], its
    projection Jacobian dx (2, 3) and the temporal part of its 3D gradient g (3,) (0 without a
    temporal residual).  Returns (has_lm, has_tmp): whether it has a landmark and a temporal residual."""
    xv[0] = xyz_t[0, q]
    xv[1] = xyz_t[1, q]
    xv[2] = xyz_t[2, q]
    uv_out[p, 0] = pj[PJ_U, q]
    uv_out[p, 1] = pj[PJ_V, q]
    for i in range(3):
        xyz_out[p, i] = xv[i]
    has_lm = pj[PJ_LM, q] != 0.0
    has_tmp = pj[PJ_TMP, q] != 0.0
    fi = focal * pj[PJ_IZ, q]
    dx[0, 0] = fi
    dx[0, 1] = 0.0
    dx[0, 2] = fi * pj[PJ_A, q]
    dx[1, 0] = 0.0
    dx[1, 1] = -fi
    dx[1, 2] = -fi * pj[PJ_B, q]
    for i in range(3):
        g[i] = temporal_sqrtw * (temporal_sqrtw * (xv[i] - prev[p, i])) if has_tmp else 0.0
    return has_lm, has_tmp


@njit(cache=True, inline="always")
def _pose_jacobian(q, nc, jpose, dx, isg, thresh, jac_threshold, dpose):
    """dpose[:, :nc] = the pose Jacobian of kernel column q (jpose (POSE_DIM, 3, L)), with the
    columns below ``jac_threshold`` zeroed when ``thresh`` (``terms.drop_small_columns``)."""
    for c in range(nc):
        dpose[0, c] = jpose[c, 0, q]
        dpose[1, c] = jpose[c, 1, q]
        dpose[2, c] = jpose[c, 2, q]
    if thresh:
        drop_small_columns(dx, isg, jac_threshold, dpose, nc)


@njit(cache=True, inline="always")
def _projected_columns(n, base, e_pos, e_idx, qe, thresh, jac_threshold, jexpr, qd):
    """qd[:, e_idx[a]] = a landmark's projected expression columns qe[:, base + e_pos[a]] (a < n).

    When ``thresh``, a column whose two entries are below ``jac_threshold`` is dropped: zeroed in
    qd and in jexpr (this evaluation's scratch), as ``terms.drop_small_columns`` does.  Returns True
    when a column was dropped.
    """
    zeroed = False
    for a in range(n):
        j = base + e_pos[a]
        q0 = qe[0, j]
        q1 = qe[1, j]
        if thresh and abs(q0) < jac_threshold and abs(q1) < jac_threshold:
            jexpr[0, j] = 0.0
            jexpr[1, j] = 0.0
            jexpr[2, j] = 0.0
            q0 = 0.0
            q1 = 0.0
            zeroed = True
        ea = e_idx[a]
        qd[0, ea] = q0
        qd[1, ea] = q1
    return zeroed


@njit(cache=True, inline="always")
def _expression_gram(n, e_idx, e_pos, base, jexpr, am, acd, ee):
    """ee rows += col_a^T A col_b of a landmark's n expression columns (:func:`_expression_column`).

    Dense rows over the positions e_idx[a] .. e_idx[n - 1], zero between the entries: contiguous
    and vectorisable (adding the zeros changes nothing).  acd (3, E') holds the A-weighted columns
    by position for the call and is left zero.
    """
    hi = e_idx[n - 1] + 1
    for a in range(n):
        c0, c1, c2 = _expression_column(jexpr, base, e_pos, a)
        ea = e_idx[a]
        for i in range(3):
            acd[i, ea] = am[i, 0] * c0 + am[i, 1] * c1 + am[i, 2] * c2
    acd0 = acd[0]
    acd1 = acd[1]
    acd2 = acd[2]
    for a in range(n):
        c0, c1, c2 = _expression_column(jexpr, base, e_pos, a)
        ea = e_idx[a]
        row = ee[ea]
        for c in range(ea, hi, W):
            vaxpy3(row, c, c0, acd0, c1, acd1, c2, acd2, c)
    for a in range(n):
        for i in range(3):
            acd[i, e_idx[a]] = 0.0


@njit(cache=True, inline="always")
def _projected_gram(n, e_idx, qd, ee):
    """ee rows += q_a . q_b of a landmark's n projected expression columns qd (2, E') (the landmark
    rows alone: the temporal part is the static Gram); rows as in :func:`_expression_gram`."""
    hi = e_idx[n - 1] + 1
    q0r = qd[0]
    q1r = qd[1]
    for a in range(n):
        ea = e_idx[a]
        row = ee[ea]
        a0 = q0r[ea]
        a1 = q1r[ea]
        for c in range(ea, hi, W):
            vaxpy2(row, c, a0, q0r, a1, q1r, c)


@njit(cache=True, inline="always")
def _scatter_block(row_free, col_free, buf, upper, jtj):
    """jtj[fa, fb] += buf[a, b] (into the upper triangle) over the free rows fa = row_free[a] >= 0 and
    columns fb = col_free[b] >= 0; only b >= a when ``upper`` (a diagonal block's upper triangle)."""
    for a in range(row_free.shape[0]):
        fa = row_free[a]
        if fa < 0:
            continue
        # min / max instead of a branch on the order of the free indices (unpredictable when the
        # expression order permutes them)
        for b in range(a if upper else 0, col_free.shape[0]):
            fb = col_free[b]
            if fb >= 0:
                jtj[min(fa, fb), max(fa, fb)] += buf[a, b]


@njit(cache=True, inline="always")
def _scatter_gradient(free, grad, jtr):
    """jtr[free[a]] += grad[a] over the free entries (free[a] >= 0)."""
    for a in range(free.shape[0]):
        if free[a] >= 0:
            jtr[free[a]] += grad[a]


@njit(cache=True, inline="always")
def _finish(anc, ee_static, tw2, pose_free, expr_free, r0bm, rgm, gsum, hs, used, pp, pe, gp, ge, ee, jtj, jtr):
    """Multiply out the joint group sums of the ``used`` joints (:func:`_joint_group_finish`), add the
    static expression Gram (times tw2) and scatter the dense sums into jtj (upper triangle) and jtr."""
    for kj in range(anc.shape[0]):
        if used[kj]:
            _joint_group_finish(kj, anc, r0bm, rgm, gsum, hs, pp, pe, gp, ge)
    if tw2 > 0.0:
        for a in range(ee_static.shape[0]):
            for b in range(a, ee_static.shape[0]):
                ee[a, b] += tw2 * ee_static[a, b]
    # each entry of jtj gets one sum: the order of the blocks changes nothing
    _scatter_block(pose_free, pose_free, pp, True, jtj)
    _scatter_block(expr_free, pose_free, pe, False, jtj)
    _scatter_block(expr_free, expr_free, ee, True, jtj)
    _scatter_gradient(pose_free, gp, jtr)
    _scatter_gradient(expr_free, ge, jtr)


@njit(cache=True)
def vertex_term_tracking(focal, xyz_t, jpose, jexpr, qe, pj, ptr, col_of, expr_blocks, anc,
                         r0, trans, rg, gpos, bm, temporal_sqrtw, prev,
                         single, pose_ncols, pose_free, e_count, e_idx, e_pos, expr_free, ee_static,
                         jac_threshold, jtj, jtr, uv_out, xyz_out):
    """:func:`vertex_term` with its Jacobian, when identity and focal length are held (tracking).

    Same cost, positions and J^T J and J^T r as ``vertex_term(..., want_jac=True)`` up to rounding
    (1e-13 relative on the cost), with the identity and the focal column held; the plan
    arrays come from :func:`tracking_plan` for the same ``col_map``.  Faster because

    * positions, the pose Jacobian, the expression columns and the projections of all landmarks
      come from vectorised structure-of-arrays passes (kernel order; ``frame_lm.landmark_terms``):
      xyz_t (3, L) and jpose (POSE_DIM, 3, L) from :func:`table_points_jacobian`, jexpr (3, N) from
      :func:`expression_jacobian` (ptr (L + 1,) its entry offsets; entries dropped by jac_threshold are
      zeroed there in place), pj (PJ_ROWS, L) from
      :func:`project_soa` (PJ_NC, PJ_PZ filled: :func:`pose_threshold_soa`), qe (2, N) from
      :func:`project_columns_soa`; col_of (L,) int64 is the kernel column of each table landmark.
      The cost is :func:`project_soa`'s; this kernel only accumulates;
    * the blocks are summed in small dense buffers indexed by parameter (pose x pose, expression x
      pose, expression x expression) with no index look-up in the pose loops, then scattered into
      jtj once per call;
    * for single-joint landmarks (rm a rotation) the temporal expression block w B^T rm^T rm B =
      w B^T B is the static ``ee_static``, so their expression block needs only the two projection
      rows (2 multiply-adds per entry instead of 3).  A landmark without a temporal residual, or
      with an expression column dropped by ``jac_threshold``, has its static part subtracted and
      takes the 3-row path;
    * the expression buffers are indexed by position in the plan's ``expr_order``, in which each
      landmark's entries lie close together: its expression x expression rows run over the
      contiguous range up to its last entry (zeros in between), a loop the compiler vectorises;
    * single-joint landmarks whose pose columns all pass ``jac_threshold`` add their pose x pose,
      expression x pose and pose gradient rows through per-joint 3 x 3 sums
      (:func:`_joint_group_add`, exact: their pose Jacobian is S K_k + C_k with S = -[x - t]_x),
      multiplied out once per joint at the end (:func:`_joint_group_finish`).

    Adds the upper triangle of J^T J into jtj (n, n) and J^T r into jtr (n,); writes the positions
    uv_out (L, 2), xyz_out (L, 3) in table order.
    """
    (pp, pe, gp, ge, ee, gsum, hs, srow, used, r0bm, rgm, nck, xv, dx, g, am, dpose, ap, qd,
     acd) = _work(anc, r0, rg, gpos, bm, expr_free.shape[0], pose_free.shape[0])
    tw2 = temporal_sqrtw * temporal_sqrtw
    for p in range(col_of.shape[0]):
        q = col_of[p]
        has_lm, has_tmp = _landmark_state(p, q, focal, xyz_t, pj, temporal_sqrtw, prev, uv_out, xyz_out, xv, dx, g)
        k = single[p]
        n = e_count[p]
        # a one-joint landmark's temporal expression block is in ee_static (added by _finish); without a
        # temporal residual, or with an expression column dropped, it is subtracted (the 3-row path)
        is_static = tw2 > 0.0 and k >= 0
        if not (has_lm or has_tmp):
            if is_static:
                _add_gram(expr_blocks[p], e_idx[p], e_pos[p], n, -tw2, ee)
            continue
        isg = pj[PJ_ISG, q]             # loss-weighted 1/sigma (project_soa)
        nc = pose_ncols[p]
        thresh = has_lm and jac_threshold > 0.0
        # pose rows through the per-joint sums unless a pose column is dropped (pose_threshold_soa)
        explicit = (thresh and pj[PJ_PZ, q] != 0.0) or not (k >= 0 and nc == nck[k])
        if explicit:
            _pose_jacobian(q, nc, jpose, dx, isg, thresh, jac_threshold, dpose)
        base = ptr[q]                   # the expression columns: jexpr[:, base + e_pos[p, a]]
        zeroed = False
        if has_lm:
            zeroed = _projected_columns(n, base, e_pos[p], e_idx[p], qe, thresh, jac_threshold, jexpr, qd)
        if is_static and (zeroed or not has_tmp):
            _add_gram(expr_blocks[p], e_idx[p], e_pos[p], n, -tw2, ee)
            is_static = False
        landmark_metric(dx, isg, pj[PJ_RU, q], pj[PJ_RV, q], has_lm, has_tmp, tw2, am, g)
        if explicit:
            _explicit_pose_rows(nc, n, e_idx[p], dpose, am, g, jexpr, base, e_pos[p], ap, pp, pe, gp, ge)
        else:
            _joint_group_add(k, xv, trans, am, g, jexpr, base, e_pos[p], e_idx[p], n, gsum, hs, srow)
            used[k] = True
        if n > 0 and not is_static:
            _expression_gram(n, e_idx[p], e_pos[p], base, jexpr, am, acd, ee)
        elif n > 0 and has_lm:
            _projected_gram(n, e_idx[p], qd, ee)
        if has_lm:
            for a in range(n):
                qd[0, e_idx[p, a]] = 0.0
                qd[1, e_idx[p, a]] = 0.0
    _finish(anc, ee_static, tw2, pose_free, expr_free, r0bm, rgm, gsum, hs, used, pp, pe, gp, ge, ee, jtj, jtr)
