"""Render the landmark sets on the neutral head (front and side views) into ``docs/``.

Usage::

    python tools/render_landmark_sets.py                 # all sets in data/landmarks
    python tools/render_landmark_sets.py --sets dense320 --out-dir /tmp

One PNG per set, ``docs/landmarks_NAME.png``: the neutral mean head (skin and eyes only; the eye's
transparent outer shell is left out so that iris and pupil show) drawn as Lambert-shaded,
back-face-culled triangles sorted by depth (orthographic painter's algorithm), front and side views
side by side, with the landmarks that are visible from each view drawn as dots coloured by
landmark group (the groups of ``tools/make_landmark_sets.py``; iBUG parts for ``ibug68``; the
iBUG 68 points of the dense sets in yellow on top).  Hidden landmarks (the back of the head in the
front view, teeth and inner lips behind the closed lips, ...) are not drawn; the legend gives
total and visible counts per group.  Two small front close-ups are added: the eyes, and the mouth
opened by an expression (jawOpen + mouthUpperUp + mouthLowerDown) so that the teeth show.

Needs matplotlib (a tools-only dependency: ``pip install matplotlib``).
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from lmfit3d.landmarks import available_sets, load_landmark_set  # noqa: E402
from lmfit3d.model import (EXPRESSION_NAMES, REGION_NAMES, SCLERA_L, SCLERA_R,  # noqa: E402
                           load_model)

import make_landmark_sets as mls  # noqa: E402

DRAWN_REGIONS = ("face", "head_neck", "eyeball_L", "eyeball_R")
SKIN_RGB = np.array([0.86, 0.74, 0.66])
SCLERA_RGB = np.array([0.93, 0.93, 0.92])
IRIS_RGB = np.array([0.30, 0.45, 0.60])
PUPIL_RGB = np.array([0.05, 0.05, 0.07])
PUPIL_RADIUS = 1.8
MOUTH_RGB = np.array([0.62, 0.30, 0.30])
TEETH_RGB = np.array([0.95, 0.93, 0.85])
LIGHT = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])

# legend key -> (label, colour); the _L/_R groups of make_landmark_sets share a key
GROUP_STYLE = {
    "face_front": ("face (front)", "#1f77b4"),
    "face_outer": ("face (outer)", "#17becf"),
    "eyelid": ("eyelids", "#d62728"),
    "iris": ("iris ring / pupil", "#9467bd"),
    "ear": ("ears", "#ff7f0e"),
    "scalp": ("scalp / back of head", "#2ca02c"),
    "neck": ("neck", "#8c564b"),
    "mouth_inner": ("inner lips", "#e377c2"),
    "teeth": ("teeth", "#202020"),
}
# iBUG 68 parts (for the ibug68 picture)
IBUG_PARTS = (("jaw", range(0, 17), "#8c564b"), ("brows", range(17, 27), "#2ca02c"),
              ("nose", range(27, 36), "#ff7f0e"), ("eyes", range(36, 48), "#d62728"),
              ("outer lips", range(48, 60), "#1f77b4"), ("inner lips", range(60, 68), "#e377c2"))
IBUG_COLOUR = "#ffff00"
# an expression that shows the teeth, for the mouth close-up
MOUTH_OPEN = {"jawOpen": 0.4, "mouthUpperUp_L": 1.0, "mouthUpperUp_R": 1.0,
              "mouthLowerDown_L": 1.0, "mouthLowerDown_R": 1.0}
DPI = 100

# Views: yaw (degrees, about +y) applied before an orthographic projection along -z.
VIEWS = (("front", 0.0), ("side (subject's right)", 90.0))


def _yaw(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    # Ry(deg): yaw=+90 looks at the subject's right side, with the face pointing to the right.
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _tri_normals(p, f):
    n = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def draw_view(ax, model, yaw, ids, groups, style, ibug=None, title="", vertices=None,
              regions=DRAWN_REGIONS, window=None, dot=9.0):
    """Draw one view into ``ax``; returns {key: (total, visible)}.

    ``groups`` maps vertex id -> key of ``style`` (key -> (label, colour)); ``ibug`` ids are
    drawn on top in yellow.
    ``vertices`` (default: the neutral mesh) lets a posed mesh be drawn; ``window`` is
    ((x0, x1), (y0, y1)) in view coordinates (mm).
    """
    R = _yaw(yaw)
    verts = model.vertices if vertices is None else vertices
    p = np.asarray(verts, dtype=np.float64) @ R.T
    labels = model.region_labels
    keep = np.isin(labels, [REGION_NAMES.index(r) for r in regions])
    for a, b in (SCLERA_L, SCLERA_R):          # the transparent outer eye shell is not drawn
        keep[a:b + 1] = False
    f = model.faces[keep[model.faces].all(axis=1)]
    n = _tri_normals(p, f)
    f, n = f[n[:, 2] > 0], n[n[:, 2] > 0]                       # back-face culling
    order = np.argsort(p[f].mean(axis=1)[:, 2])                 # far to near
    f, n = f[order], n[order]
    flab = labels[f[:, 0]]
    base = np.tile(SKIN_RGB, (len(f), 1))
    base[np.isin(flab, [REGION_NAMES.index(r) for r in ("mouth_socket", "gums_tongue")])] = MOUTH_RGB
    base[flab == REGION_NAMES.index("teeth")] = TEETH_RGB
    for sclera, iris in ((SCLERA_L, mls.IRIS_L), (SCLERA_R, mls.IRIS_R)):
        # the eye's inner mesh, coloured by distance from the gaze axis (pupil, iris, sclera)
        c, axis = mls.eye_axis(verts, sclera)
        eye = (f[:, 0] >= iris[0]) & (f[:, 0] <= iris[1])
        d = np.asarray(verts, dtype=np.float64)[f[eye]].mean(axis=1) - c
        h = d @ axis
        rad = np.linalg.norm(d - h[:, None] * axis, axis=1)
        col = np.where((rad < mls.IRIS_RING_RADIUS)[:, None] & (h > 0)[:, None], IRIS_RGB, SCLERA_RGB)
        col[rad < PUPIL_RADIUS] = PUPIL_RGB          # incl. the back of the eye seen through it
        base[eye] = col
    shade = 0.3 + 0.7 * np.clip(n @ LIGHT, 0.0, 1.0)
    col = np.clip(base * shade[:, None], 0, 1)
    pc = PolyCollection(p[f][:, :, :2], facecolors=col, edgecolors=col, linewidths=0.15,
                        antialiaseds=False)
    ax.add_collection(pc)

    q = p[ids]
    vis = mls.visible_points(p, f, q, tol=1.0)
    counts = {}
    key_of = np.array([groups.get(int(i), "") for i in ids])
    for key, (_, colour) in style.items():
        sel = key_of == key
        counts[key] = (int(sel.sum()), int((sel & vis).sum()))
        s = sel & vis
        if s.any():
            ax.scatter(q[s, 0], q[s, 1], s=dot, c=colour, edgecolors="k", linewidths=0.3, zorder=3)
    if ibug is not None:
        s = np.isin(ids, ibug) & vis
        ax.scatter(q[s, 0], q[s, 1], s=dot, c=IBUG_COLOUR, edgecolors="k", linewidths=0.3,
                   zorder=4)
    if window is None:
        window = ((p[f][:, :, 0].min() - 5, p[f][:, :, 0].max() + 5), (-175, 150))
    ax.set_xlim(*window[0])
    ax.set_ylim(*window[1])
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return counts


def _legend_key(group):
    return group[:-2] if group.endswith(("_L", "_R")) else group


def render_set(model, name, out_path, groups):
    ids = np.asarray(load_landmark_set(name))
    if name == "ibug68" and len(ids) == 68:
        ibug = None
        groups = {int(ids[k]): part for part, rng, _ in IBUG_PARTS for k in rng}
        style = {part: (part, colour) for part, _, colour in IBUG_PARTS}
    else:
        ibug = np.asarray(load_landmark_set("ibug68"))
        groups = {i: _legend_key(g) for i, g in groups.items()}
        style = GROUP_STYLE
    fig = plt.figure(figsize=(12, 6.2))
    gs = fig.add_gridspec(2, 3, width_ratios=[1, 1.2, 0.85], height_ratios=[1, 1.25],
                          left=0.01, right=0.99, top=0.90, bottom=0.13, wspace=0.03, hspace=0.12)
    kw = dict(ids=ids, groups=groups, style=style, ibug=ibug)
    counts = {}
    for col, (vname, yaw) in enumerate(VIEWS):
        counts[vname] = draw_view(fig.add_subplot(gs[:, col]), model, yaw, title=vname, **kw)
    draw_view(fig.add_subplot(gs[0, 2]), model, 0.0, dot=14, title="eyes (front, close-up)",
              window=((-52, 52), (17, 55)), **kw)
    opened = model.vertices.astype(np.float64)
    for shape, weight in MOUTH_OPEN.items():
        opened = opened + weight * model.expression_basis[:, :, EXPRESSION_NAMES.index(shape)]
    draw_view(fig.add_subplot(gs[1, 2]), model, 0.0, dot=14, vertices=opened,
              regions=DRAWN_REGIONS + ("mouth_socket", "gums_tongue", "teeth"),
              title="mouth opened by expression (front, close-up)", window=((-40, 40), (-75, -12)),
              **kw)
    handles = []
    for key, (label, colour) in style.items():
        tot = counts[VIEWS[0][0]][key][0]
        if tot == 0:
            continue
        vis = "/".join(str(counts[v][key][1]) for v, _ in VIEWS)
        handles.append(plt.Line2D([], [], ls="", marker="o", mfc=colour, mec="k", mew=0.3,
                                  label=f"{label}: {tot} (visible {vis})"))
    if ibug is not None:
        handles.append(plt.Line2D([], [], ls="", marker="o", mfc=IBUG_COLOUR, mec="k", mew=0.3,
                                  label="of which iBUG 68 (drawn on top)"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
               title="group: count (visible in front / side view)", title_fontsize=8)
    fig.suptitle(f"landmark set {name!r}: {len(ids)} vertices on the neutral mean head", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    _write_small_png(buf.getvalue(), out_path)


def _write_small_png(data, out_path):
    """Save as an optimised RGB PNG (drops matplotlib's alpha channel) when Pillow is available."""
    try:
        from PIL import Image
    except ImportError:          # pragma: no cover - matplotlib depends on Pillow
        Path(out_path).write_bytes(data)
        return
    Image.open(io.BytesIO(data)).convert("RGB").save(out_path, optimize=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=None, help="set names (default: all available)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    model = load_model()
    groups = mls.vertex_groups(model)
    names = args.sets or list(available_sets())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = args.out_dir / f"landmarks_{name}.png"
        render_set(model, name, out, groups)
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
