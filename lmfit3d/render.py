"""A small z-buffer rasteriser (numba) for overlays and synthetic renders of the face model.

Vertices are given in camera coordinates (mm; camera looks along -z, README conventions) and
projected with the pinhole camera of ``lmfit3d.camera``.  Colours are per vertex, interpolated
with perspective-correct barycentrics; shading is Lambertian plus ambient, from per-vertex normals.
"""
import numpy as np
from numba import njit

from .camera import project_points


@njit(cache=True)
def vertex_normals(verts, faces, out):
    """Area-weighted unit vertex normals out (V, 3) of a triangle mesh (scalar loops, no temporaries)."""
    out[:] = 0.0
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        ax, ay, az = verts[a, 0], verts[a, 1], verts[a, 2]
        e10, e11, e12 = verts[b, 0] - ax, verts[b, 1] - ay, verts[b, 2] - az
        e20, e21, e22 = verts[c, 0] - ax, verts[c, 1] - ay, verts[c, 2] - az
        n0 = e11 * e22 - e12 * e21
        n1 = e12 * e20 - e10 * e22
        n2 = e10 * e21 - e11 * e20
        out[a, 0] += n0
        out[a, 1] += n1
        out[a, 2] += n2
        out[b, 0] += n0
        out[b, 1] += n1
        out[b, 2] += n2
        out[c, 0] += n0
        out[c, 1] += n1
        out[c, 2] += n2
    for k in range(out.shape[0]):
        n = np.sqrt(out[k, 0] ** 2 + out[k, 1] ** 2 + out[k, 2] ** 2)
        if n > 0:
            out[k, 0] /= n
            out[k, 1] /= n
            out[k, 2] /= n


@njit(cache=True)
def rasterize(uv, depth, faces, colors, alpha, image, zbuf, tri_id, bary):
    """Draw triangles into ``image`` (H, W, 3) float32 with a z-buffer, in place.

    uv : (V, 2) pixel positions; depth : (V,) positive distance along the view axis (mm);
    faces : (T, 3) int; colors : (V, 3) float in [0, 1]; alpha : float, blend factor of the mesh
    over what ``image`` holds (0: the image is not touched, only the buffers below).  zbuf (H, W) float64 (init +inf), tri_id (H, W) int64 (init -1) and
    bary (H, W, 3) float32 receive the nearest triangle and its perspective-correct barycentrics.
    Back faces (clockwise on screen) are culled.
    """
    h, w = image.shape[0], image.shape[1]
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        za, zb, zc = depth[a], depth[b], depth[c]
        if za <= 0 or zb <= 0 or zc <= 0:
            continue
        ax, ay = uv[a, 0], uv[a, 1]
        bx, by = uv[b, 0], uv[b, 1]
        cx, cy = uv[c, 0], uv[c, 1]
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if area >= 0:              # counter-clockwise in model space is clockwise with v down
            continue
        # candidate pixels: those whose centre (x + 0.5, y + 0.5) lies in the triangle's bounding box
        x0 = max(int(np.ceil(min(ax, bx, cx) - 0.5)), 0)
        x1 = min(int(np.floor(max(ax, bx, cx) - 0.5)), w - 1)
        y0 = max(int(np.ceil(min(ay, by, cy) - 0.5)), 0)
        y1 = min(int(np.floor(max(ay, by, cy) - 0.5)), h - 1)
        if x0 > x1 or y0 > y1:
            continue
        inv = 1.0 / area
        for y in range(y0, y1 + 1):
            py = y + 0.5
            for x in range(x0, x1 + 1):
                px = x + 0.5
                w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) * inv
                w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) * inv
                w2 = 1.0 - w0 - w1
                if w0 < 0 or w1 < 0 or w2 < 0:
                    continue
                # perspective-correct weights
                q0, q1, q2 = w0 / za, w1 / zb, w2 / zc
                qs = q0 + q1 + q2
                z = 1.0 / qs
                if z >= zbuf[y, x]:
                    continue
                zbuf[y, x] = z
                tri_id[y, x] = t
                q0 *= z
                q1 *= z
                q2 *= z
                bary[y, x, 0] = q0
                bary[y, x, 1] = q1
                bary[y, x, 2] = q2
                if alpha == 0.0:       # ids and barycentrics only: the image is left as it is
                    continue
                for k in range(3):
                    col = q0 * colors[a, k] + q1 * colors[b, k] + q2 * colors[c, k]
                    image[y, x, k] = (1.0 - alpha) * image[y, x, k] + alpha * col


