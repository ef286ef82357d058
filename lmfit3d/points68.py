"""The 68 output points in the conventions people compare against (issue 14).

* ``landmarks68_3d``: 68 fixed surface points (the AFLW2000-3D / 3D face-alignment convention: the
  jaw is a fixed line on the surface, visible or not), camera-space millimetres.
* ``landmarks68``: the iBUG / 300W convention in pixels.  Points 17-67 are the fixed points
  projected; the jaw points 0-16 lie on the face's outline, found per frame: each jaw point has a line
  of candidate vertices across the cheek (``contour.txt``), and the reported point is the candidate
  furthest out in the image along the line's direction (landmark marching; on a frontal face that is
  the fixed point itself, on a turned face the far side's points move onto the silhouette); the 17
  outline points are then re-spaced evenly along the outline between the ends and the chin.

Both tables are chosen from data by ``tools/make_points68.py`` (label translation against a
300W-trained detector) and live in ``data/landmarks68/``: ``points.txt`` (68 vertex ids) and
``contour.txt`` (one line per jaw point: ``point wh wv vertex ...``, the line's outward direction as
weights of the face's horizontal and vertical axes, then its candidate vertices).
"""
from functools import lru_cache

import numpy as np

from .camera import Camera
from .paths import atomic_write, data_dir
from .render import visible_faces
from .skinning import pose, skin_mesh

# point ranges (start, end) of the usual groups of the 68-point layout
GROUPS = {"jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48), "mouth": (48, 68)}
N_JAW = 17
BAND_MM = 3.0      # half width of a contour line
INNER = 0.6        # a line starts at this fraction of its point's distance from the nose
DEPTH_MM = 12.0    # candidates at most this far behind their fixed point (no ears, no back of the head)


def _table_dir():
    return data_dir() / "landmarks68"


@lru_cache(maxsize=None)
def load_tables():
    """(points (68,) int64, contour [(weights (2,), candidates (n,) int64)] x 17) from data/landmarks68."""
    d = _table_dir()
    if not (d / "points.txt").is_file() or not (d / "contour.txt").is_file():
        raise ValueError(f"{d}: 68-point tables missing (made by tools/make_points68.py)")
    ids = np.loadtxt(d / "points.txt", dtype=np.int64, comments="#")
    lines = []
    for row in (d / "contour.txt").read_text().splitlines():
        if not row.strip() or row.startswith("#"):
            continue
        f = row.split()
        lines.append((np.array([float(f[1]), float(f[2])]), np.array([int(v) for v in f[3:]], np.int64)))
    if ids.shape != (68,) or len(lines) != N_JAW:
        raise ValueError(f"{d}: want 68 points and {N_JAW} contour lines, got {ids.shape} and {len(lines)}")
    return ids, tuple(lines)


def contour_lines(model, ids, margin_mm):
    """Candidate lines of the 17 jaw points on the mean head.

    Parameters
    ----------
    model : FaceModel
    ids : (68,) int, the fixed points (their jaw vertices anchor the lines).
    margin_mm : float, how far past its fixed point a line reaches (mm, radially).

    Returns
    -------
    lines : list of 17 (n,) int64 vertex ids
    weights : (17, 2) float64, the line's outward direction as (horizontal, vertical-down) weights.
    """
    t = model.template()
    skin = np.zeros(model.n_vertices, bool)
    skin[np.unique(visible_faces(model))] = True
    skin &= model.region_mask("face")
    centre = t[ids[27:36], :2].mean(0)
    xy = t[:, :2] - centre
    lines, weights = [], np.empty((N_JAW, 2))
    for k in range(N_JAW):
        a = t[ids[k]]
        r_vec = a[:2] - centre
        r = np.linalg.norm(r_vec)
        d = r_vec / r
        along = xy @ d
        perp = np.abs(xy[:, 0] * d[1] - xy[:, 1] * d[0])
        ok = skin & (perp < BAND_MM) & (along >= INNER * r) & (along <= r + margin_mm) & (t[:, 2] >= a[2] - DEPTH_MM)
        ok[ids[k]] = True
        lines.append(np.flatnonzero(ok))
        weights[k] = abs(d[0]), max(-d[1], 0.0)
    return lines, weights


def write_tables(ids, lines, weights, meta):
    """Write ``points.txt`` and ``contour.txt`` (atomically) into data/landmarks68."""
    d = _table_dir()
    d.mkdir(exist_ok=True)
    head = "# made by tools/make_points68.py: " + " ".join(f"{k}={v}" for k, v in meta.items())
    with atomic_write(d / "points.txt", "w") as fh:
        fh.write(head + "\n# vertex id of each of the 68 points (iBUG order)\n")
        fh.write("\n".join(str(int(v)) for v in ids) + "\n")
    with atomic_write(d / "contour.txt", "w") as fh:
        fh.write(head + "\n# point  w_horizontal  w_vertical  candidate vertex ids...\n")
        for k, (line, w) in enumerate(zip(lines, weights)):
            fh.write(f"{k} {w[0]:.4f} {w[1]:.4f} " + " ".join(str(int(v)) for v in line) + "\n")
    load_tables.cache_clear()


def outline(uv_fixed, uv_lines, weights, starts):
    """The 17 jaw points on the outline (17, 2) pixels.

    uv_fixed : (68, 2) the fixed points projected; uv_lines : (n, 2) every line's candidates projected,
    line k at ``uv_lines[starts[k]:starts[k + 1]]``; weights : (17, 2).
    """
    h = uv_fixed[0] - uv_fixed[16]                   # towards the subject's right (points 0-7)
    v = uv_fixed[8] - uv_fixed[27]                   # down the face
    h = h / max(np.linalg.norm(h), 1e-9)
    v = v / max(np.linalg.norm(v), 1e-9)
    out = np.empty((N_JAW, 2))
    for k in range(N_JAW):
        side = 1.0 if k < 8 else (-1.0 if k > 8 else 0.0)
        u = weights[k, 0] * side * h + weights[k, 1] * v
        c = uv_lines[starts[k]:starts[k + 1]]
        out[k] = c[np.argmax(c @ u)]
    return out


def even_spacing(jaw):
    """The jaw outline (17, 2) re-spaced evenly by arc length from each end (0, 16) to the chin (8),
    as 300W annotators space the points between the ear and the chin (on dlib's points of the
    calibration frames: jaw 5.74 -> 5.30 % IOD).  The outline itself is kept (a polyline through the
    marched points); only the points slide along it."""
    out = jaw.copy()
    for a, b in ((0, 8), (8, 16)):
        seg = jaw[a:b + 1]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(seg, axis=0), axis=1))])
        if s[-1] <= 0.0:
            continue
        t = np.linspace(0.0, s[-1], b - a + 1)
        out[a:b + 1, 0] = np.interp(t, s, seg[:, 0])
        out[a:b + 1, 1] = np.interp(t, s, seg[:, 1])
    return out


