"""Energy terms of the model fit (paper sec. 3.2, eqs. for E_landmarks ... E_intersect).

Every term follows one contract: given the full per-frame parameter vector (layout in
``lmfit3d.sparsity``) and ``col_map`` (full index -> free index, -1 when fixed), it returns its
cost 0.5 * sum(r^2) and, when asked, adds J^T J and J^T r of its residuals r into the free-parameter
system.  J is never formed: per-landmark rows are accumulated through the static sparsity table.
With ``want_jtj`` False (and ``want_jac`` True), :func:`diagonal_prior`, :func:`pair_prior`,
:func:`intersection_term` and the tracking evaluation (``frame_lm.landmark_terms``, via
``tracking_points.landmark_gradient_soa``) add J^T r alone and leave jtj untouched (the gradient
evaluations of the solver's J^T J re-use); :func:`vertex_term` always adds both.

Residuals (cost = 0.5 |r|^2):

* landmarks:    r = (pi(x_i) - mu_i) / sigma_i                      (2 per landmark; NaN mu skipped)
* temporal:     r = sqrt(2 w_t) (x_i - x_i^prev)                     (3 per landmark vertex, mm)
* priors:       r = (p - m) / s for identity (Gaussian component of the GMM), expression
                (s = 1/sqrt(2 w_expr)), non-root joints (s = 1/sqrt(2 w_joint))
* intersection: r = sqrt(2 w_i) (R - |t_v - c|) for eyelid vertices inside an eyeball sphere,
                r = sqrt(2 w_i) min_p (d_p - n_p . t_v) for lip vertices inside a teeth hull.
"""
import numpy as np
from numba import njit

from .camera import project_jac
from .energy import landmark_loss
from .skinning import skin_point, skin_vertex


@njit(cache=True, inline="always")
def _accumulate(jrow, nrows, cols, n, r, col_map, want_jtj, jtj, jtr):
    """jtj[ca, cb] += sum_rows jrow[row, a] jrow[row, b] (when ``want_jtj``); jtr[ca] += sum_rows
    jrow[row, a] r[row]."""
    for a in range(n):
        ca = col_map[cols[a]]
        s = 0.0
        for q in range(nrows):
            s += jrow[q, a] * r[q]
        jtr[ca] += s
        if not want_jtj:
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


@njit(cache=True, inline="always")
def landmark_metric(dx, isg, r_u, r_v, has_lm, has_tmp, tw2, am, g):
    """Metric am (3, 3) and 3D gradient g (3,) of a landmark vertex's residuals.

    am = dx^T dx isg^2 (with a landmark residual) + tw2 I (with a temporal one); g, holding the
    temporal part on entry, gets dx^T (r_u, r_v) isg added.  dx (2, 3) is the projection Jacobian,
    isg the (loss-weighted) 1/sigma, r_u, r_v the weighted landmark residuals.
    """
    for i in range(3):
        for j in range(3):
            am[i, j] = tw2 if (i == j and has_tmp) else 0.0     # no temporal rows without prev
    if has_lm:
        s2 = isg * isg
        for i in range(3):
            g[i] += (dx[0, i] * r_u + dx[1, i] * r_v) * isg
            for j in range(3):
                am[i, j] += s2 * (dx[0, i] * dx[0, j] + dx[1, i] * dx[1, j])


@njit(cache=True)
def _vertex_work(nj, pd, nmax, nk):
    """The workspaces of one :func:`vertex_term` call, a tuple
    (gi, jx, ax, t, xv, rm, dpose, wsub, work, uv, dx, df, g, am, gsj): J_x over at most nmax local
    columns (gi (nmax,) int64 their free indices, jx and ax = A J_x (3, nmax)), the template point t
    and posed vertex xv, ``skinning.skin_vertex``'s rm, dpose (3, pd), wsub (nj,) and work,
    ``landmark_point``'s uv, dx, df and g, the metric am (3, 3) and gsj (nj, 3, nk) zeroed
    (:func:`_joint_identity_basis`).  Plain arrays, not a named tuple: see ``tracking_normal._work``."""
    return (np.empty(nmax, np.int64), np.empty((3, nmax)), np.empty((3, nmax)), np.empty(3), np.empty(3),
            np.empty((3, 3)), np.empty((3, pd)), np.empty(nj), np.empty((nj + 5, 3)), np.empty(2),
            np.empty((2, 3)), np.empty(2), np.empty(3), np.empty((3, 3)), np.zeros((nj, 3, nk)))


