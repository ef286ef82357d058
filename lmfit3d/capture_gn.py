"""Levenberg-Marquardt on the whole offline problem (issue 17): the Gauss-Newton matrix of every
frame, the identity and the cameras at once, for captures small enough to hold it densely.

L-BFGS (``capture.CaptureProblem.solve``) needs 1,200-1,500 iterations with free cameras: the
global scale (head size x camera distances) and the root / neck counter-rotations of single frames
are near-null directions of its preconditioned Hessian.  A Gauss-Newton step sees them: it solves
the normal equations (J^T W J + priors + lambda D) dz = -g exactly.

* The gradient g and the cost are the energy's own (``gradients.capture_energy`` through
  ``CaptureProblem.energy``): one energy definition; the matrix below is only the step's model.
* The matrix (:func:`normal_matrix`): landmark term J^T W J with W the loss's IRLS weight rho'
  (``energy.landmark_loss``), from the analytic world-space Jacobian of each frame's landmark
  vertices (:func:`capture_jacobians`: pose, expression and identity columns, ``skinning.skin_vertex``
  and ``gradients.identity_column``, the same as the preconditioner's blocks) and each camera's
  projection rows (rotation as a left perturbation, translation, focal); the temporal term's
  Gauss-Newton matrix exactly (frames f - 1 and f coupled); the expression, antagonist and joint
  priors' Hessians (quadratic), the identity prior's Gauss-Newton diagonal and the intersection
  term's Gauss-Newton matrix (:func:`intersection_rows`: lid and lip vertices inside the eyeballs
  and teeth, through their template points; without it one camera's fit crawled: 200 iterations,
  no convergence).
* :func:`levenberg_marquardt_capture`: Marquardt-scaled damping with Nielsen's update
  (``solvers.damping_update``); box bounds (expression in [0, 1], focal >= 1) by an active set
  (:func:`_bounded_step`: entries at a bound whose gradient pushes outward are held, entries a step
  would carry through a bound are set onto it and the rest solved again); the step is accepted by
  the true energy.  Converged (status 1) when an accepted step lowers the cost by less than the
  capture's stopping threshold (``CaptureSolver.stop_decrease`` per landmark residual) and the
  undamped step promises less too; 2 when no damped step lowers the cost any further; 0 at the cap.
* :func:`keyframe_cameras`: for problems too large for a dense matrix, LM on keyframes finds the
  cameras and the identity (``capture._solve_staged`` then holds them for L-BFGS).

A dense matrix of N unknowns costs N^2 doubles and N^3 / 3 flops per factorisation, so
``capture.fit_capture`` uses this solver up to ``CaptureSolver.lm_max_unknowns`` (3,000) free
unknowns (20 frames x 17 cameras: about 1,650).
"""
from dataclasses import replace

import numpy as np
from numba import njit

from .camera import project_jac
from .capture_cameras import CAMERA_SIZE, cross3
from .energy import landmark_loss
from .gradients import (POSE_SIZE, _frame_setup, _landmark_table, _workspaces, frame_positions, identity_column,
                        identity_state)
from .intersection import intersection_depth
from .rotation import rodrigues_into
from .skinning import skin_vertex
from .solvers import LAMBDA0, LAMBDA_MAX, damping_update
from .terms import template_point


