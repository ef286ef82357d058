"""Tracking evaluation in structure-of-arrays form: the landmark points, their projections,
residuals and gradients with the landmark index innermost (vectorised numba loops).

When the identity and focal length are held (per-frame tracking) the sparsity table is laid out
in *kernel order* (:class:`TableSoA`: landmarks grouped by skinning pattern) and every pass runs over
all landmarks at once: template points and LBS (:func:`table_points`, with the pose Jacobian and
R_root M, :func:`table_points_jacobian`), projection, residuals and cost (:func:`project_soa`, with
the landmark loss of ``energy.landmark_loss``), the projected expression columns and the
Jacobian-threshold test, and J^T r alone (:func:`landmark_gradient_soa`).  The normal equations
are assembled by ``tracking_normal``; ``frame_lm`` runs the passes.
"""
from dataclasses import dataclass

import numpy as np
from numba import njit

from .energy import landmark_loss
from .simd import W, vset2
from .skinning import (SIMD_MATH, SoaSkin, init_pose_jacobian, pose_chain, skin_points_soa, skin_positions_soa,
                       soa_frame, soa_skin)


@dataclass(frozen=True)
class TableSoA:
    """The sparsity table laid out for :func:`table_points_jacobian` (landmark index innermost).

    Landmarks are reordered (``order``) by the set of joints they are skinned to, so that the
    kernels visit one vertex range per joint.  Inputs and outputs of the kernels are in that order;
    :meth:`to_columns` and :meth:`to_rows` convert arrays in table order.  The kept expression
    entries are stored compressed by landmark (CSR): those of kernel landmark p are ptr[p]:ptr[p+1].

    Attributes
    ----------
    order : (L,) int64, table landmark of each kernel column.
    ptr : (L + 1,) int64, entry offsets.
    shape_idx : (N,) uint32, expression index of each entry (unsigned: the gather of psi needs no
        negative-index check, so it vectorises).
    blocks : (3, N) float64, the matching basis values E (mm per unit weight).
    skin : ``skinning.SoaSkin`` of the landmark vertices.
    """

    order: np.ndarray
    ptr: np.ndarray
    shape_idx: np.ndarray
    blocks: np.ndarray
    skin: SoaSkin

    def to_columns(self, a):
        """(L, k) array in table order -> (k, L) C-contiguous float64 in kernel order."""
        return np.ascontiguousarray(np.asarray(a, dtype=np.float64)[self.order].T)

    def to_rows(self, a):
        """(..., L) array in kernel order (landmarks on the last axis) -> (L, ...) in table order."""
        out = np.empty_like(np.moveaxis(a, -1, 0))
        out[self.order] = np.moveaxis(a, -1, 0)
        return out

    def entries(self):
        """(landmark in table order, expression index) of each entry, two (N,) int64 arrays."""
        lm = np.repeat(self.order, np.diff(self.ptr))
        return lm, self.shape_idx.astype(np.int64)


def table_soa(table, parents):
    """:class:`TableSoA` of a ``sparsity.SparsityTable`` (built once per landmark set); parents (J,)
    the model's joint parents."""
    nz = table.weights != 0.0
    # joint sets in descending lexicographic order (root-skinned first); stable within a set
    order = np.lexsort(tuple(~nz[:, k] for k in range(nz.shape[1] - 1, -1, -1)))
    kept = table.expr_idx[order] >= 0
    ptr = np.r_[0, np.cumsum(kept.sum(1))].astype(np.int64)
    return TableSoA(order.astype(np.int64), ptr, table.expr_idx[order][kept].astype(np.uint32),
                    np.ascontiguousarray(table.expr_blocks[order][kept].T), soa_skin(table.weights[order], parents))


@njit(cache=True)
def frame_columns(order, mu, inv_sigma, prev, mu_t, isg_t, prev_t):
    """A frame's landmark data in the kernel order of a :class:`TableSoA` (``order``): mu (L, 2),
    inv_sigma (L,), prev (L, 3) -> mu_t (2, L), isg_t (L,), prev_t (3, L) out (what ``to_columns``
    gives, without temporaries: called once per tracked frame)."""
    for q in range(order.shape[0]):
        p = order[q]
        mu_t[0, q] = mu[p, 0]
        mu_t[1, q] = mu[p, 1]
        isg_t[q] = inv_sigma[p]
        prev_t[0, q] = prev[p, 0]
        prev_t[1, q] = prev[p, 1]
        prev_t[2, q] = prev[p, 2]


