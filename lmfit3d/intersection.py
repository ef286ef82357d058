"""The intersection term (paper sec. 3.2, E_intersect): eyelids must not enter the eyeballs, lips not
the teeth.

:class:`IntersectionTerm` builds the static data for one identity (template space): the eyelid
vertices near each eyeball sphere, the lip vertices near the teeth hulls (planes), their sparsity
table and the outside-tests that let the kernels skip vertices that cannot penetrate.
:func:`intersection_term` is the term's residuals and Gauss-Newton accumulation (``terms``'s
contract); :func:`intersection_far` the tracking solver's quick test that skips the whole term.
The NumPy reference is ``energy.intersection_depths``.
"""
import numpy as np
from numba import njit

from .energy import Intersection
from .model import FaceModel
from .simd import W, n_chunks, vaxpy
from .sparsity import build_sparsity
from .terms import _accumulate, expression_columns, template_point


def intersection_skip_test(t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of, planes, hull_of,
                           n_expression):
    """Linear outside-tests for :func:`intersection_term`: base (n,) and proj (E, n) float64.

    With t = t_beta + sum_e psi_e E_e (the vertex's table entries), ``base + psi @ proj >= 0``
    proves the vertex outside:

    * sphere (centre c, radius R): u = (t_beta - c) / |t_beta - c| and |t - c| >= u.(t - c), so
      base = |t_beta - c| - R, proj_e = u.E_e;
    * hull: the plane (n_q, d_q) farthest outside at rest; n_q.t - d_q = base + sum_e psi_e n_q.E_e
      exactly, base = n_q.t_beta - d_q, proj_e = n_q.E_e.

    Vertices without a test get base = -inf (never skipped).
    """
    t_beta = np.asarray(t_beta, dtype=np.float64)
    n = t_beta.shape[0]
    base = np.full(n, -np.inf)
    u = np.zeros((n, 3))
    sp = np.flatnonzero(np.asarray(sphere_of) >= 0)
    v = t_beta[sp] - np.asarray(sphere_c)[sphere_of[sp]]
    dist = np.linalg.norm(v, axis=1)
    sp, v, dist = sp[dist > 0], v[dist > 0], dist[dist > 0]
    u[sp] = v / dist[:, None]
    base[sp] = dist - np.asarray(sphere_r)[sphere_of[sp]]
    for h in range(planes.shape[0]):
        hp = np.flatnonzero((np.asarray(hull_of) == h) & (np.asarray(sphere_of) < 0))
        out = t_beta[hp] @ planes[h, :, :3].T - planes[h, :, 3]          # (n_h, planes)
        q = np.argmax(out, axis=1)
        u[hp] = planes[h, q, :3]
        base[hp] = out[np.arange(hp.size), q]
    rows, cols = np.nonzero((expr_idx >= 0) & np.isfinite(base)[:, None])
    proj = np.zeros((n_expression, n))
    proj[expr_idx[rows, cols], rows] = np.einsum("ni,ni->n", expr_blocks[rows, cols], u[rows])
    return base, proj


SKIP_BLOCK = 16             # vertices per block of :func:`intersection_skip_blocks`


SKIP_MARGIN = 1e-9          # intersection_term skips a vertex whose outside-test bound is >= this (mm)


