"""The energy, defined once: parameter layouts, term weights, the landmark loss and a NumPy reference.

Every solver minimises the same energy (paper sec. 3.2, eqs. 1-5; ``docs/architecture.md``)::

    E = sum_i 1/2 rho(|r_i|^2)                       landmarks: r_i = (pi(x_i) - mu_i) / sigma_i
      + w_t sum_i |x_i - x_i^prev|^2                 temporal (mm, landmark vertices)
      + w_e |psi|^2 + 2 w_a sum_(a,b) psi_a psi_b    expression prior; antagonist pairs (:data:`ANTAGONISTS`)
      + w_j |theta_{1..}|^2                          non-root joint prior
      + w_id (-log sum_c w_c N(beta; m_c, s_c^2))    identity (GMM, shifted to 0 at the mean)
      + w_x sum_v d_v^2                              intersection depth (mm) of lids and lips

``rho`` is the landmark loss (:data:`LOSSES`): ``squared`` (rho(s) = s, the paper's Gaussian
likelihood) or ``cauchy`` (rho(s) = c^2 log(1 + s / c^2), c = ``loss_scale`` in sigmas: a landmark
c sigmas off counts log 2 c^2 instead of c^2).  The fast paths are Gauss-Newton: per landmark
they weight its residual and Jacobian rows by sqrt(rho'(s)) (iteratively reweighted least
squares) through :func:`landmark_loss`, the one place that defines the loss for all three
solvers (``terms.vertex_term``, the tracking kernels of ``frame_lm``, ``capture_cameras.camera_pass``).

This module holds:

* the parameter layouts, :class:`FrameLayout` (one frame: pose, expression, identity, focal) and
  :class:`CaptureLayout` (offline: identity, then per frame pose + expression, then per camera
  rotation, translation, focal) -- no other module writes index literals for them;
* :func:`residual_scale`: a weight w in front of |r|^2 is sqrt(2 w) on the residual;
* :func:`identity_prior`: the identity term of every solver (cost, gradient, Gauss-Newton diagonal);
* :func:`frame_terms` and :func:`capture_terms`: the whole energy in plain NumPy, term by term,
  with the model evaluated independently of the kernels.  Tests hold every fast path to them
  (``tests/test_energy.py``); the SciPy baseline (``bench/baseline_scipy.py``) solves
  :func:`frame_residuals`.

Units: mm in model space, pixels in the image, radians for axis-angle rotations.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

LOSSES = ("squared", "cauchy")
# Shapes that oppose each other: the antagonist term w_a psi_a psi_b (>= 0, psi in [0, 1]) costs their
# co-activation, where two opposite shapes cancel in the landmarks and stand in for the identity.
ANTAGONISTS = (("browDown_L", "browInnerUp_L"), ("browDown_L", "browOuterUp_L"),
               ("browDown_R", "browInnerUp_R"), ("browDown_R", "browOuterUp_R"),
               ("eyeBlink_L", "eyeWide_L"), ("eyeSquint_L", "eyeWide_L"),
               ("eyeBlink_R", "eyeWide_R"), ("eyeSquint_R", "eyeWide_R"),
               ("mouthSmile_L", "mouthFrown_L"), ("mouthSmile_R", "mouthFrown_R"),
               ("mouthLeft", "mouthRight"), ("jawLeft", "jawRight"),
               ("eyeLookUp_L", "eyeLookDown_L"), ("eyeLookUp_R", "eyeLookDown_R"),
               ("eyeLookIn_L", "eyeLookOut_L"), ("eyeLookIn_R", "eyeLookOut_R"))
N_CAMERA = 7                    # camera block of the capture vector: rotation (3), translation (3), focal (1)


# -- layouts ---------------------------------------------------------------------------------------

ROOT_ROTATION = slice(0, 3)     # the root rotation (axis-angle) leads every frame vector x


@dataclass(frozen=True)
class FrameLayout:
    """Layout of one frame's full parameter vector x::

        [root rotation (3), translation (3, mm), joints 1.. (3 each), expression (E), identity (K), focal]
    """

    n_joints: int
    n_expression: int
    n_identity: int

    @classmethod
    def of(cls, model):
        return cls(int(model.n_joints), int(model.n_expression), int(model.n_identity))

    @property
    def pose_dim(self):
        """Root rotation, translation and the non-root joints (18 for the ICT rig)."""
        return 6 + 3 * (self.n_joints - 1)

    @property
    def root_rotation(self):
        return ROOT_ROTATION

    @property
    def translation(self):
        return slice(3, 6)

    @property
    def joints(self):
        return slice(6, self.pose_dim)

    def joint(self, k):
        """Slice of non-root joint k's axis-angle (k >= 1)."""
        if not 1 <= k < self.n_joints:
            raise ValueError(f"joint index must be in [1, {self.n_joints}), got {k}")
        return slice(6 + 3 * (k - 1), 6 + 3 * k)

    @property
    def pose(self):
        return slice(0, self.pose_dim)

    @property
    def expression(self):
        return slice(self.pose_dim, self.pose_dim + self.n_expression)

    @property
    def identity(self):
        s = self.pose_dim + self.n_expression
        return slice(s, s + self.n_identity)

    @property
    def focal(self):
        return slice(self.size - 1, self.size)

    @property
    def size(self):
        return self.pose_dim + self.n_expression + self.n_identity + 1

    def slices(self):
        """dict name -> slice of every block."""
        return {name: getattr(self, name) for name in ("root_rotation", "translation", "joints", "expression",
                                                       "identity", "focal")}

    def rotations(self, x, out=None):
        """Joint rotations (J, 3) axis-angle of x (row 0: the root), into ``out`` when given."""
        rot = np.empty((self.n_joints, 3)) if out is None else out
        rot[0] = x[self.root_rotation]
        rot[1:] = np.reshape(x[self.joints], (-1, 3))
        return rot

    def pack_pose(self, rotations, translation):
        """The pose block (``pose_dim``,) of joint rotations (J, 3) and a root translation (3,) mm."""
        x = np.empty(self.pose_dim)
        x[self.root_rotation] = rotations[0]
        x[self.translation] = translation
        x[self.joints] = np.asarray(rotations[1:]).ravel()
        return x

    def pack(self, params, focal):
        """Full vector of ``model.Params`` and a focal length (pixels)."""
        x = np.empty(self.size)
        x[self.root_rotation] = params.rotations[0]
        x[self.translation] = params.translation
        x[self.joints] = np.asarray(params.rotations[1:]).ravel()
        x[self.expression] = params.expression
        x[self.identity] = params.identity
        x[self.focal] = focal
        return x

    def unpack(self, x):
        """(identity, expression, rotations (J, 3), translation, focal) of a full vector (copies)."""
        return (x[self.identity].copy(), x[self.expression].copy(), self.rotations(x), x[self.translation].copy(),
                float(x[self.focal][0]))


