"""Make the landmark sets in ``data/landmarks/`` (vertex id lists on the ICT-FaceKit mesh).

Usage::

    python tools/make_landmark_sets.py            # (re)write ibug68.txt, dense320.txt, dense703.txt
    python tools/make_landmark_sets.py --check    # exit 1 if the committed files differ

Needs the built face model (``lmfit3d model build``) and ICT-FaceKit's
``FaceXModel/vertex_indices.json`` (``$ICT_FACEKIT`` or ``../shared/ict-facekit``).
The output is deterministic: it depends only on the neutral mesh, its region labels and the
upstream 68-point list.

Sets
----
``ibug68``
    ICT-FaceKit's Multi-PIE 68 landmark vertices (``idx_to_landmark_verts``), in iBUG order.
``dense703``
    The whole head, after the 703 landmarks of Wood et al. 2022 ("3D Face Reconstruction with
    Dense Landmarks"): dense on the face, eyelid contours, iris rings and pupils, ears, scalp and
    back of the head, neck, inner lips and the front teeth.  Contains ``ibug68``.
``dense320``
    The real-time subset of ``dense703``, weighted to the front of the face (few points on the
    ears, scalp and neck, all on their frontal side).  Contains ``ibug68``.

Only vertices of the regions face, head_neck, mouth_socket, teeth and eyeball_L/R are used.

Groups and quotas (per-group farthest-point sampling on the neutral mesh)
------------------------------------------------------------------------

=============  =========  ========  ==================================================================
group          dense703   dense320  candidates
=============  =========  ========  ==================================================================
face_front        354       218     face region, ICT's narrow face area (ids 0..6705), not eyelid/ear
face_outer         80        30     other face-region skin above the neck cut (forehead top, temples,
                                    jaw sides), not ear
eyelid_L/R       16+16     12+12    lid-margin contour: face-region vertices 2 edge rings out from
                                    the eye hole of the face surface (where all iBUG eye points but
                                    the inner corners lie)
iris_L/R         11+11      6+6     pupil centre + 10 points on the iris boundary ring (iris mesh)
ear_L/R          24+24      3+3     the pinna (see "Ears" below)
scalp              80         4     head_neck region above the neck cut (top and back of the head)
neck               55        10     other face/head_neck skin below the neck cut, above y = -125 mm
mouth_inner        16         8     mouth_socket within 5 mm of the lips' inner edge (inner lips)
teeth            8+8        4+4     labial (front) surfaces of the upper/lower incisors and canines
-------------  ---------  --------  ------------------------------------------------------------------
total             703       320
=============  =========  ========  ==================================================================

Sampling.  Euclidean farthest-point sampling (FPS) within each group's candidates, seeded with the
group's iBUG 68 vertices (so ``ibug68`` is contained in both dense sets) or, without seeds, starting
at the candidate farthest from the candidates' centroid (lowest index on ties).  Skin groups are
sampled in the order eyelids, inner lips, ears, face_front, face_outer, neck, scalp, and each is
repelled by the skin landmarks already chosen (and all of ibug68), so that no two groups put points
side by side at their common border.  The neutral mesh is left/right symmetric, and so are the
sets: groups that straddle the midline use a symmetric FPS (picks are mirror pairs, or midline
vertices while an odd number of slots is left; a pair closer together than half its FPS distance
is skipped as crowding the midline), and the ``_R`` groups are the mirror images of the ``_L``
groups.  ``dense320`` re-runs the same FPS on each group's ``dense703`` members (the scalp, neck and
ear groups only on members with z >= 0 mm, i.e. the front half of the head); the iris takes the
pupil and every second ring point.  File order: by group (table order), then FPS order.

Geometry (neutral mesh, mm; x = subject's left, y up, z out of the face):

* Neck cut: the plane containing the x axis through (y, z) = (-40, -70) and (-90, 80) mm, i.e. the
  model's head-joint skinning cut (``lmfit3d.model.HEAD_CUT``).  Skin below it is neck, down to
  y = -125 mm (the shoulders below are left out).
* Ears: ICT puts the pinna in the *face* region (its back partly in head_neck).  A skin vertex
  (face or head_neck) is on an ear if |x| > 70 mm and its side projection lies in the ellipse
  ((y - 7) / 31)^2 + ((z + 5.5) / 19.5)^2 < 1 (centre y = 7, z = -5.5 mm, about eye height and
  behind the jaw).  The head's side skin around the ear lies at |x| < 70 mm, the helix reaches
  |x| = 92 mm, the ear spans y = -24..38 and z = -25..14 mm.
* Eyelids: the face surface (triangles with all three vertices in the face region) has an open
  hole at each eye; its boundary loop (42 vertices) touches the eyeball, and the loop two edge
  rings further out (42 vertices) is the visible lid margin.
* Iris: the eyeball is an outer transparent shell ("sclera" ids) and an inner eye mesh ("iris"
  ids).  The gaze axis points from the shell's sphere centre (fitted to its back half) to the
  cornea bulge (shell vertices more than 1 mm outside that sphere).  On the inner mesh's front
  surface the iris boundary ring is at 5.5 mm from the axis (where the flat iris meets the
  sphere); the 10 ring points are the front-surface vertices nearest to 10 points at 36 degree
  steps on that circle (the mesh has 20 radial spokes), the pupil centre is the front-surface
  vertex nearest the axis.
* Teeth: vertices of the teeth region with z > 90 mm (incisors and canines), on the crown (within
  8 mm of the incisal edge: the lowest upper-tooth / highest lower-tooth point), whose normal
  points out of the dental arch (dot with the horizontal direction from (0, 0, 70) mm > 0.6) and
  that are not hidden by teeth or gums when seen from the front (orthographic along -z) with the
  jaw open (jawOpen = 1); upper and lower teeth are sampled separately (8 + 8).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmfit3d.model import (EXPRESSION_NAMES, HEAD_CUT, LOWER_TEETH, REGION_NAMES,  # noqa: E402
                           SCLERA_L, SCLERA_R, UPPER_TEETH, fit_sphere, load_model)
from lmfit3d.paths import default_ict_dir  # noqa: E402

OUT_DIR = ROOT / "data" / "landmarks"
SET_NAMES = ("ibug68", "dense320", "dense703")

IRIS_L = (22221, 23020)
IRIS_R = (23791, 24590)
NARROW_FACE_END = 6705

# (group, dense703 quota, dense320 quota); _R groups mirror their _L group.
QUOTAS = (
    ("face_front", 354, 218),
    ("face_outer", 80, 30),
    ("eyelid_L", 16, 12), ("eyelid_R", 16, 12),
    ("iris_L", 11, 6), ("iris_R", 11, 6),
    ("ear_L", 24, 3), ("ear_R", 24, 3),
    ("scalp", 80, 4),
    ("neck", 55, 10),
    ("mouth_inner", 16, 8),
    ("teeth", 16, 8),
)
QUOTA = {row[0]: row[1:] for row in QUOTAS}
FRONT_ONLY_IN_320 = ("ear_L", "ear_R", "scalp", "neck")   # 320: members with z >= FRONT_Z only
# Groups are sampled in this order; each skin group is repelled by the skin landmarks chosen
# before it (and by all of ibug68), so that neighbouring groups do not put points side by side.
SAMPLING_ORDER = ("eyelid_L", "eyelid_R", "mouth_inner", "ear_L", "ear_R", "face_front",
                  "face_outer", "neck", "scalp", "iris_L", "iris_R", "teeth")
SKIN_GROUPS = ("eyelid_L", "eyelid_R", "mouth_inner", "ear_L", "ear_R", "face_front",
               "face_outer", "neck", "scalp")
PAIR_MIN_SEPARATION = 0.5
FRONT_Z = 0.0

CM = 10.0
NECK_MIN_Y = -125.0
EAR_MIN_ABS_X = 70.0
EAR_ELLIPSE = (7.0, -5.5, 31.0, 19.5)          # centre y, centre z, semi-axis y, semi-axis z (mm)
EYELID_RING = 2
IRIS_RING_RADIUS = 5.5
IRIS_RING_POINTS = 10          # the iris mesh has 20 radial spokes: every second one
IRIS_FRONT_DEPTH = 1.5        # front surface: within this many mm of the frontmost iris vertex
MOUTH_INNER_DIST = 5.0
TEETH_MIN_Z = 90.0
TEETH_ARCH_CENTRE = np.array([0.0, 0.0, 70.0])
TEETH_MIN_DOT = 0.6
TEETH_CROWN_BAND = 8.0        # mm from the incisal edge (lowest upper / highest lower tooth point)
MIRROR_TOL = 0.2              # mm


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _labels_in(model, *names):
    return np.isin(model.region_labels, [REGION_NAMES.index(n) for n in names])


def _region_faces(model, mask):
    return model.faces[mask[model.faces].all(axis=1)]


def _edges(faces):
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.sort(e, axis=1)


def _boundary_loops(faces, n_vertices):
    """Boundary loops (as vertex id arrays) of the surface made of ``faces``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    u, c = np.unique(_edges(faces), axis=0, return_counts=True)
    b = u[c == 1]
    a = coo_matrix((np.ones(len(b)), (b[:, 0], b[:, 1])), shape=(n_vertices, n_vertices))
    _, lab = connected_components(a, directed=False)
    bv = np.unique(b)
    return [bv[lab[bv] == k] for k in np.unique(lab[bv])]