@njit(cache=True)
def _joint_identity_basis(cm, sj, gsj):
    """gsj[m] = cm[m] @ sj[m] (3, K) for the non-root joints m: a joint's identity basis in the frame
    the skin weights combine (:func:`_identity_columns`)."""
    for m in range(1, gsj.shape[0]):
        for i in range(3):
            for k in range(gsj.shape[2]):
                gsj[m, i, k] = cm[m, i, 0] * sj[m, 0, k] + cm[m, i, 1] * sj[m, 1, k] + cm[m, i, 2] * sj[m, 2, k]


@njit(cache=True, inline="always")
def _identity_columns(p, k0, col_map, wsub, gsj, sb, rm, r0, gi, jx, n):
    """Append landmark p's identity columns rm sb[p] + r0 sum_m wsub[m] gsj[m] to J_x (gi, jx) from
    local column n; returns the new column count."""
    for k in range(sb.shape[2]):
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        for m in range(1, gsj.shape[0]):
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
    return n


@njit(cache=True, inline="always")
def _vertex_columns(p, e0, k0, expr_idx, expr_blocks, sb, r0, col_map, ident_free, gsj, rm, dpose, wsub, gi, jx):
    """J_x of landmark p over the free columns it depends on, into gi (free indices) and jx: the pose
    columns of the joints it is skinned to (dpose, wsub of ``skin_vertex``), its expression entries
    of the sparsity table (rm B) and, when ``ident_free``, the identity columns.  Returns the column
    count."""
    n = 0
    for c in range(dpose.shape[1]):
        f = col_map[c]
        if f < 0 or (c >= 6 and wsub[1 + (c - 6) // 3] == 0.0):
            continue
        gi[n] = f
        for i in range(3):
            jx[i, n] = dpose[i, c]
        n += 1
    ne = expression_columns(p, e0, expr_idx, expr_blocks, col_map, rm, gi, jx, n)
    for a in range(n, ne):
        gi[a] = col_map[gi[a]]          # expression_columns leaves the full indices
    if ident_free:
        return _identity_columns(p, k0, col_map, wsub, gsj, sb, rm, r0, gi, jx, ne)
    return ne


@njit(cache=True, inline="always")
def _add_vertex_rows(gi, jx, ax, am, g, n, jtj, jtr):
    """jtj += J_x^T A J_x (upper triangle, :func:`add_block`) and jtr += J_x^T g over n local columns;
    ax (3, >= n) gets A J_x."""
    for a in range(n):
        j0 = jx[0, a]
        j1 = jx[1, a]
        j2 = jx[2, a]
        for i in range(3):
            ax[i, a] = am[i, 0] * j0 + am[i, 1] * j1 + am[i, 2] * j2
        jtr[gi[a]] += j0 * g[0] + j1 * g[1] + j2 * g[2]
    add_block(gi, jx, ax, n, jtj)


@njit(cache=True, inline="always")
def _focal_rows(dx, df, isg, r_u, r_v, gi, jx, n, fcol, jtj, jtr):
    """The free focal column fcol of a landmark residual: projection rows only (df (2,) d uv / d focal).

    Adds the cross terms J_x^T dx^T jf / sigma with the n local columns, the diagonal entry and
    the gradient entry."""
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
    sb : (L, 3, K) identity blocks; sj : (J, 3, K) joint identity basis (the identity columns enter when
        ``col_map`` frees them).
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
    nj = weights.shape[1]
    nk = sb.shape[2]
    pd = 6 + 3 * (nj - 1)
    e0 = pd
    k0 = x.shape[0] - 1 - nk
    ident_free = nk > 0 and col_map[k0] >= 0
    fcol = col_map[x.shape[0] - 1]
    (gi, jx, ax, t, xv, rm, dpose, wsub, work, uv, dx, df, g, am,
     gsj) = _vertex_work(nj, pd, pd + expr_idx.shape[1] + nk, nk)
    if want_jac and ident_free:
        _joint_identity_basis(cm, sj, gsj)
    tw2 = temporal_sqrtw * temporal_sqrtw
    cost = 0.0
    for p in range(t_beta.shape[0]):
        template_point(p, x, e0, t_beta, expr_idx, expr_blocks, t)
        if want_jac:
            skin_vertex(t, weights[p], anc, r0, trans, rg, tg, gpos, bm, xv, rm, dpose, wsub, work)
        else:
            skin_point(t, weights[p], r0, trans, rg, tg, xv)
        c, r_u, r_v, has_lm, has_tmp, sw = landmark_point(p, xv, focal, cx, cy, mu, inv_sigma, loss_c, prev,
                                                          temporal_sqrtw, uv, dx, df, g, uv_out, xyz_out)
        cost += c
        if not want_jac or not (has_lm or has_tmp):
            continue
        isg = inv_sigma[p] * sw
        n = _vertex_columns(p, e0, k0, expr_idx, expr_blocks, sb, r0, col_map, ident_free, gsj, rm, dpose, wsub,
                            gi, jx)
        landmark_metric(dx, isg, r_u, r_v, has_lm, has_tmp, tw2, am, g)
        if has_lm and jac_threshold > 0.0:
            drop_small_columns(dx, isg, jac_threshold, jx, n)
        _add_vertex_rows(gi, jx, ax, am, g, n, jtj, jtr)
        if has_lm and fcol >= 0:
            _focal_rows(dx, df, isg, r_u, r_v, gi, jx, n, fcol, jtj, jtr)
    return cost


@njit(cache=True)
def diagonal_prior(x, start, mean, inv_std, col_map, want_jac, want_jtj, jtj, jtr):
    """Gaussian prior on x[start:start+n]: residual (x - mean) * inv_std, one per parameter; with
    ``want_jac`` adds J^T r and, when ``want_jtj``, the diagonal of J^T J."""
    cost = 0.0
    for i in range(mean.shape[0]):
        c = start + i
        r = (x[c] - mean[i]) * inv_std[i]
        cost += 0.5 * r * r
        if want_jac and col_map[c] >= 0:
            f = col_map[c]
            if want_jtj:
                jtj[f, f] += inv_std[i] * inv_std[i]
            jtr[f] += inv_std[i] * r
    return cost


@njit(cache=True)
def pair_prior(x, e0, pairs, sqrtw, col_map, want_jac, want_jtj, jtj, jtr):
    """Antagonist pairs of the expression prior: residual sqrtw (psi_a + psi_b) per pair (P, 2) of
    expression indices (``energy.expression_prior_scales``); J^T r, and the J^T J upper triangle when
    ``want_jtj``."""
    cost = 0.0
    s2 = sqrtw * sqrtw
    for k in range(pairs.shape[0]):
        a = e0 + pairs[k, 0]
        b = e0 + pairs[k, 1]
        r = sqrtw * (x[a] + x[b])
        cost += 0.5 * r * r
        if not want_jac:
            continue
        fa = col_map[a]
        fb = col_map[b]
        if fa >= 0:
            jtr[fa] += sqrtw * r
        if fb >= 0:
            jtr[fb] += sqrtw * r
        if want_jtj:
            if fa >= 0:
                jtj[fa, fa] += s2
            if fb >= 0:
                jtj[fb, fb] += s2
            if fa >= 0 and fb >= 0:
                jtj[min(fa, fb), max(fa, fb)] += s2
    return cost