def intersection_skip_blocks(skip_base, skip_proj, size=SKIP_BLOCK):
    """Block bounds of :func:`intersection_skip_test` for a first, cheaper test: (2 E + 1, B) float64.

    Vertices are taken in blocks of ``size`` consecutive ones (B = ceil(n / size)).  Row 0 holds
    the smallest ``skip_base`` of each block, rows 1 .. E the smallest and rows E + 1 .. 2 E the
    largest ``skip_proj`` entry of each expression over the block, so that
    ``row0 + sum_e psi_e (row[1 + e] if psi_e >= 0 else row[1 + E + e])`` is at most the bound
    ``skip_base + psi @ skip_proj`` of every vertex of the block: when it is >= 1e-9 the whole block
    is outside and :func:`intersection_term` skips it without the per-vertex sums.
    """
    base = np.asarray(skip_base, dtype=np.float64)
    proj = np.asarray(skip_proj, dtype=np.float64)
    n = base.size
    ne = proj.shape[0]
    nb = -(-n // size)
    out = np.empty((2 * ne + 1, nb))
    for b in range(nb):
        sl = slice(b * size, min((b + 1) * size, n))
        out[0, b] = base[sl].min()
        out[1:ne + 1, b] = proj[:, sl].min(1)
        out[ne + 1:, b] = proj[:, sl].max(1)
    return out


@njit(cache=True, inline="always")
def intersection_depth(t, s, h, sphere_c, sphere_r, planes, gr):
    """Penetration depth (mm, > 0 inside) of template point t (3,) into eyeball sphere s (s >= 0) or
    teeth hull h (h >= 0), 0 outside; gr (3,) out = d depth / d t where the depth is positive.

    Sphere: R - |t - c|.  Hull of planes (n_q, d_q), inside when d_q - n_q . t > 0 for every q:
    min_q (d_q - n_q . t).
    """
    if s >= 0:
        dist2 = 0.0
        for i in range(3):
            gr[i] = t[i] - sphere_c[s, i]
            dist2 += gr[i] * gr[i]
        dist = np.sqrt(dist2)
        if dist >= sphere_r[s] or dist == 0.0:
            return 0.0
        for i in range(3):
            gr[i] = -gr[i] / dist
        return sphere_r[s] - dist
    if h < 0:
        return 0.0
    best = np.inf
    bi = -1
    for q in range(planes.shape[1]):
        dq = planes[h, q, 3] - (planes[h, q, 0] * t[0] + planes[h, q, 1] * t[1] + planes[h, q, 2] * t[2])
        if dq <= 0.0:
            return 0.0
        if dq < best:
            best = dq
            bi = q
    if bi < 0:
        return 0.0
    for i in range(3):
        gr[i] = -planes[h, bi, i]
    return best


@njit(cache=True)
def intersection_term(x, e0, t_beta, expr_idx, expr_blocks, sphere_c, sphere_r, sphere_of,
                      planes, hull_of, sqrtw, col_map, want_jac, want_jtj, jtj, jtr, skip_base=None, skip_proj=None,
                      skip_block=None):
    """Skin vertices inside eyeball spheres or teeth hulls, in template (head) space.

    Eyelid, lip and teeth vertices all follow the head joint rigidly, so the test runs on the
    unposed template T(beta, psi) and depends on the expression only.

    Parameters
    ----------
    t_beta, expr_idx, expr_blocks : as in :func:`vertex_term`, for the tested vertices (n, ...).
    sphere_c : (S, 3) sphere centres; sphere_r : (S,) radii; sphere_of : (n,) sphere per vertex or -1.
    planes : (H, P, 4) hull planes (n_x, n_y, n_z, d): inside when d - n.t > 0 for every plane.
    hull_of : (n,) hull per vertex or -1.
    sqrtw : float, sqrt(2 w_intersect).
    col_map, want_jac, jtj, jtr : as in :func:`vertex_term`; ``want_jtj`` False (with ``want_jac``): J^T r
        alone, jtj untouched.
    skip_base, skip_proj : (n,), (E, n) float64, optional, from :func:`intersection_skip_test`:
        ``skip_base + psi @ skip_proj`` bounds how far each vertex lies outside its sphere or hull
        (mm); vertices with a bound >= 1e-9 are skipped without building their template point
        (same result, less work).
    skip_block : (2 E + 1, B) float64, optional, from :func:`intersection_skip_blocks` (with
        skip_base and skip_proj): blocks of SKIP_BLOCK vertices whose block bound is >= 1e-9 are
        skipped before the per-vertex sums (most frames: all of them).
    """
    cost = 0.0
    nd = expr_idx.shape[1]
    t = np.empty(3)
    gr = np.empty(3)
    grw = np.empty((1, 3))
    cols = np.empty(nd, np.int64)
    jrow = np.empty((1, nd))
    r = np.empty(1)
    skip = skip_base is not None and skip_proj is not None
    nv = t_beta.shape[0]
    outside = np.empty(nv)
    if skip:
        ne = skip_proj.shape[0]
        blocks = skip_block is not None
        nb = skip_block.shape[1] if blocks else 1
        bsize = SKIP_BLOCK if blocks else nv
        bound = np.empty(nb)
        if blocks:                      # block bounds first (psi_e times the block's extreme entry)
            bound[:] = skip_block[0]
            for e in range(ne):
                we = x[e0 + e]
                if we != 0.0:
                    pb = skip_block[1 + e] if we > 0.0 else skip_block[1 + ne + e]
                    for b in range(nb):
                        bound[b] += we * pb[b]
        else:
            bound[0] = -np.inf
        for b in range(nb):
            lo = b * bsize
            hi = min(lo + bsize, nv)
            if bound[b] >= SKIP_MARGIN:
                outside[lo:hi] = bound[b]
                continue
            outside[lo:hi] = skip_base[lo:hi]
            full = hi - lo == bsize and bsize % W == 0
            for e in range(ne):
                we = x[e0 + e]
                if we == 0.0:
                    continue
                pe = skip_proj[e]
                if full:                # W-wide chunks (short loops: the vectoriser's checks cost more)
                    for c in range(lo, hi, W):
                        vaxpy(outside, c, we, pe, c)
                else:
                    for p in range(lo, hi):
                        outside[p] += we * pe[p]
    for p in range(t_beta.shape[0]):
        s = sphere_of[p]
        h = hull_of[p]
        if (s < 0 and h < 0) or (skip and outside[p] >= SKIP_MARGIN):
            continue
        template_point(p, x, e0, t_beta, expr_idx, expr_blocks, t)
        res = intersection_depth(t, s, h, sphere_c, sphere_r, planes, gr)
        if res <= 0.0:
            continue
        r[0] = sqrtw * res
        cost += 0.5 * r[0] * r[0]
        if not want_jac:
            continue
        for i in range(3):
            grw[0, i] = sqrtw * gr[i]
        n = expression_columns(p, e0, expr_idx, expr_blocks, col_map, grw, cols, jrow, 0)
        _accumulate(jrow, 1, cols, n, r, col_map, want_jtj, jtj, jtr)
    return cost


class IntersectionTerm:
    """Static data of the intersection term for one identity (template space)."""

    def __init__(self, model: FaceModel, beta, threshold):
        t0 = model.template(beta)
        joints = model.joints(beta)
        centres = joints[3:5]
        face = model.region_mask("face")
        lid_ids, sphere_of = [], []
        for s, c in enumerate(centres):
            d = np.linalg.norm(t0 - c, axis=1)
            ids = np.flatnonzero(face & (d < model.eye_radius[s] + 4.0))
            lid_ids.append(ids)
            sphere_of.append(np.full(ids.size, s))
        lid_ids = np.concatenate(lid_ids)
        sphere_of = np.concatenate(sphere_of)
        # Sphere radius: the eyeball fit radius, shrunk so that the neutral face and every single
        # ICT shape at weight 1 are intersection-free (the shapes are valid faces, e.g. a blink
        # slides the lid over the eyeball); the term then fires only for implausible combinations.
        eb = model.expression_basis[lid_ids].astype(np.float64)            # (n, 3, E)
        radii = np.empty(2)
        for s in range(2):
            sel = sphere_of == s
            tt = t0[lid_ids[sel]][:, :, None] + np.concatenate([np.zeros((sel.sum(), 3, 1)), eb[sel]], axis=2)
            dist = np.linalg.norm(tt - centres[s][None, :, None], axis=1)
            # (an identity far outside the prior can leave no lid vertex near an eye: nothing to test)
            radii[s] = min(model.eye_radius[s], dist.min()) if dist.size else model.eye_radius[s]
        from scipy.spatial import ConvexHull, cKDTree
        teeth = model.region_mask("teeth")
        upper = teeth.copy()
        upper[19247:] = False
        lower = teeth & ~upper
        planes = []
        for m in (upper, lower):
            hull = ConvexHull(t0[m][::4])
            eq = hull.equations                      # n.x + b <= 0 inside
            planes.append(np.column_stack([eq[:, :3], -eq[:, 3]]))
        npl = max(p.shape[0] for p in planes)
        self.planes = np.zeros((2, npl, 4))
        for h, p in enumerate(planes):
            self.planes[h, :p.shape[0]] = p
            self.planes[h, p.shape[0]:] = p[0]
        teeth_pts = t0[teeth]
        # face vertices within 6 mm of the teeth (box pre-filter, then the exact nearest-point test)
        lo, hi = teeth_pts.min(0) - 6.0, teeth_pts.max(0) + 6.0
        cand = np.flatnonzero(face & ((t0 >= lo) & (t0 <= hi)).all(1))
        lip_ids = cand[cKDTree(teeth_pts[::8]).query(t0[cand])[0] < 6.0]
        hull_of = np.where(t0[lip_ids, 1] >= np.median(teeth_pts[:, 1]), 0, 1)
        # keep lip vertices that are outside their hull at rest and under every single shape
        lb = model.expression_basis[lip_ids].astype(np.float64)
        ok = np.ones(lip_ids.size, bool)
        for h in range(2):
            pl = planes[h]
            sel = np.flatnonzero(hull_of == h)
            # a vertex outside some plane by more than its largest single-shape displacement stays
            # outside under every shape (|n| = 1): only the others are tested shape by shape
            margin = (pl[:, 3][None] - t0[lip_ids[sel]] @ pl[:, :3].T).min(1)
            reach = np.linalg.norm(lb[sel], axis=1).max(1)
            sel = sel[margin + reach > 0]
            for e in range(-1, lb.shape[2]):
                tt = t0[lip_ids[sel]] + (lb[sel, :, e] if e >= 0 else 0.0)
                inside = ((pl[:, 3][None] - tt @ pl[:, :3].T) > 0).all(1)
                ok[sel[inside]] = False
        lip_ids, hull_of = lip_ids[ok], hull_of[ok]
        ids = np.concatenate([lid_ids, lip_ids])
        self.table = build_sparsity(model, ids, threshold)
        self.t_beta = t0[ids]
        self.sphere_c = np.ascontiguousarray(centres)
        self.sphere_r = radii
        self.sphere_of = np.concatenate([sphere_of, np.full(lip_ids.size, -1)]).astype(np.int64)
        self.hull_of = np.concatenate([np.full(lid_ids.size, -1), hull_of]).astype(np.int64)
        self.skip_base, self.skip_proj = intersection_skip_test(
            self.t_beta, self.table.expr_idx, self.table.expr_blocks, self.sphere_c, self.sphere_r,
            self.sphere_of, self.planes, self.hull_of, model.n_expression)
        self.skip_block = intersection_skip_blocks(self.skip_base, self.skip_proj)
        self._far_test(model.n_expression)

    def geometry(self, identity_free=False):
        """The term's :class:`~lmfit3d.energy.Intersection`: the template at this identity, or
        (``identity_free``) the identity mean with its basis (the offline problem's form)."""
        t = self.table
        base = (t.mean, t.identity_blocks) if identity_free else (self.t_beta, None)
        return Intersection(*base, t.expr_idx, t.expr_blocks, self.sphere_c, self.sphere_r, self.sphere_of,
                            self.planes, self.hull_of)

    def _far_test(self, n_expression):
        """The outside-test of the vertices that can come near, for frame_lm.intersection_far.

        A vertex whose bound ``skip_base + psi @ skip_proj`` stays >= 1e-6 mm for every psi in
        [0, 1]^E (base + sum of the negative proj entries) is always skipped by the term and left out.
        The others, zero padded to whole W-wide chunks: far_base (N,) (+inf padding), far_proj (E, N),
        and per expression the chunks holding a non-zero entry, far_chunks[far_ptr[e]:far_ptr[e + 1]]
        (column offsets).
        """
        tested = (self.sphere_of >= 0) | (self.hull_of >= 0)
        lowest = self.skip_base + np.minimum(self.skip_proj, 0.0).sum(0)
        near = np.flatnonzero(tested & ~(lowest >= 1e-6))
        nw = max(n_chunks(near.size), 1) * W
        self.far_base = np.full(nw, np.inf)
        self.far_base[:near.size] = self.skip_base[near]
        self.far_proj = np.zeros((n_expression, nw))
        self.far_proj[:, :near.size] = self.skip_proj[:, near]
        nz = (self.far_proj.reshape(n_expression, -1, W) != 0.0).any(2)        # (E, chunks)
        self.far_ptr = np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64)
        self.far_chunks = (np.nonzero(nz)[1] * W).astype(np.int64)              # row-major: by expression