@njit(cache=True)
def count_finite_rows(a):
    """Number of rows of a (n, k) float64 array whose entries are all finite."""
    c = 0
    for i in range(a.shape[0]):
        ok = True
        for j in range(a.shape[1]):
            ok = ok and np.isfinite(a[i, j])
        c += ok
    return c


def table_points_buffers(soa, n_joints):
    """Work and output arrays of :func:`table_points_jacobian` and :func:`expression_jacobian` for
    a :class:`TableSoA`, allocated once and re-used every frame (the constant entries of jpose are
    written here): a tuple (chain, chain_t, frame, xyz, rm, jpose, jexpr, t_work, sub, ybuf)."""
    n, nj = soa.ptr.size - 1, n_joints
    jpose = np.zeros((6 + 3 * (nj - 1), 3, n))
    init_pose_jacobian(soa.skin.ranges, jpose)
    return (np.zeros((2 + 3 * nj, 3, 3)), np.zeros((2, nj, 3)), np.zeros((nj, 2, 3, 4)), np.empty((3, n)),
            np.empty((9, n)), jpose, np.empty((3, soa.shape_idx.size)), np.empty((3, n)), np.zeros((nj, 3, n)),
            np.empty((3, n)))


@njit(cache=True, inline="always")
def soa_template(psi, t_beta_t, ptr, shape_idx, blocks, t_out):
    """t_out (3, L) = T(beta, psi) per kernel column: t_beta_t + the table's kept entries
    (``TableSoA.ptr``, ``shape_idx``, ``blocks``) weighted by psi (E,)."""
    b0, b1, b2 = blocks[0], blocks[1], blocks[2]
    for p in range(t_beta_t.shape[1]):
        lo = ptr[p]
        hi = ptr[p + 1]
        ix, c0, c1, c2 = shape_idx[lo:hi], b0[lo:hi], b1[lo:hi], b2[lo:hi]
        s0 = t_beta_t[0, p]
        s1 = t_beta_t[1, p]
        s2 = t_beta_t[2, p]
        for d in range(hi - lo):
            we = psi[ix[d]]
            s0 += we * c0[d]
            s1 += we * c1[d]
            s2 += we * c2[d]
        t_out[0, p] = s0
        t_out[1, p] = s1
        t_out[2, p] = s2


@njit(cache=True, fastmath=SIMD_MATH)
def table_points(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges, chain,
                 chain_t, frame, xyz_out, t_work, ybuf):
    """Positions only of :func:`table_points_jacobian` (same arguments, same sums; no R_root M and
    no pose Jacobian, the same positions bit for bit): the pose chain in ``chain``/``chain_t``,
    positions (3, L) mm in xyz_out; t_work, ybuf (3, L) workspaces."""
    nj = rot.shape[0]
    rg, bm, cm = chain[2:2 + nj], chain[2 + nj:2 + 2 * nj], chain[2 + 2 * nj:2 + 3 * nj]
    pose_chain(rot, joints, parents, chain[0], chain[1], rg, chain_t[0], chain_t[1], bm, cm)
    soa_frame(chain[0], rg, chain_t[0], chain_t[1], bm, frame)
    soa_template(psi, t_beta_t, ptr, shape_idx, blocks, t_work)
    skin_positions_soa(t_work, weights_t, ranges, frame, trans, xyz_out, ybuf)


@njit(cache=True, fastmath=SIMD_MATH)
def table_points_jacobian(rot, joints, parents, trans, psi, t_beta_t, ptr, shape_idx, blocks, weights_t, ranges,
                          acc, complement, zero_ranges, wsub, chain, chain_t, frame, xyz_out, rm_out, jpose_out,
                          t_work, sub, ybuf):
    """Landmark vertex positions and their Jacobian through the sparsity table (paper sec. 3.3.1).

    One call per frame: the pose chain (``skinning.pose_chain``, ``skinning.soa_frame``), template
    points T(beta, psi) from the table's kept expression entries, then ``skinning.skin_points_soa``:
    positions, the pose Jacobian (explicit) and R_root M, the factor of every template-space
    Jacobian: d x_p / d psi_e = R_root M_p E_pe with E_pe the model's static per-vertex basis block
    (as eos hands them out; :func:`expression_jacobian` expands it when explicit entries are wanted).

    Parameters
    ----------
    rot : (J, 3) float64, axis-angle per joint (row 0: root); trans : (3,) translation (mm).
    joints : (J, 3) float64, bind locations J(beta) (mm); parents : (J,) int64.
    psi : (E,) float64, expression weights.
    t_beta_t : (3, L) float64, template at the current identity T_mean + S beta (mm), kernel order.
    ptr, shape_idx, blocks : a :class:`TableSoA`; weights_t ... wsub : its ``skin``
        (``skinning.SoaSkin``).
    chain : (2 + 3 J, 3, 3), chain_t : (2, J, 3), frame : (J, 2, 3, 4) workspaces: the pose chain
        (r0, J_l(root), Rg, bm, cm; tg, g) and ``soa_frame``.
    xyz_out : (3, L) out, camera-space positions (mm).
    rm_out : (9, L) out, R_root M per landmark (row-major).
    jpose_out : (POSE_DIM, 3, L) in/out, d x / d [root rotation, translation, joints] (from
        :func:`table_points_buffers`).
    t_work, ybuf : (3, L), sub : (J, 3, L) workspaces.
    """
    nj = rot.shape[0]
    rg, bm, cm = chain[2:2 + nj], chain[2 + nj:2 + 2 * nj], chain[2 + 2 * nj:2 + 3 * nj]
    pose_chain(rot, joints, parents, chain[0], chain[1], rg, chain_t[0], chain_t[1], bm, cm)
    soa_frame(chain[0], rg, chain_t[0], chain_t[1], bm, frame)
    soa_template(psi, t_beta_t, ptr, shape_idx, blocks, t_work)
    skin_points_soa(t_work, weights_t, ranges, acc, complement, zero_ranges, wsub, frame, trans, xyz_out, rm_out,
                    jpose_out, sub, ybuf)


