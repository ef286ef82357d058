"""Cost and analytic gradient of the offline multi-view, multi-frame energy (numba kernels).

The offline solver (paper sec. 3.3, "all frames and cameras at once with L-BFGS") needs only the
cost and its gradient J^T r, never J^T J.  :func:`capture_energy` evaluates both in one call.
Per frame: the landmark vertices are posed once (world-axes joint transforms, only the joints
with non-zero weight: ``skinning.skin_point_sparse``); per camera one SIMD loop over the
landmarks (``capture_cameras.camera_pass``) projects them and accumulates each landmark's world-space
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

Energy (``lmfit3d.energy``; cost = 0.5 |r|^2 with the squared landmark loss; the same terms and
weights as ``lmfit3d.fit.FitConfig``):

* landmarks:    r = (pi_j(x_cam_j) - mu_jfi) / sigma_jfi, skipped where ``inv_sigma`` is 0
* temporal:     w_t sum_f sum_i |x_f,i - x_f-1,i|^2 over landmark vertices in world coordinates (mm)
* expression:   w_e |psi_f|^2;  joints: w_j |theta_f|^2 (not the root)
* intersection: w_x d^2 for eyelid vertices inside the eyeball spheres and lip vertices inside the
                teeth hulls (template space, as ``intersection.intersection_term``)
* identity (GMM prior) is added by the Python layer.

Kernel layout: :func:`capture_energy` allocates its workspaces once (named tuples:
:class:`CaptureSpec`, :class:`Outputs`, :class:`LandmarkTable`, :class:`CameraState`,
:class:`ChainWork`, :class:`Positions`, :class:`Adjoint`, :class:`GaussNewton`), then per frame
:func:`frame_energy` runs the rolling positions (:func:`roll_positions`), the cameras
(``capture_cameras.frame_cameras``), the temporal term (:func:`temporal_term`), the pull-back of the world
gradient (:func:`pull_back`, :func:`pose_gradient`), the Gauss-Newton pieces
(:func:`frame_gauss_newton`) and the priors (:func:`quadratic_prior`); the intersection term
(:func:`intersection_energy`) and the identity and camera gradients (:func:`identity_gradient`,
:func:`camera_gradient`) follow.  The helpers read the named tuples' arrays into locals before
their loops: a field read inside a hot loop can cost a reference-count update per iteration.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .capture_cameras import camera_state, camera_gradient, cross3, frame_cameras
from .energy import Intersection
from .intersection import intersection_depth
from .skinning import POSE_DIM, pose_chain, skin_point_sparse, skin_vertex, world_joint_transforms
from .terms import template_point

POSE_SIZE = POSE_DIM            # a frame's pose block: root rotation, translation, 4 joints (energy.FrameLayout)


# -- kernel state (named tuples of arrays, allocated once per capture_energy call) ------------------

class CaptureSpec(NamedTuple):
    """Sizes, term weights and requested outputs of one :func:`capture_energy` call."""

    nk: int                 # identity modes K
    ne: int                 # expression shapes E
    nf: int                 # frames F
    psize: int              # frame block size P = 18 + E
    cbase: int              # first camera index of z
    w_expression: float
    w_joints: float
    w_temporal: float
    temporal: bool          # temporal term on (w_temporal > 0 and F > 1)
    loss_c: float           # landmark loss (energy.landmark_loss): 0 squared, c > 0 Cauchy
    want_grad: bool
    want_diag: bool
    want_uv: bool
    want_pblk: bool         # per-frame pose Gauss-Newton blocks
    want_iblk: bool         # identity Gauss-Newton block


class Wanted(NamedTuple):
    """The outputs asked of one :func:`capture_energy` call (the arrays of the others are not touched)."""

    grad: bool              # the gradient
    diag: bool              # the Gauss-Newton diagonal
    uv: bool                # the projected landmarks
    pose_blocks: bool       # with diag: the per-frame pose Gauss-Newton blocks
    id_block: bool          # with diag: the identity Gauss-Newton block


class Outputs(NamedTuple):
    """The output arrays of :func:`capture_energy` (shapes there; those not wanted may be empty)."""

    grad: np.ndarray        # (N,)
    diag: np.ndarray        # (N,)
    uv: np.ndarray          # (F, C, 2, L) pixels
    frame_cost: np.ndarray  # (F,)
    pose_gn: np.ndarray     # (F, 18, 18)
    id_gn: np.ndarray       # (K, K)
    id_frames: np.ndarray   # (F,) bool, frames summed into id_gn


class LandmarkTable(NamedTuple):
    """The landmark vertices' model data, with the template and joints at the current identity."""

    t_beta: np.ndarray      # (L, 3) template T(beta) at the landmarks (mm)
    sb: np.ndarray          # (L, 3, K) identity blocks
    expr_idx: np.ndarray    # (L, D) int64 expression shape per entry, -1 after the last
    expr_blocks: np.ndarray  # (L, D, 3) expression blocks (mm)
    weights: np.ndarray     # (L, J) skin weights
    jidx: np.ndarray        # (L, J) int64 non-zero weight joints (skinning.sparse_weights)
    jcount: np.ndarray      # (L,) int64
    joints: np.ndarray      # (J, 3) bind joint locations J(beta) (mm)
    sj: np.ndarray          # (J, 3, K) joint identity basis
    parents: np.ndarray     # (J,) int64
    anc: np.ndarray         # (J, J) ancestry (skinning.ancestry)


