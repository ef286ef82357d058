"""A small synthetic face model for unit tests that must run without ICT-FaceKit (``../shared``).

:func:`tiny_model` builds a :class:`~lmfit3d.model.FaceModel` of ~600 vertices with the real rig:
the same five joints and parents (root, neck, head, eye_L, eye_R), the procedural neck/head skin
weights of :func:`lmfit3d.model.procedural_skin_weights` (smooth blends across the two cut planes,
rigid eyeballs), a few smooth identity modes with matching joint displacements, and a handful of
expression shapes under ICT's names (jawOpen, eyeBlink_L/R, eyeLook*, ...) so code that looks
shapes up by name works.  :func:`tiny_landmarks` gives a matching landmark vertex list.

Geometry (model axes and units as the real model: mm, x to the subject's left, y up, +z the face
direction): an ellipsoid "head" (160 x 220 x 190 mm) with a nose bump, a neck cylinder below it and
two spherical eyeballs; vertices in ``REGIONS`` labels ``face``, ``head_neck``, ``eyeball_L`` and
``eyeball_R`` only (no mouth, teeth or eyelashes).

Not modelled: the intersection term's teeth hulls (``fit._Intersection`` expects ICT's vertex
ranges), so fit the tiny model with ``FitConfig(w_intersection=0)``.

Everything is deterministic given the generator's seed (``tiny_model(np.random.default_rng(0))``);
the generator only draws the identity modes.  Not imported by ``import lmfit3d``.
"""
import numpy as np

from .model import (JOINT_NAMES, JOINT_PARENTS, REGION_NAMES, FaceModel, fit_sphere,
                    procedural_skin_weights)

CM_TO_MM = 10.0
HEAD_CENTRE_CM = np.array([0.0, 0.5, 0.5])
HEAD_RADII_CM = np.array([8.0, 11.0, 9.5])
EYE_CENTRES_CM = np.array([[3.2, 3.6, 7.6], [-3.2, 3.6, 7.6]])       # eye_L (+x), eye_R
EYE_RADIUS_CM = 1.25
NECK_RINGS_Y_CM = (-9.0, -12.0, -15.0, -18.0)
NECK_CENTRE_CM = (0.0, -1.0)                                           # (x, z)
NECK_RADIUS_CM = 5.0

# ICT names, in ICT's order (a subset of model.EXPRESSION_NAMES)
TINY_EXPRESSIONS = ("browInnerUp_L", "browInnerUp_R", "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L",
                    "eyeLookDown_R", "eyeLookUp_L", "eyeLookUp_R", "jawOpen", "mouthClose",
                    "mouthSmile_L", "mouthSmile_R")
IDENTITY_RMS_MM = (5.0, 3.5, 2.5, 2.0, 1.5, 1.0)
# Local shapes: (name, centre (x, y) cm on the head's front, radius cm, direction, amplitude mm);
# names ending in _L are mirrored to _R.  jawOpen is a rotation of the lower face (see _jaw_open).
BUMPS = (
    ("browInnerUp_L", (1.8, 6.2), 2.6, (0.0, 1.0, 0.2), 6.0),
    ("eyeBlink_L", (3.2, 5.0), 2.2, (0.0, -1.0, 0.3), 8.0),
    ("eyeLookDown_L", (3.4, 2.0), 2.0, (0.0, -1.0, 0.0), 3.0),
    ("eyeLookUp_L", (5.2, 4.0), 2.0, (0.3, 1.0, 0.0), 3.0),
    ("mouthClose", (0.0, -5.0), 2.4, (0.0, 1.0, 0.1), 4.0),
    ("mouthSmile_L", (2.8, -4.4), 2.6, (0.6, 0.6, -0.2), 7.0),
)
JAW_PIVOT_CM = np.array([0.0, -1.0, -3.0])
JAW_ANGLE = 0.25                         # rad at jawOpen = 1
NOSE = ((0.0, 0.3), 2.6, 22.0)          # centre (x, y) cm, radius cm, height mm (+z)