@njit(cache=True)
def capture_jacobians(z, nk, ne, mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights, jidx,
                      jcount, obs, block_ok, centre, loss_c, jx, srow, crow, res):
    """Jacobians of the landmark term at z (arguments as ``gradients.capture_energy``).

    Outputs
    -------
    jx : (F, L, 3, P + K) float64, d x_fp / d [frame f's pose (18) and expression (E), identity (K)],
        the world position of landmark p in frame f (mm per unit).
    srow : (F, C, L, 2, 3), d r / d x_fp of camera j's residual rows (pixels / sigma per mm), each row
        scaled by sqrt(rho'), 0 where the landmark is missing.
    crow : (F, C, L, 2, 7), d r / d camera j [rotation (left perturbation of the axis-angle), translation,
        focal], scaled alike.
    res : (F, C, L, 2), the residuals r = (pi_j(x) - mu) / sigma scaled by sqrt(rho'), so that
        sum crow^T res and the chain of srow^T res give the landmark gradient.
    """
    nf, nc, nl = obs.shape[0], obs.shape[1], obs.shape[3]
    psize = POSE_SIZE + ne
    cbase = nk + nf * psize
    tab = _landmark_table(z[:nk], mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights, jidx,
                          jcount)
    ch, pos, adj, gn = _workspaces(nl, weights.shape[1], nk, False)
    sk = gn.skin
    u, v = gn.u, gn.v
    rc = np.empty((nc, 3, 3))
    jc = np.empty((nc, 3, 3))
    for j in range(nc):
        rodrigues_into(z[cbase + CAMERA_SIZE * j: cbase + CAMERA_SIZE * j + 3], rc[j], jc[j])
    jx[:] = 0.0
    srow[:] = 0.0
    crow[:] = 0.0
    res[:] = 0.0
    xc, y, uvp, dx, df, b, cr = (np.empty(3), np.empty(3), np.empty(2), np.empty((2, 3)), np.empty(2),
                                 np.empty(3), np.empty(3))
    for f in range(nf):
        base = nk + f * psize
        _frame_setup(z, base, tab, ch)
        frame_positions(z, base, tab, ch, pos.tbuf[0], pos.xbuf[0], pos.x)
        trans = z[base + 3: base + 6]
        for p in range(nl):
            skin_vertex(pos.tbuf[0, p], weights[p], anc, ch.r0, trans, ch.rg, ch.tg, ch.gpos, ch.bm, sk.x, sk.rm,
                        sk.dpose, sk.wsub, sk.work)
            for i in range(3):
                for c in range(POSE_SIZE):
                    jx[f, p, i, c] = sk.dpose[i, c]
            for d in range(expr_idx.shape[1]):
                e = expr_idx[p, d]
                if e < 0:
                    break
                for i in range(3):
                    jx[f, p, i, POSE_SIZE + e] += (sk.rm[i, 0] * expr_blocks[p, d, 0]
                                                   + sk.rm[i, 1] * expr_blocks[p, d, 1]
                                                   + sk.rm[i, 2] * expr_blocks[p, d, 2])
            for k in range(nk):
                identity_column(p, k, sk.rm, ch.r0, sk.wsub, ch.cm, sb, sj, u, v)
                for i in range(3):
                    jx[f, p, i, psize + k] = v[i]
        xs = pos.xbuf[0]
        for j in range(nc):
            if not block_ok[j, f]:
                continue
            cb = cbase + CAMERA_SIZE * j
            focal = z[cb + 6]
            for p in range(nl):
                isg = np.float64(obs[f, j, 2, p])
                if isg == 0.0:
                    continue
                for i in range(3):
                    y[i] = rc[j, i, 0] * xs[0, p] + rc[j, i, 1] * xs[1, p] + rc[j, i, 2] * xs[2, p]
                    xc[i] = y[i] + z[cb + 3 + i]
                project_jac(xc, focal, centre[j, 0], centre[j, 1], uvp, dx, df)
                ru = (uvp[0] - obs[f, j, 0, p]) * isg
                rv = (uvp[1] - obs[f, j, 1, p]) * isg
                _, drho = landmark_loss(ru * ru + rv * rv, loss_c)
                sw = np.sqrt(drho)
                w = sw * isg
                res[f, j, p, 0] = sw * ru
                res[f, j, p, 1] = sw * rv
                for a in range(2):
                    for i in range(3):
                        srow[f, j, p, a, i] = w * (dx[a, 0] * rc[j, 0, i] + dx[a, 1] * rc[j, 1, i]
                                                   + dx[a, 2] * rc[j, 2, i])
                    for i in range(3):
                        for k in range(3):
                            b[k] = jc[j, k, i]
                        cross3(b, y, cr)
                        crow[f, j, p, a, i] = w * (dx[a, 0] * cr[0] + dx[a, 1] * cr[1] + dx[a, 2] * cr[2])
                        crow[f, j, p, a, 3 + i] = w * dx[a, i]
                    crow[f, j, p, a, 6] = w * df[a]