class PointEvaluator:
    """Posed positions of a few chosen vertices for a fixed identity (68 output points, gaze)."""

    def __init__(self, model, vertex_ids, identity):
        ids = np.asarray(vertex_ids, dtype=np.int64)
        self.model = model
        self.ids = ids
        self.identity = np.asarray(identity, dtype=np.float64)
        self.t_beta = model.vertices[ids].astype(np.float64) + model.identity_basis[ids].astype(np.float64) @ self.identity
        self.eb = model.expression_basis[ids].astype(np.float64)
        self.w = np.ascontiguousarray(model.skin_weights[ids], dtype=np.float64)
        self.out = np.empty((ids.size, 3))

    def __call__(self, params):
        st = pose(self.model, params)
        t = np.ascontiguousarray(self.t_beta + self.eb @ params.expression)
        skin_mesh(t, self.w, st.r0, st.translation, st.rg, st.tg, self.out)
        return self.out.copy(), st



class Points68:
    """Both 68-point outputs of one identity: call with (Params, Camera) per frame.

    Returns ``(uv68, xyz68)``: (68, 2) pixels in the 300W convention, (68, 3) camera-space mm of the
    fixed points.
    """

    def __init__(self, model, identity):
        ids, lines = load_tables()
        self.weights = np.stack([w for w, _ in lines])
        self.starts = np.concatenate([[0], np.cumsum([c.size for _, c in lines])]) + 68
        self.eval = PointEvaluator(model, np.concatenate([ids] + [c for _, c in lines]), identity)

    def __call__(self, params, camera: Camera):
        x, _ = self.eval(params)
        uv = camera.project(x)
        fixed = uv[:68]
        out = fixed.copy()
        out[:N_JAW] = even_spacing(outline(fixed, uv, self.weights, self.starts))
        return out, x[:68].copy()