def _ring_distance(faces, n_vertices, sources):
    """Edge-count distance over the surface ``faces`` from the vertex set ``sources``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path
    u = np.unique(_edges(faces), axis=0)
    a = coo_matrix((np.ones(len(u)), (u[:, 0], u[:, 1])), shape=(n_vertices, n_vertices)).tocsr()
    return shortest_path(a, directed=False, unweighted=True, indices=sources).min(axis=0)


def _vertex_normals(v, faces):
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def visible_points(p, faces, q, tol=0.5):
    """Which points q (N,3) are not hidden by the triangles ``faces`` of ``p`` seen along -z.

    Orthographic view from +z: a point is hidden when a triangle covering its (x, y) is more than
    ``tol`` mm nearer the viewer (larger z) at that place.
    """
    a, b, c = p[faces[:, 0]], p[faces[:, 1]], p[faces[:, 2]]
    lo = np.minimum(np.minimum(a, b), c)[:, :2]
    hi = np.maximum(np.maximum(a, b), c)[:, :2]
    vis = np.ones(len(q), dtype=bool)
    for k, pt in enumerate(q):
        m = np.all((lo <= pt[:2]) & (hi >= pt[:2]), axis=1)
        if not m.any():
            continue
        A, B, C = a[m], b[m], c[m]
        v0, v1, v2 = B[:, :2] - A[:, :2], C[:, :2] - A[:, :2], pt[:2] - A[:, :2]
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        ok = np.abs(den) > 1e-12
        den = np.where(ok, den, 1.0)
        s = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        t = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        inside = ok & (s >= -1e-9) & (t >= -1e-9) & (s + t <= 1 + 1e-9)
        if inside.any():
            z = A[:, 2] + s * (B[:, 2] - A[:, 2]) + t * (C[:, 2] - A[:, 2])
            vis[k] = not np.any(z[inside] > pt[2] + tol)
    return vis


def _mirror_into(v, src, dst):
    """For each vertex of ``src``, its mirror twin (x -> -x) in ``dst`` or -1."""
    from scipy.spatial import cKDTree
    d, j = cKDTree(v[dst]).query(v[src] * np.array([-1.0, 1.0, 1.0]))
    return np.where(d <= MIRROR_TOL, dst[j], -1)


def fps(points, n, seeds=(), mirror=None, blockers=None):
    """Farthest-point sampling of ``n`` local indices of ``points`` (M,3), seeds first.

    ``blockers`` (K,3): points already chosen elsewhere; they repel the picks but are not returned.
    Without seeds and blockers the first pick is the point farthest from the centroid.

    ``mirror`` (M,) gives each candidate's mirror twin (local index; itself on the midline; -1 for
    none) and makes the sampling symmetric: picks are mirror pairs, or midline points while an odd
    number of slots is left (so an odd quota ends on the midline).  A pair closer together than
    ``PAIR_MIN_SEPARATION`` times its current FPS distance is not eligible (it would crowd the
    midline).  Deterministic: ties go to the lowest index.
    """
    m = len(points)
    if n > m:
        raise ValueError(f"fps: asked for {n} of {m} candidates")
    d = np.full(m, np.inf)
    if blockers is not None and len(blockers):
        for b in np.asarray(blockers, dtype=np.float64):
            np.minimum(d, np.linalg.norm(points - b, axis=1), out=d)
    taken = np.zeros(m, dtype=bool)
    order = []

    def add(k):
        order.append(int(k))
        taken[k] = True
        np.minimum(d, np.linalg.norm(points - points[k], axis=1), out=d)

    for s in seeds:
        if not taken[s]:
            add(s)
    if mirror is not None:
        for s in list(order):
            if mirror[s] >= 0 and not taken[mirror[s]]:
                add(mirror[s])
    if len(order) > n:
        raise ValueError(f"fps: {len(order)} seeds for a quota of {n}")
    def score():
        # nothing chosen yet: rank by distance from the centroid (first pick only)
        if np.isinf(d).all():
            return np.linalg.norm(points - points.mean(axis=0), axis=1)
        return d

    if mirror is None:
        while len(order) < n:
            add(int(np.argmax(np.where(taken, -1.0, score()))))
        return np.array(order, dtype=np.int64)

    idx = np.arange(m)
    has_pair = (mirror >= 0) & (mirror != idx)
    sep = np.where(has_pair, np.linalg.norm(points - points[np.maximum(mirror, 0)], axis=1), 0.0)
    midline = mirror == idx
    while len(order) < n:
        left = n - len(order)
        free = ~taken
        sc = score()
        pair_ok = free & has_pair & ~taken[np.maximum(mirror, 0)] & \
            (sep >= PAIR_MIN_SEPARATION * np.where(np.isinf(d), 0.0, d))
        mid_ok = free & midline
        best_pair = np.max(np.where(pair_ok, sc, -1.0))
        best_mid = np.max(np.where(mid_ok, sc, -1.0))
        if left % 2 == 1 and mid_ok.any() and (left == 1 or best_mid >= best_pair):
            add(int(np.argmax(np.where(mid_ok, sc, -1.0))))
        elif left >= 2 and pair_ok.any():
            k = int(np.argmax(np.where(pair_ok, sc, -1.0)))
            add(k)
            add(mirror[k])
        elif mid_ok.any():
            add(int(np.argmax(np.where(mid_ok, sc, -1.0))))
        else:                       # no symmetric choice left
            add(int(np.argmax(np.where(free, sc, -1.0))))
    return np.array(order, dtype=np.int64)


def _local(cand, ids):
    pos = {int(c): i for i, c in enumerate(cand)}
    return [pos[int(s)] for s in ids]


def _sym_fps(v, cand, n, seeds=(), blockers=None):
    """Symmetric FPS over the vertex ids ``cand``; returns vertex ids."""
    cand = np.asarray(cand)
    pos = {int(c): i for i, c in enumerate(cand)}
    mirror = _mirror_into(v, cand, cand)
    mirror_local = np.array([pos[int(x)] if x >= 0 else -1 for x in mirror])
    # keep only consistent pairs
    bad = (mirror_local >= 0) & (mirror_local[np.maximum(mirror_local, 0)] != np.arange(len(cand)))
    mirror_local[bad] = -1
    return cand[fps(v[cand], n, _local(cand, seeds), mirror_local, blockers)]


def _plain_fps(v, cand, n, seeds=(), blockers=None):
    cand = np.asarray(cand)
    return cand[fps(v[cand], n, _local(cand, seeds), None, blockers)]


def _mirror_ids(v, ids, dst):
    out = _mirror_into(v, np.asarray(ids), np.asarray(dst))
    if np.any(out < 0):
        raise RuntimeError("mesh is not left/right symmetric where the landmarks are")
    return out


# ------------------------------------------------------------------------------------------------
# candidate groups
# ------------------------------------------------------------------------------------------------

def _below_neck_cut(v):
    (yb, zb), (yf, zf) = np.asarray(HEAD_CUT) * CM
    # sign of the 2D cross product (front - back) x (p - back) in the (z, y) plane
    cross = (zf - zb) * (v[:, 1] - yb) - (yf - yb) * (v[:, 2] - zb)
    return cross < 0


def eye_axis(v, sclera):
    """(centre, unit gaze axis) of one eye from its outer shell (see docstring)."""
    sc = np.asarray(v[sclera[0]:sclera[1] + 1], dtype=np.float64)
    back = sc[:, 2] < sc[:, 2].mean()
    c, r = fit_sphere(sc[back])
    dirs = sc - c
    rad = np.linalg.norm(dirs, axis=1)
    bulge = dirs[rad > r + 1.0] / rad[rad > r + 1.0, None]
    axis = bulge.mean(axis=0)
    return c, axis / np.linalg.norm(axis)


def _iris_points(v, sclera, iris):
    """Ordered iris landmarks of one eye: pupil centre, then ring points (see docstring)."""
    c, axis = eye_axis(v, sclera)
    ids = np.arange(iris[0], iris[1] + 1)
    p = v[ids].astype(np.float64) - c
    h = p @ axis
    perp = p - h[:, None] * axis
    front = h > h.max() - IRIS_FRONT_DEPTH
    u = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
    u /= np.linalg.norm(u)
    w = np.cross(axis, u)
    pupil = ids[front][np.argmin(np.linalg.norm(perp[front], axis=1))]
    ring = []
    fu, fw = perp[front] @ u, perp[front] @ w
    for k in range(IRIS_RING_POINTS):
        t = 2 * np.pi * k / IRIS_RING_POINTS
        tu, tw = IRIS_RING_RADIUS * np.cos(t), IRIS_RING_RADIUS * np.sin(t)
        ring.append(ids[front][np.argmin((fu - tu) ** 2 + (fw - tw) ** 2)])
    # every second ring point first, so that a prefix is an evenly spread subset
    ring = [ring[k] for k in (*range(0, IRIS_RING_POINTS, 2), *range(1, IRIS_RING_POINTS, 2))]
    out = np.array([pupil] + ring, dtype=np.int64)
    if len(np.unique(out)) != len(out):
        raise RuntimeError("iris ring points collide; mesh changed?")
    return out


def candidate_groups(model):
    """Disjoint candidate vertex ids per group (dict group -> sorted id array).

    ``iris_L/R`` hold the ordered iris landmarks themselves (pupil first).
    """
    v = model.vertices.astype(np.float64)
    nv = len(v)
    ids = np.arange(nv)
    face = _labels_in(model, "face")
    skin = _labels_in(model, "face", "head_neck")
    below = _below_neck_cut(v)
    groups = {}

    # eyelids: lid margin = EYELID_RING edge rings out from the face surface's eye holes
    face_tris = _region_faces(model, face)
    loops = _boundary_loops(face_tris, nv)
    taken = np.zeros(nv, dtype=bool)
    for side, sclera in (("L", SCLERA_L), ("R", SCLERA_R)):
        centre = v[sclera[0]:sclera[1] + 1].mean(axis=0)
        loop = min(loops, key=lambda lp: np.linalg.norm(v[lp].mean(axis=0) - centre))
        dist = _ring_distance(face_tris, nv, loop)
        sel = face & (dist == EYELID_RING)
        groups[f"eyelid_{side}"] = ids[sel]
        taken |= sel

    # ears
    yc, zc, ay, az = EAR_ELLIPSE
    in_ellipse = ((v[:, 1] - yc) / ay) ** 2 + ((v[:, 2] - zc) / az) ** 2 < 1.0
    for side, sign in (("L", 1.0), ("R", -1.0)):
        sel = skin & ~taken & in_ellipse & (sign * v[:, 0] > EAR_MIN_ABS_X)
        groups[f"ear_{side}"] = ids[sel]
        taken |= sel

    sel = face & ~taken & (ids <= NARROW_FACE_END)
    groups["face_front"] = ids[sel]
    taken |= sel
    sel = skin & ~taken & below & (v[:, 1] >= NECK_MIN_Y)
    groups["neck"] = ids[sel]
    taken |= sel
    sel = face & ~taken & ~below
    groups["face_outer"] = ids[sel]
    taken |= sel
    sel = _labels_in(model, "head_neck") & ~taken & ~below
    groups["scalp"] = ids[sel]

    groups["iris_L"] = _iris_points(v, SCLERA_L, IRIS_L)
    groups["iris_R"] = _iris_points(v, SCLERA_R, IRIS_R)

    # inner lips: mouth socket near the inner edge of the lips (the face surface's mouth hole)
    from scipy.spatial import cKDTree
    front_teeth = v[_labels_in(model, "teeth") & (v[:, 2] > TEETH_MIN_Z)].mean(axis=0)
    mouth_loop = min(loops, key=lambda lp: np.linalg.norm(v[lp].mean(axis=0) - front_teeth))
    sock = ids[_labels_in(model, "mouth_socket")]
    d, _ = cKDTree(v[mouth_loop]).query(v[sock])
    groups["mouth_inner"] = sock[d < MOUTH_INNER_DIST]

    # teeth: front surfaces of the incisors and canines
    teeth = _labels_in(model, "teeth")
    tt = _region_faces(model, teeth)
    n = _vertex_normals(v, tt)
    radial = v - TEETH_ARCH_CENTRE
    radial[:, 1] = 0.0
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
    upper = (ids >= UPPER_TEETH[0]) & (ids <= UPPER_TEETH[1])
    lower = (ids >= LOWER_TEETH[0]) & (ids <= LOWER_TEETH[1])
    crown = (upper & (v[:, 1] <= v[upper, 1].min() + TEETH_CROWN_BAND)) | \
            (lower & (v[:, 1] >= v[lower, 1].max() - TEETH_CROWN_BAND))
    outward = np.sum(n * radial, axis=1) > TEETH_MIN_DOT
    cand = ids[teeth & crown & (v[:, 2] > TEETH_MIN_Z) & outward]
    # visible from the front with the jaw open (so that the upper teeth do not hide the lower)
    v_open = v + model.expression_basis[:, :, EXPRESSION_NAMES.index("jawOpen")]
    occluders = _region_faces(model, _labels_in(model, "teeth", "gums_tongue"))
    groups["teeth"] = cand[visible_points(v_open, occluders, v_open[cand])]
    return groups


def vertex_groups(model):
    """dict vertex id -> group name for every candidate vertex (used by the renderer)."""
    out = {}
    for g, ids in candidate_groups(model).items():
        for i in ids:
            out[int(i)] = g
    return out


# ------------------------------------------------------------------------------------------------
# sets
# ------------------------------------------------------------------------------------------------

def load_ibug68(ict_dir=None):
    root = Path(ict_dir) if ict_dir is not None else default_ict_dir()
    src = root / "FaceXModel" if (root / "FaceXModel").is_dir() else root
    with open(src / "vertex_indices.json") as f:
        ids = np.array(json.load(f)["idx_to_landmark_verts"], dtype=np.int64)
    if ids.shape != (68,) or len(np.unique(ids)) != 68:
        raise ValueError(f"{src / 'vertex_indices.json'}: expected 68 distinct landmark vertices")
    return ids


def load_inputs(ict_dir=None):
    """(model, ibug68 vertex ids) for the set builders, or None after one error line on stderr
    (model not built, ICT-FaceKit missing or malformed): the caller exits with status 2."""
    try:
        return load_model(), load_ibug68(ict_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _sample_group(v, g, cand, quota, seeds, blockers):
    """Sample one group (symmetric groups) or an _L group (plain FPS, mirrored by the caller)."""
    if g == "teeth":
        up = cand[(cand >= UPPER_TEETH[0]) & (cand <= UPPER_TEETH[1])]
        lo = cand[(cand >= LOWER_TEETH[0]) & (cand <= LOWER_TEETH[1])]
        return np.concatenate([_sym_fps(v, up, quota // 2), _sym_fps(v, lo, quota - quota // 2)])
    if g.startswith("iris_"):
        return cand[:quota]
    if g.endswith("_L"):
        return _plain_fps(v, cand, quota, seeds, blockers)
    return _sym_fps(v, cand, quota, seeds, blockers)


def build_sets(model, ibug):
    """The three sets: dict name -> (ids, {group: count})."""
    v = model.vertices.astype(np.float64)
    cands = candidate_groups(model)
    ibug = np.asarray(ibug, dtype=np.int64)
    ibug_set = set(int(i) for i in ibug)
    where = {}
    for g, c in cands.items():
        for i in c:
            where.setdefault(int(i), g)
    missing = [i for i in ibug_set if i not in where]
    if missing:
        raise RuntimeError(f"iBUG vertices outside every group: {sorted(missing)}")

    sets = {"ibug68": (ibug, {})}
    members = {}
    for col, name in ((1, "dense703"), (2, "dense320")):
        picked = {}
        skin_ids = list(ibug)           # skin landmarks chosen so far (repel later skin groups)
        for g in SAMPLING_ORDER:
            quota = QUOTA[g][col - 1]
            if g.endswith("_R"):
                dst = np.arange(IRIS_R[0], IRIS_R[1] + 1) if g == "iris_R" else cands[g]
                picked[g] = _mirror_ids(v, picked[g[:-2] + "_L"], dst)
            else:
                cand = np.asarray(cands[g] if name == "dense703" else members[g])
                if name == "dense320" and g in FRONT_ONLY_IN_320:
                    cand = cand[v[cand, 2] >= FRONT_Z]
                seeds = [i for i in cand if int(i) in ibug_set]
                blockers = None
                if g in SKIN_GROUPS:
                    others = np.setdiff1d(np.asarray(skin_ids, dtype=np.int64), cand)
                    blockers = v[others]
                picked[g] = _sample_group(v, g, cand, quota, seeds, blockers)
            if g in SKIN_GROUPS:
                skin_ids += [int(i) for i in picked[g]]
            assert len(picked[g]) == quota, (name, g, len(picked[g]))
        if name == "dense703":
            members = picked
        ids = np.concatenate([picked[row[0]] for row in QUOTAS]).astype(np.int64)
        sets[name] = (ids, {row[0]: row[col] for row in QUOTAS})
    return sets


def format_set(name, ids, counts):
    """The file text of one set: a short header comment, then one vertex id per line."""
    lines = [f"# lmfit3d landmark set {name}: {len(ids)} ICT-FaceKit vertex ids (0-based), "
             "one per line."]
    if name == "ibug68":
        lines += ["# ICT-FaceKit's Multi-PIE 68 landmark vertices (FaceXModel/vertex_indices.json,",
                  "# idx_to_landmark_verts), in iBUG order.  Written by tools/make_landmark_sets.py."]
    else:
        lines += ["# Made by tools/make_landmark_sets.py: farthest-point sampling within per-group",
                  "# quotas on the neutral mesh, seeded with ibug68 (see the tool's docstring).",
                  "# Groups, in file order:"]
        groups = [f"{g} {n}" for g, n in counts.items()]
        lines += ["#   " + ", ".join(groups[k:k + 6]) for k in range(0, len(groups), 6)]
    lines += [str(int(i)) for i in ids]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Make the landmark sets in data/landmarks/.")
    ap.add_argument("--check", action="store_true",
                    help="compare the files with what would be written; exit 1 if they differ")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR,
                    help="output folder (default: data/landmarks)")
    ap.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit root (default: $ICT_FACEKIT)")
    args = ap.parse_args(argv)

    loaded = load_inputs(args.ict)
    if loaded is None:
        return 2
    model, ibug = loaded
    sets = build_sets(model, ibug)
    bad = []
    for name in SET_NAMES:
        ids, counts = sets[name]
        text = format_set(name, ids, counts)
        path = args.out_dir / f"{name}.txt"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                bad.append(str(path))
        else:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path} ({len(ids)} vertices)")
    if args.check:
        if bad:
            print("out of date (run python tools/make_landmark_sets.py): " + ", ".join(bad), file=sys.stderr)
            return 1
        print("landmark sets are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
