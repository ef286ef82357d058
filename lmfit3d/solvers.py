"""Solvers: Levenberg-Marquardt on accumulated normal equations (paper sec. 3.3.1).

``levenberg_marquardt`` is a plain function.  The problem hands it ``accumulate(z, jtj, jtr,
want_jac) -> cost``, which adds the symmetric J^T J and J^T r into zeroed arrays; J and r
are never formed.  Each iteration solves (J^T J + lambda D) delta = -J^T r by Cholesky (D =
diag(J^T J), floored), projects the step onto the box bounds, and accepts it when the gain ratio

    rho = (F(z) - F(z + delta)) / (L(0) - L(delta))

is positive.  Variables at a bound whose gradient pushes outwards are held for that step (active
set), so bounded expression weights do not stall the solve.  Damping follows Nielsen (1999): on
success lambda *= max(1/3, 1 - (2 rho - 1)^3), on failure lambda *= nu, nu *= 2 (the clamped
gain-ratio rule).  The bounded step (with its small Cholesky) is one numba kernel, and a step that
ends the solve is not followed by another J^T J accumulation (the cost at z is already known).
"""
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

STATUS_MESSAGES = {
    -1: "non-finite cost or step",
    0: "maximum number of iterations reached",
    1: "relative cost reduction below ftol",
    2: "relative step size below xtol",
    3: "gradient infinity norm below gtol",
    4: "damping grew beyond its limit (no further descent possible)",
}


@dataclass(frozen=True)
class FitResult:
    """Outcome of a solver run.

    Attributes
    ----------
    x : ndarray (n,) float64, final parameters.
    cost : float, final cost 0.5 |r|^2.
    iterations : int, iterations performed (accepted or rejected steps).
    status : int, key of ``STATUS_MESSAGES`` (>= 1 converged, 0 out of iterations, < 0 failure).
    history : ndarray (iterations + 1,) float64, cost after each iteration (history[0] = start).
    """

    x: np.ndarray
    cost: float
    iterations: int
    status: int
    history: np.ndarray

    @property
    def success(self):
        return self.status >= 1

    @property
    def message(self):
        return STATUS_MESSAGES[self.status]


@njit(cache=True)
def termination_status(cost_old, cost_new, step_norm, x_norm, grad_inf, ftol, xtol, gtol):
    """Convergence test after an accepted step; returns a status code (0 = keep going).
    (A kernel, so ``frame_lm``'s compiled loop calls the same test.)"""
    if not (np.isfinite(cost_new) and np.isfinite(step_norm)):
        return -1
    if grad_inf <= gtol:
        return 3
    if cost_old - cost_new <= ftol * max(cost_old, 1e-300):
        return 1
    if step_norm <= xtol * (x_norm + xtol):
        return 2
    return 0


@njit(cache=True)
def damping_update(lam, nu, rho):
    """Nielsen's update of the damping lambda from the gain ratio rho; returns (lambda, nu).
    (math.pow is the C pow that Python's ``**`` uses; numba's ``**`` differs in the last bit.)"""
    if rho > 0:
        return lam * max(1.0 / 3.0, 1.0 - math.pow(2.0 * rho - 1.0, 3.0)), 2.0
    return lam * nu, nu * 2.0


@njit(cache=True)
def cholesky_solve_into(a, b, n):
    """Solve a[:n, :n] x = b[:n] in place for symmetric positive-definite a (lower triangle read).

    ``a`` is overwritten by its Cholesky factor L (lower triangle) and ``b`` by x.  Returns False
    (a and b then hold garbage) when a pivot is not positive and finite.
    """
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        if not (s > 0.0) or not np.isfinite(s):
            return False
        d = np.sqrt(s)
        a[j, j] = d
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / d
    for i in range(n):                      # L y = b
        s = b[i]
        for k in range(i):
            s -= a[i, k] * b[k]
        b[i] = s / a[i, i]
    for i in range(n - 1, -1, -1):          # L^T x = y
        s = b[i]
        for k in range(i + 1, n):
            s -= a[k, i] * b[k]
        b[i] = s / a[i, i]
    return True