def _front_z(x, y):
    """z (cm) of the ellipsoid's front surface at (x, y) cm."""
    q = 1.0 - ((x - HEAD_CENTRE_CM[0]) / HEAD_RADII_CM[0]) ** 2 - ((y - HEAD_CENTRE_CM[1]) / HEAD_RADII_CM[1]) ** 2
    return HEAD_CENTRE_CM[2] + HEAD_RADII_CM[2] * np.sqrt(max(q, 0.0))


def _uv_sphere(n_lat, n_lon, lat, lon):
    """Unit-sphere directions of a UV sphere with poles on the axis (0, 1, 0) at index 0 (south) and
    last (north); ``lat`` (n_lat,) and ``lon`` (n_lon,) in radians (lon 0 = +z).  Returns (dirs (N, 3),
    triangles (T, 3))."""
    cl, sl = np.cos(lat)[:, None], np.sin(lat)[:, None]
    ring = np.stack([cl * np.sin(lon)[None], np.broadcast_to(sl, (n_lat, n_lon)), cl * np.cos(lon)[None]], -1)
    dirs = np.concatenate([[[0.0, -1.0, 0.0]], ring.reshape(-1, 3), [[0.0, 1.0, 0.0]]])
    tri = []
    idx = lambda i, j: 1 + i * n_lon + j % n_lon            # noqa: E731
    for j in range(n_lon):
        tri.append((0, idx(0, j + 1), idx(0, j)))
        tri.append((len(dirs) - 1, idx(n_lat - 1, j), idx(n_lat - 1, j + 1)))
        for i in range(n_lat - 1):
            tri.append((idx(i, j), idx(i, j + 1), idx(i + 1, j + 1)))
            tri.append((idx(i, j), idx(i + 1, j + 1), idx(i + 1, j)))
    return dirs, np.array(tri, np.int64)


def _orient_outwards(verts, tri, centre_of):
    """Flip triangles whose normal points towards ``centre_of(triangle centroid)``."""
    a, b, c = verts[tri[:, 0]], verts[tri[:, 1]], verts[tri[:, 2]]
    n = np.cross(b - a, c - a)
    g = (a + b + c) / 3.0
    flip = (n * (g - centre_of(g))).sum(1) < 0
    tri = tri.copy()
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return tri


def _geometry():
    """Neutral vertices (cm), triangles and region labels."""
    parts, tris, labels = [], [], []

    def add(v, t, lab):
        off = sum(len(p) for p in parts)
        parts.append(v)
        tris.append(t + off)
        labels.append(lab)

    # head: latitudes and longitudes clustered towards the front of the face
    n_lat, n_lon = 17, 28
    u = np.linspace(-1.0, 1.0, n_lat + 2)[1:-1]
    lat = 0.5 * np.pi * np.sign(u) * np.abs(u) ** 1.25
    t = -1.0 + 2.0 * np.arange(n_lon) / n_lon
    lon = np.pi * np.sign(t) * np.abs(t) ** 1.4
    dirs, tri = _uv_sphere(n_lat, n_lon, lat, lon)
    head = HEAD_CENTRE_CM + dirs * HEAD_RADII_CM
    (nx, ny), nr, nh = NOSE
    d = np.hypot(head[:, 0] - nx, head[:, 1] - ny)
    front = dirs[:, 2] > 0.3
    head[:, 2] += np.where(front & (d < nr), (1.0 - (d / nr) ** 2) ** 2, 0.0) * nh / CM_TO_MM
    frontness = dirs[:, 2]
    lab = np.where((frontness > 0.25) & (head[:, 1] > -10.0), REGION_NAMES.index("face"),
                   REGION_NAMES.index("head_neck"))
    add(head, _orient_outwards(head, tri, lambda g: HEAD_CENTRE_CM), lab)

    # neck: a cylinder of rings (quads split in two), open at both ends
    n_ring = 12
    ang = 2.0 * np.pi * np.arange(n_ring) / n_ring
    neck = np.array([[NECK_CENTRE_CM[0] + NECK_RADIUS_CM * np.sin(a), y, NECK_CENTRE_CM[1] + NECK_RADIUS_CM * np.cos(a)]
                     for y in NECK_RINGS_Y_CM for a in ang])
    tri = []
    for r in range(len(NECK_RINGS_Y_CM) - 1):
        for j in range(n_ring):
            a, b = r * n_ring + j, r * n_ring + (j + 1) % n_ring
            tri += [(a, b, b + n_ring), (a, b + n_ring, a + n_ring)]
    axis = lambda g: np.column_stack([np.full(len(g), NECK_CENTRE_CM[0]), g[:, 1],   # noqa: E731
                                      np.full(len(g), NECK_CENTRE_CM[1])])
    add(neck, _orient_outwards(neck, np.array(tri), axis), np.full(len(neck), REGION_NAMES.index("head_neck")))

    # eyeballs: UV spheres with their poles on the z axis (the front pole is the pupil)
    n_lat_e, n_lon_e = 5, 8
    lat = np.linspace(-0.5 * np.pi, 0.5 * np.pi, n_lat_e + 2)[1:-1]
    lon = 2.0 * np.pi * np.arange(n_lon_e) / n_lon_e
    dirs, tri = _uv_sphere(n_lat_e, n_lon_e, lat, lon)
    dirs = dirs[:, [0, 2, 1]]                                # pole axis y -> z (north pole = front)
    for c, name in zip(EYE_CENTRES_CM, ("eyeball_L", "eyeball_R")):
        eye = c + EYE_RADIUS_CM * dirs
        add(eye, _orient_outwards(eye, tri, lambda g, c=c: c), np.full(len(eye), REGION_NAMES.index(name)))
    return (np.concatenate(parts), np.concatenate(tris).astype(np.int32),
            np.concatenate(labels).astype(np.uint8))


