"""The per-frame energy as a Levenberg-Marquardt problem: :class:`FrameProblem` (one frame, a chosen set
of free parameters) and :class:`KeyframeProblem` (several frames sharing identity and focal length).

A problem takes the static data (sparsity table, kernel-order tables, tracking plans) from a
:class:`~lmfit3d.context.FitContext`, builds its workspaces and the kernels' named-tuple state of
``frame_lm`` once, and takes each frame's landmarks with :meth:`FrameProblem.set_frame`.  Its ``accumulate(z, jtj, jtr, want_jac)`` is the contract of
``solvers.levenberg_marquardt``; with identity and focal held, :meth:`FrameProblem.solve` runs the
compiled loop of ``frame_lm`` instead (same iterations).  The energy is ``energy``'s; the
parameter layout ``energy.FrameLayout``.  The tracking policy that drives these is ``fit.Tracker``.
"""
import math

import numpy as np
from numba import njit

from .energy import (FrameLayout, Intersection, antagonist_pairs, expression_prior_scales, identity_prior,
                     residual_scale)
from .frame_lm import (FrameState, IntersectionState, SoaState, Workspace, frame_cost, frame_inputs, landmark_terms,
                       tracking_lm)
from .intersection import intersection_term
from .model import Params
from .simd import W
from .skinning import ancestry, pose_chain
from .solvers import DIAG_FLOOR, LAMBDA0, LAMBDA_MAX, FitResult, levenberg_marquardt
from .terms import diagonal_prior, pair_prior, symmetrize_upper, vertex_term
from .tracking_points import PJ_ROWS, table_points_buffers


def params_to_vector(model, params: Params, focal):
    """Pack Params and the focal length into the full per-frame vector (``energy.FrameLayout``)."""
    return FrameLayout.of(model).pack(params, focal)


def vector_to_params(model, x):
    """Unpack the full vector into (Params, focal)."""
    beta, psi, rot, trans, focal = FrameLayout.of(model).unpack(np.asarray(x, dtype=np.float64))
    return Params(beta, psi, rot, trans), focal


