"""Cost and analytic gradient of the offline multi-view, multi-frame energy (numba kernels).

The offline solver (paper sec. 3.3, "all frames and cameras at once with L-BFGS") needs only the
cost and its gradient J^T r, never J^T J.  :func:`capture_energy` evaluates both in one call.
Per frame: the landmark vertices are posed once (world-axes joint transforms, only the joints
with non-zero weight: ``skinning.skin_point_sparse``); per camera one SIMD loop over the
landmarks (:func:`camera_pass`) projects them and accumulates each landmark's world-space
gradient g; then g is pulled back in adjoint form: through the landmark's sparse expression /
identity columns (``terms.template_point`` and the static table of ``sparsity.build_sparsity``),
and for the pose as world-space sums per joint mapped to the joint's axis-angle once per frame
(no per-landmark pose Jacobian).  The Gauss-Newton diagonal and per-frame pose blocks (for the
preconditioner) use the explicit Jacobian (``skinning.skin_vertex``) in a separate pass.

Full parameter vector ``z`` (layout shared with ``lmfit3d.capture``)::

    [0:K]                                identity beta (shared by all frames)
    [K + f P : K + (f + 1) P]            frame f: root rotation (3), translation (3, mm),
                                         neck/head/eye_L/eye_R rotations (12), expression (E);
                                         P = 18 + E
    [K + F P + 7 j : K + F P + 7 (j+1)]  camera j: rotation (3, axis-angle), translation (3, mm),
                                         focal length (1, pixels)

World-to-camera composition with the head's root pose: x_cam_j = R_j (R_root LBS(...) + t_root) + T_j.

Energy (``lmfit3d.energy``; cost = 0.5 |r|^2 with the squared landmark loss; the same terms and weights as ``lmfit3d.fit.FitConfig``):

* landmarks:    r = (pi_j(x_cam_j) - mu_jfi) / sigma_jfi, skipped where ``inv_sigma`` is 0
* temporal:     w_t sum_f sum_i |x_f,i - x_f-1,i|^2 over landmark vertices in world coordinates (mm)
* expression:   w_e |psi_f|^2;  joints: w_j |theta_f|^2 (not the root)
* intersection: w_x d^2 for eyelid vertices inside the eyeball spheres and lip vertices inside the
                teeth hulls (template space, as ``intersection.intersection_term``)
* identity (GMM prior) is added by the Python layer.
"""
import numpy as np
from numba import njit

from .camera import project_jac
from .energy import landmark_loss
from .rotation import rodrigues_into
from .intersection import intersection_depth
from .skinning import pose_chain, skin_point_sparse, skin_vertex, world_joint_transforms
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


@njit(cache=True, inline="always")
def add_template_gradient(p, a, e0, expr_idx, expr_blocks, grad, acc_t):
    """Chain d cost / d t_p = a (3,) (template point p) into the expression gradient through the
    sparsity table, and into acc_t[p] (the identity gradient is formed from acc_t later)."""
    for i in range(3):
        acc_t[p, i] += a[i]
    for d in range(expr_idx.shape[1]):
        e = expr_idx[p, d]
        if e < 0:
            break
        grad[e0 + e] += a[0] * expr_blocks[p, d, 0] + a[1] * expr_blocks[p, d, 1] + a[2] * expr_blocks[p, d, 2]