@njit(cache=True, fastmath=SIMD_MATH)
def expression_jacobian(ptr, blocks, rm, jexpr_out):
    """Explicit sparse expression Jacobian: jexpr_out[:, q] = R_root M_p E_q (mm per unit weight) for
    each kept entry q of landmark p (ptr[p] <= q < ptr[p + 1], expression ``shape_idx[q]``);
    (3, N) out, rm (9, L) from :func:`table_points_jacobian`."""
    for p in range(ptr.size - 1):
        lo = ptr[p]
        hi = ptr[p + 1]
        b0, b1, b2 = blocks[0, lo:hi], blocks[1, lo:hi], blocks[2, lo:hi]
        for i in range(3):
            m0 = rm[3 * i, p]
            m1 = rm[3 * i + 1, p]
            m2 = rm[3 * i + 2, p]
            out = jexpr_out[i, lo:hi]
            for d in range(hi - lo):
                out[d] = m0 * b0[d] + m1 * b1[d] + m2 * b2[d]


# rows of the per-landmark projection table of :func:`project_soa` (kernel order, (PJ_ROWS, L))
PJ_IZ, PJ_A, PJ_B, PJ_U, PJ_V, PJ_LM, PJ_RU, PJ_RV, PJ_TMP, PJ_COST, PJ_NC, PJ_PZ, PJ_ISG = range(13)


PJ_ROWS = 13