def _features(p_cm):
    """Smooth features (N, 9) of positions (cm) for the identity modes: linear and quadratic terms of
    the position relative to the head centre, scaled to about [-1, 1]."""
    q = (p_cm - HEAD_CENTRE_CM) / HEAD_RADII_CM
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    return np.column_stack([x, y, z, x * x, y * y, z * z, x * y, y * z, x * z])


def _bump(v_cm, skin, centre_xy, radius, direction, amplitude_mm):
    """Compact displacement (N, 3) mm: (1 - (d / r)^2)^2 inside radius r of the centre on the face."""
    c = np.array([centre_xy[0], centre_xy[1], _front_z(*centre_xy)])
    d = np.linalg.norm(v_cm - c, axis=1)
    w = np.where(skin & (d < radius), (1.0 - (d / radius) ** 2) ** 2, 0.0)
    u = np.asarray(direction, float)
    return w[:, None] * (amplitude_mm * u / np.linalg.norm(u))[None]


def _jaw_open(v_cm, skin):
    """The lower face rotated about a transverse axis behind the mouth, blended in below y = -2.5 cm."""
    s = np.clip((-2.5 - v_cm[:, 1]) / 2.5, 0.0, 1.0)
    s = np.where(skin, s * s * (3.0 - 2.0 * s), 0.0)
    c, sn = np.cos(JAW_ANGLE), np.sin(JAW_ANGLE)
    rel = v_cm - JAW_PIVOT_CM
    rot = np.column_stack([rel[:, 0], c * rel[:, 1] - sn * rel[:, 2], sn * rel[:, 1] + c * rel[:, 2]])
    return s[:, None] * (rot - rel) * CM_TO_MM


def _expressions(v_cm, labels):
    skin = labels == REGION_NAMES.index("face")
    shapes = {}
    for name, (x, y), r, direction, amp in BUMPS:
        shapes[name] = _bump(v_cm, skin, (x, y), r, direction, amp)
        if name.endswith("_L"):
            dx, dy, dz = direction
            shapes[name[:-2] + "_R"] = _bump(v_cm, skin, (-x, y), r, (-dx, dy, dz), amp)
    shapes["jawOpen"] = _jaw_open(v_cm, skin)
    return np.stack([shapes[n] for n in TINY_EXPRESSIONS], axis=2).astype(np.float32)


