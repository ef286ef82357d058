"""Fitting the face model to probabilistic 2D landmarks: one frame, or a sequence in real time.

Real-time policy (paper sec. 3.3.1), implemented by :class:`Tracker`:

1. On the first frame (or after tracking was lost) the pose is initialised from the landmarks'
   2D spread and refined rigidly from five yaw hypotheses; the best is kept.
2. Every frame fits root pose, neck/head/eye joints and expression by Levenberg-Marquardt,
   warm-started from the previous frame, with the temporal term pulling landmark vertices towards
   their previous positions.
3. Identity (and the focal length when unknown) are refitted now and then over *keyframes*:
   frames whose head rotation differs by more than ``keyframe_angle_deg`` from every keyframe so
   far (at most ``max_keyframes``, the first frame always being one).  The refit solves for identity
   (+ focal) with each keyframe's pose and expression held, then re-solves those per keyframe.
"""
import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .camera import focal_from_fov
from .energy import FrameLayout, Intersection, identity_prior, loss_parameter, residual_scale
from .frame_lm import (FrameState, IntersectionState, SoaState, Workspace, frame_cost, frame_inputs, landmark_terms,
                       tracking_lm)
from .intersection import IntersectionTerm, intersection_term
from .landmarks import resolve_vertex_ids
from .model import FaceModel, Params, load_model
from .simd import W
from .skinning import POSE_DIM, ancestry, pose_chain
from .solvers import DIAG_FLOOR, LAMBDA0, LAMBDA_MAX, FitResult, levenberg_marquardt
from .sparsity import build_sparsity, layout
from .terms import diagonal_prior, symmetrize_upper, vertex_term
from .tracking_normal import tracking_plan
from .tracking_points import PJ_ROWS, count_finite_rows, table_points_buffers, table_soa


