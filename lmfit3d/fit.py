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
from dataclasses import dataclass, field

import numpy as np

from .camera import focal_from_fov
from .energy import ROOT_ROTATION, loss_parameter
from .landmarks import resolve_vertex_ids
from .model import Params, load_model
from .context import FitContext
from .problem import FrameProblem, KeyframeProblem, masks, params_to_vector, vector_to_params
from .sparsity import layout
from .tracking_points import count_finite_rows



def turned_from(x, keyframes, angle_deg):
    """Whether frame vector ``x``'s head rotation (``x[ROOT_ROTATION]``, axis-angle) is at least
    ``angle_deg`` from that of every keyframe [(x, mu, sigma)]: the keyframe rule (a new view)."""
    r = x[ROOT_ROTATION]
    return all(np.degrees(np.linalg.norm(r - kx[ROOT_ROTATION])) >= angle_deg for kx, _, _ in keyframes)

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

    ``w_antagonist``: the cost 2 w_a psi_a psi_b of opposite shapes active together
    (``energy.ANTAGONISTS``: brow down / up, eye wide / blink or squint, smile / frown, left / right);
    at most ``w_expression`` / 2 (a shape is in up to two pairs).

    ``landmark_loss``: ``"squared"`` (the paper's) or ``"cauchy"`` with scale ``loss_scale`` (sigmas),
    a robust loss for landmarks far off (``energy.landmark_loss``; every solver uses it).
    """

    w_identity: float = 1.0
    w_expression: float = 1.0
    w_joints: float = 20.0
    w_temporal: float = 0.05
    w_intersection: float = 10.0
    w_antagonist: float = 0.0
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
        for name in ("w_identity", "w_expression", "w_joints", "w_temporal", "w_intersection", "w_antagonist",
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
    context : :class:`~lmfit3d.context.FitContext` of (model, vertex_ids, ``config.sparsity_threshold_mm``)
        to re-use (another tracker's ``context``: a video's second pass, another face, another camera);
        None builds one.  ValueError when it belongs to another model, landmark set or threshold.

    Attributes
    ----------
    context : the tracker's :class:`~lmfit3d.context.FitContext` (sparsity table, tracking plans,
        intersection terms); hand it to the next tracker of the same model and landmarks.
    refit_in_step : bool, refit identity / focal inside :meth:`step` when a keyframe is added (default);
        False leaves the keyframe in ``keyframes`` with ``refit_pending`` set, for a caller that runs
        :func:`refit_keyframes` elsewhere (``lmfit3d live``: in a worker process) and hands the result
        back with :meth:`apply_refit`.
    """

    def __init__(self, model, vertex_ids, image_size, focal=None, config=None, identity=None, *, context=None):
        self.model = model
        self.cfg = config or FitConfig()
        thr = self.cfg.sparsity_threshold_mm
        if context is None:
            context = FitContext(model, vertex_ids, thr)
        else:
            context.check(model, vertex_ids, thr)
        self.context = context
        self.table = context.table
        self.image_size = (float(image_size[0]), float(image_size[1]))
        self.focal_known = focal is not None
        self.focal = float(focal) if focal is not None else focal_from_fov(image_size[0], 45.0)
        self.identity_fixed = identity is not None
        self.identity = np.zeros(model.n_identity) if identity is None else np.asarray(identity, float)
        self.x = None
        self.prev = None
        self.keyframes = []          # (x, mu, sigma)
        self.refit_in_step = True
        self.refit_pending = False
        self._inter_key = self.inter = None     # the identity of ``inter``, its intersection term
        self._frame_prob = None      # per-frame problem, re-used from frame to frame
        self._frame_mask = masks(model, "pose", "joints", "expression", eyes=self.cfg.fit_eyes,
                                 gaze_shapes=self.cfg.fit_gaze_shapes)
        self._sl = layout(model)[0]

    def _intersection(self):
        """The intersection term of the current identity (the tracker keeps its own: several trackers with
        different identities may share one context, whose store is small)."""
        if self.cfg.w_intersection <= 0:
            return None
        key = self.identity.tobytes()
        if key != self._inter_key:
            self.inter = self.context.intersection(self.identity)
            self._inter_key = key
        return self.inter

    def _problem(self, mu, sigma, prev=None):
        return FrameProblem(self.context, mu, sigma, self.image_size, self.cfg, prev, self._intersection())

    def _step_problem(self, mu, sigma, prev):
        """The tracking problem of this frame: built once, then only its frame data change."""
        inter = self._intersection()
        prob = self._frame_prob
        if prob is None or prob.inter is not inter:
            prob = self._frame_prob = FrameProblem(self.context, mu, sigma, self.image_size, self.cfg, prev, inter)
        else:
            prob.set_frame(mu, sigma, prev)
        return prob

    def fresh(self, focal=None):
        """A new tracker for another face: the same model, context, camera and settings, no frames seen,
        no keyframes; identity zeros unless fixed; focal length ``focal`` held when given."""
        import copy
        tr = copy.copy(self)
        tr.x = tr.prev = tr._frame_prob = tr._inter_key = tr.inter = None
        tr.keyframes = []
        if not tr.identity_fixed:
            tr.identity = np.zeros(self.model.n_identity)
        if focal is not None:
            tr.focal, tr.focal_known = float(focal), True
        return tr

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
        return len(self.keyframes) < self.cfg.max_keyframes and turned_from(x, self.keyframes,
                                                                           self.cfg.keyframe_angle_deg)

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

    def apply_refit(self, identity, focal, xs):
        """Take a refit made elsewhere (:func:`refit_keyframes` on the first ``len(xs)`` keyframes, with
        the identity / focal flags they had then): identity, focal and those keyframes' parameter
        vectors; later keyframes stay pending."""
        n = len(xs)
        self.identity = np.asarray(identity, float).copy()
        self.focal = float(focal)
        self.keyframes = [(x, mu, sg) for x, (_, mu, sg) in zip(xs, self.keyframes[:n])] + self.keyframes[n:]
        self.refit_pending = len(self.keyframes) > n

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
            if self.refit_in_step:
                self.refit_identity()
                x[sl["identity"]] = self.identity
                x[sl["focal"]] = self.focal
            else:
                self.refit_pending = True
            x, res = prob.solve(x, self._frame_mask, self.cfg.max_iter_init if first else self.cfg.max_iter)
        self.x = x
        self.prev, uv = prob.landmark_positions(x)
        params, focal = vector_to_params(m, x)
        return FrameFit(params, focal, uv, res.cost, res.iterations, res.status, res.status >= 0, res.jtj_evals)


def refit_keyframes(model, vertex_ids, image_size, config, identity, focal, identity_fixed, focal_known,
                    keyframes, *, context=None):
    """:meth:`Tracker.refit_identity` as a plain function of its inputs (for a worker process, which
    passes its :class:`~lmfit3d.context.FitContext` along): returns (identity (K,), focal, keyframe
    vectors [x, ...])."""
    t = Tracker(model, vertex_ids, image_size, focal if focal_known else None, config,
                identity if identity_fixed else None, context=context)
    t.identity = np.asarray(identity, float).copy()
    t.focal = float(focal)
    t.keyframes = list(keyframes)
    t.refit_identity()
    return t.identity, t.focal, [x for x, _, _ in t.keyframes]


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
        raise ValueError(f"sigma must be finite and > 0 for present landmarks (frame {f}, landmark {l}: "
                         f"{float(sigma[f, l])})")
    bad = present & (sigma < MIN_SIGMA_PX)
    if bad.any():
        f, l = np.argwhere(bad)[0]
        raise ValueError(f"sigma must be >= {MIN_SIGMA_PX} px for present landmarks (frame {f}, landmark {l}: "
                         f"{float(sigma[f, l]):.3g})")
    return mu, np.where(present, sigma, 1.0)


MIN_SIGMA_PX = 1e-3     # a smaller landmark sigma is not a measurement (float32 pixels resolve ~1e-4 at 4K)


def check_landmark_range(mu, image_size):
    """ValueError naming the first landmark of ``mu`` (F, L, 2) that lies more than one image size
    beyond an edge of the image (x outside [-W, 2W] or y outside [-H, 2H]): not a measurement of a
    face seen in the image, and one such value would pull the identity and focal length of every
    frame (use NaN for a missing landmark)."""
    w, h = (float(v) for v in image_size)
    with np.errstate(invalid="ignore"):
        far = (np.abs(mu[..., 0] - w / 2) > 1.5 * w) | (np.abs(mu[..., 1] - h / 2) > 1.5 * h)
    if far.any():
        f, l = np.argwhere(far)[0]
        x, y = (float(v) for v in mu[f, l])
        raise ValueError(f"mu: frame {f}, landmark {l} at ({x:.4g}, {y:.4g}) px is more than one image size "
                         f"outside the {w:g} x {h:g} image (use NaN for a missing landmark)")


def fit_landmarks(mu, sigma=None, *, landmark_set=None, vertex_ids=None, image_size, focal_px=None,
                  model=None, config=None, identity=None, two_pass=True, progress=None, context=None):
    """Fit the face model to 2D landmarks of F frames of one camera.

    Parameters
    ----------
    mu : (F, L, 2) float, landmark means in pixels (NaN = missing); within one image size of the
        image (:func:`check_landmark_range`).
    sigma : (F, L) float, standard deviations in pixels (default 1), >= ``MIN_SIGMA_PX``.
    landmark_set : str, e.g. ``"dense320"``; or ``vertex_ids`` (L,) model vertices.
    image_size : (width, height) pixels.
    focal_px : float, optional; unknown when None (45 degree FOV start, refitted on keyframes).
    identity : (K,) optional fixed identity.
    two_pass : bool; when the identity is estimated, track the clip again with it held.
    context : :class:`~lmfit3d.context.FitContext` of (model, landmark vertices, sparsity threshold) to
        re-use, or None (one is built; both passes use it).

    Returns
    -------
    SequenceFit
    """
    model = model or load_model()
    ids = resolve_vertex_ids(landmark_set, vertex_ids, model.n_vertices)
    mu, sigma = validate_landmarks(mu, sigma, ids.size)
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape != (2,) or not (np.isfinite(size) & (size > 0)).all():
        raise ValueError(f"image_size must be (width, height) > 0, got {np.ravel(image_size).tolist()}")
    if focal_px is not None and not (np.ndim(focal_px) == 0 and np.isfinite(focal_px) and focal_px > 0):
        raise ValueError(f"focal_px must be one positive number of pixels, got {np.ravel(focal_px).tolist()}")
    check_landmark_range(mu, size)
    cfg = config or FitConfig()
    tracker = Tracker(model, ids, size, focal_px, cfg, identity, context=context)
    passes = 2 if (two_pass and identity is None and mu.shape[0] > 1) else 1
    for pss in range(passes):
        if pss == 1:
            tracker = Tracker(model, ids, size, tracker.focal, cfg, tracker.identity, context=tracker.context)
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