@njit(cache=True)
def intersection_grad(z, e0, t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes,
                      hull_of, sqrtw, grad, acc_t):
    """Intersection residuals of one frame (template space); adds d cost / d psi into ``grad``.

    Same residuals as ``intersection.intersection_term``: r = sqrtw (R - |t - c|) for a vertex inside its
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
        res = intersection_depth(t, s, h, sphere_c, sphere_r, planes, gr)
        if res <= 0.0:
            continue
        r = sqrtw * res
        cost += 0.5 * r * r
        if not want:
            continue
        for i in range(3):
            gr[i] *= sqrtw * r
        add_template_gradient(p, gr, e0, expr_idx, expr_blocks, grad, acc_t)
    return cost


@njit(cache=True)
def _frame_setup(z, base, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm, aw, cw):
    """Pose chain and world joint transforms of the frame whose block starts at z[base]."""
    for i in range(3):
        rot[0, i] = z[base + i]
    for m in range(1, rot.shape[0]):
        for i in range(3):
            rot[m, i] = z[base + 6 + 3 * (m - 1) + i]
    pose_chain(rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm)
    world_joint_transforms(r0, rg, tg, aw, cw)


@njit(cache=True)
def frame_positions(z, base, t_beta, expr_idx, expr_blocks, weights, jidx, jcount, aw, cw, t_out, x_out):
    """Template points t_out (L, 3) and world positions x_out (3, L) of one frame's landmarks (mm)."""
    x = np.empty(3)
    trans = z[base + 3: base + 6]
    for p in range(t_beta.shape[0]):
        template_point(p, z, base + POSE_SIZE, t_beta, expr_idx, expr_blocks, t_out[p])
        skin_point_sparse(t_out[p], weights[p], jidx[p], jcount[p], aw, cw, trans, x)
        x_out[0, p] = x[0]
        x_out[1, p] = x[1]
        x_out[2, p] = x[2]


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def camera_pass(xs, obs, rc, tc, focal, cx, cy, loss_c, gs, want_grad, cam):
    """Landmark residuals of one camera in one frame, all landmarks (the hot loop, SIMD over landmarks).

    Parameters
    ----------
    xs : (3, L) float64, world positions (mm).
    obs : (3, L) float32, rows u, v (pixels) and 1/sigma (0 where missing).
    rc : (3, 3) R_j; tc : (3,) T_j (mm); focal, cx, cy : float (pixels).
    loss_c : float, the landmark loss (``energy.landmark_loss``): 0 squared, c > 0 Cauchy.
    gs : (3, L) float64, accumulates d cost / d x (world) per landmark when ``want_grad``.
    cam : (7,) float64, accumulates [sum y x g_c (3), sum g_c (3), d cost / d focal] (length 0 to
        skip), with y = R_j x and g_c = d cost / d x_cam.

    Returns
    -------
    float, 0.5 sum rho(|r|^2) of this camera.  Float32 inputs, float64 arithmetic; ``reassoc`` only
    reorders the sums (no NaN / inf assumptions).
    """
    want_cam = cam.shape[0] > 0
    r00, r01, r02 = rc[0, 0], rc[0, 1], rc[0, 2]
    r10, r11, r12 = rc[1, 0], rc[1, 1], rc[1, 2]
    r20, r21, r22 = rc[2, 0], rc[2, 1], rc[2, 2]
    t0, t1, t2 = tc[0], tc[1], tc[2]
    cost = 0.0
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = 0.0
    for p in range(xs.shape[1]):
        x0 = xs[0, p]
        x1 = xs[1, p]
        x2 = xs[2, p]
        y0 = r00 * x0 + r01 * x1 + r02 * x2
        y1 = r10 * x0 + r11 * x1 + r12 * x2
        y2 = r20 * x0 + r21 * x1 + r22 * x2
        iz = -1.0 / (y2 + t2)
        a = (y0 + t0) * iz
        b = (y1 + t1) * iz
        isg = np.float64(obs[2, p])
        ru = (cx + focal * a - obs[0, p]) * isg
        rv = (cy - focal * b - obs[1, p]) * isg
        s2 = ru * ru + rv * rv
        rho, drho = landmark_loss(s2, loss_c)
        cost += 0.5 * rho
        ru *= drho                  # the gradient of 1/2 rho(|r|^2) is rho' J^T r
        rv *= drho
        if want_grad:
            s = focal * iz * isg
            e = a * ru - b * rv
            g0 = s * ru
            g1 = -s * rv
            g2 = s * e
            gs[0, p] += r00 * g0 + r10 * g1 + r20 * g2
            gs[1, p] += r01 * g0 + r11 * g1 + r21 * g2
            gs[2, p] += r02 * g0 + r12 * g1 + r22 * g2
            if want_cam:
                c0 += y1 * g2 - y2 * g1
                c1 += y2 * g0 - y0 * g2
                c2 += y0 * g1 - y1 * g0
                c3 += g0
                c4 += g1
                c5 += g2
                c6 += e * isg
    if want_cam:
        cam[0] += c0
        cam[1] += c1
        cam[2] += c2
        cam[3] += c3
        cam[4] += c4
        cam[5] += c5
        cam[6] += c6
    return cost