class ChainWork(NamedTuple):
    """One frame's pose chain (``skinning.pose_chain``) and its joints in world axes
    (``skinning.world_joint_transforms``); overwritten frame by frame."""

    rot: np.ndarray         # (J, 3) axis-angle per joint (row 0: root)
    r0: np.ndarray          # (3, 3) root rotation R_0
    jl0: np.ndarray         # (3, 3) its left Jacobian
    rg: np.ndarray          # (J, 3, 3) global joint rotations (before the root)
    tg: np.ndarray          # (J, 3) global joint translations (mm)
    gpos: np.ndarray        # (J, 3) posed joint locations before the root (mm)
    bm: np.ndarray          # (J, 3, 3) Rg_parent J_l(theta_m)
    cm: np.ndarray          # (J, 3, 3) Rg_parent (I - R_m)
    aw: np.ndarray          # (J, 3, 3) R_0 Rg_k
    cw: np.ndarray          # (J, 3) R_0 tg_k (mm)


class Positions(NamedTuple):
    """Rolling buffer of three frames' landmark points (frame f in slot f % 3)."""

    tbuf: np.ndarray        # (3, L, 3) template points (mm)
    xbuf: np.ndarray        # (3, 3, L) world positions (mm), coordinates first
    x: np.ndarray           # (3,) scratch


class Adjoint(NamedTuple):
    """The gradient pull-back: this frame's world-space sums and the sums over all frames."""

    gs: np.ndarray          # (3, L) d cost / d x (world) per landmark, this frame's cameras
    ysum: np.ndarray        # (J, 3) sum_p sum_{k in subtree(m)} w_k y_k x g_p (world); row 0: all joints
    hsum: np.ndarray        # (J, 3) sum_p W_m g_p (world); row 0: sum_p g_p
    acc_t: np.ndarray       # (L, 3) d cost / d template point, summed over frames
    acc_j: np.ndarray       # (J, 3) identity through the joint locations, summed over frames
    g: np.ndarray           # (3,) scratch
    a: np.ndarray           # (3,)
    yk: np.ndarray          # (3,)
    cr: np.ndarray          # (3,)
    v: np.ndarray           # (3,)


class SkinVertexWork(NamedTuple):
    """Outputs and scratch of ``skinning.skin_vertex`` (one vertex at a time)."""

    x: np.ndarray           # (3,) posed position (mm)
    rm: np.ndarray          # (3, 3) R_root M
    dpose: np.ndarray       # (3, POSE_SIZE) pose Jacobian
    wsub: np.ndarray        # (J,) subtree weights W_m
    work: np.ndarray        # (J + 5, 3) scratch


class GaussNewton(NamedTuple):
    """Work of the Gauss-Newton diagonal and blocks (``q`` has 0 rows when they are not wanted)."""

    q: np.ndarray           # (L, 3, 3) world information per landmark, this frame
    skin: SkinVertexWork
    vid: np.ndarray         # (3, K) identity columns of one landmark
    qc: np.ndarray          # (3, max(18, K)) q C in _add_metric_gram
    u: np.ndarray           # (3,)
    v: np.ndarray           # (3,)
    none: np.ndarray        # (0, 0) "no block"


@njit(cache=True)
def skin_vertex_work(nj, ncols):
    """A :class:`SkinVertexWork` for ``nj`` joints and ``ncols`` pose columns (uninitialised)."""
    return SkinVertexWork(np.empty(3), np.empty((3, 3)), np.empty((3, ncols)), np.empty(nj), np.empty((nj + 5, 3)))