def shade(verts, faces, albedo, light_dir=(0.3, 0.4, 1.0), ambient=0.35, diffuse=0.65):
    """Per-vertex colours (V, 3): albedo x (ambient + diffuse max(0, n.l)); light in camera axes."""
    n = np.empty_like(verts)
    vertex_normals(verts, faces, n)
    lvec = np.asarray(light_dir, dtype=np.float64)
    lvec = lvec / np.linalg.norm(lvec)
    lam = np.clip(n @ lvec, 0.0, None)
    return np.clip(np.asarray(albedo) * (ambient + diffuse * lam)[:, None], 0.0, 1.0)


def render(verts, faces, colors, focal, width, height, background=None, alpha=1.0, principal=None):
    """Render a camera-space mesh.

    Parameters
    ----------
    verts : (V, 3) float, camera coordinates (mm).
    faces : (T, 3) int.
    colors : (V, 3) float in [0, 1].
    focal : float, pixels; principal point at the image centre.
    background : (H, W, 3) uint8 or float in [0, 1], optional (default black).
    alpha : float, opacity of the mesh over the background.
    principal : (cx, cy) pixels, optional (default the image centre): a window of a larger image.

    Returns
    -------
    image : (H, W, 3) uint8; tri_id : (H, W) int64 (-1 = background); bary : (H, W, 3) float32.
    """
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {verts.shape}")
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    colors = np.ascontiguousarray(np.broadcast_to(colors, verts.shape), dtype=np.float64)
    uv = np.empty((verts.shape[0], 2))
    cx, cy = (width / 2.0, height / 2.0) if principal is None else (float(principal[0]), float(principal[1]))
    project_points(verts, float(focal), cx, cy, uv)
    if background is None:
        image = np.zeros((height, width, 3), np.float32)
    else:
        bg = np.asarray(background)
        if bg.shape != (height, width, 3):
            raise ValueError(f"background must have shape {(height, width, 3)}, got {bg.shape}")
        image = bg.astype(np.float32) / (255.0 if bg.dtype == np.uint8 else 1.0)
    zbuf = np.full((height, width), np.inf)
    tri = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3), np.float32)
    rasterize(uv, -verts[:, 2], faces, colors, float(alpha), image, zbuf, tri, bary)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), tri, bary


def render_over(frame, verts, faces, colors, focal, alpha=0.55, margin=2):
    """``frame`` (H, W, 3) uint8 with the camera-space mesh drawn over it (principal point at the
    frame's centre), rendering only the window its projection covers: the same pixels as
    :func:`render` over the whole frame, with memory and time following the face's size, not the
    frame's (an 8000 x 8000 photo)."""
    h, w = frame.shape[:2]
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    uv = np.empty((verts.shape[0], 2))
    project_points(verts, float(focal), w / 2.0, h / 2.0, uv)
    uv = uv[np.isfinite(uv).all(1) & (verts[:, 2] < 0)]
    if uv.shape[0] == 0:
        return frame
    x0, y0 = (max(int(np.floor(v)) - margin, 0) for v in uv.min(0))
    x1, y1 = min(int(np.ceil(uv[:, 0].max())) + margin, w), min(int(np.ceil(uv[:, 1].max())) + margin, h)
    if x1 <= x0 or y1 <= y0:
        return frame
    sub, _, _ = render(verts, faces, colors, focal, x1 - x0, y1 - y0, background=frame[y0:y1, x0:x1],
                       alpha=alpha, principal=(w / 2.0 - x0, h / 2.0 - y0))
    out = np.array(frame, copy=True)
    out[y0:y1, x0:x1] = sub
    return out


# ICT shells that are transparent (or only blend helpers) in the upstream materials: never drawn.
HIDDEN_REGIONS = ("eye_occlusion_L", "eye_occlusion_R", "eye_blend_L", "eye_blend_R", "lacrimal_L",
                  "lacrimal_R", "eyelashes_L", "eyelashes_R")


