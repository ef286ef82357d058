"""The change of variables under the offline L-BFGS (``capture.CaptureProblem.solve``): z = z0 + P u.

L-BFGS works on u; P whitens the Gauss-Newton (GN) matrix H at the start, P^T H P ~ I, block by block:

* each frame's 18 pose parameters by their GN block (:func:`block_transform`, eigenvalues floored);
* expression, eye joints, focal lengths and anything else: the GN diagonal (these keep their box bounds);
* with free cameras (no calibration, or cameras marked free), the *global* parameters -- the identity and
  every free camera parameter -- by the Schur complement of the frames' pose blocks
  (:func:`schur_map`): the frames are eliminated, S = H_gg - sum_f H_gf H_ff^-1 H_fg, and

      z_pose_f = z0 + P_f u_f - H_ff^-1 H_fg P_g u_g,     z_g = z0 + P_g u_g,   P_g ~ S^-1/2,

  so moving a camera (or the identity) carries every frame's head pose along with it, as the data ask
  (experimental, ``Preconditioner.schur``);
* by default, each free camera by its own 7 x 7 (6 without the focal) GN block (:func:`camera_block_map`):
  its rotation and translation are strongly coupled (turning a camera about the head moves its
  image as much as sliding it), which the diagonal scaling left to L-BFGS to find.
  Without it the cameras are scaled by their GN diagonal, which counts every frame's pull on them as if
  the head were held; their real stiffness (after the frames follow) is far smaller, and the global
  scale (head size x camera distances) needed about 1,900 iterations (issue 17).  H_gf and H_gg are
  taken from the energy's own gradient by forward differences (``len(global)`` gradient calls: one
  energy, no second kernel to keep in step with it).
"""
from dataclasses import dataclass

import numpy as np

_BLOCK_FLOOR = 0.03
# A pose block whose normalised smallest eigenvalue is below this has an unobserved direction
# (root / neck / head counter-rotation with face-only landmarks: 0 to 1e-5 for ibug68, dense320
# and MediaPipe's; 1e-4 to 4e-4 for dense703, whose neck vertices observe it): there the block
# sends L-BFGS along the free direction (ibug68: 3x the cost after 200 iterations), so the
# frame keeps the diagonal preconditioner.
_BLOCK_SINGULAR = 3e-5
# Relative eigenvalue floor of the Schur complement (normalised to a unit diagonal): the global
# scale is weak but linear, so it is whitened almost fully.
_SCHUR_FLOOR = 1e-7
_FD_STEP = 1e-4                 # forward-difference step, in units of the GN diagonal's scale


def block_transform(blocks, floor=None):
    """P (B, m, m) for each symmetric PSD block H (B, m, m) such that P^T H P ~ I.

    H = D N D with D = sqrt(diag H); N = V diag(lam) V^T;  P = D^-1 V diag(max(lam, floor))^-1/2.
    The eigenvalue floor (relative to N's unit diagonal) keeps the preconditioner from amplifying
    near-null directions: with face-only landmarks (no neck vertices) turning the root one way and
    the neck back is nearly free (only the joint prior), and a full inverse there sends L-BFGS
    along that path, where the rotations are far from linear (the rendered two-camera video test
    stalled at twice the cost with no floor).  Measured (200 iterations max): floor 0.01 / 0.03 /
    0.1 -> 103 / 137 / 200 iterations on the synthetic 520 x 17 dense703 sequence, and a final
    cost 0.9 % / 0.09 % / 0.02 % above the diagonal preconditioner's on the video test.
    """
    floor = _BLOCK_FLOOR if floor is None else floor
    d = np.sqrt(np.maximum(np.einsum("bii->bi", blocks), 1e-12))
    norm = blocks / d[:, :, None] / d[:, None, :]
    lam, vec = np.linalg.eigh(norm)
    with np.errstate(divide="ignore"):         # floor 0 on a singular block: replaced just below
        out = vec / np.sqrt(np.maximum(lam, floor))[:, None, :] / d[:, :, None]
    # (near-)singular blocks: the diagonal preconditioner (see _BLOCK_SINGULAR)
    sing = lam[:, 0] < _BLOCK_SINGULAR
    out[sing] = np.eye(blocks.shape[1])[None] / d[sing][:, :, None]
    return out