@njit(cache=True)
def _workspaces(nl, nj, nk, want_diag):
    """The per-call work arrays: (:class:`ChainWork`, :class:`Positions`, :class:`Adjoint`,
    :class:`GaussNewton`) for L = ``nl`` landmarks, J = ``nj`` joints and K = ``nk`` identity modes."""
    ch = ChainWork(np.empty((nj, 3)), np.empty((3, 3)), np.empty((3, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3)),
                   np.empty((nj, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3, 3)),
                   np.empty((nj, 3)))
    pos = Positions(np.empty((3, nl, 3)), np.empty((3, 3, nl)), np.empty(3))
    adj = Adjoint(np.empty((3, nl)), np.empty((nj, 3)), np.empty((nj, 3)), np.zeros((nl, 3)), np.zeros((nj, 3)),
                  np.empty(3), np.empty(3), np.empty(3), np.empty(3), np.empty(3))
    gn = GaussNewton(np.zeros((nl if want_diag else 0, 3, 3)), skin_vertex_work(nj, POSE_SIZE),
                     np.empty((3, nk)), np.empty((3, max(POSE_SIZE, nk))), np.empty(3), np.empty(3),
                     np.zeros((0, 0)))
    return ch, pos, adj, gn


# -- small pieces ------------------------------------------------------------------------------------


@njit(cache=True)
def identity_state(beta, mean, sb, out):
    """out (n, 3) = mean + sb @ beta: template points (or joint locations) at the current identity (mm)."""
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
def quadratic_prior(z, start, n, w, s, grad, diag, want_blk, blk, b0, cost):
    """The prior w |z[start : start + n]|^2 (expression, or the non-root joints).

    Parameters
    ----------
    z : (N,) float64, full parameter vector.
    start, n : int, the prior's slice of z.
    w : float, its weight.
    s : :class:`CaptureSpec` (which outputs are wanted).
    grad, diag : (N,) gradient and Gauss-Newton diagonal, accumulated when wanted.
    want_blk, blk : bool, (18, 18) the frame's pose block, diagonal entries [b0, b0 + n) accumulated when
        ``want_blk`` (and the diagonal is wanted).
    cost : float, the running cost.

    Returns
    -------
    float, ``cost`` plus the prior.
    """
    for c in range(n):
        val = z[start + c]
        cost += w * val * val
        if s.want_grad:
            grad[start + c] += 2.0 * w * val
        if s.want_diag:
            diag[start + c] += 2.0 * w
            if want_blk:
                blk[b0 + c, b0 + c] += 2.0 * w
    return cost


# -- per frame: positions --------------------------------------------------------------------------

@njit(cache=True)
def _frame_setup(z, base, tab, ch):
    """Pose chain and world joint transforms (into ``ch``, :class:`ChainWork`) of the frame whose block
    starts at z[base]."""
    rot = ch.rot
    for i in range(3):
        rot[0, i] = z[base + i]
    for m in range(1, rot.shape[0]):
        for i in range(3):
            rot[m, i] = z[base + 6 + 3 * (m - 1) + i]
    pose_chain(rot, tab.joints, tab.parents, ch.r0, ch.jl0, ch.rg, ch.tg, ch.gpos, ch.bm, ch.cm)
    world_joint_transforms(ch.r0, ch.rg, ch.tg, ch.aw, ch.cw)


@njit(cache=True)
def frame_positions(z, base, tab, ch, t_out, x_out, x):
    """Template points and world positions of one frame's landmarks.

    Parameters
    ----------
    z : (N,) float64; base : int, the frame's block start in z.
    tab : :class:`LandmarkTable`; ch : :class:`ChainWork` of this frame (``_frame_setup``).
    t_out : (L, 3) out, template points (mm); x_out : (3, L) out, world positions (mm).
    x : (3,) scratch.
    """
    t_beta, expr_idx, expr_blocks, weights, jidx, jcount = (tab.t_beta, tab.expr_idx, tab.expr_blocks, tab.weights,
                                                            tab.jidx, tab.jcount)
    aw, cw = ch.aw, ch.cw
    trans = z[base + 3: base + 6]
    for p in range(t_beta.shape[0]):
        template_point(p, z, base + POSE_SIZE, t_beta, expr_idx, expr_blocks, t_out[p])
        skin_point_sparse(t_out[p], weights[p], jidx[p], jcount[p], aw, cw, trans, x)
        x_out[0, p] = x[0]
        x_out[1, p] = x[1]
        x_out[2, p] = x[2]