def cholesky_solve(a, b):
    """Solve a x = b for symmetric positive-definite a (n, n); None if a is not SPD."""
    a = np.array(a, dtype=np.float64, order="C")
    x = np.array(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or x.shape != (a.shape[0],):
        raise ValueError(f"need a (n, n) and b (n,), got {a.shape} and {x.shape}")
    return x if cholesky_solve_into(a, x, x.size) else None


@njit(cache=True)
def bounded_step(jtj, jtr, damp, z, lo, hi, step):
    """Damped Gauss-Newton step with box bounds into ``step``; False if not positive definite.

    Solves (J^T J + diag(damp)) step = -J^T r (jtj symmetric, full).  Variables at a bound whose
    gradient pushes outwards are held; a variable the step would carry across a bound is pinned to
    that bound and the remaining system re-solved (a few rounds at most), so the step stays a
    descent step instead of being clipped afterwards.
    """
    n = z.size
    fixed = np.empty(n, np.bool_)
    for i in range(n):
        fixed[i] = (z[i] <= lo[i] and jtr[i] > 0.0) or (z[i] >= hi[i] and jtr[i] < 0.0)
        step[i] = 0.0
    a = np.empty((n, n))
    rhs = np.empty(n)
    idx = np.empty(n, np.int64)
    for _ in range(n + 1):
        m = 0
        for i in range(n):
            if not fixed[i]:
                idx[m] = i
                m += 1
        for r in range(m):
            i = idx[r]
            s = -jtr[i]
            for j in range(n):
                if fixed[j]:
                    s -= jtj[i, j] * step[j]
            rhs[r] = s
            for c in range(r + 1):
                a[r, c] = jtj[i, idx[c]]
            a[r, r] += damp[i]
        if not cholesky_solve_into(a, rhs, m):
            return False
        crossed = False
        for r in range(m):
            if not np.isfinite(rhs[r]):
                return False
            step[idx[r]] = rhs[r]
        for r in range(m):
            i = idx[r]
            zt = z[i] + step[i]
            if zt < lo[i] or zt > hi[i]:
                step[i] = min(max(zt, lo[i]), hi[i]) - z[i]
                fixed[i] = True
                crossed = True
        if not crossed:
            return True
    return True


LAMBDA0 = 1e-3          # defaults of levenberg_marquardt (also used by frame_lm.tracking_lm's caller)
LAMBDA_MAX = 1e12
DIAG_FLOOR = 1e-9


def levenberg_marquardt(accumulate, z0, lower=None, upper=None, *, max_iter=20, ftol=1e-6,
                        xtol=1e-8, gtol=1e-8, lambda0=LAMBDA0, lambda_max=LAMBDA_MAX, diag_floor=DIAG_FLOOR):
    """Minimise 0.5 |r(z)|^2 with bounds by Levenberg-Marquardt.

    Parameters
    ----------
    accumulate : callable(z, jtj, jtr, want_jac) -> float
        Returns the cost at z; when ``want_jac`` adds the symmetric J^T J and J^T r into the
        zeroed (n, n) and (n,) arrays (otherwise the arrays may be empty and are not touched).
    z0 : (n,) float64, start (projected onto the bounds).
    lower, upper : (n,) float64, optional box bounds (-inf / inf where free).
    max_iter : int, most iterations (each computes one step; rejected steps count).
    ftol, xtol, gtol : float, termination tolerances (relative cost reduction, relative step,
        gradient infinity norm).
    lambda0 : float, initial damping relative to diag(J^T J).

    Returns
    -------
    FitResult
    """
    z = np.array(z0, dtype=np.float64)
    n = z.size
    lo = np.full(n, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(n, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    np.clip(z, lo, hi, out=z)
    jtj = np.zeros((n, n))
    jtr = np.zeros(n)
    step = np.empty(n)
    damp = np.empty(n)
    z_new = np.empty(n)
    cost = accumulate(z, jtj, jtr, True)
    history = [cost]
    if not np.isfinite(cost):
        return FitResult(z, cost, 0, -1, np.array(history))
    lam, nu = lambda0, 2.0
    status = 0
    it = 0
    while it < max_iter:
        it += 1
        # projected-gradient optimality (ignore components pushing against an active bound)
        if projected_gradient_inf(z, jtr, lo, hi) <= gtol:
            status = 3
            history.append(cost)
            break
        ok, pred, dz_norm, z_norm = lm_trial(jtj, jtr, lam, diag_floor, z, lo, hi, step, damp, z_new)
        if not ok:
            lam, nu = damping_update(lam, nu, -1.0)
            history.append(cost)
            if lam > lambda_max:
                status = 4
                break
            continue
        cost_new = accumulate(z_new, _EMPTY2, _EMPTY1, False)
        rho = (cost - cost_new) / pred if pred > 0 else -1.0
        lam, nu = damping_update(lam, nu, rho)
        if rho > 0 and np.isfinite(cost_new):
            status = termination_status(cost, cost_new, dz_norm, z_norm, np.inf, ftol, xtol, gtol)
            z = z_new.copy()
            cost = cost_new
            history.append(cost)
            if status != 0:
                break                       # converged: J^T J at z is not needed
            jtj[:] = 0.0
            jtr[:] = 0.0
            cost = accumulate(z, jtj, jtr, True)
            history[-1] = cost
        else:
            history.append(cost)
            if lam > lambda_max:
                status = 4
                break
    return FitResult(z, float(cost), it, status, np.array(history))


@njit(cache=True)
def lm_trial(jtj, jtr, lam, diag_floor, z, lo, hi, step, damp, z_new):
    """One trial step of :func:`levenberg_marquardt` (one kernel instead of a few NumPy calls).

    damp = lam * max(diag(jtj), diag_floor); step from :func:`bounded_step`; z_new = clip(z + step);
    with dz = z_new - z, the predicted reduction pred = -jtr.dz - dz.jtj.dz / 2 (jtj symmetric, full).
    Returns (ok, pred, |dz|, |z|); ok False when the damped system is not positive definite.
    """
    n = z.size
    for i in range(n):
        damp[i] = lam * max(jtj[i, i], diag_floor)
    if not bounded_step(jtj, jtr, damp, z, lo, hi, step):
        return False, 0.0, 0.0, 0.0
    for i in range(n):
        z_new[i] = min(max(z[i] + step[i], lo[i]), hi[i])
        step[i] = z_new[i] - z[i]                  # dz
    lin = 0.0
    quad = 0.0
    dz2 = 0.0
    z2 = 0.0
    for i in range(n):
        di = step[i]
        lin += jtr[i] * di
        s = 0.0
        for j in range(n):
            s += jtj[i, j] * step[j]
        quad += di * s
        dz2 += di * di
        z2 += z[i] * z[i]
    return True, -lin - 0.5 * quad, np.sqrt(dz2), np.sqrt(z2)


@njit(cache=True)
def projected_gradient_inf(z, g, lo, hi):
    """max |g_i| over the components not pushing against an active bound."""
    m = 0.0
    for i in range(z.size):
        gi = g[i]
        if (z[i] <= lo[i] and gi > 0.0) or (z[i] >= hi[i] and gi < 0.0):
            continue
        m = max(m, abs(gi))
    return m


_EMPTY2 = np.zeros((0, 0))
_EMPTY1 = np.zeros(0)
