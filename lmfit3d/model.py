"""The rigged face model: ICT-FaceKit identity and expression bases with a four-joint skeleton.

Paper notation (Wood et al. 2022, sec. 3.2; ../shared/notes/method.md)::

    M(beta, psi, theta) = LBS(T(beta, psi), J(beta), theta; W)
    T(beta, psi)        = T_mean + S beta + E psi
    J(beta)             = J_mean + S_J beta

Conventions (written once here and in the README):

* Units: millimetres.  ICT vertex order is kept (V = 26719).
* Model axes: x towards the subject's left, y up, z out of the face (the face looks along +z).
* Joints, in order: ``root`` (global rotation + translation), ``neck``, ``head``, ``eye_L``,
  ``eye_R`` (subject's left/right); parents ``[-1, 0, 1, 2, 2]``.  Every joint rotation is an
  axis-angle vector (radians, right-handed about the model axes) applied about the joint's bind
  location; the root rotates about the model origin and is followed by the translation.
* Gaze is owned by the eye joints: ICT's ``eyeLook*`` shapes do not move eyeball vertices, so
  they only move the eyelids and there is no double counting.
"""
import json
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from numba import njit

from .meshio import MeshFormatError, read_obj_faces, read_obj_vertices
from .paths import atomic_write, cache_dir, default_ict_dir

FORMAT_VERSION = 1
MODEL_FILENAME = f"ict_face_model_v{FORMAT_VERSION}.npz"
CM_TO_MM = 10.0
N_VERTICES = 26719
N_IDENTITY = 100

JOINT_NAMES = ("root", "neck", "head", "eye_L", "eye_R")
JOINT_PARENTS = np.array([-1, 0, 1, 2, 2], dtype=np.int64)

# The 53 expression shapes of ICT-FaceKit (ARKit names, L/R split), in ICT's order.
EXPRESSION_NAMES = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)

# Vertex ranges (inclusive) from ICT-FaceKit's README, in vertex order.
REGIONS = (
    ("face", 0, 9408), ("head_neck", 9409, 11247), ("mouth_socket", 11248, 13293),
    ("eye_socket_L", 13294, 13677), ("eye_socket_R", 13678, 14061), ("gums_tongue", 14062, 17038),
    ("teeth", 17039, 21450), ("eyeball_L", 21451, 23020), ("eyeball_R", 23021, 24590),
    ("lacrimal_L", 24591, 24794), ("lacrimal_R", 24795, 24998), ("eye_blend_L", 24999, 25022),
    ("eye_blend_R", 25023, 25046), ("eye_occlusion_L", 25047, 25198),
    ("eye_occlusion_R", 25199, 25350), ("eyelashes_L", 25351, 26034), ("eyelashes_R", 26035, 26718),
)
REGION_NAMES = tuple(r[0] for r in REGIONS)
NARROW_FACE_END = 6705          # vertices [0, 6705] are ICT's "narrow face area"
SCLERA_L = (21451, 22220)
SCLERA_R = (23021, 23790)
UPPER_TEETH = (17039, 19246)
LOWER_TEETH = (19247, 21450)

# Procedural neck/head skinning (model cm before scaling; documented in docs/architecture.md).
# Two cut planes containing the x axis, each given by a back point and a front point (y, z).
HEAD_CUT = ((-4.0, -7.0), (-9.0, 8.0))
NECK_CUT = ((-11.0, -7.0), (-14.0, 6.0))
CUT_HALF_WIDTH_CM = 1.5
# Joint targets on the neutral head (cm) and the slice heights whose vertex-ring centroids carry
# them along with identity: J(beta) = target + centroid(beta) - centroid(mean).
HEAD_JOINT_TARGET = (0.0, -2.5, -0.5)
NECK_JOINT_TARGET_Y = -11.0
RING_HALF_HEIGHT_CM = 0.5


@njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
def template_kernel(v, s, beta, e, psi, e_rows, out):
    """out[r] = v[r] + s[r] . beta + e[r] . psi for every coordinate row r (float64 sums).

    v (R,) float32 mean; s (R, K) and e (R, E) float32 bases (K or E may be given as 0-length beta
    or psi to skip that basis); e_rows (R,) bool, rows of e with a non-zero entry; out (R,) float64.
    The bases are streamed once (memory-bound: 49 MB for the full ICT model).
    """
    nk = beta.shape[0]
    ne = psi.shape[0]
    for r in range(v.shape[0]):
        acc = np.float64(v[r])
        if nk:
            srow = s[r]
            for k in range(nk):
                acc += srow[k] * beta[k]
        if ne and e_rows[r]:
            erow = e[r]
            for k in range(ne):
                acc += erow[k] * psi[k]
        out[r] = acc


@dataclass(frozen=True)
class FaceModel:
    """ICT-FaceKit morphable model with an LBS rig, in millimetres.

    Attributes
    ----------
    vertices : ndarray (V, 3) float32
        Neutral template T_mean (mm).
    faces : ndarray (F, 3) int32
        Triangles (zero-based, ICT order; quads fan-triangulated).
    identity_basis : ndarray (V, 3, K) float32
        S: displacement (mm) per unit identity coefficient beta_k.
    expression_basis : ndarray (V, 3, E) float32
        E: displacement (mm) per unit expression weight psi_e (nominally in [0, 1]).
    expression_names : tuple of str, len E
    joint_mean : ndarray (J, 3) float64
        J_mean: bind-pose joint locations (mm); row 0 (root) is the origin.
    joint_identity : ndarray (J, 3, K) float64
        S_J: joint displacement per unit identity coefficient.
    skin_weights : ndarray (V, J) float32
        LBS weights W, rows sum to 1.
    region_labels : ndarray (V,) uint8
        Index into ``REGION_NAMES``.
    eye_radius : ndarray (2,) float64
        Sphere-fit radius of the left/right sclera (mm).
    identity_mode_rms : ndarray (K,) float64
        RMS vertex displacement of each identity mode (mm), the evidence for the unit-variance prior.
    gmm_weights, gmm_means, gmm_stds : ndarray (C,), (C, K), (C, K) float64
        Identity prior: a mixture of C axis-aligned Gaussians (C = 1, N(0, I) by default).
    """

    vertices: np.ndarray
    faces: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    expression_names: tuple
    joint_mean: np.ndarray
    joint_identity: np.ndarray
    skin_weights: np.ndarray
    region_labels: np.ndarray
    eye_radius: np.ndarray
    identity_mode_rms: np.ndarray
    gmm_weights: np.ndarray
    gmm_means: np.ndarray
    gmm_stds: np.ndarray
    joint_names: tuple = JOINT_NAMES
    joint_parents: np.ndarray = field(default_factory=lambda: JOINT_PARENTS.copy())
    version: int = FORMAT_VERSION

    @property
    def n_vertices(self):
        return self.vertices.shape[0]

    @property
    def n_identity(self):
        return self.identity_basis.shape[2]

    @property
    def n_expression(self):
        return self.expression_basis.shape[2]

    @property
    def n_joints(self):
        return len(self.joint_names)

    @property
    def eye_joints(self):
        """Indices of the eye joints (the joints named eye_*)."""
        return tuple(k for k, name in enumerate(self.joint_names) if name.startswith("eye"))

    def region_mask(self, *names):
        """Boolean mask (V,) of the vertices in the named regions (see ``REGION_NAMES``)."""
        ids = []
        for n in names:
            if n not in REGION_NAMES:
                raise ValueError(f"unknown region {n!r}; choose from {REGION_NAMES}")
            ids.append(REGION_NAMES.index(n))
        return np.isin(self.region_labels, ids)

    def face_mask(self):
        """Vertices of ICT's narrow face area (used for the evaluation error)."""
        m = np.zeros(self.n_vertices, bool)
        m[:NARROW_FACE_END + 1] = True
        return m

    def joints(self, identity=None):
        """Bind-pose joint locations J(beta), shape (J, 3) float64 mm."""
        if identity is None:
            return self.joint_mean.copy()
        beta = _as_vector(identity, self.n_identity, "identity")
        return self.joint_mean + self.joint_identity @ beta

    def template(self, identity=None, expression=None):
        """Unposed mesh T(beta, psi) = T_mean + S beta + E psi, shape (V, 3) float64 mm.

        One pass over the float32 bases with float64 sums (:func:`template_kernel`); rows of E that
        are zero for every shape are skipped.
        """
        beta = (np.zeros(0) if identity is None
                else _as_vector(identity, self.n_identity, "identity").astype(np.float64))
        psi = (np.zeros(0) if expression is None
               else _as_vector(expression, self.n_expression, "expression").astype(np.float64))
        out = np.empty((self.n_vertices, 3))
        template_kernel(self.vertices.reshape(-1), self.identity_basis.reshape(-1, self.n_identity), beta,
                        self.expression_basis.reshape(-1, self.n_expression), psi, self._expression_rows,
                        out.reshape(-1))
        return out

    @cached_property
    def _expression_rows(self):
        """Coordinate rows (3V,) of the expression basis that some shape moves (bool)."""
        return np.ascontiguousarray((self.expression_basis != 0).any(2).reshape(-1))

    def info(self):
        """A JSON-serialisable summary (``lmfit3d model info --json``)."""
        from .landmarks import available_sets, load_landmark_set
        return {
            "version": self.version,
            "units": "mm",
            "n_vertices": int(self.n_vertices),
            "n_faces": int(self.faces.shape[0]),
            "n_identity": int(self.n_identity),
            "expression_names": list(self.expression_names),
            "joints": [{"name": n, "parent": (self.joint_names[p] if p >= 0 else None)}
                       for n, p in zip(self.joint_names, self.joint_parents.tolist())],
            "regions": {n: [int(a), int(b)] for n, a, b in REGIONS},
            "eye_radius_mm": [round(float(r), 3) for r in self.eye_radius],
            "identity_prior": {"components": int(self.gmm_weights.size), "type": "diagonal GMM"},
            "landmark_sets": {n: load_landmark_set(n).tolist() for n in available_sets()},
        }