def tiny_model(rng=None, n_identity=len(IDENTITY_RMS_MM)):
    """A small synthetic :class:`~lmfit3d.model.FaceModel` (see the module docstring).

    Parameters
    ----------
    rng : numpy Generator (default ``np.random.default_rng(0)``); draws the identity modes only.
    n_identity : int, number of identity modes (<= 6).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if not 1 <= n_identity <= len(IDENTITY_RMS_MM):
        raise ValueError(f"n_identity must be in [1, {len(IDENTITY_RMS_MM)}], got {n_identity}")
    v_cm, faces, labels = _geometry()
    n = len(v_cm)
    eyes = [labels == REGION_NAMES.index(r) for r in ("eyeball_L", "eyeball_R")]
    fits = [fit_sphere(v_cm[m]) for m in eyes]
    joints_cm = np.array([[0.0, 0.0, 0.0], [0.0, -11.0, -1.0], [0.0, -2.5, -0.5], fits[0][0], fits[1][0]])

    # identity: smooth fields of the position; eyeballs and joints move with the field at their centre
    ident = np.empty((n, 3, n_identity))
    j_ident = np.zeros((len(JOINT_NAMES), 3, n_identity))
    feat = _features(v_cm)
    centre_feat = _features(joints_cm)
    for k in range(n_identity):
        m = rng.normal(size=(3, feat.shape[1]))
        field = feat @ m.T                                  # (N, 3)
        for e, mask in enumerate(eyes):
            field[mask] = centre_feat[3 + e] @ m.T
        scale = IDENTITY_RMS_MM[k] / np.sqrt((field ** 2).sum(1).mean())
        ident[:, :, k] = field * scale
        j_ident[1:, :, k] = (centre_feat[1:] @ m.T) * scale
    ident = ident.astype(np.float32)
    rms = np.sqrt((ident.astype(np.float64) ** 2).sum(1).mean(0))
    return FaceModel(
        vertices=(v_cm * CM_TO_MM).astype(np.float32),
        faces=faces,
        identity_basis=ident,
        expression_basis=_expressions(v_cm, labels),
        expression_names=TINY_EXPRESSIONS,
        joint_mean=joints_cm * CM_TO_MM,
        joint_identity=j_ident,
        skin_weights=procedural_skin_weights(v_cm, labels).astype(np.float32),
        region_labels=labels,
        eye_radius=np.array([f[1] for f in fits]) * CM_TO_MM,
        identity_mode_rms=rms,
        gmm_weights=np.ones(1),
        gmm_means=np.zeros((1, n_identity)),
        gmm_stds=np.ones((1, n_identity)),
        joint_names=JOINT_NAMES,
        joint_parents=JOINT_PARENTS.copy(),
    )


def tiny_landmarks(model):
    """Landmark vertex ids (L,) int64 for :func:`tiny_model`: the face (every other vertex), a few
    side-of-head and neck vertices, and per eye the pupil and four iris-ring vertices."""
    v = model.vertices.astype(np.float64) / CM_TO_MM
    lab = model.region_labels
    face = np.flatnonzero(lab == REGION_NAMES.index("face"))
    head_neck = lab == REGION_NAMES.index("head_neck")
    dirs = (v - HEAD_CENTRE_CM) / HEAD_RADII_CM
    on_neck = np.abs(np.hypot(v[:, 0] - NECK_CENTRE_CM[0], v[:, 2] - NECK_CENTRE_CM[1]) - NECK_RADIUS_CM) < 1e-3
    side = np.flatnonzero(head_neck & ~on_neck & (dirs[:, 2] > -0.2) & (np.abs(dirs[:, 1]) < 0.7))
    neck = np.flatnonzero(head_neck & on_neck & (v[:, 1] > -13.0) & (v[:, 2] > NECK_CENTRE_CM[1]))
    picks = [face[::2], side[::3], neck]
    for e, name in enumerate(("eyeball_L", "eyeball_R")):
        ids = np.flatnonzero(lab == REGION_NAMES.index(name))
        rel = v[ids] - EYE_CENTRES_CM[e]
        order = np.argsort(-rel[:, 2])                     # the front pole, then the first ring
        picks.append(ids[order[:1]])
        picks.append(ids[order[1:9:2]])
    return np.unique(np.concatenate(picks)).astype(np.int64)