@dataclass(frozen=True)
class VariableMap:
    """z = z0 + P u over the free entries of z (u has one entry per free parameter).

    Attributes
    ----------
    z0 : (N,) the start; free : (N,) bool.
    on_diag : (N,) bool, entries scaled by ``scale`` (N,) alone (the rest are in blocks).
    pidx : (F, m) int64 pose entries per frame (0 columns: no pose blocks); pmat : (F, m, m).
    gidx : (G,) int64 global entries (identity, free cameras; 0: none); gmat : (G, G) P_g;
    couple : (F, m, G) -H_ff^-1 H_fg P_g, the frames' pose moving with u_g.
    """

    z0: np.ndarray
    free: np.ndarray
    on_diag: np.ndarray
    scale: np.ndarray
    pidx: np.ndarray
    pmat: np.ndarray
    gidx: np.ndarray
    gmat: np.ndarray
    couple: np.ndarray

    def to_z(self, u):
        """The full vector z (N,) at the free variables u."""
        d = np.zeros(self.z0.size)
        d[self.free] = u
        z = self.z0.copy()
        z[self.on_diag] += self.scale[self.on_diag] * d[self.on_diag]
        if self.pidx.size:
            z[self.pidx] += np.einsum("fij,fj->fi", self.pmat, d[self.pidx])
        if self.gidx.size:
            ug = d[self.gidx]
            z[self.gidx] += self.gmat @ ug
            if self.couple.size:
                z[self.pidx] += self.couple @ ug
        return z

    def gradient(self, grad):
        """d cost / d u (free entries) from d cost / d z (N,): P^T grad."""
        gu = np.where(self.on_diag, self.scale * grad, 0.0)
        if self.pidx.size:
            gp = grad[self.pidx]
            gu[self.pidx] = np.einsum("fji,fj->fi", self.pmat, gp)
        if self.gidx.size:
            gg = self.gmat.T @ grad[self.gidx]
            if self.couple.size:
                gg += np.einsum("fjg,fj->g", self.couple, gp)
            gu[self.gidx] = gg
        return gu[self.free]


def diagonal_map(z0, free, diag):
    """The diagonal preconditioner: P = diag(1 / sqrt(diag J^T J))."""
    scale = np.where(diag > 0, 1.0 / np.sqrt(np.maximum(diag, 1e-300)), 1.0)
    e = np.zeros(0, np.int64)
    return VariableMap(z0, free, free.copy(), scale, e.reshape(0, 0), np.zeros((0, 0, 0)), e, np.zeros((0, 0)),
                       np.zeros((0, 0, 0)))


def block_map(z0, free, diag, pose_starts, pose_gn, pose_size):
    """Per-frame pose blocks (when every frame frees the same pose entries), diagonal elsewhere."""
    vm = diagonal_map(z0, free, diag)
    pf = free[pose_starts[0]:pose_starts[0] + pose_size]
    same = all((free[s:s + pose_size] == pf).all() for s in pose_starts)
    if not (same and pf.any()):
        return vm
    cols = np.flatnonzero(pf)
    pidx = pose_starts[:, None] + cols[None]
    pmat = block_transform(pose_gn[:, cols[:, None], cols[None]])
    on_diag = vm.on_diag.copy()
    on_diag[pidx.ravel()] = False
    return VariableMap(z0, free, on_diag, vm.scale, pidx, pmat, vm.gidx, vm.gmat, vm.couple)


def hessian_columns(gradient, z0, cols, steps, g0):
    """Columns of the Hessian by forward differences of the gradient: (N, len(cols)).

    ``gradient(z)`` -> (N,); ``steps`` (len(cols),) the step per column; ``g0`` the gradient at z0."""
    out = np.empty((z0.size, cols.size))
    for k, (c, h) in enumerate(zip(cols, steps)):
        z = z0.copy()
        z[c] += h
        out[:, k] = (gradient(z) - g0) / h
    return out


