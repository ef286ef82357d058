"""The rasteriser and drawing kernels against plain NumPy references."""
import os
import re

import numpy as np
import pytest

from lmfit3d.imaging import draw_points
from lmfit3d.render import HIDDEN_REGIONS, model_albedo, rasterize, render, shade, vertex_normals, visible_faces
from conftest import run_without_jit


def _coverage_reference(uv, tri, w, h):
    """Pixels whose centre lies inside the screen triangle (inclusive edges), brute force."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    a, b, c = uv[tri]

    def edge(p, q):
        return (q[0] - p[0]) * (yy - p[1]) - (q[1] - p[1]) * (xx - p[0])

    e0, e1, e2 = edge(b, c), edge(c, a), edge(a, b)
    return ((e0 <= 0) & (e1 <= 0) & (e2 <= 0)) | ((e0 >= 0) & (e1 >= 0) & (e2 >= 0))


def _raster(uv, depth, faces, colors, w=32, h=24, alpha=1.0):
    image = np.zeros((h, w, 3), np.float32)
    zbuf = np.full((h, w), np.inf)
    tri = np.full((h, w), -1, np.int64)
    bary = np.zeros((h, w, 3), np.float32)
    rasterize(np.ascontiguousarray(uv, dtype=np.float64), np.ascontiguousarray(depth, dtype=np.float64),
              np.ascontiguousarray(faces, dtype=np.int64), np.ascontiguousarray(colors, dtype=np.float64),
              alpha, image, zbuf, tri, bary)
    return image, zbuf, tri, bary


def test_rasterize_coverage_matches_reference(rng):
    for _ in range(5):
        uv = rng.uniform(0, [32, 24], size=(3, 2))
        faces = np.array([[0, 1, 2]])
        if (uv[1, 0] - uv[0, 0]) * (uv[2, 1] - uv[0, 1]) - (uv[1, 1] - uv[0, 1]) * (uv[2, 0] - uv[0, 0]) >= 0:
            faces = faces[:, ::-1]                   # front-facing: clockwise on screen (v down)
        _, _, tri, bary = _raster(uv, np.full(3, 100.0), faces, np.ones((3, 3)))
        ref = _coverage_reference(uv, faces[0], 32, 24)
        # pixels exactly on an edge may go either way; elsewhere the kernel equals the reference
        assert ((tri == 0) != ref).sum() <= 2
        inside = tri == 0
        np.testing.assert_allclose(bary[inside].sum(1), 1.0, atol=1e-5)
        # with equal depths the barycentrics reproduce the pixel centre
        yy, xx = np.mgrid[0:24, 0:32] + 0.5
        pos = bary[inside] @ uv[faces[0]]
        np.testing.assert_allclose(pos, np.stack([xx[inside], yy[inside]], 1), atol=1e-3)


def test_back_faces_are_culled_and_the_nearer_triangle_wins():
    uv = np.array([[2.0, 2.0], [2.0, 20.0], [30.0, 2.0]])
    front = np.array([[0, 1, 2]])
    _, _, tri, _ = _raster(uv, np.full(3, 10.0), front, np.ones((3, 3)))
    assert (tri == 0).sum() > 100
    _, _, tri, _ = _raster(uv, np.full(3, 10.0), front[:, ::-1], np.ones((3, 3)))
    assert (tri == -1).all(), "counter-clockwise on screen is a back face"
    uv2 = np.vstack([uv, uv])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    depth = np.array([10.0, 10.0, 10.0, 5.0, 5.0, 5.0])
    colors = np.vstack([np.tile([1.0, 0, 0], (3, 1)), np.tile([0, 1.0, 0], (3, 1))])
    for order in (faces, faces[::-1]):
        image, zbuf, tri, _ = _raster(uv2, depth, order, colors)
        hit = tri >= 0
        np.testing.assert_allclose(zbuf[hit], 5.0)
        np.testing.assert_allclose(image[hit], np.tile([0.0, 1.0, 0.0], (hit.sum(), 1)), atol=1e-6)


def test_alpha_blends_over_the_background():
    uv = np.array([[0.0, 0.0], [0.0, 24.0], [32.0, 0.0]])
    image = np.full((24, 32, 3), 0.5, np.float32)
    zbuf = np.full((24, 32), np.inf)
    tri = np.full((24, 32), -1, np.int64)
    bary = np.zeros((24, 32, 3), np.float32)
    rasterize(uv, np.full(3, 1.0), np.array([[0, 1, 2]]), np.ones((3, 3)), 0.25, image, zbuf, tri, bary)
    np.testing.assert_allclose(image[tri >= 0], 0.75 * 0.5 + 0.25)
    np.testing.assert_allclose(image[tri < 0], 0.5)


def test_vertex_normals_match_numpy_reference(model):
    v = model.template()[:3000]
    faces = model.faces[(model.faces < 3000).all(1)].astype(np.int64)
    out = np.empty_like(v)
    vertex_normals(v, faces, out)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ref = np.zeros_like(v)
    for k in range(3):
        np.add.at(ref, faces[:, k], fn)
    used = np.linalg.norm(ref, axis=1) > 0
    ref[used] /= np.linalg.norm(ref[used], axis=1, keepdims=True)
    np.testing.assert_allclose(out[used], ref[used], atol=1e-10)


def test_rendered_face_covers_the_projected_head(model):
    """The neutral head at 600 mm: the visible mesh covers the projected face region, the hidden
    shells are not drawn, and the face is lit (brighter than the background)."""
    from lmfit3d.camera import Camera
    from lmfit3d.model import Params
    from lmfit3d.skinning import evaluate_mesh
    verts = evaluate_mesh(model, Params.zeros(model).replace(translation=np.array([0.0, 0.0, -600.0])))
    faces = visible_faces(model)
    assert not model.region_mask(*HIDDEN_REGIONS)[faces].any()
    cam = Camera.from_fov(256, 256, 30.0)
    img, tri, _ = render(verts, faces, shade(verts, faces, model_albedo(model)), cam.focal, 256, 256,
                         background=np.zeros((256, 256, 3), np.uint8))
    uv = cam.project(verts[model.region_mask("face")])
    ij = np.floor(uv).astype(int)
    ok = (ij >= 0).all(1) & (ij[:, 0] < 256) & (ij[:, 1] < 256)
    assert (tri[ij[ok, 1], ij[ok, 0]] >= 0).mean() > 0.95
    assert img[tri >= 0].mean() > 60 and (img[tri < 0] == 0).all()
    with pytest.raises(ValueError, match="verts must have shape"):
        render(verts[:, :2], faces, 1.0, cam.focal, 256, 256)


def test_draw_points_fills_discs():
    img = np.zeros((20, 20, 3), np.uint8)
    draw_points(img, np.array([[10.0, 10.0], [np.nan, 3.0], [-50.0, 4.0]]), 3.0, np.array([255, 0, 0], np.uint8))
    yy, xx = np.mgrid[0:20, 0:20] + 0.5
    ref = (xx - 10.0) ** 2 + (yy - 10.0) ** 2 <= 9.0
    np.testing.assert_array_equal(img[..., 0] == 255, ref)
    assert not img[..., 1:].any()


def test_kernels_without_jit_match_reference():
    """The rasteriser and drawing kernels' source (not only the compiled form) against the references."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        from numba.core.registry import CPUDispatcher
        assert not isinstance(rasterize, CPUDispatcher)
        return
    out = run_without_jit(__file__, "coverage or culled or alpha or draw_points or without_jit")
    assert re.search(r"\b5 passed\b", out), out[-500:]


def test_render_over_draws_the_pixels_of_a_full_render(model, rng):
    """The overlay renders only the mesh's window of the frame (an 8000 x 8000 photo in little memory),
    with the pixels of a full-frame render."""
    from lmfit3d.model import Params
    from lmfit3d.render import model_albedo, render, render_over, shade, visible_faces
    from lmfit3d.skinning import evaluate_mesh
    p = Params.zeros(model).replace(translation=np.array([40.0, -25.0, -900.0]))
    v = evaluate_mesh(model, p)
    faces = visible_faces(model)
    col = shade(v, faces, model_albedo(model))
    frame = rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8)
    full, tri, _ = render(v, faces, col, 500.0, 400, 300, background=frame, alpha=0.55)
    over = render_over(frame, v, faces, col, 500.0, alpha=0.55)
    assert (tri >= 0).sum() > 2000 and (tri >= 0).mean() < 0.5     # the face covers part of the frame
    np.testing.assert_array_equal(over, full)
    assert not np.shares_memory(over, frame)
