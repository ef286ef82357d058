"""Static landmark-to-parameter sparsity table (paper sec. 3.3.1).

Each landmark is a model vertex.  Its position depends on the root pose (6), on the joints
whose subtree weight at the vertex is non-zero (3 each), on the expression shapes that move it by at
least ``threshold`` mm at full activation, on all identity modes, and (through the projection) on the
focal length.  The table is built once per landmark set; the solver only writes values.

Full parameter layout (indices into one frame's parameter vector)::

    [0:3] root rotation   [3:6] translation   [6:18] neck, head, eye_L, eye_R
    [18:18+E] expression   [18+E:18+E+K] identity   [18+E+K] focal length
"""
from dataclasses import dataclass

import numpy as np

from .energy import FrameLayout
from .model import FaceModel
from .skinning import POSE_DIM, ancestry

DEFAULT_THRESHOLD_MM = 0.01


def layout(model: FaceModel):
    """Slices of the full per-frame parameter vector (``energy.FrameLayout``): dict name -> slice, and the
    total size."""
    lay = FrameLayout.of(model)
    return lay.slices(), lay.size


@dataclass(frozen=True)
class SparsityTable:
    """Per-landmark parameter dependencies and the basis blocks the solver needs.

    Attributes
    ----------
    vertex_ids : (L,) int64
    expr_idx : (L, D) int64, expression indices each landmark depends on, padded with -1.
    expr_blocks : (L, D, 3) float64, the matching expression basis values (mm per unit weight).
    mean : (L, 3) float64, neutral template positions (mm).
    identity_blocks : (L, 3, K) float64, identity basis at the landmarks.
    weights : (L, J) float64, skin weights.
    joint_active : (L, J) bool, joints (>= 1) whose rotation moves the landmark.
    threshold : float, mm; expression entries below it were dropped.
    """

    vertex_ids: np.ndarray
    expr_idx: np.ndarray
    expr_blocks: np.ndarray
    mean: np.ndarray
    identity_blocks: np.ndarray
    weights: np.ndarray
    joint_active: np.ndarray
    threshold: float
    n_expression: int

    @property
    def n_landmarks(self):
        return self.vertex_ids.size

    def sizes(self, identity=False, focal=False):
        """Sparsified parameter count d per landmark (L,) for the given free blocks."""
        d = 6 + 3 * self.joint_active[:, 1:].sum(1) + (self.expr_idx >= 0).sum(1)
        return d + (self.identity_blocks.shape[2] if identity else 0) + (1 if focal else 0)

    def report(self):
        """Mean sparsified size and expression count, as a dict (for the README/bench)."""
        n_expr = (self.expr_idx >= 0).sum(1)
        return {"landmarks": int(self.n_landmarks), "threshold_mm": self.threshold,
                "mean_expression_deps": float(n_expr.mean()),
                "mean_size_pose_expression": float(self.sizes().mean()),
                "dense_size_pose_expression": int(POSE_DIM + self.n_expression)}


def build_sparsity(model: FaceModel, vertex_ids, threshold=DEFAULT_THRESHOLD_MM):
    """Build the static sparsity table for landmark vertices.

    Parameters
    ----------
    model : FaceModel
    vertex_ids : (L,) int
    threshold : float
        Expression shape e is kept for a landmark when max_xyz |E[v, :, e]| >= threshold (mm).
        0 keeps every shape (dense expression Jacobian).
    """
    ids = np.asarray(vertex_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= model.n_vertices:
        raise ValueError(f"vertex_ids must be a non-empty 1-D array in [0, {model.n_vertices})")
    if not (threshold >= 0):
        raise ValueError(f"threshold must be >= 0 mm, got {threshold}")
    eb = model.expression_basis[ids].astype(np.float64)            # (L, 3, E)
    keep = np.abs(eb).max(1) >= threshold if threshold > 0 else np.ones(eb.shape[::2], bool)
    counts = keep.sum(1)
    d = max(int(counts.max()), 1)
    cols = np.argsort(~keep, axis=1, kind="stable")[:, :d]          # kept shapes first, ascending
    valid = np.arange(d)[None, :] < counts[:, None]
    expr_idx = np.where(valid, cols, -1).astype(np.int64)
    expr_blocks = np.where(valid[:, :, None], eb.transpose(0, 2, 1)[np.arange(ids.size)[:, None], cols], 0.0)
    w = model.skin_weights[ids].astype(np.float64)
    anc = ancestry(model.joint_parents)
    active = (w @ anc) > 0
    active[:, 0] = True
    return SparsityTable(ids, expr_idx, expr_blocks, model.vertices[ids].astype(np.float64),
                         np.ascontiguousarray(model.identity_basis[ids], dtype=np.float64), w, active,
                         float(threshold), int(model.n_expression))