@njit(cache=True)
def intersection_rows(z, nk, ne, nf, geom, sqrtw):
    """Jacobian rows of the intersection residuals r = sqrtw depth (``gradients.intersection_grad``), for
    the vertices inside (depth > 0) only.

    geom : ``energy.Intersection`` with identity blocks (n, 3, K); sqrtw : sqrt(2 w_x).
    Returns (frame (A,) int64, rows (A, E + K) d r / d [that frame's expression, identity], r (A,)).
    """
    ni = geom.template.shape[0]
    psize = POSE_SIZE + ne
    it_beta = np.empty((ni, 3))
    identity_state(z[:nk], geom.template, geom.identity_blocks, it_beta)
    t = np.empty(3)
    expr_idx, expr_blocks, sb = geom.expr_idx, geom.expr_blocks, geom.identity_blocks
    depth = np.zeros((nf, ni))
    grad = np.empty((nf, ni, 3))            # d depth / d template point, kept for the rows below
    for f in range(nf):
        e0 = nk + f * psize + POSE_SIZE
        for p in range(ni):
            template_point(p, z, e0, it_beta, expr_idx, expr_blocks, t)
            depth[f, p] = intersection_depth(t, geom.sphere_of[p], geom.hull_of[p], geom.sphere_c, geom.sphere_r,
                                             geom.planes, grad[f, p])
    n_in = int((depth > 0.0).sum())
    frame = np.empty(n_in, np.int64)
    rows = np.zeros((n_in, ne + nk))
    res = np.empty(n_in)
    a = 0
    for f in range(nf):
        for p in range(ni):
            if depth[f, p] <= 0.0:
                continue
            gr = grad[f, p]
            frame[a] = f
            res[a] = sqrtw * depth[f, p]
            for d in range(expr_idx.shape[1]):
                e = expr_idx[p, d]
                if e < 0:
                    break
                rows[a, e] += sqrtw * (gr[0] * expr_blocks[p, d, 0] + gr[1] * expr_blocks[p, d, 1]
                                       + gr[2] * expr_blocks[p, d, 2])
            for k in range(nk):
                rows[a, ne + k] = sqrtw * (gr[0] * sb[p, 0, k] + gr[1] * sb[p, 1, k] + gr[2] * sb[p, 2, k])
            a += 1
    return frame, rows, res


def intersection_jacobian(prob, z):
    """:func:`intersection_rows` of a ``capture.CaptureProblem`` at z: (frame (A,), rows (A, E + K), r (A,))."""
    if prob.cfg.fit.w_intersection <= 0 or prob.inter.template.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros((0, prob.ne + prob.nk)), np.zeros(0)
    return intersection_rows(np.ascontiguousarray(z, dtype=np.float64), prob.nk, prob.ne, prob.n_frames, prob.inter,
                             np.sqrt(2.0 * prob.cfg.fit.w_intersection))


def jacobians(prob, z):
    """:func:`capture_jacobians` of a ``capture.CaptureProblem`` at z: (jx, srow, crow, res)."""
    t, fc = prob.table, prob.cfg.fit
    nf, nc, nl = prob.n_frames, prob.n_cameras, prob.n_landmarks
    jx = np.empty((nf, nl, 3, prob.psize + prob.nk))
    srow = np.empty((nf, nc, nl, 2, 3))
    crow = np.empty((nf, nc, nl, 2, CAMERA_SIZE))
    res = np.empty((nf, nc, nl, 2))
    capture_jacobians(np.ascontiguousarray(z, dtype=np.float64), prob.nk, prob.ne, t.mean, t.identity_blocks,
                      prob.sj, prob.model.joint_mean, prob.parents, prob.anc, t.expr_idx, t.expr_blocks, t.weights,
                      prob.jidx, prob.jcount, prob.obs, prob.block_ok, prob.centre, fc.loss_c, jx, srow, crow, res)
    return jx, srow, crow, res