@dataclass(frozen=True)
class CaptureLayout:
    """Layout of the offline vector z::

        [identity (K)] [frame 0: pose (18), expression (E)] ... [camera 0: rotation, translation, focal] ...
    """

    frame: FrameLayout
    n_frames: int
    n_cameras: int

    @classmethod
    def of(cls, model, n_frames, n_cameras):
        return cls(FrameLayout.of(model), int(n_frames), int(n_cameras))

    @property
    def identity(self):
        return slice(0, self.frame.n_identity)

    @property
    def frame_size(self):
        """Pose and expression of one frame."""
        return self.frame.pose_dim + self.frame.n_expression

    @property
    def cameras_start(self):
        return self.frame.n_identity + self.n_frames * self.frame_size

    @property
    def size(self):
        return self.cameras_start + N_CAMERA * self.n_cameras

    def frame_block(self, f):
        """Slice of frame f: its pose (``FrameLayout.pose``) then its expression."""
        s = self.frame.n_identity + f * self.frame_size
        return slice(s, s + self.frame_size)

    def expression_block(self, f):
        s = self.frame_block(f).start + self.frame.pose_dim
        return slice(s, s + self.frame.n_expression)

    def camera_block(self, j):
        s = self.cameras_start + N_CAMERA * j
        return slice(s, s + N_CAMERA)

    def set_frame(self, z, f, rotations, translation, expression):
        """Write frame f's joint rotations (J, 3), root translation (3,) mm and expression (E,) into z."""
        fl, s = self.frame, self.frame_block(f).start
        z[s:s + fl.pose_dim] = fl.pack_pose(rotations, translation)
        z[self.expression_block(f)] = expression

    def get_frame(self, z, f):
        """(rotations (J, 3), translation (3,), expression (E,)) of frame f (copies)."""
        fl, blk = self.frame, z[self.frame_block(f)]
        return fl.rotations(blk), blk[fl.translation].copy(), blk[fl.pose_dim:].copy()

    def set_camera(self, z, j, rotation=None, translation=None, focal=None):
        """Write camera j's axis-angle rotation (3,), translation (3,) mm and focal (pixels), those given."""
        s = self.camera_block(j).start
        if rotation is not None:
            z[s:s + 3] = rotation
        if translation is not None:
            z[s + 3:s + 6] = translation
        if focal is not None:
            z[s + 6] = focal

    def frame_joint_block(self, f, k):
        """Slice of frame f's non-root joint k (k >= 1) in z."""
        jk = self.frame.joint(k)
        s = self.frame_block(f).start
        return slice(s + jk.start, s + jk.stop)

    def frame_vector(self, z, f, focal):
        """Frame f of z as a :class:`FrameLayout` vector (identity of z, the given focal)."""
        fl = self.frame
        x = np.empty(fl.size)
        blk = z[self.frame_block(f)]
        x[fl.pose] = blk[:fl.pose_dim]
        x[fl.expression] = blk[fl.pose_dim:]
        x[fl.identity] = z[self.identity]
        x[fl.focal] = focal
        return x

    def camera_params(self, z, j):
        """(axis-angle (3,), T_j (3,) mm, focal (pixels)) of camera j (copies)."""
        c = z[self.camera_block(j)]
        return c[0:3].copy(), c[3:6].copy(), float(c[6])

    def camera(self, z, j):
        """(R_j (3, 3), T_j (3,) mm, focal (pixels)) of camera j."""
        w, t, f = self.camera_params(z, j)
        return rodrigues_reference(w), t, f


