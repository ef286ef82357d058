"""Cost and analytic gradient of the offline multi-view, multi-frame energy (numba kernels).

The offline solver (paper sec. 3.3, "all frames and cameras at once with L-BFGS") needs only the
cost and its gradient J^T r, never J^T J.  :func:`capture_energy` evaluates both in one call,
looping over frames, landmarks and cameras: per (frame, landmark) the vertex is skinned once
(``skinning.skin_vertex``, pose Jacobian included), then per camera it is moved into the camera,
projected (``camera.project_jac``) and its residual's gradient is pulled back to a world-space
3-vector; that 3-vector is then pushed through the landmark's sparse pose / expression / identity
columns (``terms.template_point`` and the static table of ``sparsity.build_sparsity``).

Full parameter vector ``z`` (layout shared with ``lmfit3d.capture``)::

    [0:K]                                identity beta (shared by all frames)
    [K + f P : K + (f + 1) P]            frame f: root rotation (3), translation (3, mm),
                                         neck/head/eye_L/eye_R rotations (12), expression (E);
                                         P = 18 + E
    [K + F P + 7 j : K + F P + 7 (j+1)]  camera j: rotation (3, axis-angle), translation (3, mm),
                                         focal length (1, pixels)

World-to-camera composition with the head's root pose: x_cam_j = R_j (R_root LBS(...) + t_root) + T_j.

Energy (cost = 0.5 |r|^2; the same terms and weights as ``lmfit3d.fit.FitConfig``):

* landmarks:    r = (pi_j(x_cam_j) - mu_jfi) / sigma_jfi, skipped where ``inv_sigma`` is 0
* temporal:     w_t sum_f sum_i |x_f,i - x_f-1,i|^2 over landmark vertices in world coordinates (mm)
* expression:   w_e |psi_f|^2;  joints: w_j |theta_f|^2 (not the root)
* intersection: w_x d^2 for eyelid vertices inside the eyeball spheres and lip vertices inside the
                teeth hulls (template space, as ``terms.intersection_term``)
* identity (GMM prior) is added by the Python layer.
"""
import numpy as np
from numba import njit

from .camera import project_jac
from .rotation import rodrigues_into
from .skinning import pose_chain, skin_mesh, skin_vertex
from .terms import template_point

CAMERA_SIZE = 7
POSE_SIZE = 18


@njit(cache=True, inline="always")
def _cross(a, b, out):
    out[0] = a[1] * b[2] - a[2] * b[1]
    out[1] = a[2] * b[0] - a[0] * b[2]
    out[2] = a[0] * b[1] - a[1] * b[0]


@njit(cache=True)
def identity_state(beta, mean, sb, out):
    """out (n, 3) = mean + sb @ beta: template points at the current identity (mm)."""
    for p in range(mean.shape[0]):
        for i in range(3):
            s = mean[p, i]
            for k in range(beta.shape[0]):
                s += sb[p, i, k] * beta[k]
            out[p, i] = s