@dataclass(frozen=True)
class FitConfig:
    """Energy weights, solver tolerances and tracking policy.

    Weights multiply the paper's terms: E = E_landmarks + w_identity E_identity
    + w_expression |psi|^2 + w_joints |theta_{1..4}|^2 + w_temporal sum |x_t - x_{t-1}|^2 (mm^2, over the
    landmark vertices) + w_intersection sum d^2 (mm^2).

    ``fit_gaze_shapes``: False holds the eyeLook* shapes (:data:`GAZE_SHAPES`, the lids following the
    gaze) at 0.  Video tracking does (``track.TrackOptions.config``): gaze is the eye joints' job, and
    free eyeLook weights took up lid motion and the landmark network's bias (issue 13: eyeLookIn
    0.4-0.6 on renders looking straight ahead); its outputs derive them from the eye rotations
    (``track.gaze_blendshapes``).

    ``jtj_reuse_rho``: in the per-frame tracking solves (identity and focal length held) J^T J is
    kept after an accepted step whose gain ratio is >= this (the trust-region "very successful"
    threshold 3/4 by default) and only J^T r is evaluated at the new point
    (``solvers.levenberg_marquardt``, ``reuse_rho``); ``inf`` turns the re-use off.

    ``landmark_loss``: ``"squared"`` (the paper's) or ``"cauchy"`` with scale ``loss_scale`` (sigmas),
    a robust loss for landmarks far off (``energy.landmark_loss``; every solver uses it).
    """

    w_identity: float = 1.0
    w_expression: float = 1.0
    w_joints: float = 20.0
    w_temporal: float = 0.05
    w_intersection: float = 10.0
    sparsity_threshold_mm: float = 0.01
    jac_threshold: float = 1e-8
    max_iter: int = 10
    max_iter_init: int = 100
    ftol: float = 1e-3
    xtol: float = 1e-6
    gtol: float = 1e-6
    jtj_reuse_rho: float = 0.75
    keyframe_angle_deg: float = 10.0
    max_keyframes: int = 5
    fit_eyes: bool = True
    fit_gaze_shapes: bool = True
    landmark_loss: str = "squared"
    loss_scale: float = 3.0

    def __post_init__(self):
        loss_parameter(self.landmark_loss, self.loss_scale)     # ValueError on an unknown loss or scale
        for name in ("w_identity", "w_expression", "w_joints", "w_temporal", "w_intersection",
                     "sparsity_threshold_mm", "jac_threshold"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not (self.jtj_reuse_rho > 0):
            raise ValueError(f"jtj_reuse_rho must be > 0 (inf: no re-use), got {self.jtj_reuse_rho}")
        if self.max_iter < 1 or self.max_iter_init < 1:
            raise ValueError("max_iter must be >= 1")

    @property
    def loss_c(self):
        """The kernels' loss argument (``energy.loss_parameter``): 0 squared, c > 0 Cauchy."""
        return loss_parameter(self.landmark_loss, self.loss_scale)


def params_to_vector(model, params: Params, focal):
    """Pack Params and the focal length into the full per-frame vector (layout in ``sparsity``)."""
    sl, n = layout(model)
    x = np.empty(n)
    x[sl["root_rotation"]] = params.rotations[0]
    x[sl["translation"]] = params.translation
    x[sl["joints"]] = np.asarray(params.rotations[1:]).ravel()
    x[sl["expression"]] = params.expression
    x[sl["identity"]] = params.identity
    x[sl["focal"]] = focal
    return x


def vector_to_params(model, x):
    """Unpack the full vector into (Params, focal)."""
    e, k = model.n_expression, model.n_identity
    rot = np.empty((POSE_DIM // 3 - 1, 3))
    rot[0] = x[0:3]
    rot[1:] = x[6:POSE_DIM].reshape(-1, 3)
    return Params(x[POSE_DIM + e:POSE_DIM + e + k].copy(), x[POSE_DIM:POSE_DIM + e].copy(), rot,
                  x[3:6].copy()), float(x[POSE_DIM + e + k])


# Per-process caches of static data that trackers rebuild otherwise (a video's two passes, the
# videos of a batch): key -> (owner, value); the owner object is kept so that its id stays unique.
_INTERSECTIONS, _TABLES, _PLANS, _SOAS = {}, {}, {}, {}


def _cached(cache, key, owner, build, size):
    hit = cache.get(key)
    if hit is not None and hit[0] is owner:
        return hit[1]
    value = build()
    while len(cache) >= size:
        cache.pop(next(iter(cache)))
    cache[key] = (owner, value)
    return value


def intersection_data(model: FaceModel, beta, threshold):
    """:class:`IntersectionTerm` for an identity, from a small cache shared by all trackers of this
    process (a video's second pass re-uses the identity of its first; ~20 ms a build)."""
    beta = np.ascontiguousarray(beta, dtype=np.float64)
    return _cached(_INTERSECTIONS, (id(model), beta.tobytes(), float(threshold)), model,
                   lambda: IntersectionTerm(model, beta, threshold), 4)


class FrameProblem:
    """Energy of one frame for the LM solver, over a chosen set of free parameters.

    Parameters
    ----------
    model : FaceModel
    table : SparsityTable of the landmark vertices.
    mu : (L, 2) landmark means (pixels), NaN rows missing.
    sigma : (L,) landmark standard deviations (pixels).
    image_size : (width, height).
    config : FitConfig
    prev : (L, 3) previous-frame landmark vertex positions (mm) for the temporal term, or None.
    """

    def __init__(self, model, table, mu, sigma, image_size, config, prev=None, intersection=None):
        self.model = model
        self.table = table
        self.cfg = config
        self.cx, self.cy = image_size[0] / 2.0, image_size[1] / 2.0
        self.layout = FrameLayout.of(model)
        self.sl, self.n_full = self.layout.slices(), self.layout.size
        self.anc = ancestry(model.joint_parents)
        self.parents = model.joint_parents.astype(np.int64)
        self.sj = np.ascontiguousarray(model.joint_identity, dtype=np.float64)
        self.inter = intersection
        # structure-of-arrays layout of the table for the tracking evaluation (frame_lm.landmark_terms)
        self.soa = _cached(_SOAS, id(table), table, lambda: table_soa(table, model.joint_parents), 8)
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
        self.expr_inv = np.full(e, residual_scale(config.w_expression))
        self.joint_inv = np.full(3 * (nj - 1), residual_scale(config.w_joints))
        self.zero_e, self.zero_j = np.zeros(e), np.zeros(3 * (nj - 1))
        self._beta_key = None
        self._far_out = None        # work buffer of frame_lm.intersection_far
        self._positions_at = None
        self._plans = {}            # col_map bytes -> TrackingPlan or None
        self._lo, self._hi = self.bounds_full()
        self._mask_key = self._mask_cm = self.col_map = None
        self._plan_cm = self._plan = None      # col_map -> TrackingPlan of the last lookup, and its tuple
        self._plan_args = None
        self._inter_args = None                # (intersection data, its tuple)
        self._soa_key = self._soa_tuple = None
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
        if key != self._mask_key or self.col_map is not self._mask_cm:
            self.free = np.flatnonzero(mask)
            self.col_map = np.full(self.n_full, -1, np.int64)
            self.col_map[self.free] = np.arange(self.free.size)
            self._free_lo, self._free_hi = self._lo[self.free], self._hi[self.free]
            self._mask_key, self._mask_cm = key, self.col_map
        if base is not None:
            self.base = np.array(base, dtype=np.float64)

    def _identity_state(self, x):
        beta = x[self.sl["identity"]]
        key = beta.tobytes()
        if key != self._beta_key:
            self.t_beta = self.table.mean + self.table.identity_blocks @ beta
            self.t_beta_t = self.soa.to_columns(self.t_beta)
            self.joints = self.model.joint_mean + self.sj @ beta
            self._beta_key = key
        return beta

    def full(self, z):
        x = self.base.copy()
        x[self.free] = z
        return x

    def accumulate_full(self, x, jtj, jtr, want_jac):
        """Cost of the frame at full vector x; adds its J^T J, J^T r (free columns) when asked."""
        cfg, sl, cm = self.cfg, self.sl, self.col_map
        cost = self._vertex_term(x, jtj, jtr, want_jac)
        e0 = sl["expression"].start
        if cm[e0] >= 0:
            cost += diagonal_prior(x, e0, self.zero_e, self.expr_inv, cm, want_jac, jtj, jtr)
        if cm[sl["joints"].start] >= 0 or cm[sl["joints"].stop - 1] >= 0:
            cost += diagonal_prior(x, sl["joints"].start, self.zero_j, self.joint_inv, cm, want_jac, jtj, jtr)
        if self.inter is not None and cfg.w_intersection > 0 and cm[e0] >= 0:
            it, g = self.inter, self.inter.geometry()
            cost += intersection_term(x, e0, g.template, g.expr_idx, g.expr_blocks, g.sphere_c, g.sphere_r,
                                      g.sphere_of, g.planes, g.hull_of, residual_scale(cfg.w_intersection), cm,
                                      want_jac, jtj, jtr, it.skip_base, it.skip_proj, it.skip_block)
        return cost

    def _vertex_term(self, x, jtj, jtr, want_jac):
        """Landmark + temporal terms at x; leaves the positions of x in self.xyz / self.uv."""
        ws = self.ws
        self._identity_state(x)
        plan = self._tracking_plan()
        if plan is not None:            # the evaluation of the compiled loop (frame_lm)
            cost = landmark_terms(x, want_jac, jtj, jtr, self._compiled_args(), self._plan_args[1],
                                  self._soa_args(), self._soa_ws, self.uv, self.xyz)
            self._positions_at = x.copy()
            return cost
        if want_jac and jtj.shape[0] == 0:      # vertex_term would write past an empty jtj
            raise ValueError("J^T r alone (an empty jtj) needs the tracking evaluation: identity and focal held")
        rot = self.rot
        rot[:] = self.layout.rotations(x)
        pose_chain(rot, self.joints, self.parents, ws["r0"], ws["jl0"], ws["rg"], ws["tg"],
                   ws["gpos"], ws["bm"], ws["cm"])
        sb = self.table.identity_blocks if self.col_map[self.sl["identity"].start] >= 0 else _NO_IDENT
        lay = self.layout
        cost = vertex_term(x, x[lay.focal][0], self.cx, self.cy, self.t_beta, self.table.expr_idx,
                           self.table.expr_blocks, self.table.weights, self.anc, sb, self.sj,
                           ws["r0"], x[lay.translation], ws["rg"], ws["tg"], ws["gpos"], ws["bm"], ws["cm"],
                           self.mu, self.inv_sigma, self.cfg.loss_c, self.tw, self.prev, self.col_map,
                           self.cfg.jac_threshold, want_jac, jtj, jtr, self.uv, self.xyz)
        self._positions_at = x.copy()
        return cost

    def _tracking_plan(self):
        """The :class:`~lmfit3d.tracking_normal.TrackingPlan` of the current col_map (None: identity/focal free)."""
        if self.col_map is self._plan_cm:
            return self._plan
        key = self.col_map.tobytes()
        if key not in self._plans:
            self._plans[key] = _cached(_PLANS, (id(self.table), key), self.table,
                                       lambda: tracking_plan(self.table, self.col_map, POSE_DIM), 32)
        plan = self._plans[key]
        self._plan_cm, self._plan = self.col_map, plan
        if self._plan_args is None or self._plan_args[0] is not plan:
            self._plan_args = (plan, plan)
        return plan

    def identity_prior(self, x, jtj, jtr, want_jac):
        """Identity term (``energy.identity_prior``): its cost; adds its gradient and Gauss-Newton diagonal."""
        ids = self.layout.identity
        cost, grad, diag = identity_prior(self.model, x[ids], self.cfg.w_identity)
        if want_jac:
            cols = self.col_map[ids]
            on = cols >= 0
            jtr[cols[on]] += grad[on]
            if jtj.shape[0] > 0:
                jtj[cols[on], cols[on]] += diag[on]
        return cost

    def accumulate(self, z, jtj, jtr, want_jac):
        x = self.full(z)
        plan = self._tracking_plan()
        if plan is not None:            # tracking: the compiled evaluation tracking_lm uses
            self._identity_state(x)
            cost = frame_cost(x, want_jac, True, jtj, jtr, self._compiled_args(), self._plan_args[1],
                              self._intersection_args(), self._soa_args(), self._soa_ws, self.uv, self.xyz)
            self._positions_at = x
            return cost
        cost = self.accumulate_full(x, jtj, jtr, want_jac)
        if self.col_map[self.sl["identity"].start] >= 0:
            cost += self.identity_prior(x, jtj, jtr, want_jac)
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
        plan = self._tracking_plan()
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
            LAMBDA_MAX, DIAG_FLOOR, reuse, self._compiled_args(), self._plan_args[1], self._intersection_args(),
            self._soa_args(), self._soa_ws, self.uv, self.xyz, x_last, history)
        x = self.full(z)
        self._positions_at = x if _same(x, x_last) else x_last
        return x, FitResult(z, float(cost), int(it), int(status), history[:nh].copy(), int(n_jtj))

    def _soa_args(self):
        """The :class:`~lmfit3d.frame_lm.SoaState` of the kernels (identity state already set)."""
        if self._soa_key is not self.t_beta_t:       # the frame columns are written in place
            s = self.soa
            self._soa_tuple = SoaState(self.t_beta_t, self.col_of, s.ptr, s.shape_idx, s.blocks, s.skin, self.mu_t,
                                       self.isg_t, self.prev_t)
            self._soa_key = self.t_beta_t
        return self._soa_tuple

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
                          self.expr_inv, self.joint_inv, self.zero_e, self.zero_j, lay.expression.start,
                          lay.joints.start, lay.joints.stop)

    def _intersection_args(self):
        """The :class:`~lmfit3d.frame_lm.IntersectionState` of the kernels (a dummy one: term off)."""
        it = self.inter
        if it is None or self.cfg.w_intersection <= 0:
            return _NO_INTER
        if self._inter_args is not None and self._inter_args[0] is it:
            return self._inter_args[1]
        if self._far_out is None or self._far_out.shape != it.far_base.shape:
            self._far_out = np.empty_like(it.far_base)
        self._inter_args = (it, IntersectionState(True, it.geometry(), residual_scale(self.cfg.w_intersection),
                                                  it.skip_base, it.skip_proj, it.skip_block, it.far_base,
                                                  it.far_proj, it.far_ptr, it.far_chunks, self._far_out))
        return self._inter_args[1]

    def landmark_positions(self, x):
        """Camera-space landmark vertex positions (L, 3) mm and projections (L, 2) at x."""
        x = np.asarray(x, dtype=np.float64)
        if self._positions_at is None or not (x is self._positions_at or _same(x, self._positions_at)):
            self._vertex_term(x, _EMPTY2, _EMPTY1, False)       # else: the solver's last evaluation
        return self.xyz.copy(), self.uv.copy()


_NO_IDENT = np.zeros((1, 3, 0))
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
            p.col_map = np.full(p.n_full, -1, np.int64)
            p.col_map[self.shared] = np.arange(ns)
            p.col_map[self.frame] = ns + i * nf + np.arange(nf)
        self.n = ns + nf * len(probs)

    def frame_x(self, z, i):
        ns, nf = self.shared.size, self.frame.size
        x = self.xs[i].copy()
        x[self.shared] = z[:ns]
        x[self.frame] = z[ns + i * nf: ns + (i + 1) * nf]
        return x

    def accumulate(self, z, jtj, jtr, want_jac):
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
    """Boolean mask over the full layout for named blocks ('pose', 'joints', 'expression', ...);
    ``gaze_shapes=False`` leaves the :data:`GAZE_SHAPES` out of 'expression'."""
    sl, n = layout(model)
    m = np.zeros(n, bool)
    for b in blocks:
        if b == "pose":
            m[0:6] = True
        elif b == "joints":
            m[sl["joints"]] = True
            if not eyes:
                m[12:18] = False
        else:
            m[sl[b]] = True
            if b == "expression" and not gaze_shapes:
                e0 = sl["expression"].start
                for i, name in enumerate(model.expression_names):
                    if name in GAZE_SHAPES:
                        m[e0 + i] = False
    return m


def initial_pose(model, table, mu, focal, image_size):
    """Translation placing the frontal neutral landmarks over mu's centroid at the right scale."""
    ok = np.isfinite(mu).all(1)
    if ok.sum() < 3:
        raise ValueError("need at least 3 present landmarks to initialise the pose")
    p3 = table.mean[ok]
    c3 = p3.mean(0)
    s3 = np.sqrt(((p3[:, :2] - c3[:2]) ** 2).sum(1).mean())
    m2 = mu[ok]
    c2 = m2.mean(0)
    s2 = np.sqrt(((m2 - c2) ** 2).sum(1).mean())
    depth = focal * s3 / max(s2, 1e-6)
    cam = np.array([(c2[0] - image_size[0] / 2) * depth / focal, -(c2[1] - image_size[1] / 2) * depth / focal,
                    -depth])
    return cam - c3


@dataclass
class FrameFit:
    """Result of one frame: parameters, focal, projected landmarks and solver results
    (``jtj_evals``: J^T J accumulations of the frame's solve, ``FitResult.jtj_evals``)."""
    params: Params
    focal: float
    uv: np.ndarray
    cost: float
    iterations: int
    status: int
    success: bool
    jtj_evals: int = 1


class Tracker:
    """Real-time frame-by-frame fitter (see the module docstring for the policy).

    Parameters
    ----------
    model : FaceModel
    vertex_ids : (L,) landmark vertices.
    image_size : (width, height) pixels.
    focal : float or None; None = unknown, initialised at a 45 degree horizontal FOV and refitted.
    config : FitConfig
    identity : (K,) or None; given identity is held fixed.
    """

    def __init__(self, model, vertex_ids, image_size, focal=None, config=None, identity=None):
        self.model = model
        self.cfg = config or FitConfig()
        ids = np.ascontiguousarray(vertex_ids, dtype=np.int64)
        thr = float(self.cfg.sparsity_threshold_mm)
        self.table = _cached(_TABLES, (id(model), ids.tobytes(), thr), model,
                             lambda: build_sparsity(model, ids, thr), 8)
        self.image_size = (float(image_size[0]), float(image_size[1]))
        self.focal_known = focal is not None
        self.focal = float(focal) if focal is not None else focal_from_fov(image_size[0], 45.0)
        self.identity_fixed = identity is not None
        self.identity = np.zeros(model.n_identity) if identity is None else np.asarray(identity, float)
        self.x = None
        self.prev = None
        self.keyframes = []          # (x, mu, sigma)
        self._inter_key = None
        self.inter = None
        self._frame_prob = None      # per-frame problem, re-used from frame to frame
        self._frame_mask = masks(model, "pose", "joints", "expression", eyes=self.cfg.fit_eyes,
                                 gaze_shapes=self.cfg.fit_gaze_shapes)
        self._sl = layout(model)[0]

    def _intersection(self):
        if self.cfg.w_intersection <= 0:
            return None
        key = self.identity.tobytes()
        if key != self._inter_key:
            self.inter = intersection_data(self.model, self.identity, self.cfg.sparsity_threshold_mm)
            self._inter_key = key
        return self.inter

    def _problem(self, mu, sigma, prev=None):
        return FrameProblem(self.model, self.table, mu, sigma, self.image_size, self.cfg, prev,
                            self._intersection())

    def _step_problem(self, mu, sigma, prev):
        """The tracking problem of this frame: built once, then only its frame data change."""
        inter = self._intersection()
        prob = self._frame_prob
        if prob is None or prob.inter is not inter:
            prob = self._frame_prob = FrameProblem(self.model, self.table, mu, sigma, self.image_size,
                                                   self.cfg, prev, inter)
        else:
            prob.set_frame(mu, sigma, prev)
        return prob

    def reset(self):
        """Forget the previous frame (e.g. after a scene cut); identity and keyframes are kept."""
        self.x = None
        self.prev = None

    def _initialise(self, prob, mu):
        m = self.model
        x0 = params_to_vector(m, Params.zeros(m).replace(identity=self.identity.copy()), self.focal)
        x0[3:6] = initial_pose(m, self.table, mu, self.focal, self.image_size)
        best = None
        for yaw in (0.0, 0.6, -0.6, 1.2, -1.2):
            x = x0.copy()
            x[1] = yaw
            x, res = prob.solve(x, masks(m, "pose"), self.cfg.max_iter_init)
            if best is None or res.cost < best[1].cost:
                best = (x, res)
        x, _ = best
        return prob.solve(x, self._frame_mask, self.cfg.max_iter_init)

    def _is_keyframe(self, x):
        if len(self.keyframes) >= self.cfg.max_keyframes:
            return False
        r = x[0:3]
        for kx, _, _ in self.keyframes:
            if np.degrees(np.linalg.norm(r - kx[0:3])) < self.cfg.keyframe_angle_deg:
                return False
        return True

    def refit_identity(self):
        """Refit identity (and unknown focal) jointly with every keyframe's pose and expression."""
        m, sl = self.model, layout(self.model)[0]
        if (self.identity_fixed and self.focal_known) or not self.keyframes:
            return
        shared = np.zeros(layout(m)[1], bool)
        if not self.identity_fixed:
            shared[sl["identity"]] = True
        if not self.focal_known:
            shared[sl["focal"]] = True
        probs = [self._problem(mu, sg) for _, mu, sg in self.keyframes]
        kp = KeyframeProblem(probs, [kx for kx, _, _ in self.keyframes], shared,
                             masks(m, "pose", "joints", "expression", eyes=self.cfg.fit_eyes,
                                   gaze_shapes=self.cfg.fit_gaze_shapes))
        xs, _ = kp.solve(self.cfg)
        self.identity = xs[0][sl["identity"]].copy()
        self.focal = float(xs[0][sl["focal"]][0])
        self.keyframes = [(x, mu, sg) for x, (_, mu, sg) in zip(xs, self.keyframes)]

    def step(self, mu, sigma):
        """Fit one frame; returns a :class:`FrameFit`.  A frame with < 3 landmarks resets tracking."""
        m, sl = self.model, self._sl
        mu = np.ascontiguousarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if (count_finite_rows(mu) if mu.ndim == 2 else np.isfinite(mu).all(1).sum()) < 3:
            self.reset()
            return None
        prob = self._step_problem(mu, sigma, self.prev)
        first = self.x is None
        if first:
            x, res = self._initialise(prob, mu)
        else:
            x = self.x.copy()
            x[sl["identity"]] = self.identity
            x[sl["focal"]] = self.focal
            x, res = prob.solve(x, self._frame_mask, self.cfg.max_iter)
        if (not self.identity_fixed or not self.focal_known) and self._is_keyframe(x):
            self.keyframes.append((x.copy(), mu.copy(), sigma.copy()))
            self.refit_identity()
            x[sl["identity"]] = self.identity
            x[sl["focal"]] = self.focal
            x, res = prob.solve(x, self._frame_mask, self.cfg.max_iter_init if first else self.cfg.max_iter)
        self.x = x
        self.prev, uv = prob.landmark_positions(x)
        params, focal = vector_to_params(m, x)
        return FrameFit(params, focal, uv, res.cost, res.iterations, res.status, res.status >= 0, res.jtj_evals)


@dataclass
class SequenceFit:
    """Per-frame results of :func:`fit_landmarks` (F frames)."""
    identity: np.ndarray
    expression: np.ndarray
    rotations: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    cost: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    uv: np.ndarray
    vertex_ids: np.ndarray
    expression_names: tuple = field(default=())

    def params(self, f):
        return Params(self.identity, self.expression[f], self.rotations[f], self.translation[f])

    def vertices(self, model, f):
        """Camera-space mesh (V, 3) mm of frame f (NaN if the frame failed)."""
        from .skinning import evaluate_mesh
        if not np.isfinite(self.translation[f]).all():
            return np.full((model.n_vertices, 3), np.nan)
        return evaluate_mesh(model, self.params(f))


def validate_landmarks(mu, sigma, n_landmarks=None):
    """Check mu (F, L, 2) and sigma (F, L); returns float64 copies.  NaN mu = missing landmark."""
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim == 2:
        mu = mu[None]
    if mu.ndim != 3 or mu.shape[2] != 2 or mu.shape[1] == 0:
        raise ValueError(f"mu must have shape (F, L, 2), got {mu.shape}")
    if n_landmarks is not None and mu.shape[1] != n_landmarks:
        raise ValueError(f"mu has {mu.shape[1]} landmarks but the landmark set has {n_landmarks}")
    if np.isinf(mu).any():
        raise ValueError("mu contains inf (use NaN for missing landmarks)")
    if sigma is None:
        sigma = np.ones(mu.shape[:2])
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim == 1 and mu.shape[0] == 1:
        sigma = sigma[None]
    if sigma.shape != mu.shape[:2]:
        raise ValueError(f"sigma must have shape {mu.shape[:2]}, got {sigma.shape}")
    present = np.isfinite(mu).all(2)
    bad = present & ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        f, l = np.argwhere(bad)[0]
        raise ValueError(f"sigma must be finite and > 0 for present landmarks (frame {f}, landmark {l}: {sigma[f, l]})")
    return mu, np.where(present, sigma, 1.0)


def fit_landmarks(mu, sigma=None, *, landmark_set=None, vertex_ids=None, image_size, focal_px=None,
                  model=None, config=None, identity=None, two_pass=True, progress=None):
    """Fit the face model to 2D landmarks of F frames of one camera.

    Parameters
    ----------
    mu : (F, L, 2) float, landmark means in pixels (NaN = missing).
    sigma : (F, L) float, standard deviations in pixels (default 1).
    landmark_set : str, e.g. ``"dense320"``; or ``vertex_ids`` (L,) model vertices.
    image_size : (width, height) pixels.
    focal_px : float, optional; unknown when None (45 degree FOV start, refitted on keyframes).
    identity : (K,) optional fixed identity.
    two_pass : bool; when the identity is estimated, track the clip again with it held.

    Returns
    -------
    SequenceFit
    """
    model = model or load_model()
    ids = resolve_vertex_ids(landmark_set, vertex_ids, model.n_vertices)
    mu, sigma = validate_landmarks(mu, sigma, ids.size)
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape != (2,) or not (size > 0).all():
        raise ValueError(f"image_size must be (width, height) > 0, got {image_size}")
    if focal_px is not None and not (np.isfinite(focal_px) and focal_px > 0):
        raise ValueError(f"focal_px must be a positive number of pixels, got {focal_px}")
    cfg = config or FitConfig()
    tracker = Tracker(model, ids, size, focal_px, cfg, identity)
    passes = 2 if (two_pass and identity is None and mu.shape[0] > 1) else 1
    for pss in range(passes):
        if pss == 1:
            tracker = Tracker(model, ids, size, tracker.focal, cfg, tracker.identity)
        out = _track(tracker, mu, sigma, model, progress)
    return out


def _track(tracker, mu, sigma, model, progress):
    nf, nl = mu.shape[:2]
    e, j = model.n_expression, model.n_joints
    res = SequenceFit(np.zeros(model.n_identity), np.full((nf, e), np.nan), np.full((nf, j, 3), np.nan),
                      np.full((nf, 3), np.nan), np.full(nf, np.nan), np.full(nf, np.nan),
                      np.zeros(nf, np.int64), np.full(nf, -2, np.int64), np.full((nf, nl, 2), np.nan),
                      tracker.table.vertex_ids, tuple(model.expression_names))
    for f in range(nf):
        fit = tracker.step(mu[f], sigma[f])
        if fit is not None:
            res.expression[f] = fit.params.expression
            res.rotations[f] = fit.params.rotations
            res.translation[f] = fit.params.translation
            res.focal[f] = fit.focal
            res.cost[f] = fit.cost
            res.iterations[f] = fit.iterations
            res.status[f] = fit.status
            res.uv[f] = fit.uv
        if progress is not None:
            progress(f)
    res.identity = tracker.identity.copy()
    return res


def fit_landmarks_file(in_path, out_path, model=None, config=None, progress=None):
    """``lmfit3d fit-landmarks``: read landmarks from an .npz, fit, write results atomically.

    IN keys: ``mu`` (F, L, 2) pixels; ``sigma`` (F, L) pixels (optional, default 1); ``landmark_set``
    (str) or ``vertex_ids`` (L,); ``image_size`` (2,) = (width, height); ``focal_px`` (optional).

    OUT keys: ``vertices`` (F, V, 3) float32 mm in camera coordinates (NaN for failed frames);
    ``identity`` (K,); ``expression`` (F, E) and ``expression_names``; ``root_rotation`` (F, 3)
    axis-angle; ``translation`` (F, 3) mm; ``joint_rotations`` (F, J-1, 3) and ``joint_names``
    (neck, head, eye_L, eye_R); ``focal_px``; ``cost``, ``iterations``, ``status`` per frame;
    ``landmarks_fitted`` (F, L, 2) pixels.
    """
    from pathlib import Path
    from .paths import atomic_write, read_npz
    data = read_npz(in_path, ("mu", "image_size"))
    lset = str(data["landmark_set"]) if "landmark_set" in data else None
    vids = data.get("vertex_ids")
    focal = float(data["focal_px"]) if "focal_px" in data else None
    model = model or load_model()
    res = fit_landmarks(data["mu"], data.get("sigma"), landmark_set=lset, vertex_ids=vids,
                        image_size=tuple(np.asarray(data["image_size"]).ravel()), focal_px=focal,
                        model=model, config=config, progress=progress)
    nf = res.expression.shape[0]
    verts = np.stack([res.vertices(model, f).astype(np.float32) for f in range(nf)])
    out = dict(vertices=verts, identity=res.identity, expression=res.expression,
               expression_names=np.array(res.expression_names), root_rotation=res.rotations[:, 0],
               translation=res.translation, joint_rotations=res.rotations[:, 1:],
               joint_names=np.array(model.joint_names[1:]), focal_px=res.focal, cost=res.cost,
               iterations=res.iterations, status=res.status, landmarks_fitted=res.uv,
               vertex_ids=res.vertex_ids, units=np.array("mm"))
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as fh:
        np.savez(fh, **out)
    return res