@njit(cache=True)
def intersection_far(x, e0, far_base, far_proj, far_ptr, far_chunks, far_out):
    """True when the outside-test of ``intersection.intersection_term`` skips every vertex at x: the term
    then adds nothing (cost 0, no J^T J entries) and need not run.  False: run it.

    far_base (N,), far_proj (E, N), N a multiple of ``simd.W``: the term's ``skip_base`` and
    ``skip_proj`` for the vertices that can come near when psi is in [0, 1] (the others are skipped by
    the term for every such psi), zero padded; far_chunks[far_ptr[e]:far_ptr[e + 1]]: the W-wide
    chunks of far_proj[e] holding non-zero entries; far_out (N,) work.  far_out = far_base + sum_e
    psi_e far_proj[e] over the non-zero psi_e in the term's order, each entry by the term's own
    operations (one multiply and one add per expression, W lanes at a time; the chunks left out
    would add zeros), so a vertex passes here exactly when the term skips it.  A psi outside [0, 1]
    returns False.
    """
    ne = far_proj.shape[0]
    for e in range(ne):
        we = x[e0 + e]
        if not (we >= 0.0 and we <= 1.0):
            return False
    nw = far_base.shape[0]
    for c in range(nw):
        far_out[c] = far_base[c]
    for e in range(ne):
        we = x[e0 + e]
        if we != 0.0:
            pe = far_proj[e]
            for k in range(far_ptr[e], far_ptr[e + 1]):
                c = far_chunks[k]
                vaxpy(far_out, c, we, pe, c)
    for c in range(nw):
        if not (far_out[c] >= SKIP_MARGIN):
            return False
    return True