@njit(cache=True)
def roll_positions(z, f, s, tab, ch, pos):
    """Bring the rolling buffer ``pos`` (:class:`Positions`) up to step f and leave ``ch`` at frame f.

    With the temporal term, frame f + 1 is computed ahead (frames f - 1, f, f + 1 are then in the
    buffer); without, frame f alone.  ``s`` : :class:`CaptureSpec`; ``tab`` : :class:`LandmarkTable`.
    """
    base = s.nk + f * s.psize
    if not s.temporal:
        _frame_setup(z, base, tab, ch)
        frame_positions(z, base, tab, ch, pos.tbuf[f % 3], pos.xbuf[f % 3], pos.x)
        return
    if f == 0:
        _frame_setup(z, base, tab, ch)
        frame_positions(z, base, tab, ch, pos.tbuf[0], pos.xbuf[0], pos.x)
    if f + 1 < s.nf:
        nb = base + s.psize
        _frame_setup(z, nb, tab, ch)
        frame_positions(z, nb, tab, ch, pos.tbuf[(f + 1) % 3], pos.xbuf[(f + 1) % 3], pos.x)
    _frame_setup(z, base, tab, ch)


# -- cameras ----------------------------------------------------------------------------------------


@njit(cache=True)
def temporal_term(f, s, pos, gs, q, cost):
    """Temporal term of frame f: w_t |x_f - x_f-1|^2 per landmark (world, mm).

    Parameters
    ----------
    f : int, the frame; s : :class:`CaptureSpec`.
    pos : :class:`Positions`, frames f - 1, f, f + 1 in the rolling buffer.
    gs : (3, L), += d cost / d x_f of both neighbouring differences (f - 1 and f + 1).
    q : (L, 3, 3), += 2 w_t per neighbour on the diagonal (0 rows: skip).
    cost : float, the running cost.

    Returns
    -------
    float, ``cost`` plus the frame's temporal cost (the difference to the previous frame).
    """
    xbuf = pos.xbuf
    xs = xbuf[f % 3]
    prv = xbuf[(f - 1) % 3]
    nxt = xbuf[(f + 1) % 3]
    w_temporal = s.w_temporal
    two_w = 2.0 * w_temporal
    nl = xs.shape[1]
    nbr = 0.0
    if f > 0:
        for p in range(nl):             # the cost landmark-major, the order of the kernel before its split
            for i in range(3):
                d = xs[i, p] - prv[i, p]
                cost += w_temporal * d * d
        for i in range(3):
            for p in range(nl):
                gs[i, p] += two_w * (xs[i, p] - prv[i, p])
        nbr += 1.0
    if f < s.nf - 1:
        for i in range(3):
            for p in range(nl):
                gs[i, p] -= two_w * (nxt[i, p] - xs[i, p])
        nbr += 1.0
    if s.want_diag:
        for p in range(nl):
            for i in range(3):
                q[p, i, i] += two_w * nbr
    return cost


@njit(cache=True)
def pull_back(f, base, tab, ch, pos, adj, grad):
    """Pull frame f's world gradient per landmark back through the skinning (adjoint form).

    For landmark p with world gradient g = ``adj.gs[:, p]`` and template point t: a = sum_k w_k A_k^T g
    goes to the expression gradient and ``adj.acc_t`` (``add_template_gradient``); the pose sums
    ``adj.ysum`` (sum_k w_k y_k x g, y_k = aw_k t + cw_k) and ``adj.hsum`` (sum_k w_k g) are formed per
    joint subtree, row 0 over all joints (``pose_gradient`` maps them to the pose).

    Parameters
    ----------
    f : int, the frame; base : int, its block start in z.
    tab : :class:`LandmarkTable`; ch : :class:`ChainWork` at frame f; pos : :class:`Positions`.
    adj : :class:`Adjoint`; grad : (N,) accumulated (expression columns).
    """
    jidx, jcount, weights, anc = tab.jidx, tab.jcount, tab.weights, tab.anc
    expr_idx, expr_blocks, aw, cw, tbuf = tab.expr_idx, tab.expr_blocks, ch.aw, ch.cw, pos.tbuf
    gs, g, a, yk, cr, ysum, hsum, acc_t = adj.gs, adj.g, adj.a, adj.yk, adj.cr, adj.ysum, adj.hsum, adj.acc_t
    e0 = base + POSE_SIZE
    cur = f % 3
    ysum[:] = 0.0
    hsum[:] = 0.0
    for p in range(gs.shape[1]):
        t = tbuf[cur, p]
        for i in range(3):
            g[i] = gs[i, p]
            hsum[0, i] += g[i]
            a[i] = 0.0
        for dd in range(jcount[p]):
            k = jidx[p, dd]
            wk = weights[p, k]
            for i in range(3):
                yk[i] = cw[k, i] + aw[k, i, 0] * t[0] + aw[k, i, 1] * t[1] + aw[k, i, 2] * t[2]
                a[i] += wk * (aw[k, 0, i] * g[0] + aw[k, 1, i] * g[1] + aw[k, 2, i] * g[2])  # M^T R^T g
            cross3(yk, g, cr)
            for i in range(3):
                ysum[0, i] += wk * cr[i]
            for m in range(1, anc.shape[1]):
                if anc[k, m] != 0.0:
                    for i in range(3):
                        ysum[m, i] += wk * cr[i]
                        hsum[m, i] += wk * g[i]
        add_template_gradient(p, a, e0, expr_idx, expr_blocks, grad, acc_t)


