"""Energy terms of the model fit (paper sec. 3.2, eqs. for E_landmarks ... E_intersect).

Every term follows one contract: given the full per-frame parameter vector (layout in
``lmfit3d.sparsity``) and ``col_map`` (full index -> free index, -1 when fixed), it returns its
cost 0.5 * sum(r^2) and, when asked, adds J^T J and J^T r of its residuals r into the free-parameter
system.  J is never formed: per-landmark rows are accumulated through the static sparsity table.
Asked with an empty (0, 0) jtj, :func:`diagonal_prior`, :func:`intersection_term` and the tracking
evaluation (``frame_lm.landmark_terms``, via :func:`landmark_gradient_soa`) add J^T r alone (the
gradient evaluations of the solver's J^T J re-use); :func:`vertex_term` needs a full jtj.

Residuals (cost = 0.5 |r|^2):

* landmarks:    r = (pi(x_i) - mu_i) / sigma_i                      (2 per landmark; NaN mu skipped)
* temporal:     r = sqrt(2 w_t) (x_i - x_i^prev)                     (3 per landmark vertex, mm)
* priors:       r = (p - m) / s for identity (Gaussian component of the GMM), expression
                (s = 1/sqrt(2 w_expr)), non-root joints (s = 1/sqrt(2 w_joint))
* intersection: r = sqrt(2 w_i) (R - |t_v - c|) for eyelid vertices inside an eyeball sphere,
                r = sqrt(2 w_i) min_p (d_p - n_p . t_v) for lip vertices inside a teeth hull.
"""
from dataclasses import dataclass

import numpy as np
from numba import njit

from .camera import project_jac
from .energy import landmark_loss
from .simd import W, padded, vaxpy, vaxpy2, vaxpy3, vset2
from .skinning import (SIMD_MATH, SoaSkin, init_pose_jacobian, pose_chain, single_joint_frame, single_joint_of,
                       skin_point, skin_points_soa, skin_positions_soa, skin_vertex, soa_frame, soa_skin)


@njit(cache=True, inline="always")
def _accumulate(jrow, nrows, cols, n, r, col_map, jtj, jtr):
    """jtj[ca, cb] += sum_rows jrow[row, a] jrow[row, b]; jtr[ca] += sum_rows jrow[row, a] r[row].
    An empty jtj (0, 0): J^T r only."""
    hess = jtj.shape[0] > 0
    for a in range(n):
        ca = col_map[cols[a]]
        s = 0.0
        for q in range(nrows):
            s += jrow[q, a] * r[q]
        jtr[ca] += s
        if not hess:
            continue
        for b in range(a, n):
            cb = col_map[cols[b]]
            s = 0.0
            for q in range(nrows):
                s += jrow[q, a] * jrow[q, b]
            if ca <= cb:
                jtj[ca, cb] += s
            else:
                jtj[cb, ca] += s


@njit(cache=True, inline="always")
def template_point(p, x, e0, t_beta, expr_idx, expr_blocks, t):
    """t (3,) = T(beta, psi) at table row p: t_beta[p] + sum_d psi[expr_idx[p, d]] expr_blocks[p, d]."""
    for i in range(3):
        t[i] = t_beta[p, i]
    for d in range(expr_idx.shape[1]):
        e = expr_idx[p, d]
        if e < 0:
            break
        we = x[e0 + e]
        if we == 0.0:           # inactive shapes (psi at its lower bound) add nothing
            continue
        for i in range(3):
            t[i] += we * expr_blocks[p, d, i]


@njit(cache=True, inline="always")
def expression_columns(p, e0, expr_idx, expr_blocks, col_map, mat, cols, out, n):
    """Append the free expression columns of table row p: out[:, n] = mat @ E_e (mat is (k, 3)).

    Returns the new column count.
    """
    for d in range(expr_idx.shape[1]):
        e = expr_idx[p, d]
        if e < 0:
            break
        if col_map[e0 + e] < 0:
            continue
        cols[n] = e0 + e
        for i in range(mat.shape[0]):
            out[i, n] = (mat[i, 0] * expr_blocks[p, d, 0] + mat[i, 1] * expr_blocks[p, d, 1]
                         + mat[i, 2] * expr_blocks[p, d, 2])
        n += 1
    return n


