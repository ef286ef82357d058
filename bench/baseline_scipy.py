"""Baseline: the per-frame tracking energy solved by ``scipy.optimize.least_squares``.

This is what a typical SciPy user would write for the same problem as
:meth:`lmfit3d.problem.FrameProblem.solve` with pose + joints + expression free (identity and focal
held): an explicit residual vector r(z) evaluated in NumPy, box bounds [0, 1] on the expression
weights, ``method="trf"``, a finite-difference Jacobian (``jac="2-point"``) and Jacobian-based
variable scaling (``x_scale="jac"``, see :meth:`ScipyFrameBaseline.solve`).

The residual vector is the package's NumPy reference of the energy,
:func:`lmfit3d.energy.frame_residuals` (landmarks with the configured loss, temporal, expression and
joint priors, intersection), evaluated on the sparsity table's (thresholded) expression blocks as
the fitter is, so that ``0.5 |r(z)|^2 == FrameProblem.accumulate(z, ..., want_jac=False)`` (checked in
``bench/test_bench_fit.py``): a change of the energy is made once, in ``lmfit3d.energy``.

Usage::

    from baseline_scipy import ScipyFrameBaseline
    base = ScipyFrameBaseline(prob, x0, mask)      # prob: FrameProblem, x0: full vector
    x, res = base.solve()                          # res: scipy OptimizeResult (res.cost, res.nfev)
"""
import time

import numpy as np
from scipy.optimize import least_squares

from lmfit3d.energy import frame_residuals, intersection_depths


class ScipyFrameBaseline:
    """Residual vector of a :class:`~lmfit3d.problem.FrameProblem` over the free parameters ``mask``.

    Parameters
    ----------
    prob : FrameProblem (its ``mu``, ``inv_sigma``, ``prev``, weights and intersection data are read).
    x0 : (P,) full parameter vector; the fixed parameters (identity, focal) are taken from it.
    mask : (P,) bool, free parameters. Identity and focal must not be free (the baseline, like the
        per-frame tracking solve, holds them).
    """

    def __init__(self, prob, x0, mask):
        self.prob = prob
        lay = prob.layout
        mask = np.asarray(mask, bool)
        if mask[lay.identity].any() or mask[lay.focal].any():
            raise ValueError("the scipy baseline holds identity and focal fixed")
        self.base = np.array(x0, dtype=np.float64)
        self.free = np.flatnonzero(mask)
        self.expr_free = bool(mask[lay.expression.start])
        self.priors = tuple(name for name, on in (("expression", self.expr_free),
                                                  ("joints", mask[lay.joints].any())) if on)
        self.tw = float(prob.tw)
        self.prev = prob.prev if self.tw > 0 else None
        self.tmp_ok = (np.isfinite(prob.prev).all(1) if self.tw > 0 else np.zeros(prob.table.n_landmarks, bool))
        self.use_inter = prob.inter is not None and prob.cfg.w_intersection > 0 and self.expr_free
        self.geometry = prob.inter.geometry() if self.use_inter else None
        self.nfev = 0

    # -- residuals -------------------------------------------------------------------------------

    def full(self, z):
        x = self.base.copy()
        x[self.free] = z
        return x

    def intersection_residuals(self, psi):
        """Penetration depths (mm) of the intersection points at expression psi."""
        return intersection_depths(self.geometry, self.base[self.prob.layout.identity], psi)

    def residuals(self, z):
        """r(z), with 0.5 |r|^2 equal to the FrameProblem cost at the same free vector."""
        self.nfev += 1
        p = self.prob
        return frame_residuals(self.full(z), p.layout, p.table, p.model, p.mu, p.inv_sigma, (p.cx, p.cy), p.cfg,
                               self.prev, self.geometry, self.priors)

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


def solve_frame_scipy(prob, x0, mask, **kw):
    """Convenience: time one scipy solve. Returns dict(x, cost, nfev, status, seconds)."""
    base = ScipyFrameBaseline(prob, x0, mask)
    t0 = time.perf_counter()
    x, res = base.solve(**kw)
    dt = time.perf_counter() - t0
    return dict(x=x, cost=float(res.cost), nfev=int(res.nfev), status=int(res.status), seconds=dt,
                message=res.message)
