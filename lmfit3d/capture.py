"""Offline capture: all frames and cameras fitted together (paper sec. 3.3 and 4.3.1), by
Levenberg-Marquardt on the whole problem when it is small (``lmfit3d.capture_gn``), else by L-BFGS.

Unknowns
--------
* identity beta (K), shared by every frame and camera;
* per frame f: root rotation and translation (the head pose in *world* coordinates), neck / head /
  eye rotations and expression psi_f (E, kept in [0, 1] by bounds);
* per camera j: world-to-camera rotation R_j (axis-angle), translation T_j (mm) and focal length
  f_j (pixels, > 0), each optimised when unknown or marked free, held when calibrated.

A landmark vertex x_f (world) is seen by camera j at x_cam = R_j x_f + T_j, with
x_f = R_root LBS(T(beta, psi_f), J(beta), theta_f) + t_root, and projected by the pinhole model of
``lmfit3d.camera`` (principal point at the image centre).  The energy is the real-time fitter's
(``FitConfig`` weights): landmarks summed over cameras and frames, identity GMM prior, expression
and joint priors, the temporal term (landmark vertices, world mm) and intersections.  Cost and
gradient come from one numba kernel (``lmfit3d.gradients.capture_energy``); LM builds its
Gauss-Newton matrix from analytic Jacobians (``capture_gn``, ``CaptureSolver.method``); L-BFGS-B runs
on variables rescaled by Gauss-Newton blocks at the start (``capture_precond``).

World frame and gauge
---------------------
The head pose and the cameras are only defined up to one common rigid motion.  With a calibration
the world is the calibration's world, and the calibrated cameras (held unless marked free) fix the
gauge.  When every camera's extrinsics are free (no calibration), the *reference camera* is held at
R = I, T = 0: the world is then that camera's coordinate frame (camera axes of ``lmfit3d.camera``:
x right, y up, looking along -z).  All 3D outputs (vertices, root pose) are in world mm.

Initialisation (``lmfit3d.capture_init``)
------------------------------------------
1. The reference camera (default 0, or the first camera that sees a face) is tracked alone by the
   real-time fitter (``lmfit3d.fit.fit_landmarks``): identity, per-frame pose and expression, and
   its focal length when unknown, on every ``CaptureInit.stride``-th frame (long clips: about 128
   frames); the other frames, and frames it could not fit, are interpolated linearly.  Every tracked
   pose's neck/head rotation is moved into the root (``_fold_joints``): the rigid root pose fitting
   the same landmarks, neck and head at zero.
2. Every other camera with unknown extrinsics or focal is tracked alone on up to
   ``CaptureInit.frames`` frames spread over the clip (identity held at the reference's), giving the
   head pose (R_jf, t_jf) in that camera for frames f the reference also fitted (pose (R_f, t_f)).  The
   relative transform camera_ref -> camera_j is R = R_jf R_f^T, T = t_jf - R t_f per frame; the
   rotations are averaged (projection of their sum onto SO(3)) and the translations by the
   median.  Calibrated values replace tracked ones.
3. Cameras that see no face in any frame are reported by a warning, left out of the fit and
   keep their input calibration (NaN when none).
"""
import warnings
from dataclasses import dataclass, replace

import numpy as np

# parse_calibration / read_calibration / write_calibration are part of this module's API too
from .calibration import (Calibration, parse_calibration, read_calibration,  # noqa: F401
                          write_calibration)
from .calibration import image_sizes as _image_sizes
# the option groups are part of this module's API too
from .capture_config import (CaptureConfig, CaptureInit, CaptureSolver, LbfgsSettings,  # noqa: F401
                             Preconditioner)
from .capture_gn import keyframe_cameras, levenberg_marquardt_capture, lm_result, spread_frames, stop_threshold
from .capture_init import _MIN_LANDMARKS, _initialise
from .capture_precond import (_FD_STEP, block_map, block_transform, camera_block_map, diagonal_map,
                              hessian_columns, schur_map)
from .capture_precond import block_transform as _block_transform  # noqa: F401 (tests)
from .energy import CaptureLayout, Intersection, antagonist_pairs, expression_prior_scales, identity_prior
from .gradients import POSE_SIZE, Wanted, capture_energy
from .intersection import IntersectionTerm
from .landmarks import resolve_vertex_ids
from .model import Params, load_model
from .rotation import matrix_to_axis_angle, rodrigues
from .skinning import ancestry, evaluate_mesh, sparse_weights
from .sparsity import build_sparsity


# --------------------------------------------------------------------------------------------

