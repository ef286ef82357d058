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

J^T J re-use (``reuse_rho``, off by default): after a very successful step (rho >= reuse_rho, e.g.
the trust-region threshold 3/4: the quadratic model of the last J^T J predicted the decrease well)
only J^T r is evaluated at the new point and the last J^T J is kept; the gradient, the cost and the
tests stay exact, the model's curvature is that of an earlier point.  A step made with such a kept
J^T J that fails is not held against the damping: J^T J is refreshed at the current point and
the step retried with the same lambda.  This saves the J^T J outer products (the bulk of an
evaluation) in the late iterations of a warm-started frame, where the curvature hardly changes.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from .simd import W, padded, vaxpy, vaxpy3, vdot

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
    jtj_evals : int, J^T J accumulations (1 + the refreshes; the other evaluations of an accepted
        step's point computed J^T r alone, see ``reuse_rho`` of :func:`levenberg_marquardt`).
    """

    x: np.ndarray
    cost: float
    iterations: int
    status: int
    history: np.ndarray
    jtj_evals: int = 1

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
def trial_workspace(n):
    """Workspaces of :func:`bounded_step` / :func:`lm_trial` for n parameters (allocated once per solve).

    Returns (a, x, idx, fixed): a (n, padded(n + 1)) float64, the damped sub-system (upper triangle,
    row-wise, right-hand side in column m, zero padding after it); x (padded(n + 1),) float64, the
    solution (zero padded); idx (n,) int64, free then pinned indices; fixed (n,) bool.
    """
    w = padded(n + 1)
    return np.empty((n, w)), np.empty(w), np.empty(n, np.int64), np.empty(n, np.bool_)   # filled per use


@njit(cache=True)
def ldl_solve_padded(a, m, x):
    """Solve an m x m symmetric positive-definite system held in a padded work matrix, in place.

    a : (>= m, >= m + W) float64, C order: rows 0..m-1 hold the upper triangle a[r, r:m] of the
        matrix, the right-hand side in column m and zeros in columns m + 1 .. m + W - 1 (the lower
        part is not read).  Overwritten by the factor.
    x : (>= m + W,) float64 out: the solution in x[:m], zeros in x[m:m + W].

    Right-looking (outer-product) factorisation A = R^T D^-1 R, D = diag(R), rows updated three pivots
    at a time by W-wide vector updates (``simd.vaxpy3``; the right-hand side column is carried along,
    so R x = c leaves only the back substitution, by ``simd.vdot``).  Returns False (a and x then hold
    garbage) when a pivot is not positive and finite.
    """
    k = 0
    while k < m:
        b = min(3, m - k)
        for p in range(k, k + b):                   # pivots of this block, updating the block's rows
            rp = a[p]
            s = rp[p]
            if not (s > 0.0) or not np.isfinite(s):
                return False
            x[p] = 1.0 / s
            for q in range(p + 1, k + b):
                f = -rp[q] * x[p]
                rq = a[q]
                for c in range(q, m + 1, W):
                    vaxpy(rq, c, f, rp, c)
        if b == 3:                                  # rank-3 update of the trailing rows
            r0, r1, r2 = a[k], a[k + 1], a[k + 2]
            d0, d1, d2 = x[k], x[k + 1], x[k + 2]
            for i in range(k + 3, m):
                ri = a[i]
                f0, f1, f2 = -r0[i] * d0, -r1[i] * d1, -r2[i] * d2
                for c in range(i, m + 1, W):
                    vaxpy3(ri, c, f0, r0, f1, r1, f2, r2, c)
        k += b
    for j in range(m, m + W):
        x[j] = 0.0
    for r in range(m - 1, -1, -1):                  # R x = c (x[r] holds 1 / pivot until here)
        rr = a[r]
        s = rr[m]
        for c in range(r + 1, m, W):
            s -= vdot(rr, c, x, c)
        x[r] = s * x[r]
    return True


def cholesky_solve(a, b):
    """Solve a x = b for symmetric positive-definite a (n, n); None if a is not SPD (upper triangle read)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or b.shape != (a.shape[0],):
        raise ValueError(f"need a (n, n) and b (n,), got {a.shape} and {b.shape}")
    n = b.size
    work, x, _, _ = trial_workspace(n)
    work[:, :n] = a
    work[:, n] = b
    work[:, n + 1:] = 0.0
    return x[:n].copy() if ldl_solve_padded(work, n, x) else None


@njit(cache=True)
def bounded_step(jtj, jtr, damp, z, lo, hi, step, work):
    """Damped Gauss-Newton step with box bounds into ``step``; False if not positive definite.

    Solves (J^T J + diag(damp)) step = -J^T r (jtj symmetric, C order; only its upper triangle is
    read).  Variables at a bound whose gradient pushes outwards are held; a variable the step would
    carry across a bound is pinned to that bound and the remaining system re-solved (a few rounds at
    most), so the step stays a descent step instead of being clipped afterwards.  ``work``:
    :func:`trial_workspace` (n).
    """
    a, x, idx, fixed = work
    n = z.size
    for i in range(n):
        fixed[i] = (z[i] <= lo[i] and jtr[i] > 0.0) or (z[i] >= hi[i] and jtr[i] < 0.0)
        step[i] = 0.0
    for _ in range(n + 1):
        m = 0
        for i in range(n):
            if not fixed[i]:
                idx[m] = i
                m += 1
        npin = m                                    # held variables with a non-zero step follow
        for i in range(n):
            if fixed[i] and step[i] != 0.0:
                idx[npin] = i
                npin += 1
        for r in range(m):
            i = idx[r]
            ji = jtj[i]
            row = a[r]
            s = -jtr[i]
            for q in range(m, npin):
                j = idx[q]
                s -= (ji[j] if j > i else jtj[j, i]) * step[j]
            for c in range(r, m):
                row[c] = ji[idx[c]]
            row[r] += damp[i]
            row[m] = s
            for c in range(m + 1, m + W):
                row[c] = 0.0
        if not ldl_solve_padded(a, m, x):
            return False
        crossed = False
        for r in range(m):
            if not np.isfinite(x[r]):
                return False
            step[idx[r]] = x[r]
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


# What lm_advance asks its driver to evaluate next (reverse communication: the algorithm is written
# once, in lm_advance; a driver only evaluates, in Python or in a compiled loop such as frame_lm's)
LM_DONE, LM_EVAL_FULL, LM_EVAL_GRAD, LM_EVAL_COST = 0, 1, 2, 3
# slots of LMState.f (float64) and LMState.i (int64)
F_COST, F_LAM, F_NU, F_RHO, F_PRED, F_DZ, F_ZN, F_FTOL, F_XTOL, F_GTOL, F_LMAX, F_FLOOR, F_REUSE = range(13)
I_IT, I_STATUS, I_NJTJ, I_NH, I_FRESH, I_PHASE, I_MAXIT = range(7)
_START, _TOP, _AFTER_COST, _AFTER_REFRESH, _AFTER_ACCEPT = range(5)


class LMState(NamedTuple):
    """State of one Levenberg-Marquardt solve (:func:`lm_state`, advanced by :func:`lm_advance`).

    z, z_new : (n,) current point and trial point; lo, hi : (n,) bounds; jtj (n, n), jtr (n,) the
    normal equations at z (evaluations add into them); step, damp (n,) and work
    (:func:`trial_workspace`); history (max_iter + 1,) costs; f, i : scalars (slots ``F_*``, ``I_*``:
    cost, damping, tolerances; iteration, status, J^T J count, history length, phase).
    """

    z: np.ndarray
    z_new: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    jtj: np.ndarray
    jtr: np.ndarray
    step: np.ndarray
    damp: np.ndarray
    work: tuple
    history: np.ndarray
    f: np.ndarray
    i: np.ndarray


@njit(cache=True)
def lm_state(z0, lo, hi, max_iter, ftol, xtol, gtol, lambda0, lambda_max, diag_floor, reuse_rho):
    """A fresh :class:`LMState` at z0 (n,) float64 projected onto [lo, hi] (a kernel: compiled drivers
    build their state without a trip through Python); its first request is LM_EVAL_FULL at z."""
    n = z0.shape[0]
    z = np.empty(n)
    for k in range(n):
        z[k] = min(max(z0[k], lo[k]), hi[k])
    f = np.zeros(13)
    f[F_LAM] = lambda0
    f[F_NU] = 2.0
    f[F_FTOL] = ftol
    f[F_XTOL] = xtol
    f[F_GTOL] = gtol
    f[F_LMAX] = lambda_max
    f[F_FLOOR] = diag_floor
    f[F_REUSE] = reuse_rho
    i = np.zeros(7, np.int64)
    i[I_MAXIT] = max_iter
    return LMState(z, np.empty(n), lo.copy(), hi.copy(), np.zeros((n, n)), np.zeros(n), np.empty(n), np.empty(n),
                   trial_workspace(n), np.empty(max_iter + 1), f, i)


@njit(cache=True)
def _push(st, cost):
    st.history[st.i[I_NH]] = cost
    st.i[I_NH] += 1


@njit(cache=True)
def lm_advance(st, cost):
    """One move of the Levenberg-Marquardt algorithm (module docstring), given the cost of the
    evaluation it asked for last (ignored on the first call); returns the next request:

    * ``LM_EVAL_FULL``: the cost at ``st.z``, adding J^T J and J^T r into ``st.jtj``, ``st.jtr`` (zeroed);
    * ``LM_EVAL_GRAD``: the cost at ``st.z``, adding J^T r alone into ``st.jtr`` (J^T J kept);
    * ``LM_EVAL_COST``: the cost at ``st.z_new`` alone;
    * ``LM_DONE``: finished; ``st.z``, ``st.f[F_COST]``, ``st.i[I_IT]``, ``st.i[I_STATUS]``, the first
      ``st.i[I_NH]`` entries of ``st.history`` and ``st.i[I_NJTJ]`` are the result.
    """
    f, i = st.f, st.i
    phase = i[I_PHASE]
    if phase == _START:
        i[I_NJTJ] = 1
        i[I_FRESH] = 1                      # J^T J is that of z
        i[I_PHASE] = _AFTER_REFRESH
        return LM_EVAL_FULL
    if phase == _AFTER_REFRESH:             # the first evaluation, or a kept J^T J refreshed at z
        f[F_COST] = cost
        _push(st, cost)
        if i[I_IT] == 0 and i[I_NH] == 1 and not np.isfinite(cost):
            i[I_STATUS] = -1
            return LM_DONE
    elif phase == _AFTER_ACCEPT:            # the accepted point's evaluation
        f[F_COST] = cost
        st.history[i[I_NH] - 1] = cost
    elif phase == _AFTER_COST:
        req = _judge_trial(st, cost)
        if req != LM_DONE or i[I_STATUS] != 0 or i[I_PHASE] != _TOP:
            return req
    return _next_trial(st)


@njit(cache=True)
def _next_trial(st):
    """Iterate: the gradient test, then trial steps until one needs its cost evaluated."""
    f, i = st.f, st.i
    while i[I_IT] < i[I_MAXIT]:
        i[I_IT] += 1
        # projected-gradient optimality (ignore components pushing against an active bound)
        if projected_gradient_inf(st.z, st.jtr, st.lo, st.hi) <= f[F_GTOL]:
            i[I_STATUS] = 3
            _push(st, f[F_COST])
            return LM_DONE
        ok, pred, dz_norm, z_norm = lm_trial(st.jtj, st.jtr, f[F_LAM], f[F_FLOOR], st.z, st.lo, st.hi, st.step,
                                             st.damp, st.z_new, st.work)
        if not ok:
            f[F_LAM], f[F_NU] = damping_update(f[F_LAM], f[F_NU], -1.0)
            _push(st, f[F_COST])
            if f[F_LAM] > f[F_LMAX]:
                i[I_STATUS] = 4
                return LM_DONE
            continue
        f[F_PRED], f[F_DZ], f[F_ZN] = pred, dz_norm, z_norm
        i[I_PHASE] = _AFTER_COST
        return LM_EVAL_COST
    return LM_DONE


@njit(cache=True)
def _judge_trial(st, cost_new):
    """Accept or reject the trial point given its cost; returns the next request, or LM_DONE with
    phase _TOP to go on iterating."""
    f, i = st.f, st.i
    pred = f[F_PRED]
    cost = f[F_COST]
    rho = (cost - cost_new) / pred if pred > 0 else -1.0
    accepted = rho > 0 and np.isfinite(cost_new)
    if not accepted and i[I_FRESH] == 0:    # a kept J^T J failed: refresh it at z, same lambda
        st.jtj[:] = 0.0
        st.jtr[:] = 0.0
        i[I_NJTJ] += 1
        i[I_FRESH] = 1
        i[I_PHASE] = _AFTER_REFRESH
        return LM_EVAL_FULL
    f[F_LAM], f[F_NU] = damping_update(f[F_LAM], f[F_NU], rho)
    i[I_PHASE] = _TOP
    if not accepted:
        _push(st, cost)
        if f[F_LAM] > f[F_LMAX]:
            i[I_STATUS] = 4
        return LM_DONE
    i[I_STATUS] = termination_status(cost, cost_new, f[F_DZ], f[F_ZN], np.inf, f[F_FTOL], f[F_XTOL], f[F_GTOL])
    st.z[:] = st.z_new
    f[F_COST] = cost_new
    _push(st, cost_new)
    if i[I_STATUS] != 0:
        return LM_DONE                      # converged: J^T J at z is not needed
    st.jtr[:] = 0.0
    i[I_PHASE] = _AFTER_ACCEPT
    if not rho >= f[F_REUSE]:
        st.jtj[:] = 0.0
        i[I_NJTJ] += 1
        i[I_FRESH] = 1
        return LM_EVAL_FULL
    i[I_FRESH] = 0
    return LM_EVAL_GRAD


def lm_result(st):
    """The :class:`FitResult` of a finished :class:`LMState` (copies)."""
    nh = int(st.i[I_NH])
    return FitResult(st.z.copy(), float(st.f[F_COST]), int(st.i[I_IT]), int(st.i[I_STATUS]), st.history[:nh].copy(),
                     int(st.i[I_NJTJ]))


def levenberg_marquardt(accumulate, z0, lower=None, upper=None, *, max_iter=20, ftol=1e-6,
                        xtol=1e-8, gtol=1e-8, lambda0=LAMBDA0, lambda_max=LAMBDA_MAX, diag_floor=DIAG_FLOOR,
                        reuse_rho=math.inf):
    """Minimise 0.5 |r(z)|^2 with bounds by Levenberg-Marquardt (the Python driver of :func:`lm_advance`).

    Parameters
    ----------
    accumulate : callable(z, jtj, jtr, want_jac) -> float
        Returns the cost at z; when ``want_jac`` adds the symmetric J^T J and J^T r into the
        zeroed (n, n) and (n,) arrays (otherwise the arrays may be empty and are not touched);
        with ``reuse_rho`` finite it is also called as ``accumulate(z, jtj, jtr, True, grad_only=True)``
        and must then add J^T r alone into the zeroed jtr and leave jtj (the J^T J kept) untouched.
    z0 : (n,) float64, start (projected onto the bounds).
    lower, upper : (n,) float64, optional box bounds (-inf / inf where free).
    max_iter : int, most iterations (each computes one step; rejected steps count).
    ftol, xtol, gtol : float, termination tolerances (relative cost reduction, relative step,
        gradient infinity norm).
    lambda0 : float, initial damping relative to diag(J^T J).
    reuse_rho : float, keep J^T J after an accepted step whose gain ratio is >= reuse_rho (module
        docstring); inf (default): a fresh J^T J after every accepted step (classic LM).

    Returns
    -------
    FitResult
    """
    n = np.size(z0)
    lo = np.full(n, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(n, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    st = lm_state(np.ascontiguousarray(z0, dtype=np.float64), np.ascontiguousarray(lo),
                  np.ascontiguousarray(hi), int(max_iter), float(ftol), float(xtol), float(gtol), float(lambda0),
                  float(lambda_max), float(diag_floor), float(reuse_rho))
    req = lm_advance(st, 0.0)
    while req != LM_DONE:
        if req == LM_EVAL_COST:
            cost = accumulate(st.z_new, _EMPTY2, _EMPTY1, False)
        elif req == LM_EVAL_FULL:
            cost = accumulate(st.z, st.jtj, st.jtr, True)
        else:                       # LM_EVAL_GRAD: J^T r alone, J^T J kept
            cost = accumulate(st.z, st.jtj, st.jtr, True, grad_only=True)
        req = lm_advance(st, cost)
    return lm_result(st)


@njit(cache=True)
def lm_trial(jtj, jtr, lam, diag_floor, z, lo, hi, step, damp, z_new, work):
    """One trial step of :func:`levenberg_marquardt` (one kernel instead of a few NumPy calls).

    damp = lam * max(diag(jtj), diag_floor); step from :func:`bounded_step` (``work``: its
    :func:`trial_workspace`); z_new = clip(z + step); with dz = z_new - z, the predicted reduction
    pred = -jtr.dz - dz.jtj.dz / 2, dz.jtj.dz = sum_i dz_i (jtj_ii dz_i + 2 sum_{j > i} jtj_ij dz_j)
    (jtj symmetric, C order; only its upper triangle is read, by ``simd.vdot`` rows).
    Returns (ok, pred, |dz|, |z|); ok False when the damped system is not positive definite.
    """
    n = z.size
    for i in range(n):
        damp[i] = lam * max(jtj[i, i], diag_floor)
    if not bounded_step(jtj, jtr, damp, z, lo, hi, step, work):
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
        ri = jtj[i]
        s = 0.0
        c = i + 1
        while c + W <= n:                           # whole W-wide chunks of the row, then the tail
            s += vdot(ri, c, step, c)
            c += W
        for j in range(c, n):
            s += ri[j] * step[j]
        quad += di * (ri[i] * di + 2.0 * s)
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
