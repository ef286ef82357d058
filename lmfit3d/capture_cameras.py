"""The cameras of the offline energy: each camera's landmark residuals, all landmarks at once
(:func:`camera_pass`, the hot loop), their projections and Gauss-Newton pieces
(:func:`_camera_extra`), and the cameras' gradients.  ``gradients.capture_energy`` calls them per
frame; the landmark loss is ``energy.landmark_loss``.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .camera import project_jac
from .energy import N_CAMERA, landmark_loss
from .rotation import rodrigues_into

CAMERA_SIZE = N_CAMERA          # a camera's block of the capture vector: rotation, translation, focal


class ProjectionWork(NamedTuple):
    """Scratch of :func:`_camera_extra` (one landmark's projection and its Jacobian)."""

    xc: np.ndarray          # (3,) camera-space point (mm)
    y: np.ndarray           # (3,) R_j x (mm)
    uvp: np.ndarray         # (2,) projection (pixels)
    dx: np.ndarray          # (2, 3) d uv / d x_cam
    df: np.ndarray          # (2,) d uv / d focal
    a: np.ndarray           # (3,)
    b: np.ndarray           # (3,)
    cr: np.ndarray          # (3,)


class CameraState(NamedTuple):
    """The cameras' rotations, data flags and per-call accumulators."""

    rc: np.ndarray          # (C, 3, 3) R_j
    jc: np.ndarray          # (C, 3, 3) left Jacobian of R_j
    centre: np.ndarray      # (C, 2) principal point (pixels)
    block_ok: np.ndarray    # (C, F) bool, camera j has landmarks in frame f
    cam_grad: np.ndarray    # (C,) bool, camera j's gradient wanted
    gcam: np.ndarray        # (C, 7) [sum y x g_c (3), sum g_c (3), d cost / d focal]
    cdiag: np.ndarray       # (C, 7) Gauss-Newton diagonal of the camera columns
    no_cam: np.ndarray      # (0,) camera_pass's "no camera sums"
    no_uv: np.ndarray       # (0, L) _camera_extra's "no projections"
    proj: ProjectionWork


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
def _camera_extra(xs, obs, rc, jc, tc, focal, cx, cy, q, cdiag, uv, w):
    """Projections and Gauss-Newton pieces of one camera in one frame.

    Parameters
    ----------
    xs : (3, L) world positions (mm); obs : (3, L) float32 as in :func:`camera_pass`.
    rc, jc : (3, 3) R_j and its left Jacobian; tc : (3,) T_j (mm); focal, cx, cy : float (pixels).
    q : (L, 3, 3), when it has rows, += world information sum_u (R^T dx_u)(R^T dx_u)^T / sigma^2 per
        landmark; cdiag : (7,) += the camera's Gauss-Newton diagonal.
    uv : (2, L) out, projections (pixels); first axis 0 to skip.
    w : :class:`ProjectionWork`.
    """
    xc, y, uvp, dx, df, a, b, cr = w.xc, w.y, w.uvp, w.dx, w.df, w.a, w.b, w.cr
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
                cross3(b, y, cr)
                v = dx[u, 0] * cr[0] + dx[u, 1] * cr[1] + dx[u, 2] * cr[2]
                cdiag[i] += i2 * v * v
                cdiag[3 + i] += i2 * dx[u, i] * dx[u, i]
            cdiag[6] += i2 * df[u] * df[u]


@njit(cache=True)
def frame_cameras(z, f, obs_f, xs, s, cams, gs, q, out, cost):
    """Every camera's landmark term in frame f (and, when wanted, projections and GN pieces).

    Parameters
    ----------
    z : (N,) float64; f : int, the frame.
    obs_f : (C, 3, L) float32, the frame's observations (rows u, v pixels and 1/sigma).
    xs : (3, L) world positions of the frame's landmarks (mm).
    s : :class:`CaptureSpec`; cams : :class:`CameraState` (its gcam and cdiag accumulated).
    gs : (3, L), += d cost / d x (world) per landmark.
    q : (L, 3, 3), += world information per landmark (0 rows: skip).
    out : :class:`Outputs`, ``frame_cost[f]`` accumulated, ``uv[f]`` written when wanted.
    cost : float, the running cost.

    Returns
    -------
    float, ``cost`` plus the frame's landmark cost.
    """
    for j in range(cams.rc.shape[0]):
        cb = s.cbase + CAMERA_SIZE * j
        if cams.block_ok[j, f]:
            c = camera_pass(xs, obs_f[j], cams.rc[j], z[cb + 3: cb + 6], z[cb + 6], cams.centre[j, 0],
                            cams.centre[j, 1], s.loss_c, gs, s.want_grad,
                            cams.gcam[j] if cams.cam_grad[j] else cams.no_cam)
            cost += c
            out.frame_cost[f] += c
        if s.want_diag or s.want_uv:
            _camera_extra(xs, obs_f[j], cams.rc[j], cams.jc[j], z[cb + 3: cb + 6], z[cb + 6], cams.centre[j, 0],
                          cams.centre[j, 1], q, cams.cdiag[j], out.uv[f, j] if s.want_uv else cams.no_uv, cams.proj)
    return cost


@njit(cache=True)
def camera_gradient(s, cams, grad, diag):
    """The camera columns from the per-call sums: gradient (rotation J_l^T sum y x g, translation, focal)
    into ``grad`` and the Gauss-Newton diagonal into ``diag``, each when wanted (``s``, :class:`CaptureSpec`)."""
    jc, gcam = cams.jc, cams.gcam
    for j in range(gcam.shape[0]):
        cb = s.cbase + CAMERA_SIZE * j
        if s.want_grad:
            for i in range(3):
                grad[cb + i] += jc[j, 0, i] * gcam[j, 0] + jc[j, 1, i] * gcam[j, 1] + jc[j, 2, i] * gcam[j, 2]
            for i in range(3):
                grad[cb + 3 + i] += gcam[j, 3 + i]
            grad[cb + 6] += gcam[j, 6]
        if s.want_diag:
            for i in range(CAMERA_SIZE):
                diag[cb + i] += cams.cdiag[j, i]


@njit(cache=True)
def camera_state(z, cbase, centre, block_ok, cam_grad, nl):
    """The :class:`CameraState` at z: each camera's rotation R_j and its left Jacobian (from
    z[cbase + 7 j : cbase + 7 j + 3]), zeroed accumulators and the scratch for ``nl`` landmarks."""
    nc = block_ok.shape[0]
    rc = np.empty((nc, 3, 3))
    jc = np.empty((nc, 3, 3))
    for j in range(nc):
        cb = cbase + CAMERA_SIZE * j
        rodrigues_into(z[cb: cb + 3], rc[j], jc[j])
    proj = ProjectionWork(np.empty(3), np.empty(3), np.empty(2), np.empty((2, 3)), np.empty(2), np.empty(3),
                          np.empty(3), np.empty(3))
    return CameraState(rc, jc, centre, block_ok, cam_grad, np.zeros((nc, 7)), np.zeros((nc, 7)), np.zeros(0),
                       np.zeros((0, nl)), proj)


@njit(cache=True, inline="always")
def cross3(a, b, out):
    out[0] = a[1] * b[2] - a[2] * b[1]
    out[1] = a[2] * b[0] - a[0] * b[2]
    out[2] = a[0] * b[1] - a[1] * b[0]