def validate_multiview(mu, sigma, n_landmarks):
    """Check per-camera landmarks; returns mu (C, F, L, 2) and inv_sigma (C, F, L) float64.

    ``mu`` may be an array (C, F, L, 2) or a list of per-camera (F, L, 2) arrays (same F); NaN rows
    are missing landmarks; ``sigma`` (C, F, L) or a list, default 1 pixel.
    """
    if isinstance(mu, (list, tuple)):
        if len(mu) == 0:
            raise ValueError("mu: no cameras given")
        arrs = [np.asarray(m, dtype=np.float64) for m in mu]
        for j, a in enumerate(arrs):
            if a.ndim != 3:
                raise ValueError(f"mu of camera {j} must have shape (F, L, 2), got {a.shape}")
            if a.shape[0] != arrs[0].shape[0]:
                raise ValueError(f"inconsistent frame counts: camera {j} has {a.shape[0]} frames, "
                                 f"camera 0 has {arrs[0].shape[0]}")
        mu = np.stack(arrs)
        if sigma is not None:
            if len(sigma) != len(arrs):
                raise ValueError(f"sigma has {len(sigma)} cameras, mu has {len(arrs)}")
            sg = [np.asarray(s, dtype=np.float64) for s in sigma]
            for j, s in enumerate(sg):
                if s.shape != arrs[j].shape[:2]:
                    raise ValueError(f"sigma of camera {j} must have shape {arrs[j].shape[:2]}, got {s.shape}")
            sigma = np.stack(sg)
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 4 or mu.shape[3] != 2 or 0 in mu.shape:
        raise ValueError(f"mu must have shape (C, F, L, 2), got {mu.shape}")
    if mu.shape[2] != n_landmarks:
        raise ValueError(f"mu has {mu.shape[2]} landmarks but the landmark set has {n_landmarks}")
    if np.isinf(mu).any():
        raise ValueError("mu contains inf (use NaN for missing landmarks)")
    sigma = np.ones(mu.shape[:3]) if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sigma.shape != mu.shape[:3]:
        raise ValueError(f"sigma must have shape {mu.shape[:3]} (C, F, L), got {sigma.shape}")
    present = np.isfinite(mu).all(3)
    bad = present & ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        c, f, i = np.argwhere(bad)[0]
        raise ValueError(f"sigma must be finite and > 0 for present landmarks (camera {c}, frame {f}, "
                         f"landmark {i}: {sigma[c, f, i]})")
    inv = np.where(present, 1.0 / np.where(present, sigma, 1.0), 0.0)
    return np.where(present[..., None], mu, 0.0), inv


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------