@njit(cache=True)
def _camera_extra(xs, obs, rc, jc, tc, focal, cx, cy, q, cdiag, uv):
    """Projections uv (2, L) (first axis 0 to skip) and, when q has rows, the Gauss-Newton pieces:
    q (L, 3, 3) += world information sum_u (R^T dx_u)(R^T dx_u)^T / sigma^2 per landmark, cdiag (7,) +=
    the camera's diagonal."""
    xc = np.empty(3)
    y = np.empty(3)
    uvp = np.empty(2)
    dx = np.empty((2, 3))
    df = np.empty(2)
    a = np.empty(3)
    b = np.empty(3)
    cr = np.empty(3)
    want_q = q.shape[0] > 0
    for p in range(xs.shape[1]):
        for i in range(3):
            y[i] = rc[i, 0] * xs[0, p] + rc[i, 1] * xs[1, p] + rc[i, 2] * xs[2, p]
            xc[i] = y[i] + tc[i]
        project_jac(xc, focal, cx, cy, uvp, dx, df)
        if uv.shape[0] > 0:
            uv[0, p] = uvp[0]
            uv[1, p] = uvp[1]
        isg = np.float64(obs[2, p])
        if not want_q or isg == 0.0:
            continue
        i2 = isg * isg
        for u in range(2):
            for i in range(3):
                a[i] = rc[0, i] * dx[u, 0] + rc[1, i] * dx[u, 1] + rc[2, i] * dx[u, 2]
            for i in range(3):
                for k in range(3):
                    q[p, i, k] += i2 * a[i] * a[k]
            for i in range(3):
                # rotation column i of the camera: (J_l e_i) x y;  translation: e_i
                for k in range(3):
                    b[k] = jc[k, i]
                _cross(b, y, cr)
                v = dx[u, 0] * cr[0] + dx[u, 1] * cr[1] + dx[u, 2] * cr[2]
                cdiag[i] += i2 * v * v
                cdiag[3 + i] += i2 * dx[u, i] * dx[u, i]
            cdiag[6] += i2 * df[u] * df[u]