@njit(cache=True)
def pose_gradient(base, ch, adj, grad):
    """Map the frame's world-space sums (``adj.ysum``, ``adj.hsum``) to the pose gradient.

    Root rotation: J_l0^T sum (R v) x g; translation: sum g; joint m: (R0 Bm)^T (Y_m - (R0 g_m) x H_m);
    the identity through the joint locations, cm^T R0^T H_m, goes to ``adj.acc_j``.

    Parameters
    ----------
    base : int, the frame's block start in z.
    ch : :class:`ChainWork` at this frame; adj : :class:`Adjoint`.
    grad : (N,) accumulated.
    """
    r0, jl0, gpos, bm, cm = ch.r0, ch.jl0, ch.gpos, ch.bm, ch.cm
    ysum, hsum, acc_j, a, yk, cr, v = adj.ysum, adj.hsum, adj.acc_j, adj.a, adj.yk, adj.cr, adj.v
    for i in range(3):
        grad[base + i] += jl0[0, i] * ysum[0, 0] + jl0[1, i] * ysum[0, 1] + jl0[2, i] * ysum[0, 2]
        grad[base + 3 + i] += hsum[0, i]
    for m in range(1, ysum.shape[0]):
        for i in range(3):
            yk[i] = r0[i, 0] * gpos[m, 0] + r0[i, 1] * gpos[m, 1] + r0[i, 2] * gpos[m, 2]
        cross3(yk, hsum[m], cr)
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


@njit(cache=True)
def frame_energy(z, f, obs_f, s, tab, cams, ch, pos, adj, gn, out, cost):
    """Landmark, temporal and prior terms of frame f, gradient and GN pieces as wanted.

    Parameters
    ----------
    z : (N,) float64; f : int, the frame; obs_f : (C, 3, L) float32, its observations.
    s ... out : the call's state (:class:`CaptureSpec`, :class:`LandmarkTable`, :class:`CameraState`,
        :class:`ChainWork`, :class:`Positions`, :class:`Adjoint`, :class:`GaussNewton`, :class:`Outputs`).
    cost : float, the running cost.

    Returns
    -------
    float, ``cost`` plus the frame's terms.
    """
    base = s.nk + f * s.psize
    roll_positions(z, f, s, tab, ch, pos)
    adj.gs[:] = 0.0
    if s.want_diag:
        gn.q[:] = 0.0
    cost = frame_cameras(z, f, obs_f, pos.xbuf[f % 3], s, cams, adj.gs, gn.q, out, cost)
    if s.temporal:
        cost = temporal_term(f, s, pos, adj.gs, gn.q, cost)
    if s.want_grad:
        pull_back(f, base, tab, ch, pos, adj, out.grad)
        pose_gradient(base, ch, adj, out.grad)
    pblk = out.pose_gn[f] if s.want_pblk else gn.none
    if s.want_diag:
        want_iblk = s.want_iblk and out.id_frames[f]
        frame_gauss_newton(z, f, base, s.nk, tab, ch, pos, gn, out.diag, s.want_pblk, pblk, want_iblk, out.id_gn)
    cost = quadratic_prior(z, base + POSE_SIZE, s.ne, s.w_expression, s, out.grad, out.diag, False, gn.none, 0,
                           cost)
    return quadratic_prior(z, base + 6, POSE_SIZE - 6, s.w_joints, s, out.grad, out.diag, s.want_pblk, pblk, 6, cost)


# -- intersection, identity and cameras (after the frames) -------------------------------------------