class CaptureProblem:
    """The offline energy over the full vector z (layout in ``lmfit3d.gradients``).

    Parameters
    ----------
    model : FaceModel
    vertex_ids : (L,) landmark vertices.
    mu, inv_sigma : (C, F, L, 2), (C, F, L) from :func:`validate_multiview`.
    image_size : (C, 2) pixels.
    config : CaptureConfig
    identity0 : (K,) identity at which the intersection spheres and hulls are built.
    """

    def __init__(self, model, vertex_ids, mu, inv_sigma, image_size, config, identity0=None):
        self.model = model
        self.cfg = config
        fc = config.fit
        self.table = build_sparsity(model, vertex_ids, fc.sparsity_threshold_mm)
        # per frame and camera, landmarks innermost (the kernel's SIMD loop): (F, C, 3, L) float32,
        # rows u, v (pixels) and 1/sigma (0 where missing, or where the camera sees < 3 in the frame)
        self.block_ok = (inv_sigma > 0).sum(2) >= _MIN_LANDMARKS
        nc, nf, nl = mu.shape[:3]
        self.obs = np.empty((nf, nc, 3, nl), dtype=np.float32)
        for j in range(nc):
            self.obs[:, j, 0] = mu[j, :, :, 0]
            self.obs[:, j, 1] = mu[j, :, :, 1]
            self.obs[:, j, 2] = np.where(self.block_ok[j][:, None], inv_sigma[j], 0.0)
        self.jidx, self.jcount = sparse_weights(self.table.weights)
        self.camera_gradient = np.ones(nc, bool)
        self.n_cameras, self.n_frames, self.n_landmarks = mu.shape[:3]
        self.centre = np.ascontiguousarray(np.asarray(image_size, dtype=np.float64) / 2.0)
        self.nk, self.ne = model.n_identity, model.n_expression
        self.layout = CaptureLayout.of(model, self.n_frames, self.n_cameras)
        self.pairs = antagonist_pairs(model.expression_names)
        expression_prior_scales(self.ne, self.pairs, fc.w_expression, fc.w_antagonist)    # ValueError if too large
        self.psize = self.layout.frame_size
        self.n = self.layout.size
        self.sj = np.ascontiguousarray(model.joint_identity, dtype=np.float64)
        self.parents = model.joint_parents.astype(np.int64)
        self.anc = ancestry(model.joint_parents)
        beta0 = np.zeros(self.nk) if identity0 is None else np.asarray(identity0, dtype=np.float64)
        # the intersection geometry at the identity mean with its basis (None: term off)
        self.geometry = (IntersectionTerm(model, beta0, fc.sparsity_threshold_mm).geometry(identity_free=True)
                         if fc.w_intersection > 0 else None)
        self.inter = self.geometry if self.geometry is not None else Intersection(
            np.zeros((0, 3)), np.zeros((0, 3, self.nk)), np.zeros((0, 1), np.int64), np.zeros((0, 1, 3)),
            np.zeros((2, 3)), np.ones(2), np.zeros(0, np.int64), np.zeros((2, 1, 4)), np.zeros(0, np.int64))
        self._frame_cost = np.empty(self.n_frames)
        self._all_frames = np.ones(self.n_frames, bool)
        self.nfev = 0

    # layout helpers
    def frame_slice(self, f):
        """Frame f's block of z (``energy.CaptureLayout.frame_block``)."""
        return self.layout.frame_block(f)

    def camera_slice(self, j):
        """Camera j's block of z (``energy.CaptureLayout.camera_block``)."""
        return self.layout.camera_block(j)

    @property
    def mu_t(self):
        """(F, L, C, 2) float64 landmark means (pixels) as stored (a copy, for inspection)."""
        return np.transpose(self.obs[:, :, :2], (0, 3, 1, 2)).astype(np.float64)

    @property
    def inv_t(self):
        """(F, L, C) float64 1/sigma as stored, 0 where missing (a copy)."""
        return np.transpose(self.obs[:, :, 2], (0, 2, 1)).astype(np.float64)

    def _kernel(self, z, grad=None, diag=None, uv=None, pose_gn=None, id_gn=None, id_frames=None):
        """``gradients.capture_energy`` at z: the outputs given (not None) are the ones computed."""
        t, fc = self.table, self.cfg.fit
        wanted = Wanted(grad is not None, diag is not None, uv is not None, pose_gn is not None, id_gn is not None)
        grad, diag = _E1 if grad is None else grad, _E1 if diag is None else diag
        uv = _E4 if uv is None else uv
        pose_gn = _E3 if pose_gn is None else pose_gn
        id_gn = _E2 if id_gn is None else id_gn
        id_frames = self._all_frames if id_frames is None else id_frames
        return capture_energy(z, self.nk, self.ne, t.mean, t.identity_blocks, self.sj, self.model.joint_mean,
                              self.parents, self.anc, t.expr_idx, t.expr_blocks, t.weights, self.jidx,
                              self.jcount, self.obs, self.block_ok, self.camera_gradient, self.centre,
                              fc.w_expression, fc.w_joints, fc.w_temporal, *self.inter, fc.w_intersection,
                              fc.loss_c, wanted, grad, diag, uv, self._frame_cost, pose_gn, id_gn, id_frames)

    def identity_prior(self, beta):
        """(cost, gradient (K,), Gauss-Newton diagonal (K,)) of the identity term (``energy.identity_prior``)."""
        return identity_prior(self.model, beta, self.cfg.fit.w_identity)

    def antagonist_term(self, z, grad=None):
        """The expression prior's antagonist pairs over all frames (``energy.expression_prior``):
        2 w_a sum_f sum_pairs psi_a psi_b; adds its gradient into ``grad`` (its GN diagonal is 0)."""
        w = self.cfg.fit.w_antagonist
        if w <= 0 or self.pairs.size == 0:
            return 0.0
        lay = self.layout
        blocks = z[lay.frame.n_identity:lay.cameras_start].reshape(self.n_frames, lay.frame_size)
        psi = blocks[:, lay.frame.pose_dim:]
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        if grad is not None:
            g = grad[lay.frame.n_identity:lay.cameras_start].reshape(self.n_frames, lay.frame_size)
            np.add.at(g, (slice(None), lay.frame.pose_dim + a), 2.0 * w * psi[:, b])     # g: a view of grad
            np.add.at(g, (slice(None), lay.frame.pose_dim + b), 2.0 * w * psi[:, a])
        return 2.0 * w * float((psi[:, a] * psi[:, b]).sum())

    def energy(self, z, want_grad=True, want_diag=False):
        """(cost, gradient (N,) or None, GN diagonal (N,) or None) at the full vector z."""
        z = np.ascontiguousarray(z, dtype=np.float64)
        grad = np.empty(self.n) if want_grad else None
        diag = np.empty(self.n) if want_diag else None
        cost = self._kernel(z, grad, diag)
        cost += self.antagonist_term(z, grad if want_grad else None)
        c_id, g_id, d_id = self.identity_prior(z[:self.nk])
        self.nfev += 1
        if want_grad:
            grad[:self.nk] += g_id
        if want_diag:
            diag[:self.nk] += d_id
        return cost + c_id, (grad if want_grad else None), (diag if want_diag else None)

    def project(self, z):
        """Projected landmarks (C, F, L, 2) pixels and landmark cost per frame (F,) at z."""
        uv = np.empty((self.n_frames, self.n_cameras, 2, self.n_landmarks))
        self._kernel(np.ascontiguousarray(z, dtype=np.float64), uv=uv)
        return np.transpose(uv, (1, 0, 3, 2)), self._frame_cost.copy()

    def bounds(self):
        lo = np.full(self.n, -np.inf)
        hi = np.full(self.n, np.inf)
        for f in range(self.n_frames):
            s = self.frame_slice(f)
            lo[s.start + POSE_SIZE: s.stop] = 0.0
            hi[s.start + POSE_SIZE: s.stop] = 1.0
        for j in range(self.n_cameras):
            lo[self.camera_slice(j).stop - 1] = 1.0
        return lo, hi

    def gn_blocks(self, z, id_frames=16):
        """Gauss-Newton pieces for the preconditioner at z.

        Returns the diagonal (N,), the per-frame pose blocks (F, 18, 18) and the identity block
        (K, K) (landmark and temporal terms on ``id_frames`` frames spread over the clip, scaled to
        all frames, plus the identity prior's diagonal; None when ``id_frames`` is 0).
        """
        z = np.ascontiguousarray(z, dtype=np.float64)
        nf = self.n_frames
        diag = np.empty(self.n)
        pose_gn = np.empty((nf, POSE_SIZE, POSE_SIZE))
        id_gn = np.empty((self.nk, self.nk)) if id_frames > 0 else None
        sel = np.zeros(nf, bool)
        if id_frames > 0:
            sel[np.unique(np.linspace(0, nf - 1, min(nf, id_frames)).round().astype(int))] = True
        self._kernel(z, diag=diag, pose_gn=pose_gn, id_gn=id_gn, id_frames=sel)
        _, _, d_id = self.identity_prior(z[:self.nk])
        diag[:self.nk] += d_id
        if id_frames <= 0:
            return diag, pose_gn, None
        id_gn *= nf / sel.sum()
        id_gn[np.diag_indices(self.nk)] += d_id
        return diag, pose_gn, id_gn

    def solve(self, z0, free, max_iter=None):
        """L-BFGS-B over z[free] from z0, preconditioned (``CaptureConfig.preconditioner``: ``kind``,
        ``schur``), at most ``max_iter`` iterations (default ``CaptureSolver.max_iter``), ended early by
        scipy's tests (``LbfgsSettings``) or by ``CaptureSolver.stop_decrease`` (:class:`DecreaseStop`).

        The variables are u with z = z0 + P u (``lmfit3d.capture_precond``): P = diag(1 / sqrt(diag
        J^T J)) ("diagonal"), or, for "block", P ~ H^-1/2 of the Gauss-Newton block H on each frame's
        pose (and on the identity for "block_identity"; both unbounded), diagonal on the rest
        (expression and focal keep box bounds); with free cameras (``schur``), the identity and the
        free camera parameters are whitened by the Schur complement of the frames' pose blocks.
        Returns (z, scipy result).
        """
        from scipy.optimize import minimize

        max_iter = self.cfg.solver.max_iter if max_iter is None else int(max_iter)
        z0 = np.array(z0, dtype=np.float64)
        vm = self.variable_map(z0, free)
        lo, hi = self.bounds()
        on_diag, scale = vm.on_diag, vm.scale
        ulo = np.where(on_diag, (lo - z0) / scale, -np.inf)[free]
        uhi = np.where(on_diag, (hi - z0) / scale, np.inf)[free]

        def fun(u):
            cost, grad, _ = self.energy(vm.to_z(u))
            return cost, vm.gradient(grad)

        u0 = np.clip(np.zeros(int(free.sum())), ulo, uhi)
        self.camera_gradient = np.array([free[self.camera_slice(j)].any() for j in range(self.n_cameras)])
        n_res = 2 * int(np.count_nonzero(self.obs[:, :, 2] > 0))
        stop = DecreaseStop(self.cfg.solver.stop_decrease * n_res, self.cfg.solver.stop_window)
        lb = self.cfg.lbfgs
        try:
            res = minimize(fun, u0, jac=True, method="L-BFGS-B", bounds=list(zip(ulo, uhi)), callback=stop,
                           options=dict(maxiter=max_iter, maxcor=lb.maxcor, ftol=lb.ftol, gtol=lb.gtol,
                                        maxfun=4 * max_iter))
        finally:
            self.camera_gradient = np.ones(self.n_cameras, bool)
        if stop.met:
            res.success, res.status = True, 0
            res.message = (f"CONVERGENCE: cost fell by {stop.rate:.3g} per iteration over the last {stop.window} "
                           f"iterations (< {self.cfg.solver.stop_decrease:g} x {n_res} residuals)")
        z = vm.to_z(res.x)
        z[~free] = z0[~free]
        z = np.clip(z, lo, hi)
        return z, res

    def _gauss_newton_gradient(self, z0):
        """gradient(z) of the energy with the landmarks moved onto their projections at z0.

        Its landmark residuals vanish at z0, so its Hessian there (by differences of this gradient) is
        the Gauss-Newton matrix J^T J of the landmark term (the priors are quadratic); the true
        Hessian is indefinite in the near-null root / neck directions.  Same kernel, same energy."""
        uv, _ = self.project(z0)
        twin = self.obs.copy()
        twin[:, :, :2] = np.where(twin[:, :, 2:3] > 0, np.transpose(uv, (1, 0, 3, 2)), twin[:, :, :2])

        def gradient(z):
            obs, self.obs = self.obs, twin
            try:
                return self.energy(z)[1]
            finally:
                self.obs = obs
        return gradient

    def camera_blocks(self, z0, cameras, scale, frames=16):
        """Gauss-Newton blocks of the free camera parameters (``cameras[j]``: the free entries of z of
        camera j, possibly none): forward differences of the Gauss-Newton twin's gradient
        (``_gauss_newton_gradient``, the same energy), on a copy of the problem holding ``frames`` frames
        spread over the clip, scaled to all frames (a camera's block sums over frames; one gradient
        call per free entry on the small copy).  ``scale`` (N,): the diagonal preconditioner's step of
        each entry."""
        nf = self.n_frames
        sel = spread_frames(nf, frames)
        sub, zs = self.subproblem(z0, sel) if sel.size < nf else (self, z0)
        gradient = sub._gauss_newton_gradient(zs)
        g0 = gradient(zs)
        blocks = []
        for j, c in enumerate(cameras):
            c = np.asarray(c, np.int64)
            cs = c + (sub.camera_slice(j).start - self.camera_slice(j).start)
            cols = hessian_columns(gradient, zs, cs, _FD_STEP * scale[c], g0)
            blocks.append(cols[cs] * (nf / sel.size))
        return blocks

    def subproblem(self, z0, frames, config=None):
        """A copy of the problem holding only ``frames`` (int array), and z0 on it: (problem, its vector);
        ``config``: its CaptureConfig (default this problem's)."""
        mu = np.transpose(self.obs[frames, :, :2], (1, 0, 3, 2)).astype(np.float64)
        inv = np.transpose(self.obs[frames, :, 2], (1, 0, 2)).astype(np.float64)
        sub = CaptureProblem(self.model, self.table.vertex_ids, mu, inv, 2.0 * self.centre, config or self.cfg,
                             z0[:self.nk])
        zs = np.zeros(sub.n)
        zs[:self.nk] = z0[:self.nk]
        for k, f in enumerate(frames):
            zs[sub.layout.frame_block(k)] = z0[self.layout.frame_block(f)]
        for j in range(self.n_cameras):
            zs[sub.camera_slice(j)] = z0[self.camera_slice(j)]
        return sub, zs

    def from_subproblem(self, sub, zs, frames, z):
        """A copy of z with the identity, ``frames`` and the cameras taken from ``sub``'s vector zs."""
        out = np.array(z, dtype=np.float64)
        out[:self.nk] = zs[:self.nk]
        for k, f in enumerate(frames):
            out[self.layout.frame_block(f)] = zs[sub.layout.frame_block(k)]
        for j in range(self.n_cameras):
            out[self.camera_slice(j)] = zs[sub.camera_slice(j)]
        return out

    def variable_map(self, z0, free):
        """The preconditioner at z0 over the free entries (``capture_precond.VariableMap``)."""
        pre = self.cfg.preconditioner.kind
        if pre == "diagonal":
            _, _, diag = self.energy(z0, want_grad=False, want_diag=True)
            return diagonal_map(z0, free, diag)
        with_id = pre == "block_identity"
        diag, pose_gn, id_gn = self.gn_blocks(z0, 16 if with_id else 0)
        starts = self.nk + self.psize * np.arange(self.n_frames)
        vm = block_map(z0, free, diag, starts, pose_gn, POSE_SIZE)
        per_cam = [np.arange(self.camera_slice(j).start, self.camera_slice(j).stop) for j in range(self.n_cameras)]
        per_cam = [c[free[c]] for c in per_cam]
        cams = np.concatenate(per_cam)
        if self.cfg.preconditioner.schur and cams.size > 0:
            gidx = np.r_[np.flatnonzero(free[:self.nk]), cams].astype(np.int64)
            cols = vm.pidx[0] - starts[0] if vm.pidx.size else np.zeros(0, np.int64)
            return schur_map(vm, gidx, self._gauss_newton_gradient(z0), pose_gn[:, cols[:, None], cols[None]])
        if cams.size > 0:
            return camera_block_map(vm, per_cam, self.camera_blocks(z0, per_cam, vm.scale))
        if with_id and free[:self.nk].all():
            iidx = np.arange(self.nk)
            imat = block_transform(id_gn[None])[0]
            on_diag = vm.on_diag.copy()
            on_diag[iidx] = False
            return replace(vm, on_diag=on_diag, gidx=iidx, gmat=imat)
        return vm