@dataclass(frozen=True)
class Params:
    """Model parameters for one frame.

    Attributes
    ----------
    identity : ndarray (K,) float64
        beta, unit-variance PCA coefficients.
    expression : ndarray (E,) float64
        psi, blendshape weights, nominally in [0, 1].
    rotations : ndarray (J, 3) float64
        Axis-angle (radians) per joint in ``JOINT_NAMES`` order; row 0 is the root (global) rotation.
    translation : ndarray (3,) float64
        Root translation (mm), applied after the root rotation.
    """

    identity: np.ndarray
    expression: np.ndarray
    rotations: np.ndarray
    translation: np.ndarray

    @classmethod
    def zeros(cls, model):
        return cls(np.zeros(model.n_identity), np.zeros(model.n_expression),
                   np.zeros((model.n_joints, 3)), np.zeros(3))

    def replace(self, **kw):
        return replace(self, **kw)


def _as_vector(x, n, name):
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


# --------------------------------------------------------------------------------------------
# Building from ICT-FaceKit
# --------------------------------------------------------------------------------------------

def fit_sphere(points):
    """Algebraic least-squares sphere fit: returns (centre (3,), radius) of points (N, 3)."""
    p = np.asarray(points, dtype=np.float64)
    a = np.hstack([2.0 * p, np.ones((p.shape[0], 1))])
    b = (p * p).sum(1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    c = sol[:3]
    return c, float(np.sqrt(sol[3] + c @ c))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _cut_side(v, cut, half_width):
    """Smooth 0 -> 1 across a plane containing the x axis; 1 on the upper (head) side."""
    (yb, zb), (yf, zf) = cut
    n = np.array([0.0, zf - zb, -(yf - yb)])      # perpendicular to the back->front direction
    if n[1] < 0:
        n = -n
    n /= np.linalg.norm(n)
    s = (v - np.array([0.0, yb, zb])) @ n
    return _smoothstep((s + half_width) / (2.0 * half_width))


def procedural_skin_weights(neutral_cm, labels):
    """LBS weights (V, 5) over (root, neck, head, eye_L, eye_R).

    Eyeballs follow their eye joint rigidly.  Skin of the face and head/neck regions blends
    root -> neck -> head across two tilted cut planes (below the chin at the front, the skull base at
    the back), each with a smoothstep band of +-1.5 cm.  All inner parts (mouth socket, teeth, gums,
    eye sockets, lacrimal, eyelashes) follow the head.
    """
    v = neutral_cm
    w = np.zeros((v.shape[0], 5))
    head_side = _cut_side(v, HEAD_CUT, CUT_HALF_WIDTH_CM)
    neck_side = np.maximum(_cut_side(v, NECK_CUT, CUT_HALF_WIDTH_CM), head_side)
    skin = np.isin(labels, [REGION_NAMES.index("face"), REGION_NAMES.index("head_neck")])
    w[:, 2] = 1.0
    w[skin, 2] = head_side[skin]
    w[skin, 1] = neck_side[skin] - head_side[skin]
    w[skin, 0] = 1.0 - neck_side[skin]
    for j, name in ((3, "eyeball_L"), (4, "eyeball_R")):
        m = labels == REGION_NAMES.index(name)
        w[m] = 0.0
        w[m, j] = 1.0
    return w


def _ring(neutral_cm, labels, y):
    skin = np.isin(labels, [0, 1])
    return np.flatnonzero(skin & (np.abs(neutral_cm[:, 1] - y) < RING_HALF_HEIGHT_CM))


def _joint_locations(shape_cm, neutral_cm, labels, head_ring, neck_ring):
    """Joint locations (5, 3) in cm for one shape (neutral or neutral + one mode)."""
    j = np.zeros((5, 3))
    j[1] = shape_cm[neck_ring].mean(0)
    j[2] = np.asarray(HEAD_JOINT_TARGET) + shape_cm[head_ring].mean(0) - neutral_cm[head_ring].mean(0)
    j[3] = fit_sphere(shape_cm[SCLERA_L[0]:SCLERA_L[1] + 1])[0]
    j[4] = fit_sphere(shape_cm[SCLERA_R[0]:SCLERA_R[1] + 1])[0]
    return j


def build_model(ict_dir=None, progress=None):
    """Build a :class:`FaceModel` from ICT-FaceKit's ``FaceXModel`` folder.

    Parameters
    ----------
    ict_dir : path, optional
        ICT-FaceKit root (containing ``FaceXModel/``) or the ``FaceXModel`` folder itself.
        Default: ``$ICT_FACEKIT`` or ``../shared/ict-facekit``.
    progress : callable(str), optional
        Called with a short message per stage.

    Raises
    ------
    MeshFormatError
        A missing folder or OBJ, a truncated file, a wrong vertex count or a malformed line;
        the message names the file and line.
    """
    root = Path(ict_dir) if ict_dir is not None else default_ict_dir()
    src = root / "FaceXModel" if (root / "FaceXModel").is_dir() else root
    if not src.is_dir():
        raise MeshFormatError(f"{src}: ICT-FaceKit folder not found (pass --ict DIR or set ICT_FACEKIT)")
    say = progress or (lambda msg: None)
    neutral_path = src / "generic_neutral_mesh.obj"
    neutral = read_obj_vertices(neutral_path)
    if neutral.shape[0] != N_VERTICES:
        raise MeshFormatError(f"{neutral_path}: has {neutral.shape[0]} vertices, expected {N_VERTICES}")
    faces = read_obj_faces(neutral_path, N_VERTICES)
    labels = np.zeros(N_VERTICES, np.uint8)
    for i, (_, a, b) in enumerate(REGIONS):
        labels[a:b + 1] = i

    say("identity modes")
    ident = np.empty((N_VERTICES, 3, N_IDENTITY), np.float32)
    head_ring = _ring(neutral, labels, HEAD_JOINT_TARGET[1])
    neck_ring = _ring(neutral, labels, NECK_JOINT_TARGET_Y)
    j_mean = _joint_locations(neutral, neutral, labels, head_ring, neck_ring)
    j_ident = np.empty((5, 3, N_IDENTITY))
    for k in range(N_IDENTITY):
        shape = read_obj_vertices(src / f"identity{k:03d}.obj", N_VERTICES)
        ident[:, :, k] = (shape - neutral) * CM_TO_MM
        j_ident[:, :, k] = (_joint_locations(shape, neutral, labels, head_ring, neck_ring) - j_mean) * CM_TO_MM
    say("expression shapes")
    expr = np.empty((N_VERTICES, 3, len(EXPRESSION_NAMES)), np.float32)
    for e, name in enumerate(EXPRESSION_NAMES):
        expr[:, :, e] = (read_obj_vertices(src / f"{name}.obj", N_VERTICES) - neutral) * CM_TO_MM
    j_mean[0] = 0.0
    j_ident[0] = 0.0

    rms = np.sqrt((ident.astype(np.float64) ** 2).sum(1).mean(0))
    eye_r = np.array([fit_sphere(neutral[a:b + 1])[1] for a, b in (SCLERA_L, SCLERA_R)]) * CM_TO_MM
    return FaceModel(
        vertices=(neutral * CM_TO_MM).astype(np.float32),
        faces=faces,
        identity_basis=ident,
        expression_basis=expr,
        expression_names=EXPRESSION_NAMES,
        joint_mean=j_mean * CM_TO_MM,
        joint_identity=j_ident,
        skin_weights=procedural_skin_weights(neutral, labels).astype(np.float32),
        region_labels=labels,
        eye_radius=eye_r,
        identity_mode_rms=rms,
        gmm_weights=np.ones(1),
        gmm_means=np.zeros((1, N_IDENTITY)),
        gmm_stds=np.ones((1, N_IDENTITY)),
    )


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------

def default_model_path():
    return cache_dir() / MODEL_FILENAME


def save_model(model, path=None):
    """Write the model as an uncompressed, versioned .npz (atomically)."""
    path = Path(path) if path is not None else default_model_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for f in fields(model):
        val = getattr(model, f.name)
        arrays[f.name] = np.asarray(json.dumps(list(val))) if isinstance(val, tuple) else np.asarray(val)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


_LOADED = {}


def load_model(path=None):
    """Load the built model (cached per path and modification time).

    Raises
    ------
    FileNotFoundError
        No model file: run ``lmfit3d model build``.
    ValueError
        The file is from another format version or is damaged.
    """
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"face model not found at {path}; run `lmfit3d model build` first")
    key = (str(path), path.stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/pickle errors differ by numpy version
        raise ValueError(f"{path}: not a readable lmfit3d model file ({exc})") from None
    version = int(data.get("version", -1))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: model format version {version}, expected {FORMAT_VERSION}; rebuild it")
    kw = {}
    for f in fields(FaceModel):
        if f.name not in data:
            raise ValueError(f"{path}: missing array {f.name!r}; rebuild the model")
        val = data[f.name]
        kw[f.name] = tuple(json.loads(str(val))) if f.name in ("expression_names", "joint_names") else val
    kw["version"] = version
    model = FaceModel(**kw)
    _LOADED.clear()
    _LOADED[key] = model
    return model


def ensure_model(path=None, ict_dir=None):
    """Load the model, building it into ``path`` (default: the cache) first when it is missing."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        save_model(build_model(ict_dir), path)
    return load_model(path)