def visible_faces(model):
    """Triangles of the model that are drawn: no transparent shell (incl. the outer sclera/cornea)."""
    from .model import SCLERA_L, SCLERA_R
    drop = model.region_mask(*HIDDEN_REGIONS)
    for a, b in (SCLERA_L, SCLERA_R):
        drop[a:b + 1] = True
    return np.ascontiguousarray(model.faces[~drop[model.faces].any(1)])


def model_albedo(model, skin=(0.85, 0.62, 0.52), iris=(0.35, 0.22, 0.12), iris_deg=28.0, pupil_deg=12.0,
                 identity=None):
    """Per-vertex albedo (V, 3) of the face model: skin, white eyeballs with iris and pupil discs
    (cones of ``iris_deg`` / ``pupil_deg`` about each eye's forward axis, +z at rest), teeth, mouth."""
    v = model.template(identity)
    joints = model.joints(identity)
    alb = np.tile(np.asarray(skin, dtype=np.float64), (model.n_vertices, 1))
    for s, name in enumerate(("eyeball_L", "eyeball_R")):
        ids = np.flatnonzero(model.region_mask(name))
        d = v[ids] - joints[3 + s]
        cosang = d[:, 2] / np.linalg.norm(d, axis=1)
        col = np.tile([0.95, 0.95, 0.92], (ids.size, 1))
        col[cosang > np.cos(np.radians(iris_deg))] = iris
        col[cosang > np.cos(np.radians(pupil_deg))] = 0.02
        alb[ids] = col
    alb[model.region_mask("mouth_socket", "gums_tongue")] = (0.45, 0.18, 0.18)
    alb[model.region_mask("teeth")] = (0.92, 0.9, 0.85)
    return alb


# --------------------------------------------------------------------------------------------
# Line and point overlays (--overlay-style wireframe / landmarks, the report's contact sheet)
# --------------------------------------------------------------------------------------------

@njit(cache=True)
def wire_mask(uv, depth, faces, edges, zbuf, tol, mask):
    """Mark in ``mask`` (H, W) float32 the pixels of the edges of front-facing triangles that no nearer
    surface hides: depth along an edge (linear) within ``tol`` (mm) of ``zbuf`` (H, W) (+inf: no
    surface).  uv (V, 2) pixels, depth (V,) mm > 0 in front of the camera; edges (T, 3) bool: draw
    edge e (vertex e to e + 1) of triangle t."""
    h, w = mask.shape[0], mask.shape[1]
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        if depth[a] <= 0 or depth[b] <= 0 or depth[c] <= 0:
            continue
        area = (uv[b, 0] - uv[a, 0]) * (uv[c, 1] - uv[a, 1]) - (uv[b, 1] - uv[a, 1]) * (uv[c, 0] - uv[a, 0])
        if area >= 0:                   # back face (as in :func:`rasterize`)
            continue
        for e in range(3):
            if not edges[t, e]:
                continue
            p = faces[t, e]
            q = faces[t, (e + 1) % 3]
            dx = uv[q, 0] - uv[p, 0]
            dy = uv[q, 1] - uv[p, 1]
            n = int(max(abs(dx), abs(dy))) + 1
            if n > 4 * (h + w):
                continue
            for s in range(n + 1):
                f = s / n
                x = int(uv[p, 0] + f * dx)
                y = int(uv[p, 1] + f * dy)
                if x < 0 or y < 0 or x >= w or y >= h:
                    continue
                if depth[p] + f * (depth[q] - depth[p]) <= zbuf[y, x] + tol:
                    mask[y, x] = 1.0


def blend_mask(image, mask, color, alpha):
    """``image`` (H, W, 3) uint8 with ``color`` (RGB 0-255) blended in where ``mask`` (H, W) in [0, 1]."""
    a = (alpha * mask)[:, :, None]
    out = image.astype(np.float32) * (1.0 - a) + np.asarray(color, np.float32) * a
    return (out + 0.5).astype(np.uint8)


def quad_edges(verts, faces):
    """(T, 3) bool: the edges of each triangle but its longest (ICT's quads without their diagonals)."""
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces)
    length = np.stack([np.linalg.norm(v[f[:, (e + 1) % 3]] - v[f[:, e]], axis=1) for e in range(3)], 1)
    return length < length.max(1, keepdims=True)