@njit(cache=True, fastmath=SIMD_MATH)
def project_soa(focal, cx, cy, temporal_sqrtw, loss_c, xyz_t, mu_t, isg_t, prev_t, pj):
    """Projection and residuals of all landmarks, landmark index innermost (vectorised).

    xyz_t (3, L) camera-space positions (mm), mu_t (2, L) pixels (NaN: missing), isg_t (L,) 1/sigma,
    prev_t (3, L) previous positions (NaN: no temporal residual), all in kernel order; loss_c the
    landmark loss (``energy.landmark_loss``).  Fills the rows PJ_IZ (-1/z), PJ_A, PJ_B (x/(-z), y/(-z)),
    PJ_U, PJ_V (pixels), PJ_LM (1: landmark residual), PJ_ISG (the loss-weighted 1/sigma,
    sqrt(rho') / sigma, that the Jacobian kernels use), PJ_RU, PJ_RV (sqrt(rho') (pi - mu) / sigma, 0
    when missing), PJ_TMP (1: temporal residual), PJ_COST (the cost of both terms per landmark) of pj;
    returns their sum (``landmark_point``'s costs).
    """
    n = xyz_t.shape[1]
    x0, x1, x2 = xyz_t[0], xyz_t[1], xyz_t[2]
    m0, m1 = mu_t[0], mu_t[1]
    p0, p1, p2 = prev_t[0], prev_t[1], prev_t[2]
    iz, a, b, u, v = pj[PJ_IZ], pj[PJ_A], pj[PJ_B], pj[PJ_U], pj[PJ_V]
    lm, ru, rv, tmp, cost, isg = pj[PJ_LM], pj[PJ_RU], pj[PJ_RV], pj[PJ_TMP], pj[PJ_COST], pj[PJ_ISG]
    # one output per loop: the compiler vectorises each
    for q in range(n):
        iz[q] = -1.0 / x2[q]
    for q in range(n):
        a[q] = x0[q] * iz[q]
    for q in range(n):
        b[q] = x1[q] * iz[q]
    for q in range(n):
        u[q] = cx + focal * a[q]
    for q in range(n):
        v[q] = cy - focal * b[q]
    for q in range(n):
        lm[q] = 0.0 if (np.isnan(m0[q]) or np.isnan(m1[q])) else 1.0
    for q in range(n):
        ru[q] = (u[q] - m0[q]) * isg_t[q] if lm[q] != 0.0 else 0.0
    for q in range(n):
        rv[q] = (v[q] - m1[q]) * isg_t[q] if lm[q] != 0.0 else 0.0
    for q in range(n):
        isg[q] = isg_t[q]
    on = temporal_sqrtw > 0.0
    for q in range(n):
        tmp[q] = 1.0 if (on and not np.isnan(p0[q])) else 0.0
    tw = temporal_sqrtw
    for q in range(n):
        d0 = tw * (x0[q] - p0[q])
        d1 = tw * (x1[q] - p1[q])
        d2 = tw * (x2[q] - p2[q])
        ct = 0.5 * (d0 * d0 + d1 * d1 + d2 * d2)
        cost[q] = 0.5 * (ru[q] * ru[q] + rv[q] * rv[q]) + (ct if tmp[q] != 0.0 else 0.0)
    if loss_c > 0.0:        # robust loss: 1/2 rho(s) replaces 1/2 s; residuals and 1/sigma weighted by sqrt(rho')
        for q in range(n):
            s = ru[q] * ru[q] + rv[q] * rv[q]
            rho, drho = landmark_loss(s, loss_c)
            cost[q] += 0.5 * (rho - s)
            sw = np.sqrt(drho)
            ru[q] *= sw
            rv[q] *= sw
            isg[q] *= sw
    total = 0.0
    for q in range(n):
        total += cost[q]
    return total


@njit(cache=True, fastmath=SIMD_MATH)
def project_columns_soa(focal, ptr, jexpr, pj, isg_t, qe):
    """Projected expression columns q = dpi col / sigma (2, N) of every kept table entry (qe out),
    col = jexpr (3, N) from :func:`expression_jacobian`; pj from :func:`project_soa`."""
    iz, av, bv = pj[PJ_IZ], pj[PJ_A], pj[PJ_B]
    q0, q1 = qe[0], qe[1]
    c0, c1, c2 = jexpr[0], jexpr[1], jexpr[2]
    nn = ptr[ptr.size - 1]
    for p in range(ptr.size - 1):
        lo = ptr[p]
        hi = ptr[p + 1]
        fs = focal * iz[p] * isg_t[p]
        a2 = fs * av[p]
        b2 = -fs * bv[p]
        # W-wide chunks (rows of ~20 entries: the vectoriser's checks would cost more); a chunk
        # running past hi writes the next landmark's entries, rewritten when it comes (p ascends)
        for c in range(lo, hi, W):
            if c + W <= nn:
                vset2(q0, c, fs, c0, a2, c2, c)
                vset2(q1, c, b2, c2, -fs, c1, c)
            else:
                for d in range(c, hi):
                    q0[d] = fs * c0[d] + a2 * c2[d]
                    q1[d] = b2 * c2[d] - fs * c1[d]


@njit(cache=True, fastmath=SIMD_MATH)
def pose_threshold_soa(focal, jac_threshold, jpose, pj, isg_t):
    """pj[PJ_PZ] = 1 for the landmarks with a landmark residual and a pose column c < pj[PJ_NC] whose two
    projected entries are both below ``jac_threshold`` (``drop_small_columns`` would drop it), else 0."""
    n = jpose.shape[2]
    iz, av, bv, lm, ncq, pz = pj[PJ_IZ], pj[PJ_A], pj[PJ_B], pj[PJ_LM], pj[PJ_NC], pj[PJ_PZ]
    for q in range(n):
        pz[q] = 0.0
    for c in range(jpose.shape[0]):
        j0, j1, j2 = jpose[c, 0], jpose[c, 1], jpose[c, 2]
        for q in range(n):
            fi = focal * iz[q]
            ja = (fi * j0[q] + fi * av[q] * j2[q]) * isg_t[q]
            jb = (-fi * bv[q] * j2[q] - fi * j1[q]) * isg_t[q]
            # bitwise & (no short-circuit branches, so the loop vectorises); counts, made 0/1 below
            small = (abs(ja) < jac_threshold) & (abs(jb) < jac_threshold) & (c < ncq[q]) & (lm[q] != 0.0)
            pz[q] += 1.0 if small else 0.0
    for q in range(n):
        pz[q] = 1.0 if pz[q] > 0.0 else 0.0