class DecreaseStop:
    """L-BFGS callback of ``CaptureSolver.stop_decrease``: raises StopIteration (scipy ends the solve)
    once the cost fell by less than ``per_iteration`` per iteration, on average over the last
    ``window`` iterations; ``met`` says it did, ``rate`` the last average decrease."""

    def __init__(self, per_iteration, window):
        self.per_iteration, self.window = float(per_iteration), int(window)
        self.costs, self.met, self.rate = [], False, np.inf

    def __call__(self, intermediate_result):
        self.costs.append(float(intermediate_result.fun))
        if self.per_iteration <= 0 or len(self.costs) <= self.window:
            return
        self.rate = (self.costs[-1 - self.window] - self.costs[-1]) / self.window
        if self.rate < self.per_iteration:
            self.met = True
            raise StopIteration


_E1 = np.zeros(0)
_E2 = np.zeros((0, 0))
_E3 = np.zeros((0, POSE_SIZE, POSE_SIZE))
_E4 = np.zeros((0, 0, 2, 0))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class CaptureResult:
    """Result of :func:`fit_capture` (F frames, C cameras); 3D in world mm (see the module docstring).

    Per-frame arrays follow ``lmfit3d.fit.SequenceFit``; per-camera: ``camera_rotation`` (C, 3, 3),
    ``camera_translation`` (C, 3) mm, ``focal`` (C,) px, ``image_size`` (C, 2), ``camera_ok`` (C,)
    (False: no face seen, left out), ``reproj_median_px`` / ``reproj_mean_px`` (C,) landmark
    reprojection error (pixels, present landmarks only), ``uv`` (C, F, L, 2) fitted landmarks.
    """

    identity: np.ndarray
    expression: np.ndarray
    rotations: np.ndarray
    translation: np.ndarray
    cost: np.ndarray
    status: np.ndarray
    camera_rotation: np.ndarray
    camera_translation: np.ndarray
    focal: np.ndarray
    image_size: np.ndarray
    camera_ok: np.ndarray
    reproj_median_px: np.ndarray
    reproj_mean_px: np.ndarray
    uv: np.ndarray
    vertex_ids: np.ndarray
    total_cost: float
    iterations: int
    n_evaluations: int
    converged: bool
    message: str
    reference_camera: int
    seconds_init: float = 0.0
    seconds_solve: float = 0.0
    expression_names: tuple = ()

    def params(self, f):
        return Params(self.identity, self.expression[f], self.rotations[f], self.translation[f])

    def vertices(self, model, f):
        """World-space mesh (V, 3) mm of frame f."""
        return evaluate_mesh(model, self.params(f))

    def calibration(self):
        """The refined :class:`Calibration` (cameras left out keep NaN where they were unknown)."""
        n = self.focal.size
        return Calibration(self.camera_rotation, self.camera_translation, self.focal, self.image_size,
                           np.zeros(n, bool), np.zeros(n, bool))