def schur_map(vm, gidx, gradient, pose_blocks):
    """Add the global block ``gidx`` (identity, free cameras) to a :func:`block_map`, frames eliminated.

    ``gradient(z)`` -> (N,) the gradient of a Gauss-Newton twin of the energy (residuals zero at z0:
    ``CaptureProblem._gauss_newton_gradient``), so H_fg and H_gg by differences are Gauss-Newton
    blocks, consistent with ``pose_blocks`` (F, m, m), the kernel's GN blocks of ``vm.pidx``.  (The true
    Hessian's pose blocks are indefinite in the root / neck counter-rotation, and mixing true and GN
    blocks left S, a difference of large numbers, indefinite.)  Returns a new VariableMap.
    """
    gidx = np.asarray(gidx, np.int64)
    if gidx.size == 0:
        return vm
    g0 = gradient(vm.z0)
    cols = hessian_columns(gradient, vm.z0, gidx, _FD_STEP * vm.scale[gidx], g0)
    hgg = cols[gidx]
    hgg = 0.5 * (hgg + hgg.T)
    s = hgg.copy()
    if vm.pidx.size:
        hfg = cols[vm.pidx]                                          # (F, m, G)
        # H_ff^-1 H_fg with the GN pose blocks themselves (not their floored whitening P_f P_f^T): then
        # P^T H P has no frame-global coupling left whatever P_f is
        ainv_b = _solve_blocks(pose_blocks, hfg)
        s -= np.einsum("fig,fih->gh", hfg, ainv_b)
        s = 0.5 * (s + s.T)
    d = np.sqrt(np.maximum(np.diag(s), 1e-12 * max(np.diag(hgg).max(), 1e-300)))
    lam, vec = np.linalg.eigh(s / d[:, None] / d[None])
    gmat = vec / np.sqrt(np.maximum(lam, _SCHUR_FLOOR * max(lam[-1], 1e-300)))[None] / d[:, None]
    couple = -np.einsum("fig,gh->fih", ainv_b, gmat) if vm.pidx.size else np.zeros((0, 0, 0))
    on_diag = vm.on_diag.copy()
    on_diag[gidx] = False
    return VariableMap(vm.z0, vm.free, on_diag, vm.scale, vm.pidx, vm.pmat, gidx, gmat, couple)


def camera_block_map(vm, cameras, blocks):
    """Whiten each free camera's parameters by its own GN block (no coupling to other variables).

    ``cameras``: list of (n_j,) int64 free entries of each camera; ``blocks``: list of their (n_j, n_j)
    Gauss-Newton blocks (``CaptureProblem.camera_blocks``).  Returns a new VariableMap (the cameras as
    its global block, block diagonal)."""
    pairs = [(np.asarray(c, np.int64), np.asarray(b, np.float64)) for c, b in zip(cameras, blocks) if len(c)]
    if not pairs:
        return vm
    gidx = np.concatenate([c for c, _ in pairs])
    gmat = np.zeros((gidx.size, gidx.size))
    o = 0
    for c, h in pairs:
        gmat[o:o + c.size, o:o + c.size] = block_transform(0.5 * (h + h.T)[None])[0]
        o += c.size
    on_diag = vm.on_diag.copy()
    on_diag[gidx] = False
    return VariableMap(vm.z0, vm.free, on_diag, vm.scale, vm.pidx, vm.pmat, gidx, gmat, np.zeros((0, 0, 0)))


def _solve_blocks(blocks, rhs):
    """blocks^-1 rhs per frame ((F, m, m), (F, m, G)), through the eigenvalues of the unit-diagonal
    normalised block (relative floor 1e-10: a block with an unobserved direction stays finite)."""
    d = np.sqrt(np.maximum(np.einsum("bii->bi", blocks), 1e-300))
    lam, vec = np.linalg.eigh(blocks / d[:, :, None] / d[:, None, :])
    lam = np.maximum(np.abs(lam), 1e-10)
    t = np.einsum("fji,fjg->fig", vec, rhs / d[:, :, None]) / lam[:, :, None]
    return np.einsum("fij,fjg->fig", vec, t) / d[:, :, None]