# -- weights and loss ------------------------------------------------------------------------------

def residual_scale(w):
    """sqrt(2 w): the residual scale of a term written w |r|^2 (cost 1/2 |sqrt(2 w) r|^2)."""
    return math.sqrt(2.0 * float(w))


def loss_parameter(name, scale):
    """The kernels' loss argument: 0 for ``squared``, c > 0 for ``cauchy`` (ValueError otherwise)."""
    if name not in LOSSES:
        raise ValueError(f"landmark_loss must be one of {LOSSES}, got {name!r}")
    if name == "squared":
        return 0.0
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"loss_scale must be a finite number > 0 (sigmas), got {scale}")
    return float(scale)


@njit(cache=True, inline="always")
def landmark_loss(s, c):
    """rho(s) and rho'(s) of one landmark's squared residual s = |r|^2 (sigma units).

    c = 0: squared loss, (s, 1).  c > 0: Cauchy, (c^2 log(1 + s / c^2), 1 / (1 + s / c^2)).
    The landmark costs 1/2 rho(s); a Gauss-Newton solver scales its residual and Jacobian rows by
    sqrt(rho'(s)).
    """
    if c <= 0.0:
        return s, 1.0
    c2 = c * c
    q = 1.0 + s / c2
    return c2 * np.log(q), 1.0 / q


def loss_reference(s, c):
    """NumPy rho(s) of :func:`landmark_loss` (elementwise)."""
    s = np.asarray(s, dtype=np.float64)
    return s if c <= 0 else c * c * np.log1p(s / (c * c))


# -- expression prior ------------------------------------------------------------------------------

def antagonist_pairs(expression_names):
    """(P, 2) int64 indices of the :data:`ANTAGONISTS` pairs present in ``expression_names``."""
    pos = {n: i for i, n in enumerate(expression_names)}
    pairs = [(pos[a], pos[b]) for a, b in ANTAGONISTS if a in pos and b in pos]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def expression_prior_scales(n_expression, pairs, w_expression, w_antagonist):
    """Residual scales of the expression prior as a sum of squares: (per shape (E,), per pair).

    w_e |psi|^2 + 2 w_a sum_pairs psi_a psi_b = sum_e (w_e - w_a c_e) psi_e^2 + w_a sum_pairs (psi_a + psi_b)^2,
    c_e the number of pairs holding shape e: residuals sqrt(2 (w_e - w_a c_e)) psi_e and
    sqrt(2 w_a) (psi_a + psi_b), linear in psi (ValueError unless w_a c_e <= w_e for every shape).
    """
    count = np.bincount(np.asarray(pairs, dtype=np.int64).ravel(), minlength=n_expression)
    if np.any(w_antagonist * count > w_expression):
        raise ValueError(f"w_antagonist must be <= w_expression / {int(count.max())} (a shape in "
                         f"{int(count.max())} antagonist pairs), got {w_antagonist} with w_expression {w_expression}")
    return np.sqrt(2.0 * (w_expression - w_antagonist * count)), residual_scale(w_antagonist)