@njit(cache=True)
def intersection_grad(z, e0, t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes,
                      hull_of, sqrtw, grad, acc_t):
    """Intersection residuals of one frame (template space); adds d cost / d psi into ``grad``.

    Same residuals as ``terms.intersection_term``: r = sqrtw (R - |t - c|) for a vertex inside its
    eyeball sphere, r = sqrtw min_p (d_p - n_p . t) for a vertex inside its teeth hull.
    ``acc_t`` (n, 3) accumulates d cost / d t per vertex (for the identity gradient).
    Returns the cost 0.5 sum r^2.
    """
    cost = 0.0
    t = np.empty(3)
    gr = np.empty(3)
    want = grad.shape[0] > 0
    for p in range(t_beta.shape[0]):
        template_point(p, z, e0, t_beta, expr_idx, expr_blocks, t)
        s = sphere_of[p]
        h = hull_of[p]
        res = 0.0
        if s >= 0:
            d2 = 0.0
            for i in range(3):
                gr[i] = t[i] - sphere_c[s, i]
                d2 += gr[i] * gr[i]
            dist = np.sqrt(d2)
            if dist >= sphere_r[s] or dist == 0.0:
                continue
            res = sphere_r[s] - dist
            for i in range(3):
                gr[i] = -gr[i] / dist
        elif h >= 0:
            best = np.inf
            bi = -1
            for q in range(planes.shape[1]):
                dq = planes[h, q, 3] - (planes[h, q, 0] * t[0] + planes[h, q, 1] * t[1] + planes[h, q, 2] * t[2])
                if dq <= 0.0:
                    bi = -1
                    break
                if dq < best:
                    best = dq
                    bi = q
            if bi < 0:
                continue
            res = best
            for i in range(3):
                gr[i] = -planes[h, bi, i]
        else:
            continue
        r = sqrtw * res
        cost += 0.5 * r * r
        if not want:
            continue
        for i in range(3):
            gr[i] *= sqrtw * r
            acc_t[p, i] += gr[i]
        for d in range(expr_idx.shape[1]):
            e = expr_idx[p, d]
            if e < 0:
                break
            grad[e0 + e] += gr[0] * expr_blocks[p, d, 0] + gr[1] * expr_blocks[p, d, 1] + gr[2] * expr_blocks[p, d, 2]
    return cost


@njit(cache=True)
def _frame_chain(z, base, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm):
    """Pose chain of the frame whose block starts at z[base]; returns base."""
    for i in range(3):
        rot[0, i] = z[base + i]
    for m in range(1, rot.shape[0]):
        for i in range(3):
            rot[m, i] = z[base + 6 + 3 * (m - 1) + i]
    pose_chain(rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm)
    return base


