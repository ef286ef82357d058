"""OBJ / PLY reading and writing: round trips, error messages, atomic writes."""
import os
import re

import numpy as np
import pytest

from lmfit3d import paths
from lmfit3d.meshio import (MeshFormatError, read_obj_faces, read_obj_vertices, read_ply, write_obj,
                            write_ply)


@pytest.fixture
def mesh(rng):
    """A random mesh: 50 vertices (mm-scale coordinates) and 80 triangles."""
    verts = rng.normal(scale=80.0, size=(50, 3))
    faces = rng.integers(0, 50, size=(80, 3)).astype(np.int32)
    return verts, faces


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_obj_round_trip_with_faces(tmp_path, mesh):
    verts, faces = mesh
    path = tmp_path / "m.obj"
    write_obj(path, verts, faces)
    back = read_obj_vertices(path, n_expected=len(verts))
    assert back.dtype == np.float64 and back.shape == verts.shape
    np.testing.assert_allclose(back, verts, rtol=0, atol=5.1e-7)  # written with 6 decimals
    np.testing.assert_array_equal(read_obj_faces(path, n_vertices=len(verts)), faces)


@pytest.mark.parametrize("with_faces", [True, False])
def test_ply_round_trip(tmp_path, mesh, with_faces):
    verts, faces = mesh
    path = tmp_path / "m.ply"
    write_ply(path, verts, faces if with_faces else None)
    back, back_faces = read_ply(path)
    np.testing.assert_array_equal(back, verts.astype(np.float32))
    if with_faces:
        assert back_faces.dtype == np.int32
        np.testing.assert_array_equal(back_faces, faces)
    else:
        assert back_faces is None


def test_obj_reader_triangulates_polygons_with_texture_indices(tmp_path):
    path = _write_lines(tmp_path / "quad.obj", [
        "# comment", "v 0 0 0", "v 1 0 0", "v 1 1 0", "v 0 1 0", "vt 0 0", "f 1/1/1 2/1/1 3/1/1 4/1/1"])
    np.testing.assert_array_equal(read_obj_faces(path, n_vertices=4), [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(read_obj_vertices(path)[2], [1.0, 1.0, 0.0])


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.obj"
    with pytest.raises(MeshFormatError, match="absent.obj: file not found"):
        read_obj_vertices(path)


def test_truncated_file_reports_count(tmp_path, rng):
    path = tmp_path / "short.obj"
    write_obj(path, rng.normal(size=(10, 3)))
    with pytest.raises(MeshFormatError) as err:
        read_obj_vertices(path, n_expected=12)
    msg = str(err.value)
    assert "short.obj" in msg and "10 vertices, expected 12" in msg and "truncated" in msg


@pytest.mark.parametrize("bad_line, reason", [
    ("v 1.0 abc 3.0", "malformed vertex line"),
    ("v 1.0 2.0", "needs 3 coordinates"),
    ("v nan 0 0", "non-finite"),
    ("v 0 -inf 0", "non-finite"),
])
def test_bad_vertex_line_names_file_and_line(tmp_path, rng, bad_line, reason):
    lines = ["# header", "o mesh"] + [f"v {x:.3f} {y:.3f} {z:.3f}" for x, y, z in rng.normal(size=(20, 3))]
    bad_lineno = 9
    lines[bad_lineno - 1] = bad_line
    path = _write_lines(tmp_path / "broken.obj", lines)
    with pytest.raises(MeshFormatError) as err:
        read_obj_vertices(path)
    msg = str(err.value)
    assert f"broken.obj:{bad_lineno}:" in msg
    assert reason in msg
    assert "\n" not in msg


@pytest.mark.parametrize("bad_line, reason", [
    ("f 1 2 x", "malformed face line"),
    ("f 1 2", ">= 3 positive"),
    ("f 0 1 2", ">= 3 positive"),
])
def test_bad_face_line_names_file_and_line(tmp_path, bad_line, reason):
    path = _write_lines(tmp_path / "faces.obj", ["v 0 0 0", "v 1 0 0", "v 0 1 0", "f 1 2 3", bad_line])
    with pytest.raises(MeshFormatError, match=rf"faces\.obj:5: .*{re.escape(reason)}"):
        read_obj_faces(path)


def test_face_index_beyond_vertex_count(tmp_path):
    path = _write_lines(tmp_path / "faces.obj", ["v 0 0 0", "v 1 0 0", "v 0 1 0", "f 1 2 4"])
    with pytest.raises(MeshFormatError, match="face index 4 exceeds vertex count 3"):
        read_obj_faces(path, n_vertices=3)


def _fail_rename(monkeypatch):
    def boom(src, dst):
        raise OSError("simulated failure while renaming")
    monkeypatch.setattr(paths.os, "replace", boom)


@pytest.mark.parametrize("writer", [write_obj, write_ply], ids=["obj", "ply"])
@pytest.mark.parametrize("failure", ["faces_out_of_range", "negative_face", "rename_fails"])
def test_failed_write_leaves_no_file(tmp_path, mesh, monkeypatch, writer, failure):
    verts, faces = mesh
    faces = faces.copy()
    expected = ValueError
    if failure == "faces_out_of_range":
        faces[3, 1] = len(verts)
    elif failure == "negative_face":
        faces[0, 0] = -1
    else:
        _fail_rename(monkeypatch)
        expected = OSError
    target = tmp_path / f"out.{writer.__name__[-3:]}"
    with pytest.raises(expected):
        writer(target, verts, faces)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # no temporary file left behind either


@pytest.mark.parametrize("writer", [write_obj, write_ply], ids=["obj", "ply"])
def test_failed_write_keeps_previous_file(tmp_path, mesh, monkeypatch, writer):
    verts, faces = mesh
    target = tmp_path / f"out.{writer.__name__[-3:]}"
    target.write_bytes(b"previous contents")
    _fail_rename(monkeypatch)
    with pytest.raises(OSError):
        writer(target, verts, faces)
    assert target.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == [target.name]


@pytest.mark.parametrize("vertices, faces, match", [
    (np.zeros((4, 2)), None, r"vertices must have shape \(V, 3\)"),
    (np.zeros((4, 3)), np.zeros((2, 3), np.float64), "faces must be an integer array"),
    (np.zeros((4, 3)), np.zeros((2, 4), np.int32), "faces must be an integer array"),
])
def test_write_rejects_bad_arrays(tmp_path, vertices, faces, match):
    with pytest.raises(ValueError, match=match):
        write_obj(tmp_path / "x.obj", vertices, faces)
    assert not (tmp_path / "x.obj").exists()


def test_write_into_missing_directory(tmp_path, mesh):
    with pytest.raises(ValueError, match="output directory does not exist"):
        write_obj(tmp_path / "nope" / "x.obj", *mesh)