@njit(cache=True)
def intersection_grad(z, e0, t_beta, geom, sqrtw, want_grad, grad, acc_t, t, gr):
    """Intersection residuals of one frame (template space); adds d cost / d psi into ``grad``.

    Same residuals as ``intersection.intersection_term``: r = sqrtw (R - |t - c|) for a vertex inside its
    eyeball sphere, r = sqrtw min_p (d_p - n_p . t) for a vertex inside its teeth hull.
    ``t_beta`` (n, 3) the points at the current identity (mm), ``geom`` the ``energy.Intersection``
    geometry, ``acc_t`` (n, 3) accumulates d cost / d t per vertex (for the identity gradient); ``t``,
    ``gr`` (3,) scratch.  Returns the cost 0.5 sum r^2.
    """
    expr_idx, expr_blocks, sphere_of, hull_of = geom.expr_idx, geom.expr_blocks, geom.sphere_of, geom.hull_of
    sphere_c, sphere_r, planes = geom.sphere_c, geom.sphere_r, geom.planes
    cost = 0.0
    for p in range(t_beta.shape[0]):
        template_point(p, z, e0, t_beta, expr_idx, expr_blocks, t)
        res = intersection_depth(t, sphere_of[p], hull_of[p], sphere_c, sphere_r, planes, gr)
        if res <= 0.0:
            continue
        r = sqrtw * res
        cost += 0.5 * r * r
        if not want_grad:
            continue
        for i in range(3):
            gr[i] *= sqrtw * r
        add_template_gradient(p, gr, e0, expr_idx, expr_blocks, grad, acc_t)
    return cost


@njit(cache=True)
def intersection_energy(z, s, geom, w_intersection, grad, cost):
    """The intersection term over all frames, its expression and identity gradient.

    Parameters
    ----------
    z : (N,) float64; s : :class:`CaptureSpec`.
    geom : ``energy.Intersection`` at the identity mean with ``identity_blocks`` (n, 3, K) (n = 0: off).
    w_intersection : float, the term's weight (0: off).
    grad : (N,) accumulated when it has entries.
    cost : float, the running cost.

    Returns
    -------
    float, ``cost`` plus the term.
    """
    ni = geom.template.shape[0]
    if not (w_intersection > 0.0 and ni > 0):
        return cost
    nk = s.nk
    it_beta = np.empty((ni, 3))
    identity_state(z[:nk], geom.template, geom.identity_blocks, it_beta)
    acc_i = np.zeros((ni, 3))
    t = np.empty(3)
    gr = np.empty(3)
    sqrtw = np.sqrt(2.0 * w_intersection)
    for f in range(s.nf):
        cost += intersection_grad(z, nk + f * s.psize + POSE_SIZE, it_beta, geom, sqrtw, s.want_grad, grad, acc_i, t,
                                  gr)
    if s.want_grad:
        sb = geom.identity_blocks
        for p in range(ni):
            for k in range(nk):
                grad[k] += acc_i[p, 0] * sb[p, 0, k] + acc_i[p, 1] * sb[p, 1, k] + acc_i[p, 2] * sb[p, 2, k]
    return cost


@njit(cache=True)
def identity_gradient(tab, adj, grad):
    """grad[:K] += the identity gradient of the landmark and temporal terms: through the template points
    (``adj.acc_t`` with ``tab.sb``) and the joint locations (``adj.acc_j`` with ``tab.sj``)."""
    acc_t, acc_j, sb, sj = adj.acc_t, adj.acc_j, tab.sb, tab.sj
    for k in range(sb.shape[2]):
        s = 0.0
        for p in range(acc_t.shape[0]):
            s += acc_t[p, 0] * sb[p, 0, k] + acc_t[p, 1] * sb[p, 1, k] + acc_t[p, 2] * sb[p, 2, k]
        for m in range(1, acc_j.shape[0]):
            s += acc_j[m, 0] * sj[m, 0, k] + acc_j[m, 1] * sj[m, 1, k] + acc_j[m, 2] * sj[m, 2, k]
        grad[k] += s


# -- the kernel -------------------------------------------------------------------------------------