class FrameProblem:
    """Energy of one frame for the LM solver, over a chosen set of free parameters.

    Parameters
    ----------
    context : :class:`~lmfit3d.context.FitContext` of the model and landmark vertices (its sparsity table,
        kernel-order tables and tracking plans are used, never copied).
    mu : (L, 2) landmark means (pixels), NaN rows missing.
    sigma : (L,) landmark standard deviations (pixels).
    image_size : (width, height).
    config : FitConfig
    prev : (L, 3) previous-frame landmark vertex positions (mm) for the temporal term, or None.
    intersection : :class:`~lmfit3d.intersection.IntersectionTerm` of the identity (``context.intersection``),
        or None (term off).
    """

    def __init__(self, context, mu, sigma, image_size, config, prev=None, intersection=None):
        model = self.model = context.model
        table = self.table = context.table
        self.context = context
        self.cfg = config
        self.cx, self.cy = image_size[0] / 2.0, image_size[1] / 2.0
        self.layout = FrameLayout.of(model)
        self.sl, self.n_full = self.layout.slices(), self.layout.size
        self.anc = ancestry(model.joint_parents)
        self.parents = model.joint_parents.astype(np.int64)
        self.sj = np.ascontiguousarray(model.joint_identity, dtype=np.float64)
        self.inter = intersection
        self.soa = context.soa      # the table in kernel order, for the tracking evaluation (frame_lm)
        self.col_of = np.empty(table.n_landmarks, np.int64)
        self.col_of[self.soa.order] = np.arange(table.n_landmarks)
        nl = table.n_landmarks
        self.mu_t, self.isg_t, self.prev_t = np.empty((2, nl)), np.empty(nl), np.empty((3, nl))
        self._tw_on = residual_scale(config.w_temporal)
        self.set_frame(mu, sigma, prev)
        nj = model.n_joints
        self.ws = dict(r0=np.empty((3, 3)), jl0=np.empty((3, 3)), rg=np.empty((nj, 3, 3)),
                       tg=np.empty((nj, 3)), gpos=np.empty((nj, 3)), bm=np.empty((nj, 3, 3)),
                       cm=np.empty((nj, 3, 3)))
        self.uv = np.empty((table.n_landmarks, 2))
        self.xyz = np.empty((table.n_landmarks, 3))
        self.rot = np.empty((nj, 3))
        self._soa_ws = Workspace(self.rot, *table_points_buffers(self.soa, nj), np.zeros((PJ_ROWS, table.n_landmarks)),
                                 np.empty((2, self.soa.shape_idx.size)))
        e = model.n_expression
        self.pairs = (antagonist_pairs(model.expression_names) if config.w_antagonist > 0
                      else np.zeros((0, 2), np.int64))
        self.expr_inv, self.pair_sqrtw = expression_prior_scales(e, self.pairs, config.w_expression,
                                                                 config.w_antagonist)
        self.joint_inv = np.full(3 * (nj - 1), residual_scale(config.w_joints))
        self.zero_e, self.zero_j = np.zeros(e), np.zeros(3 * (nj - 1))
        self.inter_state = self._intersection_state()
        self._beta_key = None       # identity of t_beta, joints and soa_state
        self._positions_at = None   # x of the positions in uv / xyz
        self._lo, self._hi = self.bounds_full()
        self._mask_key = self.col_map = self.plan = None
        self.set_free(np.zeros(self.n_full, bool))

    def set_frame(self, mu, sigma, prev=None):
        """Put another frame's landmarks into this problem (the per-frame data only).

        mu (L, 2) and sigma (L,) pixels; prev (L, 3) mm previous-frame landmark vertex positions
        for the temporal term, or None (term off).  Model, table, camera, weights and the
        intersection data are kept, so a tracker builds its problem once.
        """
        self.mu = np.ascontiguousarray(mu, dtype=np.float64)
        sigma = np.ascontiguousarray(sigma, dtype=np.float64)
        if prev is None:
            self.prev = np.full((self.table.n_landmarks, 3), np.nan)
            self.tw = 0.0
        else:
            self.prev = np.ascontiguousarray(prev, dtype=np.float64)
            self.tw = self._tw_on
        self._frame_soa(sigma)

    def set_free(self, mask, base=None):
        """Choose the free parameters (boolean mask over the full layout).

        The index arrays of the last mask are kept (a tracker passes the same mask every frame) unless
        ``col_map`` was replaced meanwhile (``KeyframeProblem`` does); they are never modified in place.
        """
        mask = np.asarray(mask, dtype=bool)
        key = mask.tobytes()
        if key != self._mask_key:
            self.free = np.flatnonzero(mask)
            col_map = np.full(self.n_full, -1, np.int64)
            col_map[self.free] = np.arange(self.free.size)
            self.set_col_map(col_map)
            self._free_lo, self._free_hi = self._lo[self.free], self._hi[self.free]
            self._mask_key = key
        if base is not None:
            self.base = np.array(base, dtype=np.float64)

    def set_col_map(self, col_map):
        """Use ``col_map`` (P,) int64 (full index -> free column, -1 held; not modified afterwards) and its
        tracking plan (``context.plan``: None when identity or focal is free)."""
        self.col_map = col_map
        self.plan = self.context.plan(col_map)
        self._mask_key = None

    def _identity_state(self, x):
        beta = x[self.sl["identity"]]
        key = beta.tobytes()
        if key != self._beta_key:
            self.t_beta = self.table.mean + self.table.identity_blocks @ beta
            s = self.soa
            self.soa_state = SoaState(s.to_columns(self.t_beta), self.col_of, s.ptr, s.shape_idx, s.blocks, s.skin,
                                      self.mu_t, self.isg_t, self.prev_t)      # frame columns written in place
            self.joints = self.model.joint_mean + self.sj @ beta
            self._beta_key = key
        return beta

    def full(self, z):
        x = self.base.copy()
        x[self.free] = z
        return x

    def accumulate_full(self, x, jtj, jtr, want_jac, grad_only=False):
        """Cost of the frame at full vector x; adds its J^T J, J^T r (free columns) when ``want_jac``
        (J^T r alone, jtj untouched, when ``grad_only``: the tracking evaluation only)."""
        cfg, sl, cm = self.cfg, self.sl, self.col_map
        hess = not grad_only
        cost = self._vertex_term(x, jtj, jtr, want_jac, grad_only)
        e0 = sl["expression"].start
        if cm[e0] >= 0:
            cost += diagonal_prior(x, e0, self.zero_e, self.expr_inv, cm, want_jac, hess, jtj, jtr)
            if self.pairs.shape[0] > 0:
                cost += pair_prior(x, e0, self.pairs, self.pair_sqrtw, cm, want_jac, hess, jtj, jtr)
        if cm[sl["joints"].start] >= 0 or cm[sl["joints"].stop - 1] >= 0:
            cost += diagonal_prior(x, sl["joints"].start, self.zero_j, self.joint_inv, cm, want_jac, hess, jtj, jtr)
        if self.inter is not None and cfg.w_intersection > 0 and cm[e0] >= 0:
            it, g = self.inter, self.inter.geometry()
            cost += intersection_term(x, e0, g.template, g.expr_idx, g.expr_blocks, g.sphere_c, g.sphere_r,
                                      g.sphere_of, g.planes, g.hull_of, residual_scale(cfg.w_intersection), cm,
                                      want_jac, hess, jtj, jtr, it.skip_base, it.skip_proj, it.skip_block)
        return cost

    def _vertex_term(self, x, jtj, jtr, want_jac, grad_only=False):
        """Landmark + temporal terms at x; leaves the positions of x in self.xyz / self.uv."""
        ws = self.ws
        self._identity_state(x)
        if self.plan is not None:       # the evaluation of the compiled loop (frame_lm)
            cost = landmark_terms(x, want_jac, not grad_only, jtj, jtr, self._compiled_args(), self.plan,
                                  self.soa_state, self._soa_ws, self.uv, self.xyz)
            self._positions_at = x.copy()
            return cost
        if want_jac and grad_only:      # vertex_term adds J^T J and J^T r together
            raise ValueError("J^T r alone (grad_only) needs the tracking evaluation: identity and focal held")
        rot = self.rot
        self.layout.rotations(x, rot)
        pose_chain(rot, self.joints, self.parents, ws["r0"], ws["jl0"], ws["rg"], ws["tg"],
                   ws["gpos"], ws["bm"], ws["cm"])
        lay = self.layout
        cost = vertex_term(x, x[lay.focal][0], self.cx, self.cy, self.t_beta, self.table.expr_idx,
                           self.table.expr_blocks, self.table.weights, self.anc, self.table.identity_blocks, self.sj,
                           ws["r0"], x[lay.translation], ws["rg"], ws["tg"], ws["gpos"], ws["bm"], ws["cm"],
                           self.mu, self.inv_sigma, self.cfg.loss_c, self.tw, self.prev, self.col_map,
                           self.cfg.jac_threshold, want_jac, jtj, jtr, self.uv, self.xyz)
        self._positions_at = x.copy()
        return cost

    def identity_prior(self, x, jtj, jtr, want_jac, grad_only=False):
        """Identity term (``energy.identity_prior``): its cost; adds its gradient and (unless ``grad_only``)
        its Gauss-Newton diagonal."""
        ids = self.layout.identity
        cost, grad, diag = identity_prior(self.model, x[ids], self.cfg.w_identity)
        if want_jac:
            cols = self.col_map[ids]
            on = cols >= 0
            jtr[cols[on]] += grad[on]
            if not grad_only:
                jtj[cols[on], cols[on]] += diag[on]
        return cost

    def accumulate(self, z, jtj, jtr, want_jac, grad_only=False):
        """The contract of ``solvers.levenberg_marquardt``: cost at the free vector z; with ``want_jac``
        adds J^T r into jtr and J^T J (symmetric) into jtj, or J^T r alone, jtj untouched, when
        ``grad_only`` (the tracking evaluation only: identity and focal held)."""
        x = self.full(z)
        if self.plan is not None:       # tracking: the compiled evaluation tracking_lm uses
            self._identity_state(x)
            cost = frame_cost(x, want_jac, not grad_only, True, jtj, jtr, self._compiled_args(), self.plan,
                              self.inter_state, self.soa_state, self._soa_ws, self.uv, self.xyz)
            self._positions_at = x
            return cost
        cost = self.accumulate_full(x, jtj, jtr, want_jac, grad_only)
        if self.col_map[self.sl["identity"].start] >= 0:
            cost += self.identity_prior(x, jtj, jtr, want_jac, grad_only)
        if want_jac:
            symmetrize_upper(jtj)
        return cost

    def bounds_full(self):
        """Box bounds over the full layout: expression in [0, 1], focal >= 1 pixel."""
        lo = np.full(self.n_full, -np.inf)
        hi = np.full(self.n_full, np.inf)
        lo[self.sl["expression"]] = 0.0
        hi[self.sl["expression"]] = 1.0
        lo[self.sl["focal"]] = 1.0
        return lo, hi

    def bounds(self):
        return self._free_lo.copy(), self._free_hi.copy()

    def solve(self, x, mask, max_iter, compiled=True):
        """LM over the parameters in ``mask`` starting at full vector x; returns (x, FitResult).

        With identity and focal length held (a tracking plan exists) and ``compiled`` True, the solve
        runs in one numba call (:func:`lmfit3d.frame_lm.tracking_lm`, same iterations and costs as
        :func:`~lmfit3d.solvers.levenberg_marquardt`, which runs otherwise).
        """
        self.set_free(mask, x)
        lo, hi = self._free_lo, self._free_hi
        plan = self.plan
        # J^T J re-use needs J^T r alone, which the tracking evaluation gives (frame_lm)
        reuse = math.inf if plan is None else float(self.cfg.jtj_reuse_rho)
        if plan is None or not compiled:
            res = levenberg_marquardt(self.accumulate, x[self.free], lo, hi, max_iter=max_iter,
                                      ftol=self.cfg.ftol, xtol=self.cfg.xtol, gtol=self.cfg.gtol, reuse_rho=reuse)
            return self.full(res.x), res
        self._identity_state(self.base)
        z = np.array(self.base[self.free])
        x_last = np.empty(self.n_full)
        history = np.empty(max_iter + 1)
        cost, it, status, nh, n_jtj = tracking_lm(
            z, self.base, self.free, lo, hi, max_iter, self.cfg.ftol, self.cfg.xtol, self.cfg.gtol, LAMBDA0,
            LAMBDA_MAX, DIAG_FLOOR, reuse, self._compiled_args(), plan, self.inter_state,
            self.soa_state, self._soa_ws, self.uv, self.xyz, x_last, history)
        x = self.full(z)
        self._positions_at = x if _same(x, x_last) else x_last
        return x, FitResult(z, float(cost), int(it), int(status), history[:nh].copy(), int(n_jtj))

    def _frame_soa(self, sigma):
        """1/sigma, and the frame's mu, 1/sigma and prev in the kernel order of ``self.soa``."""
        nl = self.table.n_landmarks
        if self.mu.shape != (nl, 2) or sigma.shape != (nl,) or self.prev.shape != (nl, 3):
            raise ValueError(f"need mu ({nl}, 2), sigma ({nl},) and prev ({nl}, 3), got {self.mu.shape}, "
                             f"{sigma.shape} and {self.prev.shape}")
        self.inv_sigma = np.empty(nl)
        frame_inputs(self.soa.order, self.mu, sigma, self.prev, self.inv_sigma, self.mu_t, self.isg_t, self.prev_t)

    def _compiled_args(self):
        """The :class:`~lmfit3d.frame_lm.FrameState` of the kernels (identity state already set)."""
        lay = self.layout
        return FrameState(self.cx, self.cy, self.t_beta, self.table.expr_idx, self.table.expr_blocks,
                          self.table.weights, self.anc, self.joints, self.parents, self.mu, self.inv_sigma,
                          float(self.tw), self.cfg.loss_c, self.prev, self.col_map, float(self.cfg.jac_threshold),
                          self.expr_inv, self.joint_inv, self.zero_e, self.zero_j, self.pairs, float(self.pair_sqrtw),
                          lay.expression.start, lay.joints.start, lay.joints.stop)

    def _intersection_state(self):
        """The :class:`~lmfit3d.frame_lm.IntersectionState` of the kernels (a dummy one: term off)."""
        it = self.inter
        if it is None or self.cfg.w_intersection <= 0:
            return _NO_INTER
        return IntersectionState(True, it.geometry(), residual_scale(self.cfg.w_intersection), it.skip_base,
                                 it.skip_proj, it.skip_block, it.far_base, it.far_proj, it.far_ptr, it.far_chunks,
                                 np.empty_like(it.far_base))

    def landmark_positions(self, x):
        """Camera-space landmark vertex positions (L, 3) mm and projections (L, 2) at x."""
        x = np.asarray(x, dtype=np.float64)
        if self._positions_at is None or not (x is self._positions_at or _same(x, self._positions_at)):
            self._vertex_term(x, _EMPTY2, _EMPTY1, False)       # else: the solver's last evaluation
        return self.xyz.copy(), self.uv.copy()