def expression_prior(psi, pairs, config):
    """The expression prior's cost w_e |psi|^2 + 2 w_a sum_pairs psi_a psi_b (NumPy reference)."""
    psi = np.asarray(psi)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    cross = float((psi[..., pairs[:, 0]] * psi[..., pairs[:, 1]]).sum())
    return config.w_expression * float((psi * psi).sum()) + 2.0 * config.w_antagonist * cross


# -- identity prior --------------------------------------------------------------------------------

def identity_prior(model, beta, w):
    """The identity term: w (-log sum_c w_c N(beta; m_c, diag s_c^2) + const), const so that it is
    0.5 w |(beta - m) / s|^2 for one component.

    Returns (cost, gradient (K,), Gauss-Newton diagonal (K,)): the responsibilities' mixture of
    each component's 0.5 w |(beta - m_c) / s_c|^2 derivatives.
    """
    lognorm = np.log(model.gmm_weights) - np.log(model.gmm_stds).sum(1)
    d = (np.asarray(beta)[None] - model.gmm_means) / model.gmm_stds
    logp = lognorm - 0.5 * (d * d).sum(1)
    top = logp.max()
    lse = top + np.log(np.exp(logp - top).sum())
    resp = np.exp(logp - lse)
    ltop = lognorm.max()
    const = ltop + np.log(np.exp(lognorm - ltop).sum())
    grad = w * (resp[:, None] * d / model.gmm_stds).sum(0)
    diag = w * (resp[:, None] / model.gmm_stds ** 2).sum(0)
    return float(w * (const - lse)), grad, diag


# -- the model, in NumPy ---------------------------------------------------------------------------

def rodrigues_reference(w):
    """R = exp([w]_x) (3, 3) of one axis-angle vector (radians), Rodrigues' formula."""
    w = np.asarray(w, dtype=np.float64)
    angle = float(np.linalg.norm(w))
    k = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    if angle < 1e-8:
        return np.eye(3) + k + 0.5 * k @ k
    return np.eye(3) + math.sin(angle) / angle * k + (1.0 - math.cos(angle)) / angle ** 2 * k @ k


def posed_points(template, weights, rotations, joints, parents, translation):
    """Linear blend skinning of template points (N, 3) mm: x = R_0 sum_k w_k G_k(t) + T.

    G_k is joint k's transform before the root: G_0 = identity, G_k = G_parent(k) o (rotate by R_k
    about the bind location j_k).
    """
    nj = len(parents)
    rg = np.zeros((nj, 3, 3))
    tg = np.zeros((nj, 3))
    rg[0] = np.eye(3)
    for k in range(1, nj):
        p, rk = parents[k], rodrigues_reference(rotations[k])
        rg[k] = rg[p] @ rk
        tg[k] = tg[p] + rg[p] @ (joints[k] - rk @ joints[k])
    per_joint = np.einsum("kij,nj->nki", rg, template) + tg[None]          # (N, J, 3)
    v = np.einsum("nk,nki->ni", weights, per_joint)
    return v @ rodrigues_reference(rotations[0]).T + translation


def project_reference(xc, focal, cx, cy):
    """Pinhole projection (N, 2) pixels of camera-space points (N, 3) mm (camera looks down -z)."""
    return np.column_stack([cx + focal * xc[:, 0] / -xc[:, 2], cy - focal * xc[:, 1] / -xc[:, 2]])


def template_points(mean, identity_blocks, expr_idx, expr_blocks, beta, psi):
    """T(beta, psi) (N, 3) at table rows: mean + S beta + sum of the kept expression blocks."""
    t = mean + (identity_blocks @ beta if identity_blocks is not None else 0.0)
    safe = np.where(expr_idx >= 0, expr_idx, 0)
    weights = np.where(expr_idx >= 0, psi[safe], 0.0)                        # (N, D)
    return t + np.einsum("nd,ndi->ni", weights, expr_blocks)


