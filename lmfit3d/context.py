"""The static data of per-frame fitting, built once and passed along: :class:`FitContext`.

One context belongs to one (model, landmark vertex ids, sparsity threshold).  It holds what every
:class:`lmfit3d.problem.FrameProblem` of those needs and what costs time to build: the sparsity table
(``sparsity.build_sparsity``), its structure-of-arrays layout for the tracking kernels
(``tracking_points.table_soa``), the tracking plans per free mask (``tracking_normal.tracking_plan``)
and the intersection term per identity (``intersection.IntersectionTerm``, ~20 ms a build).

:class:`lmfit3d.fit.Tracker` owns one; whoever runs several trackers on the same model and
landmarks (a video's two passes and its faces, the cameras of a capture, the refits of the live
worker) hands the first tracker's ``context`` to the others (``context=`` keyword).  Nothing is
cached at module level: two contexts never share state.
"""
import numpy as np

from .intersection import IntersectionTerm
from .skinning import POSE_DIM
from .sparsity import build_sparsity
from .tracking_normal import tracking_plan
from .tracking_points import table_soa

MAX_PLANS = 32              # free masks of one context (a tracker uses two or three)
MAX_INTERSECTIONS = 4       # identities of one context (a video's passes share one)


class FitContext:
    """Static fitting data of one (model, landmark vertex ids, sparsity threshold).

    Parameters
    ----------
    model : FaceModel
    vertex_ids : (L,) int, the landmark vertices.
    threshold : float, sparsity threshold (mm), ``FitConfig.sparsity_threshold_mm``; also the
        intersection term's.

    Attributes
    ----------
    table : ``sparsity.SparsityTable`` of the landmark vertices.
    soa : ``tracking_points.TableSoA``, the table in the tracking kernels' order.
    """

    def __init__(self, model, vertex_ids, threshold):
        ids = np.array(vertex_ids, dtype=np.int64)
        ids.setflags(write=False)
        self.model = model
        self.vertex_ids = ids
        self.threshold = float(threshold)
        self.table = build_sparsity(model, ids, self.threshold)
        self.soa = table_soa(self.table, model.joint_parents)
        self._plans = {}            # col_map bytes -> TrackingPlan (least recently used first)
        self._intersections = {}    # identity bytes -> IntersectionTerm (least recently used first)

    def matches(self, model, vertex_ids, threshold):
        """True when this context is the one of (model, vertex_ids, threshold)."""
        ids = np.asarray(vertex_ids)
        return (model is self.model and float(threshold) == self.threshold and ids.shape == self.vertex_ids.shape
                and bool(np.array_equal(ids, self.vertex_ids)))

    def check(self, model, vertex_ids, threshold):
        """ValueError unless :meth:`matches`."""
        if not self.matches(model, vertex_ids, threshold):
            raise ValueError("context: built for another model, landmark set or sparsity threshold "
                             f"({self.vertex_ids.size} landmarks, {self.threshold:g} mm)")

    def plan(self, col_map):
        """The ``tracking_normal.TrackingPlan`` of a free-column map (None: identity or focal free, nothing
        kept; the keyframe refits' maps are of that kind)."""
        key = np.asarray(col_map, dtype=np.int64).tobytes()
        plan = _take(self._plans, key)
        if plan is None:
            plan = tracking_plan(self.table, col_map, POSE_DIM)
            if plan is None:
                return None
        _keep(self._plans, key, plan, MAX_PLANS)
        return plan

    def intersection(self, beta):
        """The :class:`~lmfit3d.intersection.IntersectionTerm` of identity ``beta`` (K,), the same object
        for the same identity (a video's second pass re-uses its first's)."""
        beta = np.ascontiguousarray(beta, dtype=np.float64)
        key = beta.tobytes()
        term = _take(self._intersections, key)
        if term is None:
            term = IntersectionTerm(self.model, beta, self.threshold)
        _keep(self._intersections, key, term, MAX_INTERSECTIONS)
        return term


def _take(store, key):
    """The entry of ``key`` taken out of ``store`` (None: none)."""
    return store.pop(key, None)


def _keep(store, key, value, size):
    """Put ``key`` back as the most recently used entry, the least recently used out beyond ``size``."""
    while len(store) >= size:
        store.pop(next(iter(store)))
    store[key] = value