@njit(cache=True)
def capture_energy(z, nk, ne, mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights,
                   jidx, jcount, obs, block_ok, cam_grad, centre, w_expression, w_joints, w_temporal,
                   int_mean, int_sb, int_idx, int_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
                   w_intersection, loss_c, grad, diag, uv_out, frame_cost, pose_gn, id_gn, id_frames):
    """Cost and gradient of the offline energy (all frames and cameras), see the module docstring.

    Per frame: the landmark positions of the next frame are computed ahead (``frame_positions``,
    a rolling buffer of three frames, for the temporal term); each camera's residuals are one
    SIMD loop over landmarks (``camera_pass``) accumulating the world-space gradient g per
    landmark; then g (plus the temporal term) is pulled back per landmark through the skinning
    in adjoint form: the pose gradient is accumulated as world-space sums per joint
    (sum w_k y_k x g and sum w_k g) and mapped to the joint's axis-angle once per frame.

    Parameters
    ----------
    z : (N,) float64, full parameter vector (layout in the module docstring).
    nk, ne : int, identity modes K and expression shapes E.
    mean : (L, 3) neutral landmark positions; sb : (L, 3, K) identity blocks (sparsity table).
    sj : (J, 3, K) joint identity basis; joint_mean : (J, 3); parents : (J,) int64; anc : (J, J).
    expr_idx, expr_blocks, weights : the sparsity table's (L, D), (L, D, 3), (L, J).
    jidx, jcount : (L, J), (L,) int64, non-zero skin weights per landmark (``skinning.sparse_weights``).
    obs : (F, C, 3, L) float32, rows u, v (pixels) and 1/sigma (0 where missing) per frame and camera.
    block_ok : (C, F) bool, camera j has landmarks in frame f (its 1/sigma must be 0 where not).
    cam_grad : (C,) bool, compute camera j's gradient (its entries stay 0 otherwise).
    centre : (C, 2) principal point (pixels).
    w_expression, w_joints, w_temporal, w_intersection : float, term weights.
    int_mean, int_sb, int_idx, int_blocks : intersection vertices' (n, 3), (n, 3, K), (n, D), (n, D, 3).
    sphere_c ... hull_of : as ``intersection.intersection_term``.
    loss_c : float, the landmark loss (``energy.landmark_loss``): 0 squared, c > 0 Cauchy.
    grad : (N,) out, d cost / d z (length 0 to skip the gradient).
    diag : (N,) out, diagonal of the Gauss-Newton matrix J^T J (length 0 to skip; costs more).
    uv_out : (F, C, 2, L) out, projected landmarks (first axis 0 to skip).
    frame_cost : (F,) out, landmark cost per frame (all cameras).
    pose_gn : (F, 18, 18) out, with ``diag``: each frame's Gauss-Newton block of its pose columns
        (root rotation, translation, joints), landmark and temporal terms (first axis 0 to skip).
    id_gn : (K, K) out, with ``diag``: the identity columns' Gauss-Newton block of the landmark and
        temporal terms, summed over the frames where ``id_frames`` (F,) is True (0 rows to skip).

    Returns
    -------
    float, the cost (without the identity prior).
    """
    nf, nc, nl = obs.shape[0], obs.shape[1], obs.shape[3]
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
    no_cam = np.zeros(0)
    cdiag = np.zeros((nc, 7))
    # workspaces
    r0 = np.empty((3, 3))
    jl0 = np.empty((3, 3))
    rg = np.empty((nj, 3, 3))
    tg = np.empty((nj, 3))
    gpos = np.empty((nj, 3))
    bm = np.empty((nj, 3, 3))
    cm = np.empty((nj, 3, 3))
    aw = np.empty((nj, 3, 3))
    cw = np.empty((nj, 3))
    rot = np.empty((nj, 3))
    xw = np.empty(3)
    rm = np.empty((3, 3))
    dpose = np.empty((3, POSE_SIZE))
    wsub = np.empty(nj)
    work = np.empty((nj + 5, 3))
    g = np.empty(3)
    a = np.empty(3)
    yk = np.empty(3)
    cr = np.empty(3)
    v = np.empty(3)
    acc_t = np.zeros((nl, 3))            # d cost / d template point, summed over frames
    acc_j = np.zeros((nj, 3))            # identity through joint locations, summed over frames
    ysum = np.empty((nj, 3))             # per frame: sum_p sum_k in subtree(m) w_k y_k x g_p (world)
    hsum = np.empty((nj, 3))             # per frame: sum_p W_m g_p (world); row 0: sum_p g_p
    tbuf = np.empty((3, nl, 3))          # template points, frames f-1, f, f+1 (slot f % 3)
    xbuf = np.empty((3, 3, nl))          # world positions (3, L) per slot
    gs = np.empty((3, nl))
    q = np.zeros((nl if want_diag else 0, 3, 3))
    want_pblk = want_diag and pose_gn.shape[0] > 0
    want_iblk = want_diag and id_gn.shape[0] > 0
    no_blk = np.zeros((0, 0))
    vid = np.empty((3, nk))
    if want_pblk:
        pose_gn[:] = 0.0
    if want_iblk:
        id_gn[:] = 0.0
    no_uv = np.zeros((0, nl))
    cost = 0.0
    temporal = w_temporal > 0.0 and nf > 1
    two_w = 2.0 * w_temporal
    for f in range(nf):
        frame_cost[f] = 0.0

    for f in range(nf):
        cur = f % 3
        if f == 0:
            _frame_setup(z, nk, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm, aw, cw)
            frame_positions(z, nk, t_beta, expr_idx, expr_blocks, weights, jidx, jcount, aw, cw, tbuf[0], xbuf[0])
        if temporal and f + 1 < nf:
            nb_ = nk + (f + 1) * psize
            _frame_setup(z, nb_, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm, aw, cw)
            frame_positions(z, nb_, t_beta, expr_idx, expr_blocks, weights, jidx, jcount, aw, cw,
                            tbuf[(f + 1) % 3], xbuf[(f + 1) % 3])
        base = nk + f * psize
        e0 = base + POSE_SIZE
        _frame_setup(z, base, rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm, aw, cw)
        if not temporal and f > 0:
            frame_positions(z, base, t_beta, expr_idx, expr_blocks, weights, jidx, jcount, aw, cw, tbuf[cur], xbuf[cur])
        xs = xbuf[cur]
        trans = z[base + 3: base + 6]
        gs[:] = 0.0
        if want_diag:
            q[:] = 0.0
        for j in range(nc):
            cb = cbase + 7 * j
            if block_ok[j, f]:
                c = camera_pass(xs, obs[f, j], rc[j], z[cb + 3: cb + 6], z[cb + 6], centre[j, 0], centre[j, 1],
                                loss_c, gs, want_grad, gcam[j] if cam_grad[j] else no_cam)
                cost += c
                frame_cost[f] += c
            if want_diag or want_uv:
                _camera_extra(xs, obs[f, j], rc[j], jc[j], z[cb + 3: cb + 6], z[cb + 6], centre[j, 0], centre[j, 1],
                              q, cdiag[j], uv_out[f, j] if want_uv else no_uv)
        for m in range(nj):
            for i in range(3):
                ysum[m, i] = 0.0
                hsum[m, i] = 0.0
        for p in range(nl):
            for i in range(3):
                g[i] = gs[i, p]
            if temporal:
                nbr = 0.0
                if f > 0:
                    prv = xbuf[(f - 1) % 3]
                    for i in range(3):
                        d = xs[i, p] - prv[i, p]
                        cost += w_temporal * d * d
                        g[i] += two_w * d
                    nbr += 1.0
                if f < nf - 1:
                    nxt = xbuf[(f + 1) % 3]
                    for i in range(3):
                        g[i] -= two_w * (nxt[i, p] - xs[i, p])
                    nbr += 1.0
                if want_diag:
                    for i in range(3):
                        q[p, i, i] += two_w * nbr
            t = tbuf[cur, p]
            if want_grad:
                for i in range(3):
                    hsum[0, i] += g[i]
                    a[i] = 0.0
                for dd in range(jcount[p]):
                    k = jidx[p, dd]
                    wk = weights[p, k]
                    for i in range(3):
                        yk[i] = cw[k, i] + aw[k, i, 0] * t[0] + aw[k, i, 1] * t[1] + aw[k, i, 2] * t[2]
                        a[i] += wk * (aw[k, 0, i] * g[0] + aw[k, 1, i] * g[1] + aw[k, 2, i] * g[2])  # M^T R^T g
                    _cross(yk, g, cr)
                    for i in range(3):
                        ysum[0, i] += wk * cr[i]
                    for m in range(1, nj):
                        if anc[k, m] != 0.0:
                            for i in range(3):
                                ysum[m, i] += wk * cr[i]
                                hsum[m, i] += wk * g[i]
                add_template_gradient(p, a, e0, expr_idx, expr_blocks, grad, acc_t)
            if want_diag:
                skin_vertex(t, weights[p], anc, r0, trans, rg, tg, gpos, bm, xw, rm, dpose, wsub, work)
                _diag_vertex(p, base, e0, nk, nj, q[p], dpose, rm, r0, wsub, cm, sb, sj, expr_idx, expr_blocks, diag,
                             pose_gn[f] if want_pblk else no_blk, id_gn if want_iblk and id_frames[f] else no_blk, vid)
        if want_grad:
            # root rotation: J_l0^T sum (R v) x g;  translation: sum g
            for i in range(3):
                grad[base + i] += jl0[0, i] * ysum[0, 0] + jl0[1, i] * ysum[0, 1] + jl0[2, i] * ysum[0, 2]
                grad[base + 3 + i] += hsum[0, i]
            for m in range(1, nj):
                # joint m: (R0 Bm)^T (Y_m - (R0 g_m) x H_m);  identity via joints: cm^T R0^T H_m
                for i in range(3):
                    yk[i] = r0[i, 0] * gpos[m, 0] + r0[i, 1] * gpos[m, 1] + r0[i, 2] * gpos[m, 2]
                _cross(yk, hsum[m], cr)
                for i in range(3):
                    v[i] = ysum[m, i] - cr[i]
                    a[i] = r0[0, i] * hsum[m, 0] + r0[1, i] * hsum[m, 1] + r0[2, i] * hsum[m, 2]
                col = base + 6 + 3 * (m - 1)
                for i in range(3):
                    s = 0.0
                    for r in range(3):
                        s += (r0[r, 0] * bm[m, 0, i] + r0[r, 1] * bm[m, 1, i] + r0[r, 2] * bm[m, 2, i]) * v[r]
                    grad[col + i] += s
                    acc_j[m, i] += cm[m, 0, i] * a[0] + cm[m, 1, i] * a[1] + cm[m, 2, i] * a[2]
        # priors on expression and non-root joints
        for e in range(ne):
            val = z[e0 + e]
            cost += w_expression * val * val
            if want_grad:
                grad[e0 + e] += 2.0 * w_expression * val
            if want_diag:
                diag[e0 + e] += 2.0 * w_expression
        for c in range(6, POSE_SIZE):
            val = z[base + c]
            cost += w_joints * val * val
            if want_grad:
                grad[base + c] += 2.0 * w_joints * val
            if want_diag:
                diag[base + c] += 2.0 * w_joints
                if want_pblk:
                    pose_gn[f, c, c] += 2.0 * w_joints
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
    if want_diag:
        for j in range(nc):
            for i in range(7):
                diag[cbase + 7 * j + i] += cdiag[j, i]
    return cost


