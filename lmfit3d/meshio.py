"""Small OBJ reader and OBJ / PLY writers (no third-party mesh library).

The reader handles what ICT-FaceKit ships: ``v x y z`` lines and ``f`` lines with
``v``, ``v/vt`` or ``v/vt/vn`` corners (polygons are fan-triangulated).  Errors name the file and
the line so a truncated or malformed file is easy to find.
"""
from pathlib import Path

import numpy as np

from .paths import atomic_write


class MeshFormatError(ValueError):
    """A mesh file is missing, truncated or malformed; the message names the file and line."""


def _read_text(path):
    path = Path(path)
    if not path.is_file():
        raise MeshFormatError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeshFormatError(f"{path}: cannot read ({exc})") from None


def _locate_bad_vertex_line(path, lines):
    for lineno, line in enumerate(lines, 1):
        if not line.startswith("v "):
            continue
        parts = line.split()
        if len(parts) < 4:
            raise MeshFormatError(f"{path}:{lineno}: vertex line needs 3 coordinates: {line.strip()!r}")
        try:
            xyz = [float(p) for p in parts[1:4]]
        except ValueError:
            raise MeshFormatError(f"{path}:{lineno}: malformed vertex line: {line.strip()!r}") from None
        if not np.all(np.isfinite(xyz)):
            raise MeshFormatError(f"{path}:{lineno}: non-finite vertex coordinate: {line.strip()!r}")
    raise MeshFormatError(f"{path}: malformed vertex data")


def read_obj_vertices(path, n_expected=None):
    """Read the ``v`` lines of an OBJ file.

    Parameters
    ----------
    path : str or Path
    n_expected : int, optional
        Required vertex count; a different count raises :class:`MeshFormatError`.

    Returns
    -------
    ndarray, shape (V, 3), float64
        Vertex positions in the file's units.
    """
    text = _read_text(path)
    lines = text.splitlines()
    vlines = [ln[2:] for ln in lines if ln.startswith("v ")]
    try:
        flat = np.array(" ".join(vlines).split(), dtype=np.float64)
        ok = flat.size == 3 * len(vlines) and np.isfinite(flat).all()
    except ValueError:
        ok = False
    if not ok:
        _locate_bad_vertex_line(path, lines)
    verts = flat.reshape(-1, 3)
    if n_expected is not None and verts.shape[0] != n_expected:
        what = "truncated file?" if verts.shape[0] < n_expected else "wrong mesh?"
        raise MeshFormatError(
            f"{path}:{len(lines)}: has {verts.shape[0]} vertices, expected {n_expected} ({what})")
    return verts


def read_obj_faces(path, n_vertices=None):
    """Read the ``f`` lines of an OBJ file, fan-triangulated.

    Returns
    -------
    ndarray, shape (F, 3), int32
        Zero-based vertex indices of each triangle.
    """
    text = _read_text(path)
    tris = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("f "):
            continue
        try:
            idx = [int(tok.split("/", 1)[0]) for tok in line.split()[1:]]
        except ValueError:
            raise MeshFormatError(f"{path}:{lineno}: malformed face line: {line.strip()!r}") from None
        if len(idx) < 3 or any(i <= 0 for i in idx):
            raise MeshFormatError(f"{path}:{lineno}: face needs >= 3 positive 1-based indices: {line.strip()!r}")
        for k in range(1, len(idx) - 1):
            tris.append((idx[0] - 1, idx[k] - 1, idx[k + 1] - 1))
    faces = np.asarray(tris, dtype=np.int32).reshape(-1, 3)
    if faces.size == 0:
        raise MeshFormatError(f"{path}: no faces")
    if n_vertices is not None and faces.max() >= n_vertices:
        raise MeshFormatError(f"{path}: face index {faces.max() + 1} exceeds vertex count {n_vertices}")
    return faces


def _check_mesh(vertices, faces):
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    if faces is not None:
        f = np.asarray(faces)
        if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"faces must be an integer array of shape (F, 3), got {f.shape} {f.dtype}")
        if f.size and (f.min() < 0 or f.max() >= v.shape[0]):
            raise ValueError("faces index vertices out of range")
    return v


def write_obj(path, vertices, faces=None):
    """Write an OBJ mesh atomically (temporary file, then rename).

    Parameters
    ----------
    vertices : array_like, shape (V, 3)
        Positions (lmfit3d writes millimetres).
    faces : array_like of int, shape (F, 3), optional
        Zero-based triangle indices.
    """
    v = _check_mesh(vertices, faces)
    with atomic_write(path, "w") as f:
        f.write("# lmfit3d mesh, units: mm\n")
        np.savetxt(f, v, fmt="v %.6f %.6f %.6f")
        if faces is not None:
            np.savetxt(f, np.asarray(faces) + 1, fmt="f %d %d %d")


def write_ply(path, vertices, faces=None):
    """Write a binary little-endian PLY mesh atomically.

    Parameters
    ----------
    vertices : array_like, shape (V, 3)
    faces : array_like of int, shape (F, 3), optional
    """
    v = np.ascontiguousarray(_check_mesh(vertices, faces), dtype="<f4")
    header = ["ply", "format binary_little_endian 1.0", "comment lmfit3d mesh, units: mm",
              f"element vertex {v.shape[0]}", "property float x", "property float y", "property float z"]
    if faces is not None:
        fa = np.asarray(faces)
        header += [f"element face {fa.shape[0]}", "property list uchar int vertex_indices"]
    header.append("end_header")
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(v.tobytes())
        if faces is not None:
            rec = np.empty(fa.shape[0], dtype=[("n", "u1"), ("i", "<i4", (3,))])
            rec["n"] = 3
            rec["i"] = fa
            f.write(rec.tobytes())


def read_ply(path):
    """Read a binary PLY written by :func:`write_ply`; returns (vertices (V,3) float32, faces (F,3) int32 or None)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = nf = 0
    for line in header:
        if line.startswith("element vertex"):
            nv = int(line.split()[-1])
        elif line.startswith("element face"):
            nf = int(line.split()[-1])
    v = np.frombuffer(data, dtype="<f4", count=3 * nv, offset=end).reshape(nv, 3)
    faces = None
    if nf:
        rec = np.frombuffer(data, dtype=[("n", "u1"), ("i", "<i4", (3,))], count=nf, offset=end + 12 * nv)
        faces = rec["i"].astype(np.int32)
    return v, faces