@njit(cache=True)
def capture_energy(z, nk, ne, mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights,
                   mu, inv_sigma, block_ok, centre, w_expression, w_joints, w_temporal,
                   int_mean, int_sb, int_idx, int_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
                   w_intersection, grad, diag, uv_out, frame_cost):
    """Cost and gradient of the offline energy (all frames and cameras), see the module docstring.

    Parameters
    ----------
    z : (N,) float64, full parameter vector (layout in the module docstring).
    nk, ne : int, identity modes K and expression shapes E.
    mean : (L, 3) neutral landmark positions; sb : (L, 3, K) identity blocks (sparsity table).
    sj : (J, 3, K) joint identity basis; joint_mean : (J, 3); parents : (J,) int64; anc : (J, J).
    expr_idx, expr_blocks, weights : the sparsity table's (L, D), (L, D, 3), (L, J).
    mu : (F, L, C, 2) landmark means (pixels); inv_sigma : (F, L, C) 1/sigma, 0 where missing
        (cameras innermost: one landmark's views are contiguous).
    block_ok : (C, F) bool, camera j has landmarks in frame f.
    centre : (C, 2) principal point (pixels).
    w_expression, w_joints, w_temporal, w_intersection : float, term weights.
    int_mean, int_sb, int_idx, int_blocks : intersection vertices' (n, 3), (n, 3, K), (n, D), (n, D, 3).
    sphere_c ... hull_of : as ``terms.intersection_term``.
    grad : (N,) out, d cost / d z (length 0 to skip the gradient).
    diag : (N,) out, diagonal of the Gauss-Newton matrix J^T J (length 0 to skip; costs more).
    uv_out : (F, L, C, 2) out, projected landmarks (first axis 0 to skip).
    frame_cost : (F,) out, landmark cost per frame (all cameras).

    Returns
    -------
    float, the cost (without the identity prior).
    """
    nf, nl, nc = mu.shape[0], mu.shape[1], mu.shape[2]
    nj = weights.shape[1]
    psize = POSE_SIZE + ne
    cbase = nk + nf * psize
    want_grad = grad.shape[0] > 0
    want_diag = diag.shape[0] > 0
    want_uv = uv_out.shape[0] > 0
    if want_grad:
        grad[:] = 0.0
    if want_diag:
        diag[:] = 0.0
    beta = z[:nk]
    t_beta = np.empty((nl, 3))
    identity_state(beta, mean, sb, t_beta)
    joints = np.empty((nj, 3))
    for m in range(nj):
        for i in range(3):
            s = joint_mean[m, i]
            for k in range(nk):
                s += sj[m, i, k] * beta[k]
            joints[m, i] = s
    # cameras
    rc = np.empty((nc, 3, 3))
    jc = np.empty((nc, 3, 3))
    for j in range(nc):
        rodrigues_into(z[cbase + 7 * j: cbase + 7 * j + 3], rc[j], jc[j])
    gcam = np.zeros((nc, 7))          # [y x g (3), g (3), d/df]
    # workspaces
    r0 = np.empty((3, 3))
    jl0 = np.empty((3, 3))
    rg = np.empty((nj, 3, 3))
    tg = np.empty((nj, 3))
    gpos = np.empty((nj, 3))
    bm = np.empty((nj, 3, 3))
    cm = np.empty((nj, 3, 3))
    rot = np.empty((nj, 3))
    t = np.empty(3)
    xw = np.empty(3)
    rm = np.empty((3, 3))
    dpose = np.empty((3, POSE_SIZE))
    wsub = np.empty(nj)
    work = np.empty((nj + 5, 3))
    xc = np.empty(3)
    y = np.empty(3)
    uv = np.empty(2)
    dx = np.empty((2, 3))
    df = np.empty(2)
    gc = np.empty(3)
    g = np.empty(3)
    a = np.empty(3)
    b = np.empty(3)
    cr = np.empty(3)
    q = np.empty((3, 3))
    acc_t = np.zeros((nl, 3))            # d cost / d template point, summed over frames
    acc_j = np.zeros((nj, 3))            # identity through joint locations, summed over frames
    h = np.empty((nj, 3))
    cost = 0.0
    temporal = w_temporal > 0.0 and nf > 1
    xall = np.empty((nf if temporal else 0, nl, 3))
    tf = np.empty((nl, 3))
    for f in range(nf):
        frame_cost[f] = 0.0

    if temporal:
        # pass 1: world positions of every landmark vertex in every frame (for the temporal term)
        for f in range(nf):
            base = _frame_chain(z, nk + f * psize, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm)
            for p in range(nl):
                template_point(p, z, base + POSE_SIZE, t_beta, expr_idx, expr_blocks, tf[p])
            skin_mesh(tf, weights, r0, z[base + 3: base + 6], rg, tg, xall[f])

    for f in range(nf):
        base = _frame_chain(z, nk + f * psize, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm)
        e0 = base + POSE_SIZE
        trans = z[base + 3: base + 6]
        for m in range(nj):
            for i in range(3):
                h[m, i] = 0.0
        for p in range(nl):
            template_point(p, z, e0, t_beta, expr_idx, expr_blocks, t)
            skin_vertex(t, weights[p], anc, r0, trans, rg, tg, gpos, bm, xw, rm, dpose, wsub, work)
            g[0] = 0.0
            g[1] = 0.0
            g[2] = 0.0
            if want_diag:
                for i in range(3):
                    for k in range(3):
                        q[i, k] = 0.0
            for j in range(nc):
                if not block_ok[j, f]:
                    continue
                isg = inv_sigma[f, p, j]
                if isg == 0.0 and not want_uv:
                    continue
                cb = cbase + 7 * j
                for i in range(3):
                    y[i] = rc[j, i, 0] * xw[0] + rc[j, i, 1] * xw[1] + rc[j, i, 2] * xw[2]
                    xc[i] = y[i] + z[cb + 3 + i]
                project_jac(xc, z[cb + 6], centre[j, 0], centre[j, 1], uv, dx, df)
                if want_uv:
                    uv_out[f, p, j, 0] = uv[0]
                    uv_out[f, p, j, 1] = uv[1]
                if isg == 0.0:
                    continue
                ru = (uv[0] - mu[f, p, j, 0]) * isg
                rv = (uv[1] - mu[f, p, j, 1]) * isg
                c = 0.5 * (ru * ru + rv * rv)
                cost += c
                frame_cost[f] += c
                if want_grad:
                    for i in range(3):
                        gc[i] = (dx[0, i] * ru + dx[1, i] * rv) * isg
                    _cross(y, gc, cr)
                    for i in range(3):
                        g[i] += rc[j, 0, i] * gc[0] + rc[j, 1, i] * gc[1] + rc[j, 2, i] * gc[2]
                        gcam[j, i] += cr[i]
                        gcam[j, 3 + i] += gc[i]
                    gcam[j, 6] += (df[0] * ru + df[1] * rv) * isg
                if want_diag:
                    i2 = isg * isg
                    # world-space information of this vertex: sum_u (R^T dx_u)(R^T dx_u)^T / sigma^2
                    for u in range(2):
                        for i in range(3):
                            a[i] = rc[j, 0, i] * dx[u, 0] + rc[j, 1, i] * dx[u, 1] + rc[j, 2, i] * dx[u, 2]
                        for i in range(3):
                            for k in range(3):
                                q[i, k] += i2 * a[i] * a[k]
                        for i in range(3):
                            # rotation column i of the camera: (J_l e_i) x y;  translation: e_i
                            for k in range(3):
                                b[k] = jc[j, k, i]
                            _cross(b, y, cr)
                            v = dx[u, 0] * cr[0] + dx[u, 1] * cr[1] + dx[u, 2] * cr[2]
                            diag[cb + i] += i2 * v * v
                            diag[cb + 3 + i] += i2 * dx[u, i] * dx[u, i]
                        diag[cb + 6] += i2 * df[u] * df[u]
            if temporal:
                two_w = 2.0 * w_temporal
                nb = 0.0
                if f > 0:
                    for i in range(3):
                        d = xw[i] - xall[f - 1, p, i]
                        cost += w_temporal * d * d
                        g[i] += two_w * d
                    nb += 1.0
                if f < nf - 1:
                    for i in range(3):
                        g[i] -= two_w * (xall[f + 1, p, i] - xw[i])
                    nb += 1.0
                if want_diag:
                    for i in range(3):
                        q[i, i] += two_w * nb
            if want_grad:
                # pose columns (joint columns are zero where the subtree weight is zero)
                for c in range(POSE_SIZE):
                    grad[base + c] += dpose[0, c] * g[0] + dpose[1, c] * g[1] + dpose[2, c] * g[2]
                for i in range(3):
                    a[i] = rm[0, i] * g[0] + rm[1, i] * g[1] + rm[2, i] * g[2]       # (R_root M)^T g
                    acc_t[p, i] += a[i]
                for d in range(expr_idx.shape[1]):
                    e = expr_idx[p, d]
                    if e < 0:
                        break
                    grad[e0 + e] += a[0] * expr_blocks[p, d, 0] + a[1] * expr_blocks[p, d, 1] + a[2] * expr_blocks[p, d, 2]
                for i in range(3):
                    b[i] = r0[0, i] * g[0] + r0[1, i] * g[1] + r0[2, i] * g[2]       # R_root^T g
                for m in range(1, nj):
                    wm = wsub[m]
                    if wm != 0.0:
                        for i in range(3):
                            h[m, i] += wm * b[i]
            if want_diag:
                _diag_vertex(p, base, e0, nk, nj, q, dpose, rm, r0, wsub, cm, sb, sj, expr_idx, expr_blocks, diag)
        if want_grad:
            # identity through the joint locations: sum_m (cm_m^T h_m) . S_J[m]
            for m in range(1, nj):
                for i in range(3):
                    acc_j[m, i] += cm[m, 0, i] * h[m, 0] + cm[m, 1, i] * h[m, 1] + cm[m, 2, i] * h[m, 2]
        # priors on expression and non-root joints
        for e in range(ne):
            v = z[e0 + e]
            cost += w_expression * v * v
            if want_grad:
                grad[e0 + e] += 2.0 * w_expression * v
            if want_diag:
                diag[e0 + e] += 2.0 * w_expression
        for c in range(6, POSE_SIZE):
            v = z[base + c]
            cost += w_joints * v * v
            if want_grad:
                grad[base + c] += 2.0 * w_joints * v
            if want_diag:
                diag[base + c] += 2.0 * w_joints
    # intersection (template space, per frame)
    if w_intersection > 0.0 and int_mean.shape[0] > 0:
        ni = int_mean.shape[0]
        it_beta = np.empty((ni, 3))
        identity_state(beta, int_mean, int_sb, it_beta)
        acc_i = np.zeros((ni, 3))
        sqrtw = np.sqrt(2.0 * w_intersection)
        for f in range(nf):
            cost += intersection_grad(z, nk + f * psize + POSE_SIZE, it_beta, int_idx, int_blocks, sphere_c,
                                      sphere_r, sphere_of, planes, hull_of, sqrtw, grad, acc_i)
        if want_grad:
            for p in range(ni):
                for k in range(nk):
                    grad[k] += acc_i[p, 0] * int_sb[p, 0, k] + acc_i[p, 1] * int_sb[p, 1, k] + acc_i[p, 2] * int_sb[p, 2, k]
    if want_grad:
        for k in range(nk):
            s = 0.0
            for p in range(nl):
                s += acc_t[p, 0] * sb[p, 0, k] + acc_t[p, 1] * sb[p, 1, k] + acc_t[p, 2] * sb[p, 2, k]
            for m in range(1, nj):
                s += acc_j[m, 0] * sj[m, 0, k] + acc_j[m, 1] * sj[m, 1, k] + acc_j[m, 2] * sj[m, 2, k]
            grad[k] += s
        for j in range(nc):
            cb = cbase + 7 * j
            # rotation: J_l^T sum (y x g)
            for i in range(3):
                grad[cb + i] += jc[j, 0, i] * gcam[j, 0] + jc[j, 1, i] * gcam[j, 1] + jc[j, 2, i] * gcam[j, 2]
            for i in range(3):
                grad[cb + 3 + i] += gcam[j, 3 + i]
            grad[cb + 6] += gcam[j, 6]
    return cost


