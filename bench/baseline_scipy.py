"""Baseline: the per-frame tracking energy solved by ``scipy.optimize.least_squares``.

This is what a typical SciPy user would write for the same problem as
:meth:`lmfit3d.fit.FrameProblem.solve` with pose + joints + expression free (identity and focal
held): an explicit residual vector r(z) evaluated in NumPy, box bounds [0, 1] on the expression
weights, ``method="trf"``, a finite-difference Jacobian (``jac="2-point"``) and Jacobian-based
variable scaling (``x_scale="jac"``, see :meth:`ScipyFrameBaseline.solve`).

The residual vector reproduces the :class:`~lmfit3d.fit.FrameProblem` energy term by term, so that
``0.5 |r(z)|^2 == FrameProblem.accumulate(z, ..., want_jac=False)`` (checked in
``bench/test_bench_fit.py``):

* landmarks     (u_i - mu_i) / sigma_i, 2 per landmark (0 for missing landmarks);
* temporal      sqrt(2 w_t) (x_i - x_i^prev), 3 per landmark vertex (when ``prev`` was given);
* expression    sqrt(2 w_expr) psi;
* joints        sqrt(2 w_joint) theta_{1..4};
* intersection  sqrt(2 w_i) (R - |t - c|) for eyelid vertices inside the eyeball spheres and
                sqrt(2 w_i) min_p (d_p - n_p . t) for lip vertices inside the teeth hulls.

The model is evaluated with the sparsity table's (thresholded) expression blocks, exactly as the
fitter does; the pose chain (5 joints) reuses the package's small numba kernel, the skinning and
projection of the L landmark vertices are NumPy.

Usage::

    from baseline_scipy import ScipyFrameBaseline
    base = ScipyFrameBaseline(prob, x0, mask)      # prob: FrameProblem, x0: full vector
    x, res = base.solve()                          # res: scipy OptimizeResult (res.cost, res.nfev)
"""
import time

import numpy as np
from scipy.optimize import least_squares

from lmfit3d.skinning import pose_chain