@njit(cache=True, inline="always")
def add_block(gi, jx, ax, n, jtj):
    """Upper triangle of jtj[gi[a], gi[b]] += jx[:, a] . ax[:, b] for a <= b < n.

    gi (n,) int64 free indices; jx, ax (3, >= n).  Rows are taken four at a time so each column
    b is loaded once per four rows (gi increasing, the usual case); otherwise one at a time, each
    entry written to the upper triangle.
    """
    ordered = True
    for a in range(1, n):
        if gi[a] < gi[a - 1]:
            ordered = False
            break
    a = 0
    if ordered:
        while a + 3 < n:
            i0 = gi[a]
            i1 = gi[a + 1]
            i2 = gi[a + 2]
            i3 = gi[a + 3]
            p0, p1, p2 = jx[0, a], jx[1, a], jx[2, a]
            q0, q1, q2 = jx[0, a + 1], jx[1, a + 1], jx[2, a + 1]
            s0, s1, s2 = jx[0, a + 2], jx[1, a + 2], jx[2, a + 2]
            u0, u1, u2 = jx[0, a + 3], jx[1, a + 3], jx[2, a + 3]
            for q in range(4):
                iq = gi[a + q]
                for b in range(a + q, a + 4):
                    jtj[iq, gi[b]] += jx[0, a + q] * ax[0, b] + jx[1, a + q] * ax[1, b] + jx[2, a + q] * ax[2, b]
            for b in range(a + 4, n):
                x0 = ax[0, b]
                x1 = ax[1, b]
                x2 = ax[2, b]
                ib = gi[b]
                jtj[i0, ib] += p0 * x0 + p1 * x1 + p2 * x2
                jtj[i1, ib] += q0 * x0 + q1 * x1 + q2 * x2
                jtj[i2, ib] += s0 * x0 + s1 * x1 + s2 * x2
                jtj[i3, ib] += u0 * x0 + u1 * x1 + u2 * x2
            a += 4
    while a < n:
        ia = gi[a]
        for b in range(a, n):
            v = jx[0, a] * ax[0, b] + jx[1, a] * ax[1, b] + jx[2, a] * ax[2, b]
            ib = gi[b]
            if ia <= ib:
                jtj[ia, ib] += v
            else:
                jtj[ib, ia] += v
        a += 1


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


@njit(cache=True)
def symmetrize_upper(jtj):
    """Copy the upper triangle of jtj into the lower one (in place)."""
    n = jtj.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            jtj[j, i] = jtj[i, j]


@njit(cache=True, inline="always")
def drop_small_columns(dx, isg, jac_threshold, cols, n):
    """Jacobian thresholding (paper sec. 3.3.1): zero the columns a < n of cols (3, *) (vertex
    Jacobian columns) whose projected landmark entries (dx @ cols[:, a]) / sigma are both below
    ``jac_threshold``.  Returns True when a column was zeroed."""
    zeroed = False
    for a in range(n):
        ja = (dx[0, 0] * cols[0, a] + dx[0, 1] * cols[1, a] + dx[0, 2] * cols[2, a]) * isg
        jb = (dx[1, 0] * cols[0, a] + dx[1, 1] * cols[1, a] + dx[1, 2] * cols[2, a]) * isg
        if abs(ja) < jac_threshold and abs(jb) < jac_threshold:
            cols[0, a] = 0.0
            cols[1, a] = 0.0
            cols[2, a] = 0.0
            zeroed = True
    return zeroed


@njit(cache=True, inline="always")
def landmark_point(p, xv, focal, cx, cy, mu, inv_sigma, loss_c, prev, temporal_sqrtw, uv, dx, df, g, uv_out,
                   xyz_out):
    """Landmark and temporal residuals of landmark p at its posed vertex xv (3,) mm.

    Projects xv (uv (2,), dx (2, 3), df (2,) out), stores uv_out[p] and xyz_out[p], and writes g (3,)
    = sqrt(2 w_t) r_t, the temporal residual's J^T r factor w.r.t. xv (0 without a temporal term).
    Returns (cost, r_u, r_v, has_lm, has_tmp, sw): the cost of both terms (the landmark's 1/2 rho(|r|^2),
    ``energy.landmark_loss`` with ``loss_c``), the landmark residuals already weighted by
    sw = sqrt(rho'), by which the caller also scales the landmark's Jacobian rows.
    """
    project_jac(xv, focal, cx, cy, uv, dx, df)
    uv_out[p, 0] = uv[0]
    uv_out[p, 1] = uv[1]
    for i in range(3):
        xyz_out[p, i] = xv[i]
    has_lm = not (np.isnan(mu[p, 0]) or np.isnan(mu[p, 1]))
    has_tmp = temporal_sqrtw > 0.0 and not np.isnan(prev[p, 0])
    cost = 0.0
    r_u = 0.0
    r_v = 0.0
    sw = 1.0
    if has_lm:
        r_u = (uv[0] - mu[p, 0]) * inv_sigma[p]
        r_v = (uv[1] - mu[p, 1]) * inv_sigma[p]
        rho, drho = landmark_loss(r_u * r_u + r_v * r_v, loss_c)
        cost += 0.5 * rho
        if loss_c > 0.0:
            sw = np.sqrt(drho)
            r_u *= sw
            r_v *= sw
    for i in range(3):
        g[i] = 0.0
    if has_tmp:
        for i in range(3):
            dv = temporal_sqrtw * (xv[i] - prev[p, i])
            cost += 0.5 * dv * dv
            g[i] = temporal_sqrtw * dv
    return cost, r_u, r_v, has_lm, has_tmp, sw