# --------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------

def fit_capture(mu, sigma=None, *, landmark_set=None, vertex_ids=None, image_size=None, calibration=None,
                model=None, config=None, identity=None, progress=None):
    """Fit all frames of all cameras at once (the paper's offline system).

    Parameters
    ----------
    mu : (C, F, L, 2) float, or a list of C arrays (F, L, 2): landmark means in pixels (NaN missing).
    sigma : (C, F, L) float or a list of (F, L): standard deviations in pixels (default 1).
    landmark_set : str (e.g. ``"dense703"``), or ``vertex_ids`` (L,) model vertices.
    image_size : (2,) or (C, 2) (width, height) pixels; may come from the calibration instead.
    calibration : :class:`Calibration`, a path to a calibration JSON (``read_calibration``), or None
        (all extrinsics and focal lengths estimated).
    config : CaptureConfig
    identity : (K,) optional fixed identity.
    progress : callable(str), optional progress messages.

    Returns
    -------
    CaptureResult
        3D outputs in world mm (calibration world, or the reference camera's frame).
    """
    import time

    model = model or load_model()
    cfg = config or CaptureConfig()
    ids = resolve_vertex_ids(landmark_set, vertex_ids, model.n_vertices)
    mu, inv_sigma = validate_multiview(mu, sigma, ids.size)
    nc, nf, nl = mu.shape[:3]
    if calibration is None:
        if image_size is None:
            raise ValueError("image_size is required when no calibration is given")
        cal = Calibration.unknown(_image_sizes(image_size, nc))
    else:
        if not isinstance(calibration, Calibration):
            size0 = None if image_size is None else _image_sizes(image_size, nc)
            calibration = read_calibration(calibration, nc, size0)
        cal = calibration
        if cal.n_cameras != nc:
            raise ValueError(f"calibration has {cal.n_cameras} cameras, the landmarks have {nc}")
        if image_size is not None:
            cal = replace(cal, image_size=_image_sizes(image_size, nc))
    size = _image_sizes(cal.image_size, nc)
    if identity is not None:
        identity = np.asarray(identity, dtype=np.float64)
        if identity.shape != (model.n_identity,) or not np.isfinite(identity).all():
            raise ValueError(f"identity must be {model.n_identity} finite numbers")
    t0 = time.perf_counter()
    counts = (inv_sigma > 0).sum(2)
    cam_ok = (counts >= _MIN_LANDMARKS).any(1)
    for j in np.flatnonzero(~cam_ok):
        warnings.warn(f"camera {j} sees no face in any frame; it is left out of the fit", stacklevel=2)
    if not cam_ok.any():
        raise ValueError("no camera sees a face (fewer than 3 landmarks in every frame)")
    ref = cfg.init.reference_camera
    if ref is None:
        ref = 0 if cam_ok[0] else int(np.flatnonzero(cam_ok)[0])
    elif not (0 <= ref < nc) or not cam_ok[ref]:
        raise ValueError(f"reference_camera {ref} is not a camera with a face (0..{nc - 1})")
    used = np.flatnonzero(cam_ok)
    # fit on the cameras that see a face only
    sub_cal = Calibration(cal.rotation[used], cal.translation[used], cal.focal[used], size[used],
                          cal.free_extrinsics[used], cal.free_focal[used])
    sref = int(np.searchsorted(used, ref))
    if used.size < nc:
        mu, inv_sigma = mu[used], inv_sigma[used]
    beta, rot_w, tr_w, expr, rcam, tcam, foc = _initialise(model, ids, mu, inv_sigma, size[used],
                                                           sub_cal, sref, cfg, identity, progress)
    prob = CaptureProblem(model, ids, mu, inv_sigma, size[used], cfg, beta)
    del mu, inv_sigma                    # the problem keeps float32 copies
    z = np.zeros(prob.n)
    z[:prob.nk] = beta
    lay = prob.layout
    for f in range(nf):
        lay.set_frame(z, f, rot_w[f], tr_w[f], expr[f])
    for j in range(used.size):
        lay.set_camera(z, j, matrix_to_axis_angle(rcam[j]), tcam[j], foc[j])
    free = np.ones(prob.n, bool)
    if identity is not None:
        free[:prob.nk] = False
    if not cfg.fit.fit_eyes:
        for f in range(nf):
            for k in model.eye_joints:
                free[lay.frame_joint_block(f, k)] = False
    ext_free = ~sub_cal.known_extrinsics | sub_cal.free_extrinsics
    if ext_free.all():
        ext_free[sref] = False           # gauge: the reference camera is held
    for j in range(used.size):
        s = prob.camera_slice(j).start
        free[s:s + 6] = ext_free[j]
        free[s + 6] = ~np.isfinite(sub_cal.focal[j]) | sub_cal.free_focal[j]
    t1 = time.perf_counter()
    if progress is not None:
        progress(f"initialised in {t1 - t0:.1f} s; solving over {int(free.sum())} parameters")
    z, res = _solve_staged(prob, z, free, free_cams=bool(ext_free.any()))
    t2 = time.perf_counter()
    return _result(model, prob, z, res, used, cal, size, ids, ref, t1 - t0, t2 - t1)