@njit(cache=True)
def capture_energy(z, nk, ne, mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights,
                   jidx, jcount, obs, block_ok, cam_grad, centre, w_expression, w_joints, w_temporal,
                   int_mean, int_sb, int_idx, int_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
                   w_intersection, loss_c, wanted, grad, diag, uv_out, frame_cost, pose_gn, id_gn, id_frames):
    """Cost and gradient of the offline energy (all frames and cameras), see the module docstring.

    Per frame (:func:`frame_energy`): the landmark positions of the next frame are computed ahead
    (:func:`roll_positions`, a rolling buffer of three frames, for the temporal term); each camera's
    residuals are one SIMD loop over landmarks (``capture_cameras.camera_pass``) accumulating the world-space
    gradient g per landmark; then g (plus the temporal term) is pulled back per landmark through the
    skinning in adjoint form (:func:`pull_back`): the pose gradient is accumulated as world-space sums
    per joint (sum w_k y_k x g and sum w_k g) and mapped to the joint's axis-angle once per frame
    (:func:`pose_gradient`).  The workspaces are allocated here, once per call.

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
    wanted : :class:`Wanted`, the outputs to compute (an output not wanted: its array is not touched and
        may be empty).
    grad : (N,) out, d cost / d z (``wanted.grad``).
    diag : (N,) out, diagonal of the Gauss-Newton matrix J^T J (``wanted.diag``; costs more).
    uv_out : (F, C, 2, L) out, projected landmarks (``wanted.uv``).
    frame_cost : (F,) out, landmark cost per frame (all cameras).
    pose_gn : (F, 18, 18) out, with ``diag``: each frame's Gauss-Newton block of its pose columns
        (root rotation, translation, joints), landmark and temporal terms (``wanted.pose_blocks``).
    id_gn : (K, K) out, with ``diag``: the identity columns' Gauss-Newton block of the landmark and
        temporal terms, summed over the frames where ``id_frames`` (F,) is True (``wanted.id_block``).

    Returns
    -------
    float, the cost (without the identity prior).
    """
    nf, nl = obs.shape[0], obs.shape[3]
    psize = POSE_SIZE + ne
    want_diag = wanted.diag
    n = z.shape[0]
    if ((wanted.grad and grad.shape[0] != n) or (want_diag and diag.shape[0] != n)
            or (wanted.uv and uv_out.shape[0] != nf) or (want_diag and wanted.pose_blocks and pose_gn.shape[0] != nf)
            or (want_diag and wanted.id_block and id_gn.shape[0] != nk)):
        raise ValueError("capture_energy: an output array wanted has the wrong size")
    s = CaptureSpec(nk, ne, nf, psize, nk + nf * psize, w_expression, w_joints, w_temporal,
                    w_temporal > 0.0 and nf > 1, loss_c, wanted.grad, want_diag, wanted.uv,
                    want_diag and wanted.pose_blocks, want_diag and wanted.id_block)
    out = Outputs(grad, diag, uv_out, frame_cost, pose_gn, id_gn, id_frames)
    _clear_outputs(s, out)
    tab = _landmark_table(z[:nk], mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights, jidx,
                          jcount)
    cams = camera_state(z, s.cbase, centre, block_ok, cam_grad, nl)
    ch, pos, adj, gn = _workspaces(nl, weights.shape[1], nk, want_diag)
    cost = 0.0
    for f in range(nf):
        cost = frame_energy(z, f, obs[f], s, tab, cams, ch, pos, adj, gn, out, cost)
    geom = Intersection(int_mean, int_sb, int_idx, int_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of)
    cost = intersection_energy(z, s, geom, w_intersection, grad, cost)
    if s.want_grad:
        identity_gradient(tab, adj, grad)
    camera_gradient(s, cams, grad, diag)
    return cost


@njit(cache=True)
def _clear_outputs(s, out):
    """Zero the accumulated outputs of :func:`capture_energy` that are wanted (``s``: :class:`CaptureSpec`)."""
    if s.want_grad:
        out.grad[:] = 0.0
    if s.want_diag:
        out.diag[:] = 0.0
    if s.want_pblk:
        out.pose_gn[:] = 0.0
    if s.want_iblk:
        out.id_gn[:] = 0.0
    out.frame_cost[:] = 0.0


@njit(cache=True)
def _landmark_table(beta, mean, sb, sj, joint_mean, parents, anc, expr_idx, expr_blocks, weights, jidx, jcount):
    """The :class:`LandmarkTable` at identity ``beta`` (K,): template points T(beta) = mean + sb beta and
    joint locations J(beta) = joint_mean + sj beta (mm) computed here, the other arrays as given."""
    t_beta = np.empty((mean.shape[0], 3))
    identity_state(beta, mean, sb, t_beta)
    joints = np.empty((joint_mean.shape[0], 3))
    identity_state(beta, joint_mean, sj, joints)
    return LandmarkTable(t_beta, sb, expr_idx, expr_blocks, weights, jidx, jcount, joints, sj, parents, anc)


# -- Gauss-Newton diagonal and blocks ----------------------------------------------------------------

@njit(cache=True, inline="always")
def _add_metric_gram(q, cols, n, blk, qc):
    """blk (n, n) += C^T q C for the 3x3 metric q and the 3 x n columns C = cols[:, :n]; qc (3, >= n) scratch."""
    for i in range(3):
        for c in range(n):
            qc[i, c] = q[i, 0] * cols[0, c] + q[i, 1] * cols[1, c] + q[i, 2] * cols[2, c]
    for c in range(n):
        for c2 in range(n):
            blk[c, c2] += cols[0, c] * qc[0, c2] + cols[1, c] * qc[1, c2] + cols[2, c] * qc[2, c2]