@njit(cache=True, inline="always")
def _add_metric_gram(q, cols, n, blk):
    """blk (n, n) += C^T q C for the 3x3 metric q and the 3 x n columns C = cols[:, :n]."""
    qc = np.empty((3, n))
    for i in range(3):
        for c in range(n):
            qc[i, c] = q[i, 0] * cols[0, c] + q[i, 1] * cols[1, c] + q[i, 2] * cols[2, c]
    for c in range(n):
        for c2 in range(n):
            blk[c, c2] += cols[0, c] * qc[0, c2] + cols[1, c] * qc[1, c2] + cols[2, c] * qc[2, c2]


@njit(cache=True)
def _diag_vertex(p, base, e0, nk, nj, q, dpose, rm, r0, wsub, cm, sb, sj, expr_idx, expr_blocks, diag, pblk, iblk,
                 vid):
    """Add v^T Q v for every parameter column v of landmark p in this frame into ``diag``; when
    ``pblk`` (18, 18) / ``iblk`` (K, K) have rows, add the full blocks P^T Q P of the pose and of
    the identity columns (``vid`` (3, K) workspace)."""
    v = np.empty(3)
    for c in range(POSE_SIZE):
        for i in range(3):
            v[i] = dpose[i, c]
        diag[base + c] += _quad(q, v)
    if pblk.shape[0] > 0:
        _add_metric_gram(q, dpose, POSE_SIZE, pblk)
    for d in range(expr_idx.shape[1]):
        e = expr_idx[p, d]
        if e < 0:
            break
        for i in range(3):
            v[i] = rm[i, 0] * expr_blocks[p, d, 0] + rm[i, 1] * expr_blocks[p, d, 1] + rm[i, 2] * expr_blocks[p, d, 2]
        diag[e0 + e] += _quad(q, v)
    u = np.empty(3)
    want_blk = iblk.shape[0] > 0
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
            if want_blk:
                vid[i, k] = v[i]
        diag[k] += _quad(q, v)
    if want_blk:
        _add_metric_gram(q, vid, nk, iblk)


@njit(cache=True, inline="always")
def _quad(q, v):
    s = 0.0
    for i in range(3):
        for k in range(3):
            s += v[i] * q[i, k] * v[k]
    return s