def _solve_staged(prob, z, free, free_cams):
    """The solve: Levenberg-Marquardt (``capture_gn``) when ``CaptureSolver.method`` asks or ("auto") the
    free parameters are few enough; else L-BFGS (:func:`_solve_lbfgs_staged`), and ("auto") with free
    camera parameters the cameras and the identity are first found by LM on keyframes
    (``capture_gn.keyframe_cameras``) and held while L-BFGS fits every frame (with free cameras and
    identity L-BFGS needs over a thousand iterations: the scene's scale is nearly free).
    Returns (z, result: ``fun``, ``nit``, ``success``, ``message``)."""
    sol = prob.cfg.solver
    n_free = int(free.sum())
    if sol.method == "lm" or (sol.method == "auto" and n_free <= sol.lm_max_unknowns):
        z, cost, it, status = levenberg_marquardt_capture(prob, z, free, sol.max_iter, stop_threshold(prob))
        return z, lm_result(prob, cost, it, status)
    cams = prob.layout.cameras_start
    if sol.method == "auto" and free[cams:].any():
        z, first = keyframe_cameras(prob, z, free)
        frames = free.copy()
        frames[:prob.nk] = False
        frames[cams:] = False
        z, res = _solve_lbfgs_staged(prob, z, frames, False, sol.max_iter - first.nit)
        res.nit += first.nit
        res.message = f"{first.message} on keyframes, cameras and identity then held; L-BFGS: {res.message}"
        return z, res
    return _solve_lbfgs_staged(prob, z, free, free_cams)