@njit(cache=True)
def _diag_vertex(p, base, e0, nk, nj, q, dpose, rm, r0, wsub, cm, sb, sj, expr_idx, expr_blocks, diag):
    """Add v^T Q v for every parameter column v of landmark p in this frame into ``diag``."""
    v = np.empty(3)
    for c in range(POSE_SIZE):
        for i in range(3):
            v[i] = dpose[i, c]
        diag[base + c] += _quad(q, v)
    for d in range(expr_idx.shape[1]):
        e = expr_idx[p, d]
        if e < 0:
            break
        for i in range(3):
            v[i] = rm[i, 0] * expr_blocks[p, d, 0] + rm[i, 1] * expr_blocks[p, d, 1] + rm[i, 2] * expr_blocks[p, d, 2]
        diag[e0 + e] += _quad(q, v)
    u = np.empty(3)
    for k in range(nk):
        for i in range(3):
            u[i] = 0.0
        for m in range(1, nj):
            wm = wsub[m]
            if wm != 0.0:
                for i in range(3):
                    u[i] += wm * (cm[m, i, 0] * sj[m, 0, k] + cm[m, i, 1] * sj[m, 1, k] + cm[m, i, 2] * sj[m, 2, k])
        for i in range(3):
            v[i] = (rm[i, 0] * sb[p, 0, k] + rm[i, 1] * sb[p, 1, k] + rm[i, 2] * sb[p, 2, k]
                    + r0[i, 0] * u[0] + r0[i, 1] * u[1] + r0[i, 2] * u[2])
        diag[k] += _quad(q, v)


@njit(cache=True, inline="always")
def _quad(q, v):
    s = 0.0
    for i in range(3):
        for k in range(3):
            s += v[i] * q[i, k] * v[k]
    return s