def normal_matrix(prob, z):
    """The Gauss-Newton matrix (N, N) of the capture energy at z (module docstring): landmark and
    temporal terms, expression / antagonist / joint priors, identity prior's GN diagonal."""
    fc, lay = prob.cfg.fit, prob.layout
    nk, ps, nf = prob.nk, prob.psize, prob.n_frames
    jx, srow, crow, _ = jacobians(prob, z)
    h = np.zeros((prob.n, prob.n))
    nl, ncol = jx.shape[1], jx.shape[3]
    cams = np.arange(lay.cameras_start, prob.n)
    two_w = 2.0 * fc.w_temporal if nf > 1 else 0.0
    for f in range(nf):
        idx = np.r_[lay.frame_block(f).start + np.arange(ps), np.arange(nk)]
        jf = jx[f].reshape(3 * nl, ncol)
        q = np.einsum("clai,clak->lik", srow[f], srow[f])
        # the temporal term's own-frame part: 2 w_t per neighbouring difference, on the diagonal of q
        q[:, np.arange(3), np.arange(3)] += two_w * ((f > 0) + (f < nf - 1))
        h[np.ix_(idx, idx)] += jf.T @ np.einsum("lik,lkn->lin", q, jx[f]).reshape(3 * nl, ncol)
        bc = np.einsum("clai,clak->lick", srow[f], crow[f]).reshape(3 * nl, -1)     # (3L, C * 7)
        hfc = jf.T @ bc
        h[np.ix_(idx, cams)] += hfc
        h[np.ix_(cams, idx)] += hfc.T
        cr = crow[f].reshape(prob.n_cameras, 2 * nl, CAMERA_SIZE)
        for j in range(prob.n_cameras):
            cj = lay.camera_block(j)
            h[cj, cj] += cr[j].T @ cr[j]
        if two_w > 0 and f > 0:
            # the cross part of w_t |x_f - x_f-1|^2: -2 w_t J_f^T J_f-1 (and its transpose), the identity
            # columns of both frames included
            prev = np.r_[lay.frame_block(f - 1).start + np.arange(ps), np.arange(nk)]
            cross = -two_w * (jf.T @ jx[f - 1].reshape(3 * nl, ncol))
            h[np.ix_(idx, prev)] += cross
            h[np.ix_(prev, idx)] += cross.T
    frame, rows, _ = intersection_jacobian(prob, z)
    for f in np.unique(frame):
        on = rows[frame == f]
        iidx = np.r_[lay.expression_block(f).start + np.arange(prob.ne), np.arange(nk)]
        h[np.ix_(iidx, iidx)] += on.T @ on
    _add_priors(prob, z, h)
    return h


def _add_priors(prob, z, h):
    """The priors' Hessians into h: expression 2 w_e I and antagonist pairs 2 w_a, joints 2 w_j (not the
    root), identity prior's Gauss-Newton diagonal."""
    fc, lay = prob.cfg.fit, prob.layout
    dg = np.einsum("ii->i", h)                      # a view: writes go into h
    for f in range(prob.n_frames):
        s = lay.frame_block(f).start
        dg[s + 6: s + POSE_SIZE] += 2.0 * fc.w_joints
        e = lay.expression_block(f).start
        dg[e: e + prob.ne] += 2.0 * fc.w_expression
        if fc.w_antagonist > 0 and prob.pairs.size:
            a, b = e + prob.pairs[:, 0], e + prob.pairs[:, 1]
            np.add.at(h, (a, b), 2.0 * fc.w_antagonist)
            np.add.at(h, (b, a), 2.0 * fc.w_antagonist)
    dg[:prob.nk] += prob.identity_prior(z[:prob.nk])[2]