class Intersection(NamedTuple):
    """Geometry of the intersection term (template space; ``intersection.IntersectionTerm`` builds it).

    template (n, 3) points at the identity they were built for, or the identity mean when
    ``identity_blocks`` (n, 3, K) is given; expr_idx / expr_blocks their sparsity table; the eyeball
    spheres (centres (2, 3), radii (2,)), the teeth hulls' planes (H, P, 4) [n, d] (inside: d - n.t > 0
    for every plane); sphere_of / hull_of (n,) the sphere / hull each point is tested against (-1: none).
    """

    template: np.ndarray
    identity_blocks: object
    expr_idx: np.ndarray
    expr_blocks: np.ndarray
    sphere_c: np.ndarray
    sphere_r: np.ndarray
    sphere_of: np.ndarray
    planes: np.ndarray
    hull_of: np.ndarray


def intersection_depths(geom: Intersection, beta, psi):
    """Penetration depth (n,) mm of each intersection point: R - |t - c| inside its eyeball sphere,
    min over planes of (d - n.t) inside its teeth hull, else 0."""
    t = template_points(geom.template, geom.identity_blocks, geom.expr_idx, geom.expr_blocks, beta, psi)
    depth = np.zeros(t.shape[0])
    sph = geom.sphere_of >= 0
    dist = np.linalg.norm(t[sph] - geom.sphere_c[geom.sphere_of[sph]], axis=1)
    r = geom.sphere_r[geom.sphere_of[sph]]
    depth[sph] = np.where((dist < r) & (dist > 0), r - dist, 0.0)
    for h in range(geom.planes.shape[0]):
        ids = np.flatnonzero(geom.hull_of == h)
        dq = geom.planes[h, :, 3][None] - t[ids] @ geom.planes[h, :, :3].T
        depth[ids] = np.where((dq > 0).all(1), dq.min(1), 0.0)
    return depth


# -- the energy, in NumPy --------------------------------------------------------------------------

def landmark_residuals(uv, mu, inv_sigma):
    """(pi - mu) / sigma (N, 2), 0 where mu is missing (NaN) or 1/sigma is 0."""
    ok = np.isfinite(mu).all(1) & (inv_sigma > 0)
    return np.where(ok[:, None], (uv - np.where(ok[:, None], mu, 0.0)) * inv_sigma[:, None], 0.0)


def _landmark_cost(r, c):
    return 0.5 * float(loss_reference((r * r).sum(1), c).sum())


def frame_positions(x, layout: FrameLayout, table, joint_mean, joint_identity, parents):
    """Camera-space landmark vertex positions (L, 3) mm of frame vector x (the table's blocks)."""
    beta, psi, rot, trans, _ = layout.unpack(x)
    t = template_points(table.mean, table.identity_blocks, table.expr_idx, table.expr_blocks, beta, psi)
    joints = joint_mean + joint_identity @ beta
    return posed_points(t, table.weights, rot, joints, parents, trans)


def frame_terms(x, layout: FrameLayout, table, model, mu, inv_sigma, centre, config, prev=None,
                intersection: Intersection = None):
    """Every term of one frame's energy at the full vector x, as a dict name -> cost.

    Parameters
    ----------
    x : (P,) float64, full frame vector (:class:`FrameLayout`).
    table : ``sparsity.SparsityTable`` of the L landmark vertices.
    model : ``model.FaceModel`` (joint locations and basis, parents, identity GMM).
    mu : (L, 2) pixels, NaN rows missing; inv_sigma : (L,) 1/sigma (pixels^-1).
    centre : (cx, cy) principal point (pixels).
    config : ``fit.FitConfig`` (weights, landmark loss).
    prev : (L, 3) previous landmark vertex positions (mm, NaN rows skipped), or None: no temporal term.
    intersection : :class:`Intersection` or None.

    Keys: landmarks, temporal, expression, joints, identity, intersection.  A solver with some
    parameters held omits the priors on them (constants).
    """
    beta, psi = x[layout.identity], x[layout.expression]
    xc = frame_positions(x, layout, table, model.joint_mean, model.joint_identity, model.joint_parents)
    uv = project_reference(xc, float(x[layout.focal][0]), centre[0], centre[1])
    c = loss_parameter(config.landmark_loss, config.loss_scale)
    out = {"landmarks": _landmark_cost(landmark_residuals(uv, mu, inv_sigma), c), "temporal": 0.0}
    if prev is not None and config.w_temporal > 0:
        ok = np.isfinite(prev).all(1)
        out["temporal"] = config.w_temporal * float(((xc[ok] - prev[ok]) ** 2).sum())
    out["expression"] = expression_prior(psi, antagonist_pairs(model.expression_names), config)
    out["joints"] = config.w_joints * float(x[layout.joints] @ x[layout.joints])
    out["identity"] = identity_prior(model, beta, config.w_identity)[0]
    depth = intersection_depths(intersection, beta, psi) if intersection is not None else np.zeros(0)
    out["intersection"] = config.w_intersection * float(depth @ depth)
    return out