_I1, _F1 = np.zeros(1, np.int64), np.zeros(1)


_NO_INTER = IntersectionState(      # intersection term off (tracking_lm)
    False, Intersection(np.zeros((1, 3)), None, np.zeros((1, 1), np.int64), np.zeros((1, 1, 3)), np.zeros((1, 3)),
                        _F1, _I1, np.zeros((1, 1, 4)), _I1),
    0.0, _F1, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(W), np.zeros((1, W)), np.zeros(2, np.int64), _I1,
    np.zeros(W))


_EMPTY2 = np.zeros((0, 0))


_EMPTY1 = np.zeros(0)


@njit(cache=True)
def _same_kernel(a, b):
    for i in range(a.shape[0]):
        if a[i] != b[i]:
            return False
    return True


def _same(a, b):
    """np.array_equal for two float64 vectors (1-D), without its Python overhead."""
    if a.shape != b.shape or a.ndim != 1 or a.dtype != np.float64 or b.dtype != np.float64:
        return bool(np.array_equal(a, b))
    return _same_kernel(a, b)


class KeyframeProblem:
    """Several frames sharing some parameters (identity, focal), solved jointly by LM.

    The free vector is ``[shared parameters, frame 0 block, frame 1 block, ...]``; each frame's
    :class:`FrameProblem` accumulates into it through its ``col_map``.
    """

    def __init__(self, probs, xs, shared_mask, frame_mask):
        self.probs = probs
        self.xs = [np.array(x, dtype=np.float64) for x in xs]
        self.shared = np.flatnonzero(shared_mask)
        self.frame = np.flatnonzero(frame_mask & ~shared_mask)
        ns, nf = self.shared.size, self.frame.size
        for i, p in enumerate(probs):
            p.base = self.xs[i]
            col_map = np.full(p.n_full, -1, np.int64)
            col_map[self.shared] = np.arange(ns)
            col_map[self.frame] = ns + i * nf + np.arange(nf)
            p.set_col_map(col_map)
        self.n = ns + nf * len(probs)

    def frame_x(self, z, i):
        ns, nf = self.shared.size, self.frame.size
        x = self.xs[i].copy()
        x[self.shared] = z[:ns]
        x[self.frame] = z[ns + i * nf: ns + (i + 1) * nf]
        return x

    def accumulate(self, z, jtj, jtr, want_jac):
        """``FrameProblem.accumulate`` over the keyframes (J^T J and J^T r together when ``want_jac``)."""
        cost = 0.0
        for i, p in enumerate(self.probs):
            cost += p.accumulate_full(self.frame_x(z, i), jtj, jtr, want_jac)
        p0 = self.probs[0]
        if p0.col_map[p0.sl["identity"].start] >= 0:
            cost += p0.identity_prior(self.frame_x(z, 0), jtj, jtr, want_jac)
        if want_jac:
            symmetrize_upper(jtj)
        return cost

    def solve(self, cfg):
        """Returns (list of full vectors per frame, FitResult)."""
        lo_f, hi_f = self.probs[0].bounds_full()
        z0 = np.concatenate([self.xs[0][self.shared]] + [x[self.frame] for x in self.xs])
        lo = np.concatenate([lo_f[self.shared]] + [lo_f[self.frame]] * len(self.xs))
        hi = np.concatenate([hi_f[self.shared]] + [hi_f[self.frame]] * len(self.xs))
        res = levenberg_marquardt(self.accumulate, z0, lo, hi, max_iter=cfg.max_iter_init,
                                  ftol=cfg.ftol, xtol=cfg.xtol, gtol=cfg.gtol)
        return [self.frame_x(res.x, i) for i in range(len(self.xs))], res


GAZE_SHAPES = ("eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L",
               "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R")


def masks(model, *blocks, eyes=True, gaze_shapes=True):
    """Boolean mask over the full layout for named blocks ('pose': root rotation and translation,
    'joints', 'expression', 'identity', 'focal'); ``eyes=False`` leaves the eye joints out of 'joints',
    ``gaze_shapes=False`` the :data:`GAZE_SHAPES` out of 'expression'."""
    lay = FrameLayout.of(model)
    sl = lay.slices()
    m = np.zeros(lay.size, bool)
    for b in blocks:
        if b == "pose":
            m[lay.root_rotation] = True
            m[lay.translation] = True
        elif b == "joints":
            m[lay.joints] = True
            if not eyes:
                for k in model.eye_joints:
                    m[lay.joint(k)] = False
        else:
            m[sl[b]] = True
            if b == "expression" and not gaze_shapes:
                e0 = sl["expression"].start
                for i, name in enumerate(model.expression_names):
                    if name in GAZE_SHAPES:
                        m[e0 + i] = False
    return m