def levenberg_marquardt_capture(prob, z0, free, max_iter, stop_decrease, max_trials=10):
    """Levenberg-Marquardt over z[free] from z0 (module docstring).

    Parameters
    ----------
    prob : ``capture.CaptureProblem``; z0 : (N,) start (within the bounds); free : (N,) bool.
    max_iter : int, the most Gauss-Newton matrices (iterations).
    stop_decrease : float, the convergence threshold in cost units per iteration (0: only the cap).
    max_trials : int, damped steps tried per iteration before giving up (status 2).

    Returns
    -------
    (z (N,), cost float, iterations int, status int): status 1 converged, 2 no further decrease
    found, 0 the cap.
    """
    lo, hi = prob.bounds()
    z = np.clip(np.array(z0, dtype=np.float64), lo, hi)
    cost, grad, _ = prob.energy(z)
    lam, nu, status, it = LAMBDA0, 2.0, 0, 0
    while it < max_iter and status == 0:
        h = normal_matrix(prob, z)
        it += 1
        idx, hr, g = _reduced(h, z, grad, free, lo, hi)
        scale = np.maximum(np.diag(hr), 1e-9 * max(np.diag(hr).max(), 1e-300))
        accepted = False
        for _ in range(max_trials):
            dz = _bounded_step(hr, g, lam * scale, z[idx], lo[idx], hi[idx])
            if dz is None:
                lam, nu = lam * nu, nu * 2.0
                continue
            z_new = z.copy()
            z_new[idx] += dz
            z_new = np.clip(z_new, lo, hi)
            pred = -(g @ dz + 0.5 * dz @ (hr @ dz))
            c_new, g_new, _ = prob.energy(z_new)
            gain = (cost - c_new) / pred if pred > 0 else -1.0
            if np.isfinite(c_new) and c_new < cost and gain > 1e-4:
                lam, nu = damping_update(lam, nu, gain)
                lam = max(lam, 1e-12)
                accepted = True
                break
            lam, nu = lam * nu, nu * 2.0
            if lam > LAMBDA_MAX:
                break
        if not accepted:
            status = 2
            break
        drop = cost - c_new
        z, cost, grad = z_new, c_new, g_new
        if stop_decrease > 0 and drop < stop_decrease:
            # a small decrease may be the damping's: converged when the undamped step promises no more
            full = _full_step_decrease(prob, z, grad, free, lo, hi, h)
            if full < stop_decrease:
                status = 1
            else:
                lam = min(lam, 1e-6)
    return z, float(cost), it, status


def _full_step_decrease(prob, z, grad, free, lo, hi, h):
    """The decrease the quadratic model promises for the undamped Gauss-Newton step from z (h: the matrix
    of the last iteration, close enough once the steps are small)."""
    idx, hr, g = _reduced(h, z, grad, free, lo, hi)
    dz = _bounded_step(hr, g, 1e-9 * np.maximum(np.diag(hr), 1e-300), z[idx], lo[idx], hi[idx])
    return np.inf if dz is None else float(-(g @ dz + 0.5 * dz @ (hr @ dz)))


def _reduced(h, z, grad, free, lo, hi):
    """(idx, h[idx, idx], grad[idx]) over the free entries not held at a bound (at a bound with the
    gradient pushing outward): the system a step solves."""
    held = ((z <= lo) & (grad > 0)) | ((z >= hi) & (grad < 0))
    idx = np.flatnonzero(free & ~held)
    return idx, h[np.ix_(idx, idx)], grad[idx]