@njit(cache=True, fastmath=SIMD_MATH)
def landmark_gradient_soa(focal, temporal_sqrtw, xyz_t, rm_t, jpose, pj, prev_t, isg_t, ptr, shape_idx, blocks,
                          col_map, e0, g_t, h_t, jtr):
    """J^T r alone of the landmark and temporal terms (tracking: identity and focal length held).

    The gradient evaluation of the J^T J re-use policy (``solvers.levenberg_marquardt``, ``reuse_rho``):
    per landmark the 3D gradient g = dpi^T r / sigma + temporal_sqrtw^2 (x - x_prev) of its residuals
    (3, L in g_t), then d/d pose = sum_p jpose_p^T g_p and d/d psi_e = sum over the entries of shape e of
    E_pe . (R_root M_p)^T g_p (h_t (3, L) = (R_root M)^T g).  No Jacobian thresholding (the exact
    gradient); O(L POSE_DIM + N) instead of the outer products of :func:`vertex_term_tracking`.

    Inputs in kernel order: xyz_t (3, L), rm_t (9, L), jpose (POSE_DIM, 3, L) from
    :func:`table_points_jacobian`, pj from :func:`project_soa`, prev_t (3, L), isg_t (L,); ptr,
    shape_idx, blocks of the ``TableSoA``; col_map (P,) full -> free index (-1 held), e0 the first
    expression index.  g_t, h_t (3, L) work; adds into jtr (n,).
    """
    n = xyz_t.shape[1]
    iz, av, bv, ru, rv, tmp = pj[PJ_IZ], pj[PJ_A], pj[PJ_B], pj[PJ_RU], pj[PJ_RV], pj[PJ_TMP]
    x0, x1, x2 = xyz_t[0], xyz_t[1], xyz_t[2]
    p0, p1, p2 = prev_t[0], prev_t[1], prev_t[2]
    g0, g1, g2 = g_t[0], g_t[1], g_t[2]
    tw2 = temporal_sqrtw * temporal_sqrtw
    for q in range(n):
        fs = focal * iz[q] * isg_t[q]
        t = tw2 if tmp[q] != 0.0 else 0.0
        # (a missing landmark has ru = rv = 0; a missing previous position has tmp = 0)
        g0[q] = fs * ru[q] + (t * (x0[q] - p0[q]) if t != 0.0 else 0.0)
        g1[q] = -fs * rv[q] + (t * (x1[q] - p1[q]) if t != 0.0 else 0.0)
        g2[q] = fs * (av[q] * ru[q] - bv[q] * rv[q]) + (t * (x2[q] - p2[q]) if t != 0.0 else 0.0)
    for c in range(jpose.shape[0]):
        f = col_map[c]
        if f < 0:
            continue
        j0, j1, j2 = jpose[c, 0], jpose[c, 1], jpose[c, 2]
        s = 0.0
        for q in range(n):
            s += j0[q] * g0[q] + j1[q] * g1[q] + j2[q] * g2[q]
        jtr[f] += s
    for j in range(3):
        m0, m1, m2 = rm_t[j], rm_t[3 + j], rm_t[6 + j]
        hj = h_t[j]
        for q in range(n):
            hj[q] = m0[q] * g0[q] + m1[q] * g1[q] + m2[q] * g2[q]
    h0, h1, h2 = h_t[0], h_t[1], h_t[2]
    b0, b1, b2 = blocks[0], blocks[1], blocks[2]
    for q in range(n):
        a0 = h0[q]
        a1 = h1[q]
        a2 = h2[q]
        for d in range(ptr[q], ptr[q + 1]):
            f = col_map[e0 + shape_idx[d]]
            if f >= 0:
                jtr[f] += b0[d] * a0 + b1[d] * a1 + b2[d] * a2


@njit(cache=True)
def landmark_positions_soa(xyz_t, pj, col_of, uv_out, xyz_out):
    """uv_out (L, 2) pixels and xyz_out (L, 3) mm in table order from the kernel-order xyz_t (3, L)
    and pj (:func:`project_soa`); col_of (L,) the kernel column of each table landmark."""
    for p in range(col_of.shape[0]):
        q = col_of[p]
        uv_out[p, 0] = pj[PJ_U, q]
        uv_out[p, 1] = pj[PJ_V, q]
        xyz_out[p, 0] = xyz_t[0, q]
        xyz_out[p, 1] = xyz_t[1, q]
        xyz_out[p, 2] = xyz_t[2, q]
