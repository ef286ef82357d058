"""Landmark sets: which model vertices the landmark predictor's outputs correspond to.

Sets are small project-made index files in ``data/landmarks/NAME.txt`` (one vertex id per line,
``#`` comments), chosen by ``tools/make_landmark_sets.py``:

* ``ibug68``: ICT-FaceKit's Multi-PIE 68 landmark vertices (upstream list).
* ``dense703``: the whole head as in the paper (face, eyes and eyeballs, ears, back of head, neck,
  inner mouth and teeth).
* ``dense320``: the real-time subset, weighted to the front of the face.
* ``dense320v2``: 320 points chosen for single-image reconstruction by ``tools/select_landmarks.py``
  (greedy design on the expected face-vertex error; more on the sides, jaw and neck).  No network
  predicts it yet: ``data/lmfit3d_dense320`` predicts ``dense320``; training one needs an
  accelerator and synthetic data labelled with this set: ``tools/train_landmarks.py`` reads its
  landmarks as columns of the dense703 labels, and only 100 of these points are in dense703.
"""
from functools import lru_cache

import numpy as np

from .paths import data_dir


def available_sets():
    """Names of the landmark sets shipped in ``data/landmarks``."""
    return tuple(sorted(p.stem for p in (data_dir() / "landmarks").glob("*.txt")))


@lru_cache(maxsize=None)
def _load(name):
    path = data_dir() / "landmarks" / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"unknown landmark set {name!r}; available: {', '.join(available_sets())}")
    ids = np.loadtxt(path, dtype=np.int64, comments="#", ndmin=1)
    ids.setflags(write=False)
    return ids


def load_landmark_set(name):
    """Vertex ids (L,) int64 of a named landmark set (read-only array)."""
    return _load(str(name))


def resolve_vertex_ids(landmark_set=None, vertex_ids=None, n_vertices=None):
    """Vertex ids from either a set name or an explicit list (exactly one must be given)."""
    if (landmark_set is None) == (vertex_ids is None):
        raise ValueError("give exactly one of landmark_set or vertex_ids")
    if landmark_set is not None:
        return np.array(load_landmark_set(landmark_set))
    ids = np.asarray(vertex_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"vertex_ids must be a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
    if n_vertices is not None and (ids.min() < 0 or ids.max() >= n_vertices):
        raise ValueError(f"vertex_ids out of range [0, {n_vertices})")
    return ids.astype(np.int64)