@njit(cache=True)
def vertex_term(x, focal, cx, cy, t_beta, expr_idx, expr_blocks, weights, anc, sb, sj,
                r0, trans, rg, tg, gpos, bm, cm, mu, inv_sigma, loss_c, temporal_sqrtw, prev,
                col_map, jac_threshold, want_jac, jtj, jtr, uv_out, xyz_out):
    """Landmark (2D) and temporal (3D) residuals of the landmark vertices, fused.

    Both terms of landmark i depend on the parameters only through its vertex x_i, so with J_x the
    (3, d) Jacobian of x_i over its free columns (sparsity table) they add

        J^T J += J_x^T A J_x,   J^T r += J_x^T g,
        A = dpi^T dpi / sigma^2 + 2 w_t I,   g = dpi^T r_i / sigma + 2 w_t (x_i - x_i^prev),

    with dpi the (2, 3) projection Jacobian: one pass per landmark, 3 multiply-adds per entry of the
    (d, d) block.  The focal column (when free) enters through the projection rows alone.

    Parameters
    ----------
    x : (P,) float64, full parameter vector (expression read from it).
    focal, cx, cy : float, pinhole intrinsics (pixels).
    t_beta : (L, 3) template at the current identity, T_mean + S beta (mm).
    expr_idx, expr_blocks : (L, D), (L, D, 3) sparsity table expression entries.
    weights : (L, J) skin weights; anc : (J, J) ancestry (``skinning.ancestry``).
    sb : (L, 3, K) identity blocks; sj : (J, 3, K) joint identity basis.
    r0 ... cm : pose chain of ``skinning.pose_chain`` at x.
    mu : (L, 2) landmark means (pixels), NaN for missing; inv_sigma : (L,) 1/sigma.
    loss_c : float, the landmark loss (``energy.landmark_loss``): 0 squared, c > 0 Cauchy.
    temporal_sqrtw : float, sqrt(2 w_t); 0 disables.  prev : (L, 3) previous-frame positions.
    col_map : (P,) int64, free index per full index or -1.
    jac_threshold : float, a column whose two projected Jacobian entries (pixels / sigma) are both
        below it is dropped for that landmark (paper sec. 3.3.1).
    want_jac : bool; jtj (n, n) (upper triangle written), jtr (n,) accumulated.
    uv_out : (L, 2) out, projected landmark positions.
    xyz_out : (L, 3) out, camera-space landmark vertex positions (mm).

    Returns
    -------
    float, the cost 0.5 |r|^2 of both terms.
    """
    nl = t_beta.shape[0]
    nj = weights.shape[1]
    ne_max = expr_idx.shape[1]
    nk = sb.shape[2]
    pd = 6 + 3 * (nj - 1)
    e0 = pd
    k0 = pd + (x.shape[0] - pd - nk - 1)
    fidx = x.shape[0] - 1
    ident_free = nk > 0 and col_map[k0] >= 0
    fcol = col_map[fidx]
    nmax = pd + ne_max + nk
    gi = np.empty(nmax, np.int64)          # free index of each local column
    jx = np.empty((3, nmax))               # J_x, local columns
    ax = np.empty((3, nmax))               # A J_x
    t = np.empty(3)
    xv = np.empty(3)
    rm = np.empty((3, 3))
    dpose = np.empty((3, pd))
    wsub = np.empty(nj)
    work = np.empty((nj + 5, 3))
    uv = np.empty(2)
    dx = np.empty((2, 3))
    df = np.empty(2)
    am = np.empty((3, 3))
    g = np.empty(3)
    gsj = np.zeros((nj, 3, nk))
    tw2 = temporal_sqrtw * temporal_sqrtw
    if want_jac and ident_free:
        for m in range(1, nj):
            for i in range(3):
                for k in range(nk):
                    gsj[m, i, k] = cm[m, i, 0] * sj[m, 0, k] + cm[m, i, 1] * sj[m, 1, k] + cm[m, i, 2] * sj[m, 2, k]
    cost = 0.0
    for p in range(nl):
        template_point(p, x, e0, t_beta, expr_idx, expr_blocks, t)
        if want_jac:
            skin_vertex(t, weights[p], anc, r0, trans, rg, tg, gpos, bm, xv, rm, dpose, wsub, work)
        else:
            skin_point(t, weights[p], r0, trans, rg, tg, xv)
        c, r_u, r_v, has_lm, has_tmp, sw = landmark_point(p, xv, focal, cx, cy, mu, inv_sigma, loss_c, prev,
                                                          temporal_sqrtw, uv, dx, df, g, uv_out, xyz_out)
        cost += c
        isg = inv_sigma[p] * sw
        if not want_jac or not (has_lm or has_tmp):
            continue
        # J_x over the free columns this landmark depends on
        n = 0
        for c in range(pd):
            f = col_map[c]
            if f < 0 or (c >= 6 and wsub[1 + (c - 6) // 3] == 0.0):
                continue
            gi[n] = f
            for i in range(3):
                jx[i, n] = dpose[i, c]
            n += 1
        for d in range(ne_max):
            e = expr_idx[p, d]
            if e < 0:
                break
            f = col_map[e0 + e]
            if f < 0:
                continue
            gi[n] = f
            b0 = expr_blocks[p, d, 0]
            b1 = expr_blocks[p, d, 1]
            b2 = expr_blocks[p, d, 2]
            for i in range(3):
                jx[i, n] = rm[i, 0] * b0 + rm[i, 1] * b1 + rm[i, 2] * b2
            n += 1
        if ident_free:
            for k in range(nk):
                g0 = 0.0
                g1 = 0.0
                g2 = 0.0
                for m in range(1, nj):
                    wm = wsub[m]
                    if wm != 0.0:
                        g0 += wm * gsj[m, 0, k]
                        g1 += wm * gsj[m, 1, k]
                        g2 += wm * gsj[m, 2, k]
                gi[n] = col_map[k0 + k]
                for i in range(3):
                    jx[i, n] = (rm[i, 0] * sb[p, 0, k] + rm[i, 1] * sb[p, 1, k] + rm[i, 2] * sb[p, 2, k]
                                + r0[i, 0] * g0 + r0[i, 1] * g1 + r0[i, 2] * g2)
                n += 1
        # metric A and 3D gradient g
        for i in range(3):
            for j in range(3):
                am[i, j] = tw2 if (i == j and has_tmp) else 0.0     # no temporal rows without prev
        if has_lm:
            s2 = isg * isg
            for i in range(3):
                g[i] += (dx[0, i] * r_u + dx[1, i] * r_v) * isg
                for j in range(3):
                    am[i, j] += s2 * (dx[0, i] * dx[0, j] + dx[1, i] * dx[1, j])
            if jac_threshold > 0.0:
                drop_small_columns(dx, isg, jac_threshold, jx, n)
        for a in range(n):
            j0 = jx[0, a]
            j1 = jx[1, a]
            j2 = jx[2, a]
            for i in range(3):
                ax[i, a] = am[i, 0] * j0 + am[i, 1] * j1 + am[i, 2] * j2
            jtr[gi[a]] += j0 * g[0] + j1 * g[1] + j2 * g[2]
        add_block(gi, jx, ax, n, jtj)
        if has_lm and fcol >= 0:
            # focal: projection rows only; cross terms J_x^T dpi^T jf / sigma
            jf0 = df[0] * isg
            jf1 = df[1] * isg
            h0 = (dx[0, 0] * jf0 + dx[1, 0] * jf1) * isg
            h1 = (dx[0, 1] * jf0 + dx[1, 1] * jf1) * isg
            h2 = (dx[0, 2] * jf0 + dx[1, 2] * jf1) * isg
            for a in range(n):
                v = jx[0, a] * h0 + jx[1, a] * h1 + jx[2, a] * h2
                ia = gi[a]
                if ia <= fcol:
                    jtj[ia, fcol] += v
                else:
                    jtj[fcol, ia] += v
            jtj[fcol, fcol] += jf0 * jf0 + jf1 * jf1
            jtr[fcol] += jf0 * r_u + jf1 * r_v
    return cost


@dataclass(frozen=True)
class TrackingPlan:
    """Static tables of :func:`vertex_term_tracking` for one sparsity table and one free mask.

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
        j = base + e_pos[a]
        c0 = jexpr[0, j]
        c1 = jexpr[1, j]
        c2 = jexpr[2, j]
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
        j = base + e_pos[a]
        c0 = jexpr[0, j]
        c1 = jexpr[1, j]
        c2 = jexpr[2, j]
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
def vertex_term_tracking(focal, xyz_t, jpose, jexpr, qe, pj, ptr, col_of, expr_blocks, anc,
                         r0, trans, rg, gpos, bm, temporal_sqrtw, prev,
                         single, pose_ncols, pose_free, e_count, e_idx, e_pos, expr_free, ee_static,
                         jac_threshold, jtj, jtr, uv_out, xyz_out):
    """:func:`vertex_term` with its Jacobian, when identity and focal length are held (tracking).

    Same cost, positions and J^T J and J^T r as ``vertex_term(..., want_jac=True)`` up to rounding
    (1e-13 relative on the cost), with an empty identity basis and the focal column fixed; the plan
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
    nl = col_of.shape[0]
    nj = anc.shape[0]
    ne = expr_free.shape[0]
    pd = pose_free.shape[0]
    nd = e_idx.shape[1]
    pdp = padded(pd)                        # pose buffers padded for the W-wide rows
    pp = np.zeros((pd, pdp))
    pe = np.zeros((ne, pdp))
    gp = np.zeros(pd)
    ge = np.zeros(ne)
    rmk = np.empty((nj, 3, 3))
    r0bm = np.empty((nj, 3, 3))
    rgm = np.empty((nj, 3))
    single_joint_frame(r0, rg, gpos, bm, rmk, r0bm, rgm)
    gsum = np.zeros((nj, 11, 3))            # per-joint sums of _joint_group_add
    hs = np.zeros((nj, ne * HL))         # per joint and expression: HL lanes (_joint_group_add)
    srow = np.zeros((3, HL))
    nck = np.zeros(nj, np.int64)            # pose columns of a landmark skinned to joint k alone
    for kj in range(nj):
        for m in range(1, nj):
            if anc[kj, m] != 0.0:
                nck[kj] = 6 + 3 * m
        if nck[kj] == 0:
            nck[kj] = 6
    used = np.zeros(nj, np.bool_)
    xv = np.empty(3)
    dpose = np.zeros((3, pd))
    ap = np.empty((3, pdp))
    # expression buffers padded for the W-wide row updates (simd): a row from any position runs in
    # whole chunks over zeros past its end
    nep = padded(ne)
    ee = np.zeros((ne, nep))
    acd = np.zeros((3, nep))                # A-weighted columns, dense over expression positions
    qd = np.zeros((2, nep))                 # projected columns / sigma, dense over expression positions
    acd0 = acd[0]
    acd1 = acd[1]
    acd2 = acd[2]
    dx = np.empty((2, 3))
    am = np.empty((3, 3))
    g = np.empty(3)
    tw2 = temporal_sqrtw * temporal_sqrtw
    static_on = tw2 > 0.0
    for p in range(nl):
        q = col_of[p]
        xv[0] = xyz_t[0, q]
        xv[1] = xyz_t[1, q]
        xv[2] = xyz_t[2, q]
        k = single[p]
        nc = pose_ncols[p]
        uv_out[p, 0] = pj[PJ_U, q]
        uv_out[p, 1] = pj[PJ_V, q]
        for i in range(3):
            xyz_out[p, i] = xv[i]
        has_lm = pj[PJ_LM, q] != 0.0
        has_tmp = pj[PJ_TMP, q] != 0.0
        r_u = pj[PJ_RU, q]
        r_v = pj[PJ_RV, q]
        fi = focal * pj[PJ_IZ, q]
        dx[0, 0] = fi
        dx[0, 1] = 0.0
        dx[0, 2] = fi * pj[PJ_A, q]
        dx[1, 0] = 0.0
        dx[1, 1] = -fi
        dx[1, 2] = -fi * pj[PJ_B, q]
        for i in range(3):
            g[i] = temporal_sqrtw * (temporal_sqrtw * (xv[i] - prev[p, i])) if has_tmp else 0.0
        isg = pj[PJ_ISG, q]             # loss-weighted 1/sigma (project_soa)
        n = e_count[p]
        is_static = static_on and k >= 0
        if not (has_lm or has_tmp):
            if is_static:
                _add_gram(expr_blocks[p], e_idx[p], e_pos[p], n, -tw2, ee)
            continue
        # expression columns rm B (free entries) and, with a landmark residual, their projected rows
        # q = dx col / sigma (dense over positions in qd), thresholded as drop_small_columns does
        zeroed = False
        thresh = has_lm and jac_threshold > 0.0
        pose_zeroed = thresh and pj[PJ_PZ, q] != 0.0       # a pose column is dropped (pose_threshold_soa)
        group = k >= 0 and nc == nck[k]
        explicit = pose_zeroed or not group
        if explicit:                    # this landmark's pose Jacobian, explicitly
            for c in range(nc):
                dpose[0, c] = jpose[c, 0, q]
                dpose[1, c] = jpose[c, 1, q]
                dpose[2, c] = jpose[c, 2, q]
            if thresh:
                drop_small_columns(dx, isg, jac_threshold, dpose, nc)
        # the columns are read from jexpr[:, base + e_pos[p, a]]; a dropped one is zeroed there
        # (jexpr is this evaluation's scratch)
        base = ptr[q]
        ep = e_pos[p]
        if has_lm:
            for a in range(n):
                j = base + ep[a]
                q0 = qe[0, j]
                q1 = qe[1, j]
                if thresh and abs(q0) < jac_threshold and abs(q1) < jac_threshold:
                    jexpr[0, j] = 0.0
                    jexpr[1, j] = 0.0
                    jexpr[2, j] = 0.0
                    q0 = 0.0
                    q1 = 0.0
                    zeroed = True
                ea = e_idx[p, a]
                qd[0, ea] = q0
                qd[1, ea] = q1
        if is_static and (zeroed or not has_tmp):
            _add_gram(expr_blocks[p], e_idx[p], e_pos[p], n, -tw2, ee)
            is_static = False
        # metric A and 3D gradient g
        for i in range(3):
            for j in range(3):
                am[i, j] = tw2 if (i == j and has_tmp) else 0.0
        s2 = isg * isg
        if has_lm:
            for i in range(3):
                g[i] += (dx[0, i] * r_u + dx[1, i] * r_v) * isg
                for j in range(3):
                    am[i, j] += s2 * (dx[0, i] * dx[0, j] + dx[1, i] * dx[1, j])
        if not explicit:
            # one-joint landmark: pose rows through the per-joint sums (_joint_group_add)
            _joint_group_add(k, xv, trans, am, g, jexpr, base, ep, e_idx[p], n, gsum, hs, srow)
            used[k] = True
        else:
            _explicit_pose_rows(nc, n, e_idx[p], dpose, am, g, jexpr, base, ep, ap, pp, pe, gp, ge)
        # expression x expression
        # (dense rows over the positions e_idx[p, a] .. e_idx[p, n - 1], zero between the entries:
        # contiguous and vectorisable; adding the zeros changes nothing)
        if n == 0:
            continue
        hi = e_idx[p, n - 1] + 1
        if is_static:
            if has_lm:
                q0r = qd[0]
                q1r = qd[1]
                for a in range(n):
                    ea = e_idx[p, a]
                    row = ee[ea]
                    a0 = q0r[ea]
                    a1 = q1r[ea]
                    for c in range(ea, hi, W):
                        vaxpy2(row, c, a0, q0r, a1, q1r, c)
        else:
            for a in range(n):
                ea = e_idx[p, a]
                j = base + ep[a]
                c0 = jexpr[0, j]
                c1 = jexpr[1, j]
                c2 = jexpr[2, j]
                for i in range(3):
                    acd[i, ea] = am[i, 0] * c0 + am[i, 1] * c1 + am[i, 2] * c2
            for a in range(n):
                ea = e_idx[p, a]
                j = base + ep[a]
                c0 = jexpr[0, j]
                c1 = jexpr[1, j]
                c2 = jexpr[2, j]
                row = ee[ea]
                for c in range(ea, hi, W):
                    vaxpy3(row, c, c0, acd0, c1, acd1, c2, acd2, c)
            for a in range(n):
                for i in range(3):
                    acd[i, e_idx[p, a]] = 0.0
        if has_lm:
            for a in range(n):
                qd[0, e_idx[p, a]] = 0.0
                qd[1, e_idx[p, a]] = 0.0
    for kj in range(nj):
        if used[kj]:
            _joint_group_finish(kj, anc, r0bm, rgm, gsum, hs, pp, pe, gp, ge)
    if static_on:
        for a in range(ne):
            for b in range(a, ne):
                ee[a, b] += tw2 * ee_static[a, b]
    # scatter the dense buffers into the free system (upper triangle)
    for a in range(pd):
        fa = pose_free[a]
        if fa < 0:
            continue
        jtr[fa] += gp[a]
        for b in range(a, pd):
            fb = pose_free[b]
            if fb < 0:
                continue
            if fa <= fb:
                jtj[fa, fb] += pp[a, b]
            else:
                jtj[fb, fa] += pp[a, b]
    for a in range(ne):
        fa = expr_free[a]
        if fa < 0:
            continue
        jtr[fa] += ge[a]
        # min / max instead of a branch on the order of the free indices (unpredictable when the
        # expression order permutes them)
        for c in range(pd):
            fc = pose_free[c]
            if fc < 0:
                continue
            jtj[min(fa, fc), max(fa, fc)] += pe[a, c]
        for b in range(a, ne):
            fb = expr_free[b]
            if fb < 0:
                continue
            jtj[min(fa, fb), max(fa, fb)] += ee[a, b]


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


@njit(cache=True)
def diagonal_prior(x, start, mean, inv_std, col_map, want_jac, jtj, jtr):
    """Gaussian prior on x[start:start+n]: residual (x - mean) * inv_std, one per parameter."""
    cost = 0.0
    for i in range(mean.shape[0]):
        c = start + i
        r = (x[c] - mean[i]) * inv_std[i]
        cost += 0.5 * r * r
        if want_jac and col_map[c] >= 0:
            f = col_map[c]
            if jtj.shape[0] > 0:
                jtj[f, f] += inv_std[i] * inv_std[i]
            jtr[f] += inv_std[i] * r
    return cost


def intersection_skip_test(t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
                           n_expression):
    """Linear outside-tests for :func:`intersection_term`: base (n,) and proj (E, n) float64.

    With t = t_beta + sum_e psi_e E_e (the vertex's table entries), ``base + psi @ proj >= 0``
    proves the vertex outside:

    * sphere (centre c, radius R): u = (t_beta - c) / |t_beta - c| and |t - c| >= u.(t - c), so
      base = |t_beta - c| - R, proj_e = u.E_e;
    * hull: the plane (n_q, d_q) farthest outside at rest; n_q.t - d_q = base + sum_e psi_e n_q.E_e
      exactly, base = n_q.t_beta - d_q, proj_e = n_q.E_e.

    Vertices without a test get base = -inf (never skipped).
    """
    t_beta = np.asarray(t_beta, dtype=np.float64)
    n = t_beta.shape[0]
    base = np.full(n, -np.inf)
    u = np.zeros((n, 3))
    sp = np.flatnonzero(np.asarray(sphere_of) >= 0)
    v = t_beta[sp] - np.asarray(sphere_c)[sphere_of[sp]]
    dist = np.linalg.norm(v, axis=1)
    sp, v, dist = sp[dist > 0], v[dist > 0], dist[dist > 0]
    u[sp] = v / dist[:, None]
    base[sp] = dist - np.asarray(sphere_r)[sphere_of[sp]]
    for h in range(planes.shape[0]):
        hp = np.flatnonzero((np.asarray(hull_of) == h) & (np.asarray(sphere_of) < 0))
        out = t_beta[hp] @ planes[h, :, :3].T - planes[h, :, 3]          # (n_h, planes)
        q = np.argmax(out, axis=1)
        u[hp] = planes[h, q, :3]
        base[hp] = out[np.arange(hp.size), q]
    rows, cols = np.nonzero((expr_idx >= 0) & np.isfinite(base)[:, None])
    proj = np.zeros((n_expression, n))
    proj[expr_idx[rows, cols], rows] = np.einsum("ni,ni->n", expr_blocks[rows, cols], u[rows])
    return base, proj


SKIP_BLOCK = 16             # vertices per block of :func:`intersection_skip_blocks`
SKIP_MARGIN = 1e-9          # intersection_term skips a vertex whose outside-test bound is >= this (mm)


def intersection_skip_blocks(skip_base, skip_proj, size=SKIP_BLOCK):
    """Block bounds of :func:`intersection_skip_test` for a first, cheaper test: (2 E + 1, B) float64.

    Vertices are taken in blocks of ``size`` consecutive ones (B = ceil(n / size)).  Row 0 holds
    the smallest ``skip_base`` of each block, rows 1 .. E the smallest and rows E + 1 .. 2 E the
    largest ``skip_proj`` entry of each expression over the block, so that
    ``row0 + sum_e psi_e (row[1 + e] if psi_e >= 0 else row[1 + E + e])`` is at most the bound
    ``skip_base + psi @ skip_proj`` of every vertex of the block: when it is >= 1e-9 the whole block
    is outside and :func:`intersection_term` skips it without the per-vertex sums.
    """
    base = np.asarray(skip_base, dtype=np.float64)
    proj = np.asarray(skip_proj, dtype=np.float64)
    n = base.size
    ne = proj.shape[0]
    nb = -(-n // size)
    out = np.empty((2 * ne + 1, nb))
    for b in range(nb):
        sl = slice(b * size, min((b + 1) * size, n))
        out[0, b] = base[sl].min()
        out[1:ne + 1, b] = proj[:, sl].min(1)
        out[ne + 1:, b] = proj[:, sl].max(1)
    return out


@njit(cache=True, inline="always")
def intersection_depth(t, s, h, sphere_c, sphere_r, planes, gr):
    """Penetration depth (mm, > 0 inside) of template point t (3,) into eyeball sphere s (s >= 0) or
    teeth hull h (h >= 0), 0 outside; gr (3,) out = d depth / d t where the depth is positive.

    Sphere: R - |t - c|.  Hull of planes (n_q, d_q), inside when d_q - n_q . t > 0 for every q:
    min_q (d_q - n_q . t).
    """
    if s >= 0:
        dist2 = 0.0
        for i in range(3):
            gr[i] = t[i] - sphere_c[s, i]
            dist2 += gr[i] * gr[i]
        dist = np.sqrt(dist2)
        if dist >= sphere_r[s] or dist == 0.0:
            return 0.0
        for i in range(3):
            gr[i] = -gr[i] / dist
        return sphere_r[s] - dist
    if h < 0:
        return 0.0
    best = np.inf
    bi = -1
    for q in range(planes.shape[1]):
        dq = planes[h, q, 3] - (planes[h, q, 0] * t[0] + planes[h, q, 1] * t[1] + planes[h, q, 2] * t[2])
        if dq <= 0.0:
            return 0.0
        if dq < best:
            best = dq
            bi = q
    if bi < 0:
        return 0.0
    for i in range(3):
        gr[i] = -planes[h, bi, i]
    return best


@njit(cache=True)
def intersection_term(x, e0, t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of,
                      planes, hull_of, sqrtw, col_map, want_jac, jtj, jtr, skip_base=None, skip_proj=None,
                      skip_block=None):
    """Skin vertices inside eyeball spheres or teeth hulls, in template (head) space.

    Eyelid, lip and teeth vertices all follow the head joint rigidly, so the test runs on the
    unposed template T(beta, psi) and depends on the expression only.

    Parameters
    ----------
    t_beta, expr_idx, expr_blocks : as in :func:`vertex_term`, for the tested vertices (n, ...).
    sphere_c : (S, 3) sphere centres; sphere_r : (S,) radii; sphere_of : (n,) sphere per vertex or -1.
    planes : (H, P, 4) hull planes (n_x, n_y, n_z, d): inside when d - n.t > 0 for every plane.
    hull_of : (n,) hull per vertex or -1.
    sqrtw : float, sqrt(2 w_intersect).
    skip_base, skip_proj : (n,), (E, n) float64, optional, from :func:`intersection_skip_test`:
        ``skip_base + psi @ skip_proj`` bounds how far each vertex lies outside its sphere or hull
        (mm); vertices with a bound >= 1e-9 are skipped without building their template point
        (same result, less work).
    skip_block : (2 E + 1, B) float64, optional, from :func:`intersection_skip_blocks` (with
        skip_base and skip_proj): blocks of SKIP_BLOCK vertices whose block bound is >= 1e-9 are
        skipped before the per-vertex sums (most frames: all of them).
    """
    cost = 0.0
    nd = expr_idx.shape[1]
    t = np.empty(3)
    gr = np.empty(3)
    grw = np.empty((1, 3))
    cols = np.empty(nd, np.int64)
    jrow = np.empty((1, nd))
    r = np.empty(1)
    skip = skip_base is not None and skip_proj is not None
    nv = t_beta.shape[0]
    outside = np.empty(nv)
    if skip:
        ne = skip_proj.shape[0]
        blocks = skip_block is not None
        nb = skip_block.shape[1] if blocks else 1
        bsize = SKIP_BLOCK if blocks else nv
        bound = np.empty(nb)
        if blocks:                      # block bounds first (psi_e times the block's extreme entry)
            bound[:] = skip_block[0]
            for e in range(ne):
                we = x[e0 + e]
                if we != 0.0:
                    pb = skip_block[1 + e] if we > 0.0 else skip_block[1 + ne + e]
                    for b in range(nb):
                        bound[b] += we * pb[b]
        else:
            bound[0] = -np.inf
        for b in range(nb):
            lo = b * bsize
            hi = min(lo + bsize, nv)
            if bound[b] >= SKIP_MARGIN:
                outside[lo:hi] = bound[b]
                continue
            outside[lo:hi] = skip_base[lo:hi]
            full = hi - lo == bsize and bsize % W == 0
            for e in range(ne):
                we = x[e0 + e]
                if we == 0.0:
                    continue
                pe = skip_proj[e]
                if full:                # W-wide chunks (short loops: the vectoriser's checks cost more)
                    for c in range(lo, hi, W):
                        vaxpy(outside, c, we, pe, c)
                else:
                    for p in range(lo, hi):
                        outside[p] += we * pe[p]
    for p in range(t_beta.shape[0]):
        s = sphere_of[p]
        h = hull_of[p]
        if (s < 0 and h < 0) or (skip and outside[p] >= SKIP_MARGIN):
            continue
        template_point(p, x, e0, t_beta, expr_idx, expr_blocks, t)
        res = intersection_depth(t, s, h, sphere_c, sphere_r, planes, gr)
        if res <= 0.0:
            continue
        r[0] = sqrtw * res
        cost += 0.5 * r[0] * r[0]
        if not want_jac:
            continue
        for i in range(3):
            grw[0, i] = sqrtw * gr[i]
        n = expression_columns(p, e0, expr_idx, expr_blocks, col_map, grw, cols, jrow, 0)
        _accumulate(jrow, 1, cols, n, r, col_map, jtj, jtr)
    return cost