def frame_residuals(x, layout: FrameLayout, table, model, mu, inv_sigma, centre, config, prev=None,
                    intersection: Intersection = None, priors=("expression", "joints")):
    """Residual vector r of the frame energy, 1/2 |r|^2 = the sum of :func:`frame_terms` over
    landmarks, temporal, intersection and the named ``priors`` (the identity prior is not a sum of
    squares for several components: held here).  The Cauchy loss scales each landmark's residual
    pair by sqrt(rho(s) / s)."""
    beta, psi = x[layout.identity], x[layout.expression]
    xc = frame_positions(x, layout, table, model.joint_mean, model.joint_identity, model.joint_parents)
    uv = project_reference(xc, float(x[layout.focal][0]), centre[0], centre[1])
    r = landmark_residuals(uv, mu, inv_sigma)
    c = loss_parameter(config.landmark_loss, config.loss_scale)
    if c > 0:
        s = (r * r).sum(1)
        r = r * np.sqrt(np.where(s > 0, loss_reference(s, c) / np.where(s > 0, s, 1.0), 1.0))[:, None]
    parts = [r.ravel()]
    if prev is not None and config.w_temporal > 0:
        ok = np.isfinite(prev).all(1)
        parts.append((residual_scale(config.w_temporal) * np.where(ok[:, None], xc - np.where(
            ok[:, None], prev, 0.0), 0.0)).ravel())
    if "expression" in priors:
        pairs = antagonist_pairs(model.expression_names)
        per_shape, per_pair = expression_prior_scales(psi.size, pairs, config.w_expression, config.w_antagonist)
        parts += [per_shape * psi, per_pair * (psi[pairs[:, 0]] + psi[pairs[:, 1]])]
    if "joints" in priors:
        parts.append(residual_scale(config.w_joints) * x[layout.joints])
    if intersection is not None and config.w_intersection > 0:
        parts.append(residual_scale(config.w_intersection) * intersection_depths(intersection, beta, psi))
    return np.concatenate(parts)


def capture_terms(z, layout: CaptureLayout, table, model, mu, inv_sigma, centres, config,
                  intersection: Intersection = None):
    """Every term of the offline energy (all frames and cameras) at z, as a dict name -> cost.

    mu (C, F, L, 2) pixels, inv_sigma (C, F, L) (0: missing), centres (C, 2) principal points;
    config a ``fit.FitConfig``; intersection with ``identity_blocks`` (template at beta = 0).
    Cameras map world points x (the head's root pose applied) to x_cam_j = R_j x + T_j.  Temporal
    term on world positions of consecutive frames.
    """
    c = loss_parameter(config.landmark_loss, config.loss_scale)
    fl = layout.frame
    beta = z[layout.identity]
    out = dict(landmarks=0.0, temporal=0.0, expression=0.0, joints=0.0, intersection=0.0)
    prev = None
    for f in range(layout.n_frames):
        x = layout.frame_vector(z, f, 1.0)
        psi = x[fl.expression]
        xw = frame_positions(x, fl, table, model.joint_mean, model.joint_identity, model.joint_parents)
        for j in range(layout.n_cameras):
            rc, tc, focal = layout.camera(z, j)
            uv = project_reference(xw @ rc.T + tc, focal, centres[j][0], centres[j][1])
            out["landmarks"] += _landmark_cost(landmark_residuals(uv, mu[j, f], inv_sigma[j, f]), c)
        if prev is not None:
            out["temporal"] += config.w_temporal * float(((xw - prev) ** 2).sum())
        prev = xw
        out["expression"] += expression_prior(psi, antagonist_pairs(model.expression_names), config)
        out["joints"] += config.w_joints * float(x[fl.joints] @ x[fl.joints])
        if intersection is not None and config.w_intersection > 0:
            depth = intersection_depths(intersection, beta, psi)
            out["intersection"] += config.w_intersection * float(depth @ depth)
    out["identity"] = identity_prior(model, beta, config.w_identity)[0]
    return out