def _solve_lbfgs_staged(prob, z, free, free_cams, max_iter=None):
    """The L-BFGS solve; with free camera extrinsics and a free identity in two stages: the first
    ``LbfgsSettings.identity_hold`` of the iterations with the identity held at its initial value (the
    head's size then fixes the scene's scale, and the cameras and poses settle without sliding along
    the weak scale direction, head size x camera distances), the rest with everything free.  Returns
    (z, scipy result) with the iterations of both stages; at most ``max_iter`` (default
    ``CaptureSolver.max_iter``) in all."""
    cfg = prob.cfg
    max_iter = cfg.solver.max_iter if max_iter is None else max(1, int(max_iter))
    hold = int(round(cfg.lbfgs.identity_hold * max_iter)) if free_cams and free[:prob.nk].any() else 0
    if hold <= 0 or hold >= max_iter:
        return prob.solve(z, free, max_iter)
    held = free.copy()
    held[:prob.nk] = False
    z, first = prob.solve(z, held, hold)
    z, res = prob.solve(z, free, max_iter - first.nit)
    res.nit += first.nit
    return z, res


def _result(model, prob, z, res, used, cal, size, ids, ref, t_init, t_solve):
    nc_all = cal.n_cameras
    nf, nl = prob.n_frames, prob.n_landmarks
    uv_used, fcost = prob.project(z)
    uv = np.full((nc_all, nf, nl, 2), np.nan)
    uv[used] = uv_used
    rot_cam, t_cam, foc = cal.rotation.copy(), cal.translation.copy(), cal.focal.copy()
    med, mean = np.full(nc_all, np.nan), np.full(nc_all, np.nan)
    for k, j in enumerate(used):
        w, t_cam[j], foc[j] = prob.layout.camera_params(z, k)
        rot_cam[j] = rodrigues(w)
        present = prob.obs[:, k, 2] > 0
        # only present observations count; projections into cameras that never see a frame (stills)
        # can be far off and are not looked at
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.linalg.norm(uv_used[k] - np.transpose(prob.obs[:, k, :2], (0, 2, 1)), axis=-1)[present]
        if err.size:
            med[j], mean[j] = np.median(err), err.mean()
    e, nj = prob.ne, model.n_joints
    expr = np.empty((nf, e))
    rots = np.empty((nf, nj, 3))
    trans = np.empty((nf, 3))
    for f in range(nf):
        rots[f], trans[f], expr[f] = prob.layout.get_frame(z, f)
    has = prob.block_ok.any(0)
    status = np.where(has, 1 if res.success else 0, -1).astype(np.int64)
    ok = np.zeros(nc_all, bool)
    ok[used] = True
    return CaptureResult(z[:prob.nk].copy(), expr, rots, trans, fcost, status, rot_cam, t_cam, foc, size, ok,
                         med, mean, uv, ids, float(res.fun), int(res.nit), int(prob.nfev), bool(res.success),
                         str(res.message), int(ref), t_init, t_solve, tuple(model.expression_names))