@njit(cache=True)
def frame_gauss_newton(z, f, base, nk, tab, ch, pos, gn, diag, want_pblk, pblk, want_iblk, iblk):
    """Gauss-Newton diagonal (and blocks) of frame f's landmark and temporal terms.

    For each landmark the explicit Jacobian (``skinning.skin_vertex``) gives every parameter column v
    (pose, expression, identity through the template and the joint locations); v^T Q v is added into
    ``diag`` with Q = ``gn.q[p]`` the landmark's world information (3, 3).

    Parameters
    ----------
    z : (N,) float64; f : int, the frame; base : int, its block start in z; nk : int, K.
    tab : :class:`LandmarkTable`; ch : :class:`ChainWork` at frame f; pos : :class:`Positions`.
    gn : :class:`GaussNewton` (q filled by the cameras and the temporal term).
    diag : (N,) accumulated.
    want_pblk, pblk : bool, (18, 18) the frame's pose block P^T Q P, accumulated when wanted.
    want_iblk, iblk : bool, (K, K) the identity block, accumulated when wanted.
    """
    e0 = base + POSE_SIZE
    trans = z[base + 3: base + 6]
    tbuf, weights, anc, sb, sj = pos.tbuf, tab.weights, tab.anc, tab.sb, tab.sj
    expr_idx, expr_blocks = tab.expr_idx, tab.expr_blocks
    r0, rg, tg, gpos, bm, cm = ch.r0, ch.rg, ch.tg, ch.gpos, ch.bm, ch.cm
    x, rm, dpose, wsub, work = gn.skin.x, gn.skin.rm, gn.skin.dpose, gn.skin.wsub, gn.skin.work
    qall, v, u, vid, qc = gn.q, gn.v, gn.u, gn.vid, gn.qc
    for p in range(qall.shape[0]):
        skin_vertex(tbuf[f % 3, p], weights[p], anc, r0, trans, rg, tg, gpos, bm, x, rm, dpose, wsub, work)
        q = qall[p]
        for c in range(POSE_SIZE):
            for i in range(3):
                v[i] = dpose[i, c]
            diag[base + c] += _quad(q, v)
        if want_pblk:
            _add_metric_gram(q, dpose, POSE_SIZE, pblk, qc)
        for d in range(expr_idx.shape[1]):
            e = expr_idx[p, d]
            if e < 0:
                break
            for i in range(3):
                v[i] = (rm[i, 0] * expr_blocks[p, d, 0] + rm[i, 1] * expr_blocks[p, d, 1]
                        + rm[i, 2] * expr_blocks[p, d, 2])
            diag[e0 + e] += _quad(q, v)
        for k in range(nk):
            identity_column(p, k, rm, r0, wsub, cm, sb, sj, u, v)
            if want_iblk:
                for i in range(3):
                    vid[i, k] = v[i]
            diag[k] += _quad(q, v)
        if want_iblk:
            _add_metric_gram(q, vid, nk, iblk, qc)


@njit(cache=True, inline="always")
def identity_column(p, k, rm, r0, wsub, cm, sb, sj, u, v):
    """v (3,) = d x_p / d beta_k, the world position of landmark p against identity mode k: through its
    template point (R_root M sb_pk, ``rm`` = R_root M of ``skinning.skin_vertex``) and the joint
    locations (R_root sum_m W_m cm_m sj_mk, ``wsub`` the subtree weights W_m); ``u`` (3,) scratch."""
    for i in range(3):
        u[i] = 0.0
    for m in range(1, wsub.shape[0]):
        wm = wsub[m]
        if wm != 0.0:
            for i in range(3):
                u[i] += wm * (cm[m, i, 0] * sj[m, 0, k] + cm[m, i, 1] * sj[m, 1, k] + cm[m, i, 2] * sj[m, 2, k])
    for i in range(3):
        v[i] = (rm[i, 0] * sb[p, 0, k] + rm[i, 1] * sb[p, 1, k] + rm[i, 2] * sb[p, 2, k]
                + r0[i, 0] * u[0] + r0[i, 1] * u[1] + r0[i, 2] * u[2])


@njit(cache=True, inline="always")
def _quad(q, v):
    """v^T q v for q (3, 3), v (3,)."""
    s = 0.0
    for i in range(3):
        for k in range(3):
            s += v[i] * q[i, k] * v[k]
    return s