def _bounded_step(h, g, damp, x, lo, hi, passes=6):
    """The damped Gauss-Newton step dz of (h + diag(damp)) dz = -g within lo <= x + dz <= hi: entries whose
    step crosses a bound are set onto it and held, and the rest solved again (up to ``passes`` times;
    then clipped).  None when the matrix is not positive definite."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    dz = np.zeros(x.size)
    held = np.zeros(x.size, bool)
    for _ in range(passes):
        f = np.flatnonzero(~held)
        a = h[np.ix_(f, f)]
        a[np.diag_indices(f.size)] += damp[f]
        rhs = -g[f]
        if held.any():
            rhs -= h[np.ix_(f, np.flatnonzero(held))] @ dz[held]
        try:
            dz[f] = cho_solve(cho_factor(a, check_finite=False), rhs, check_finite=False)
        except LinAlgError:
            return None
        new = x + dz
        over = ~held & ((new < lo) | (new > hi))
        if not over.any():
            break
        dz[over] = np.clip(new[over], lo[over], hi[over]) - x[over]
        held |= over
    return np.clip(x + dz, lo, hi) - x


KEYFRAMES = 20      # frames of keyframe_cameras' LM (issue 17's bench problems: 20 frames, 10-14 iterations)


def spread_frames(n_frames, count):
    """Up to ``count`` frame indices spread evenly over 0 .. n_frames - 1 (first and last included)."""
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, count)).round().astype(np.int64))


def stop_threshold(prob):
    """``CaptureSolver.stop_decrease`` in cost units per iteration: times the landmark residual count."""
    return prob.cfg.solver.stop_decrease * 2 * int(np.count_nonzero(prob.obs[:, :, 2] > 0))


def lm_result(prob, cost, it, status):
    """The scipy-like result (``fun``, ``nit``, ``success``, ``status``, ``message``) of an LM solve."""
    from scipy.optimize import OptimizeResult
    msg = {0: "the iteration cap", 1: f"CONVERGENCE: an iteration lowered the cost by less than "
                                      f"{prob.cfg.solver.stop_decrease:g} per landmark residual",
           2: "CONVERGENCE: no damped step lowers the cost"}[status]
    return OptimizeResult(fun=cost, nit=it, success=status >= 1, status=status, message="LM: " + msg)


def keyframe_cameras(prob, z, free):
    """Free cameras of a problem too large for LM: LM on :data:`KEYFRAMES` keyframes spread over the clip
    (fewer if ``CaptureSolver.lm_max_unknowns`` asks), everything free as in ``free``; returns z with the
    identity, the keyframes and the cameras from that fit, and its result."""
    cfg, lay = prob.cfg, prob.layout
    per_frame = int(free[lay.frame_block(0)].sum())
    fixed = int(free[:prob.nk].sum() + free[lay.cameras_start:].sum())
    count = max(2, min(KEYFRAMES, (cfg.solver.lm_max_unknowns - fixed) // max(per_frame, 1)))
    frames = spread_frames(prob.n_frames, count)
    # the keyframes stand for the whole clip: the identity prior weighs as against all frames' data (the
    # scene's scale is set by it), and no temporal term between frames far apart
    fit = replace(cfg.fit, w_temporal=0.0, w_identity=cfg.fit.w_identity * frames.size / prob.n_frames)
    sub, zs = prob.subproblem(z, frames, replace(cfg, fit=fit))
    sub_free = np.zeros(sub.n, bool)
    sub_free[:prob.nk] = free[:prob.nk]
    for k, f in enumerate(frames):
        sub_free[sub.layout.frame_block(k)] = free[lay.frame_block(f)]
    sub_free[sub.layout.cameras_start:] = free[lay.cameras_start:]
    zs, cost, it, status = levenberg_marquardt_capture(sub, zs, sub_free, cfg.solver.max_iter // 2, stop_threshold(sub))
    prob.nfev += sub.nfev
    return prob.from_subproblem(sub, zs, frames, z), lm_result(sub, cost, it, status)
