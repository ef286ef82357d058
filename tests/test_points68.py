"""The 68 output points (lmfit3d.points68): tables, the outline rule, the CSV/NPZ/JSON columns."""
import numpy as np
import pytest

from lmfit3d.camera import Camera
from lmfit3d.landmark_files import read_pts
from lmfit3d.model import Params
from lmfit3d.outputs import csv_header
from lmfit3d.points68 import GROUPS, N_JAW, Points68, even_spacing, load_tables, outline
from lmfit3d.skinning import evaluate_mesh


@pytest.fixture(scope="module")
def tables():
    return load_tables()


def test_tables_shape_and_lines(model, tables):
    ids, lines = tables
    assert ids.shape == (68,) and ids.min() >= 0 and ids.max() < model.n_vertices
    assert len(lines) == N_JAW
    for k, (w, cand) in enumerate(lines):
        assert ids[k] in cand                       # every line holds its fixed point
        assert cand.size >= 3
        assert np.all(w >= 0) and np.linalg.norm(w) > 0.5
    assert sum(b - a for a, b in GROUPS.values()) == 68


def _posed(model, yaw_deg, rng):
    rot = np.zeros((model.n_joints, 3))
    rot[0, 1] = np.radians(yaw_deg)
    p = Params(rng.normal(size=model.n_identity) * 0.5, np.zeros(model.n_expression), rot,
               np.array([0.0, 0.0, -600.0]))
    return p, Camera(1200.0, 800, 800)


def test_frontal_outline_is_the_fixed_jaw(model, tables, rng):
    """Facing the camera, the outline rule returns (nearly) the fixed jaw points."""
    p, cam = _posed(model, 0.0, rng)
    uv, xyz = Points68(model, p.identity)(p, cam)
    fixed = cam.project(xyz)
    iod = np.linalg.norm(fixed[36] - fixed[45])
    assert np.allclose(uv[N_JAW:], fixed[N_JAW:])
    assert np.median(np.linalg.norm(uv[:N_JAW] - fixed[:N_JAW], axis=1)) < 0.05 * iod


def test_turned_face_far_side_moves_onto_the_silhouette(model, tables, rng):
    """At 45 degrees yaw the far side's jaw points leave their (hidden) fixed vertices and move
    outwards in the image, onto the face's outline; the near side stays on its fixed points."""
    p, cam = _posed(model, 45.0, rng)          # head turned to its left: the subject's left side is far
    pts = Points68(model, p.identity)
    _, xyz = pts(p, cam)
    fixed = cam.project(xyz)
    verts = cam.project(evaluate_mesh(model, p))
    flat = np.concatenate([c for _, c in tables[1]])
    uv = outline(fixed, verts[flat], pts.weights, pts.starts - 68)     # before the even spacing
    out = fixed[8] - fixed[0]                  # towards the far (left, points 9-16) side in the image
    out /= np.linalg.norm(out)
    far = range(11, 17)
    moved = [(uv[k] - fixed[k]) @ out for k in far]
    assert min(moved) > 0.0 and max(moved) > 3.0
    # the outline point is the furthest-out projected mesh vertex of its line, along the line's direction
    _, lines = tables
    h = (fixed[0] - fixed[16]) / np.linalg.norm(fixed[0] - fixed[16])
    v = (fixed[8] - fixed[27]) / np.linalg.norm(fixed[8] - fixed[27])
    for k in far:
        w, cand = lines[k]
        u = -w[0] * h + w[1] * v
        assert uv[k] @ u == pytest.approx((verts[cand] @ u).max(), abs=1e-6)


def test_outline_picks_the_extreme_candidate():
    """outline(): per line the candidate furthest along its weighted direction."""
    fixed = np.zeros((68, 2))
    fixed[0], fixed[16], fixed[8], fixed[27] = (-10, 0), (10, 0), (0, 10), (0, -10)
    cand = np.array([[-5.0, 0.0], [-12.0, 1.0], [-8.0, 0.0]] * N_JAW)
    starts = np.arange(0, 3 * N_JAW + 1, 3)
    w = np.tile([1.0, 0.0], (N_JAW, 1))
    out = outline(fixed, cand, w, starts)
    assert np.allclose(out[0], (-12.0, 1.0))      # right side: furthest towards point 0
    assert np.allclose(out[16], (-5.0, 0.0))      # left side: furthest towards point 16


def test_even_spacing_keeps_ends_chin_and_outline(rng):
    """The re-spaced jaw keeps points 0, 8 and 16, stays on the polyline through the marched points,
    and spaces each half evenly by arc length (it moves points that were bunched)."""
    a = np.linspace(np.pi, 2 * np.pi, N_JAW) ** 1.3            # unevenly spaced along a curve
    jaw = np.stack([100 * np.cos(a), -80 * np.sin(a)], 1) + rng.normal(size=2)
    out = even_spacing(jaw)
    assert np.allclose(out[[0, 8, 16]], jaw[[0, 8, 16]])
    for lo, hi in ((0, 8), (8, 16)):
        steps = np.linalg.norm(np.diff(out[lo:hi + 1], axis=0), axis=1)
        raw = np.linalg.norm(np.diff(jaw[lo:hi + 1], axis=0), axis=1)
        assert steps.std() < 0.2 * raw.std()
    # every new point lies on a segment of the old polyline
    for q in out:
        d = [abs(np.linalg.det(np.stack([jaw[i + 1] - jaw[i], q - jaw[i]]))) / np.linalg.norm(jaw[i + 1] - jaw[i])
             for i in range(N_JAW - 1)
             if -1e-9 <= (q - jaw[i]) @ (jaw[i + 1] - jaw[i]) <= (jaw[i + 1] - jaw[i]) @ (jaw[i + 1] - jaw[i]) + 1e-9]
        assert min(d) < 1e-6


def test_csv_has_2d_and_3d_columns(model):
    cols = csv_header(model.expression_names)
    for c in ("x_0", "y_67", "X_0", "Y_33", "Z_67"):
        assert c in cols
    assert len([c for c in cols if c[:2] in ("X_", "Y_", "Z_")]) == 3 * 68


def test_read_pts_is_one_based_and_refuses_other_files(tmp_path):
    """An iBUG .pts file's (1, 1) is the top-left pixel's centre: (0.5, 0.5) in lmfit3d's pixels."""
    good = tmp_path / "a.pts"
    good.write_text("version: 1\nn_points: 2\n{\n1 1\n10.25 20\n}\n")
    assert np.allclose(read_pts(good), [[0.5, 0.5], [9.75, 19.5]])
    for i, text in enumerate(("no braces", "{\n1 2 3\n}", "{\n1 x\n}")):
        bad = tmp_path / f"bad{i}.pts"
        bad.write_text(text)
        with pytest.raises(ValueError, match="not an iBUG .pts file"):
            read_pts(bad)