class ScipyFrameBaseline:
    """Residual vector of a :class:`~lmfit3d.fit.FrameProblem` over the free parameters ``mask``.

    Parameters
    ----------
    prob : FrameProblem (its ``mu``, ``inv_sigma``, ``prev``, weights and intersection data are read).
    x0 : (P,) full parameter vector; the fixed parameters (identity, focal) are taken from it.
    mask : (P,) bool, free parameters. Identity and focal must not be free (the baseline, like the
        per-frame tracking solve, holds them).
    """

    def __init__(self, prob, x0, mask):
        self.prob = prob
        sl = prob.sl
        self.sl = sl
        mask = np.asarray(mask, bool)
        if mask[sl["identity"]].any() or mask[sl["focal"]].any():
            raise ValueError("the scipy baseline holds identity and focal fixed")
        self.base = np.array(x0, dtype=np.float64)
        self.free = np.flatnonzero(mask)
        self.expr_free = bool(mask[sl["expression"].start])
        self.joints_free = bool(mask[sl["joints"]].any())
        model, table = prob.model, prob.table
        # the fitter's identity state at x0 (template of the landmark vertices, joint locations)
        beta = self.base[sl["identity"]]
        self.t_beta = table.mean + table.identity_blocks @ beta                  # (L, 3)
        self.joints = model.joint_mean + prob.sj @ beta                          # (J, 3)
        self.expr_dense = _dense_blocks(table.expr_idx, table.expr_blocks, model.n_expression)
        self.weights = np.ascontiguousarray(table.weights)
        self.parents = model.joint_parents.astype(np.int64)
        self.focal = float(self.base[sl["focal"]][0])
        self.cx, self.cy = prob.cx, prob.cy
        self.mu = prob.mu
        self.lm_ok = np.isfinite(prob.mu).all(1)
        self.mu0 = np.where(self.lm_ok[:, None], prob.mu, 0.0)
        self.inv_sigma = np.where(self.lm_ok, prob.inv_sigma, 0.0)
        self.tw = float(prob.tw)
        self.tmp_ok = np.isfinite(prob.prev).all(1) if self.tw > 0 else np.zeros(table.n_landmarks, bool)
        self.prev0 = np.where(self.tmp_ok[:, None], prob.prev, 0.0)
        self.expr_inv = prob.expr_inv
        self.joint_inv = prob.joint_inv
        cfg = prob.cfg
        it = prob.inter
        self.use_inter = it is not None and cfg.w_intersection > 0 and self.expr_free
        if self.use_inter:
            self.i_sqrtw = np.sqrt(2.0 * cfg.w_intersection)
            self.i_t_beta = it.t_beta
            self.i_dense = _dense_blocks(it.table.expr_idx, it.table.expr_blocks, model.n_expression)
            self.i_sph = np.flatnonzero(it.sphere_of >= 0)
            self.i_sph_c = it.sphere_c[it.sphere_of[self.i_sph]]
            self.i_sph_r = it.sphere_r[it.sphere_of[self.i_sph]]
            self.i_hull = [np.flatnonzero(it.hull_of == h) for h in range(it.planes.shape[0])]
            self.i_planes = it.planes
        nj = model.n_joints
        self._ws = (np.empty((3, 3)), np.empty((3, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3)),
                    np.empty((nj, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3, 3)))
        self._rot = np.empty((nj, 3))
        self.nfev = 0

    # -- residuals -------------------------------------------------------------------------------

    def full(self, z):
        x = self.base.copy()
        x[self.free] = z
        return x

    def positions(self, x):
        """Camera-space landmark vertex positions (L, 3) mm and projections (L, 2) at x."""
        sl = self.sl
        psi = x[sl["expression"]]
        t = self.t_beta + (self.expr_dense @ psi).reshape(-1, 3)
        self._rot[0] = x[0:3]
        self._rot[1:] = x[sl["joints"]].reshape(-1, 3)
        r0, jl0, rg, tg, gpos, bm, cm = self._ws
        pose_chain(self._rot, self.joints, self.parents, r0, jl0, rg, tg, gpos, bm, cm)
        # v = sum_k w_k (Rg_k t + tg_k);  x = R_root v + translation
        mw = (self.weights @ rg.reshape(-1, 9)).reshape(-1, 3, 3)               # sum_k w_k Rg_k
        v = (mw @ t[:, :, None])[:, :, 0] + self.weights @ tg
        pos = v @ r0.T + x[3:6]
        iz = -1.0 / pos[:, 2]
        uv = np.column_stack([self.cx + self.focal * pos[:, 0] * iz,
                              self.cy - self.focal * pos[:, 1] * iz])
        return pos, uv

    def intersection_residuals(self, psi):
        t = self.i_t_beta + (self.i_dense @ psi).reshape(-1, 3)
        out = []
        # eyelid vertices inside an eyeball sphere
        d = np.linalg.norm(t[self.i_sph] - self.i_sph_c, axis=1)
        out.append(np.where((d < self.i_sph_r) & (d > 0), self.i_sph_r - d, 0.0))
        # lip vertices inside a teeth hull (inside = d - n.t > 0 for every plane)
        for h, ids in enumerate(self.i_hull):
            pl = self.i_planes[h]
            dq = pl[:, 3][None, :] - t[ids] @ pl[:, :3].T                       # (n, P)
            inside = (dq > 0).all(1)
            out.append(np.where(inside, dq.min(1), 0.0))
        return self.i_sqrtw * np.concatenate(out)

    def residuals(self, z):
        """r(z), with 0.5 |r|^2 equal to the FrameProblem cost at the same free vector."""
        self.nfev += 1
        x = self.full(z)
        pos, uv = self.positions(x)
        parts = [((uv - self.mu0) * self.inv_sigma[:, None]).ravel()]
        if self.tw > 0:
            parts.append((self.tw * (pos - self.prev0) * self.tmp_ok[:, None]).ravel())
        sl = self.sl
        if self.expr_free:
            parts.append(self.expr_inv * x[sl["expression"]])
        if self.joints_free:
            parts.append(self.joint_inv * x[sl["joints"]])
        if self.use_inter:
            parts.append(self.intersection_residuals(x[sl["expression"]]))
        return np.concatenate(parts)

    def cost(self, z):
        r = self.residuals(z)
        return 0.5 * float(r @ r)

    def bounds(self):
        lo, hi = self.prob.bounds_full()
        return lo[self.free], hi[self.free]

    # -- solve -----------------------------------------------------------------------------------

    def solve(self, jac="2-point", **kw):
        """``least_squares`` from x0; returns (full x, OptimizeResult).  kw go to least_squares.

        ``x_scale="jac"`` (More's Jacobian column scaling, the analogue of the Marquardt diagonal
        our LM uses): with trf's default ``x_scale=1`` the badly scaled variables (radians, mm of
        depth, [0, 1] weights, many starting at their bound) make trf crawl; on the dense703
        benchmark frame it is still 6 % above the optimum after 300 evaluations (14 s).
        ``max_nfev=500`` only bounds the run time of a non-converging solve.
        """
        lo, hi = self.bounds()
        z0 = np.clip(self.base[self.free], lo, hi)
        opts = dict(method="trf", jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=500)
        opts.update(kw)
        res = least_squares(self.residuals, z0, **opts)
        return self.full(res.x), res


def _dense_blocks(expr_idx, expr_blocks, n_expression):
    """Dense (n * 3, E) expression matrix from a sparsity table's padded blocks."""
    n, d = expr_idx.shape
    dense = np.zeros((n, 3, n_expression))
    rows, slots = np.nonzero(expr_idx >= 0)
    dense[rows, :, expr_idx[rows, slots]] = expr_blocks[rows, slots]
    return dense.reshape(n * 3, n_expression)


def solve_frame_scipy(prob, x0, mask, **kw):
    """Convenience: time one scipy solve. Returns dict(x, cost, nfev, status, seconds)."""
    base = ScipyFrameBaseline(prob, x0, mask)
    t0 = time.perf_counter()
    x, res = base.solve(**kw)
    dt = time.perf_counter() - t0
    return dict(x=x, cost=float(res.cost), nfev=int(res.nfev), status=int(res.status), seconds=dt,
                message=res.message)