def draw_wireframe(image, verts, faces, focal, origin=(0.0, 0.0), scale=1.0, color=(80, 255, 120), alpha=0.7,
                   tol_mm=2.0, full_size=None, edges=None):
    """The camera-space mesh ``verts`` (V, 3) mm as a wireframe over ``image`` (H, W, 3) uint8: the edges
    of the triangles the camera sees (back faces and hidden edges left out).

    ``full_size`` (W, H) is the frame the camera sees (default: the image's); ``image`` may be a crop
    of it from ``origin`` (pixels), resized by ``scale`` (a contact-sheet thumbnail).  ``edges`` (T, 3)
    bool selects the edges (default :func:`quad_edges`).  Where edges are denser than a few pixels the
    lines fade (opacity ``alpha`` from 5 px apart down to 0.4 of it at 1 px), so the face stays visible.
    """
    h, w = image.shape[:2]
    fw, fh = full_size if full_size is not None else (w, h)
    verts = np.ascontiguousarray(verts, dtype=np.float64)
    uv = np.empty((verts.shape[0], 2))
    project_points(verts, float(focal), fw / 2.0, fh / 2.0, uv)
    uv = (uv - np.asarray(origin, np.float64)) * scale
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    zbuf = np.full((h, w), np.inf)
    tri = np.full((h, w), -1, np.int64)
    bary = np.zeros((h, w, 3), np.float32)
    depth = -verts[:, 2]
    rasterize(uv, depth, faces, np.zeros((1, 3)), 0.0, np.zeros((h, w, 3), np.float32), zbuf, tri, bary)
    if edges is None:
        edges = quad_edges(verts, faces)
    mask = np.zeros((h, w), np.float32)
    wire_mask(uv, depth, faces, np.ascontiguousarray(edges), zbuf, float(tol_mm), mask)
    seen = tri[::3, ::3]
    seen = seen[seen >= 0]                  # triangles on a sparse grid of pixels (area-weighted)
    px = np.median(np.linalg.norm(uv[faces[seen, 1]] - uv[faces[seen, 0]], axis=1)) if seen.size else 5.0
    return blend_mask(image, mask, color, alpha * float(np.clip((px - 1.0) / 4.0, 0.4, 1.0)))


def draw_points(image, points, color, radius=1):
    """``image`` (H, W, 3) uint8 with square dots of half-width ``radius`` px at ``points`` (N, 2) pixels
    (NaN points skipped); returns a new image."""
    out = image.copy()
    p = np.asarray(points, dtype=np.float64)
    p = p[np.isfinite(p).all(1)].astype(np.int64)
    h, w = out.shape[:2]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x, y = p[:, 0] + dx, p[:, 1] + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            out[y[ok], x[ok]] = color
    return out


# 3 x 5 bitmaps of the digits 0-9 (rows top to bottom, 3 bits each, most significant bit left)
_DIGITS = ((7, 5, 5, 5, 7), (2, 6, 2, 2, 7), (7, 1, 7, 4, 7), (7, 1, 7, 1, 7), (5, 5, 7, 1, 1),
           (7, 4, 7, 1, 7), (7, 4, 7, 5, 7), (7, 1, 1, 1, 1), (7, 5, 7, 5, 7), (7, 5, 7, 1, 7))


def draw_label(image, number, x, y, color=(255, 255, 0), scale=3):
    """``image`` (H, W, 3) uint8 with the integer ``number`` written in block digits (3 x 5 cells of
    ``scale`` px, on a dark box) with its top-left corner at pixel (x, y); returns a new image."""
    out = image.copy()
    h, w = out.shape[:2]
    text = str(int(number))
    x, y = int(x), int(y)
    box = out[max(y - scale, 0):max(min(y + 6 * scale, h), 0), max(x - scale, 0):max(min(x + 4 * scale * len(text), w), 0)]
    box //= 3
    for k, ch in enumerate(text):
        for r, bits in enumerate(_DIGITS[int(ch)]):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    x0, y0 = x + (4 * k + c) * scale, y + r * scale
                    out[max(y0, 0):max(min(y0 + scale, h), 0), max(x0, 0):max(min(x0 + scale, w), 0)] = color
    return out
