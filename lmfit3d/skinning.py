"""Linear blend skinning of the face model and its analytic Jacobians (numba kernels).

Given joint rotations theta (J, 3) (axis-angle, row 0 the root), bind joint locations J(beta)
(J, 3) and parents, the pose chain gives each joint's global affine map (Rg_k, tg_k) before the
root; a template vertex t with weights w becomes::

    v = sum_k w_k (Rg_k t + tg_k),      x = R_root v + translation          (mm)

Jacobian of x (the paper's per-vertex blocks, built without evaluating the full mesh):

* root rotation:  -[R_root v]_x J_l(theta_0)
* translation:    I
* joint m >= 1:   -R_root [Y_m - W_m g_m]_x Rg_parent(m) J_l(theta_m), where W_m, Y_m sum w_k and
  w_k (Rg_k t + tg_k) over joints k in the subtree of m, and g_m is the posed location of joint m
* expression e:   R_root M E_e,   M = sum_k w_k Rg_k
* identity k:     R_root (M S_k + sum_m W_m Rg_parent(m) (I - R_m) S_J[m, :, k])

Parameter column layout (``POSE_DIM`` = 6 + 3 (J - 1) = 18 for the ICT rig)::

    [root rotation (3), translation (3), neck, head, eye_L, eye_R (3 each), expression (E), identity (K)]
"""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from .model import FaceModel, Params
from .rotation import rodrigues_into

N_JOINTS = 5
POSE_DIM = 6 + 3 * (N_JOINTS - 1)


def ancestry(parents):
    """anc[k, m] = 1 when joint m (>= 1) is joint k or one of its ancestors, (J, J) float64."""
    parents = np.asarray(parents)
    n = len(parents)
    anc = np.zeros((n, n))
    for k in range(1, n):
        m = k
        while m > 0:
            anc[k, m] = 1.0
            m = parents[m]
    return anc


@njit(cache=True)
def pose_chain(rot, joints, parents, r0, jl0, rg, tg, gpos, bm, cm):
    """Forward kinematics of the pre-root chain, into preallocated workspaces.

    Parameters
    ----------
    rot : (J, 3) float64, axis-angle per joint (row 0: root).
    joints : (J, 3) float64, bind locations J(beta) (mm).
    parents : (J,) int64, parent index (-1 for the root).
    r0, jl0 : (3, 3) out, root rotation and its left Jacobian.
    rg, tg : (J, 3, 3), (J, 3) out, global rotation/translation of each joint (root = identity).
    gpos : (J, 3) out, posed joint locations before the root.
    bm, cm : (J, 3, 3) out, Rg_parent J_l(theta_m) and Rg_parent (I - R_m) per joint.
    """
    rodrigues_into(rot[0], r0, jl0)
    rk = np.empty((3, 3))
    jk = np.empty((3, 3))
    rg[0] = 0.0
    tg[0] = 0.0
    gpos[0] = 0.0
    bm[0] = jl0
    cm[0] = 0.0
    for i in range(3):
        rg[0, i, i] = 1.0
    for k in range(1, rot.shape[0]):
        p = parents[k]
        rodrigues_into(rot[k], rk, jk)
        for i in range(3):
            for j in range(3):
                s = 0.0
                sb = 0.0
                for q in range(3):
                    s += rg[p, i, q] * rk[q, j]
                    sb += rg[p, i, q] * jk[q, j]
                rg[k, i, j] = s
                bm[k, i, j] = sb
                cm[k, i, j] = rg[p, i, j] - s
        for i in range(3):
            s = tg[p, i]
            g = tg[p, i]
            for q in range(3):
                dq = joints[k, q]
                for j in range(3):
                    dq -= rk[q, j] * joints[k, j]
                s += rg[p, i, q] * dq
                g += rg[p, i, q] * joints[k, q]
            tg[k, i] = s
            gpos[k, i] = g


@njit(cache=True, inline="always")
def skin_point(t, w, r0, trans, rg, tg, out):
    """Pose one vertex without its Jacobian: out (3,) = R_root sum_k w_k (Rg_k t + tg_k) + trans.

    Same operations in the same order as :func:`skin_vertex`, so both give identical positions.
    """
    v0 = 0.0
    v1 = 0.0
    v2 = 0.0
    for k in range(w.shape[0]):
        wk = w[k]
        if wk == 0.0:
            continue
        v0 += wk * (tg[k, 0] + rg[k, 0, 0] * t[0] + rg[k, 0, 1] * t[1] + rg[k, 0, 2] * t[2])
        v1 += wk * (tg[k, 1] + rg[k, 1, 0] * t[0] + rg[k, 1, 1] * t[1] + rg[k, 1, 2] * t[2])
        v2 += wk * (tg[k, 2] + rg[k, 2, 0] * t[0] + rg[k, 2, 1] * t[1] + rg[k, 2, 2] * t[2])
    for i in range(3):
        out[i] = r0[i, 0] * v0 + r0[i, 1] * v1 + r0[i, 2] * v2 + trans[i]


@njit(cache=True)
def skin_mesh(t, w, r0, trans, rg, tg, out):
    """Pose every vertex: out (V, 3) = R_root sum_k w_k (Rg_k t + tg_k) + trans."""
    for v in range(t.shape[0]):
        skin_point(t[v], w[v], r0, trans, rg, tg, out[v])


@njit(cache=True, inline="always")
def skin_vertex(t, w, anc, r0, trans, rg, tg, gpos, bm, x, rm, dpose, wsub, work):
    """Pose one vertex and its pose Jacobian.

    Writes x (3,) camera position, rm (3, 3) = R_root M, dpose (3, POSE_DIM) Jacobian w.r.t.
    [root rotation, translation, joints 1..J-1], wsub (J,) subtree weights W_m.  ``work`` is a
    (J + 5, 3) scratch array allocated once by the caller (no allocation per vertex).
    """
    nj = w.shape[0]
    m = work[0:3]
    v = work[3]
    rv = work[4]
    ysub = work[5:5 + nj]
    for i in range(3):
        v[i] = 0.0
        rv[i] = 0.0
        for j in range(3):
            m[i, j] = 0.0
    for k in range(nj):
        wsub[k] = 0.0
        for i in range(3):
            ysub[k, i] = 0.0
    for k in range(nj):
        wk = w[k]
        if wk == 0.0:
            continue
        for i in range(3):
            yk = tg[k, i]
            for j in range(3):
                m[i, j] += wk * rg[k, i, j]
                yk += rg[k, i, j] * t[j]
            v[i] += wk * yk
            for mm in range(1, nj):
                if anc[k, mm] != 0.0:
                    ysub[mm, i] += wk * yk
        for mm in range(1, nj):
            if anc[k, mm] != 0.0:
                wsub[mm] += wk
    for i in range(3):
        for j in range(3):
            rv[i] += r0[i, j] * v[j]
            s = 0.0
            for q in range(3):
                s += r0[i, q] * m[q, j]
            rm[i, j] = s
        x[i] = rv[i] + trans[i]
    # root rotation: -[R v]_x J_l0  (bm[0] holds J_l of the root)
    for j in range(3):
        c0 = bm[0, 0, j]
        c1 = bm[0, 1, j]
        c2 = bm[0, 2, j]
        dpose[0, j] = -(rv[1] * c2 - rv[2] * c1)
        dpose[1, j] = -(rv[2] * c0 - rv[0] * c2)
        dpose[2, j] = -(rv[0] * c1 - rv[1] * c0)
        for i in range(3):
            dpose[i, 3 + j] = 1.0 if i == j else 0.0
    for mm in range(1, nj):
        col = 6 + 3 * (mm - 1)
        wm = wsub[mm]
        if wm == 0.0:
            for i in range(3):
                for j in range(3):
                    dpose[i, col + j] = 0.0
            continue
        a0 = ysub[mm, 0] - wm * gpos[mm, 0]
        a1 = ysub[mm, 1] - wm * gpos[mm, 1]
        a2 = ysub[mm, 2] - wm * gpos[mm, 2]
        for j in range(3):
            c0 = bm[mm, 0, j]
            c1 = bm[mm, 1, j]
            c2 = bm[mm, 2, j]
            d0 = -(a1 * c2 - a2 * c1)
            d1 = -(a2 * c0 - a0 * c2)
            d2 = -(a0 * c1 - a1 * c0)
            for i in range(3):
                dpose[i, col + j] = r0[i, 0] * d0 + r0[i, 1] * d1 + r0[i, 2] * d2


def single_joint_of(weights):
    """Joint k of each vertex skinned to one joint with weight exactly 1, else -1; (n,) int64."""
    w = np.asarray(weights, dtype=np.float64)
    one = ((w != 0.0).sum(1) == 1) & (w.max(1) == 1.0)
    return np.where(one, w.argmax(1), -1).astype(np.int64)


@njit(cache=True)
def single_joint_frame(r0, rg, gpos, bm, rmk, r0bm, rgm):
    """Per-frame products for :func:`skin_vertex_single`, into preallocated arrays.

    rmk (J, 3, 3) = R_root Rg_k; r0bm (J, 3, 3) = R_root bm_m (root: J_l of the root, as bm[0]);
    rgm (J, 3) = R_root g_m (posed joint locations rotated by the root).
    """
    nj = rg.shape[0]
    for k in range(nj):
        for i in range(3):
            s = 0.0
            for q in range(3):
                s += r0[i, q] * gpos[k, q]
            rgm[k, i] = s
            for j in range(3):
                s = 0.0
                sb = 0.0
                for q in range(3):
                    s += r0[i, q] * rg[k, q, j]
                    sb += r0[i, q] * bm[k, q, j]
                rmk[k, i, j] = s
                r0bm[k, i, j] = sb if k > 0 else bm[0, i, j]


@njit(cache=True, inline="always")
def skin_vertex_single(t, k, anc, r0, trans, rg, tg, rmk, r0bm, rgm, x, rm, dpose, ncols):
    """:func:`skin_vertex` for a vertex skinned to joint k alone (weight 1), first ``ncols`` pose columns.

    With y = Rg_k t + tg_k and rv = R_root y: x = rv + trans (the same operations as
    :func:`skin_point`, so positions are bit-identical), rm = R_root Rg_k, root columns
    -[rv]_x J_l0, translation I, and for each ancestor joint m of k (anc[k, m] != 0)
    -R_root [y - g_m]_x bm_m = -[rv - R_root g_m]_x (R_root bm_m); other joint columns are 0.
    The per-frame products come from :func:`single_joint_frame`.
    """
    v0 = tg[k, 0] + rg[k, 0, 0] * t[0] + rg[k, 0, 1] * t[1] + rg[k, 0, 2] * t[2]
    v1 = tg[k, 1] + rg[k, 1, 0] * t[0] + rg[k, 1, 1] * t[1] + rg[k, 1, 2] * t[2]
    v2 = tg[k, 2] + rg[k, 2, 0] * t[0] + rg[k, 2, 1] * t[1] + rg[k, 2, 2] * t[2]
    rv0 = r0[0, 0] * v0 + r0[0, 1] * v1 + r0[0, 2] * v2
    rv1 = r0[1, 0] * v0 + r0[1, 1] * v1 + r0[1, 2] * v2
    rv2 = r0[2, 0] * v0 + r0[2, 1] * v1 + r0[2, 2] * v2
    x[0] = rv0 + trans[0]
    x[1] = rv1 + trans[1]
    x[2] = rv2 + trans[2]
    for i in range(3):
        for j in range(3):
            rm[i, j] = rmk[k, i, j]
    for j in range(3):
        c0 = r0bm[0, 0, j]
        c1 = r0bm[0, 1, j]
        c2 = r0bm[0, 2, j]
        dpose[0, j] = -(rv1 * c2 - rv2 * c1)
        dpose[1, j] = -(rv2 * c0 - rv0 * c2)
        dpose[2, j] = -(rv0 * c1 - rv1 * c0)
        for i in range(3):
            dpose[i, 3 + j] = 1.0 if i == j else 0.0
    for mm in range(1, (ncols - 6) // 3 + 1):
        col = 6 + 3 * (mm - 1)
        if anc[k, mm] == 0.0:
            for i in range(3):
                for j in range(3):
                    dpose[i, col + j] = 0.0
            continue
        a0 = rv0 - rgm[mm, 0]
        a1 = rv1 - rgm[mm, 1]
        a2 = rv2 - rgm[mm, 2]
        for j in range(3):
            c0 = r0bm[mm, 0, j]
            c1 = r0bm[mm, 1, j]
            c2 = r0bm[mm, 2, j]
            dpose[0, col + j] = -(a1 * c2 - a2 * c1)
            dpose[1, col + j] = -(a2 * c0 - a0 * c2)
            dpose[2, col + j] = -(a0 * c1 - a1 * c0)


@njit(cache=True)
def world_joint_transforms(r0, rg, tg, aw, cw):
    """Each joint's map in world axes (before the root translation), for :func:`skin_point_sparse`.

    aw (J, 3, 3) out = R_root Rg_k and cw (J, 3) out = R_root tg_k, so that a vertex with weights
    w is x = trans + sum_k w_k (aw_k t + cw_k) (the same point as :func:`skin_point`).
    """
    for k in range(rg.shape[0]):
        for i in range(3):
            s = 0.0
            for q in range(3):
                s += r0[i, q] * tg[k, q]
                aw[k, i, q] = r0[i, 0] * rg[k, 0, q] + r0[i, 1] * rg[k, 1, q] + r0[i, 2] * rg[k, 2, q]
            cw[k, i] = s


def sparse_weights(weights):
    """Per-vertex lists of the joints with non-zero skin weight (for :func:`skin_point_sparse`).

    Parameters
    ----------
    weights : (n, J) float skin weights.

    Returns
    -------
    jidx : (n, J) int64, the joints of vertex p first (``jcount[p]`` of them), then -1.
    jcount : (n,) int64.
    """
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must have shape (n, J), got {w.shape}")
    jidx = np.full(w.shape, -1, dtype=np.int64)
    jcount = (w != 0).sum(1).astype(np.int64)
    for p in range(w.shape[0]):
        nz = np.flatnonzero(w[p])
        jidx[p, :nz.size] = nz
    return jidx, jcount


@njit(cache=True, inline="always")
def skin_point_sparse(t, w, jidx, n, aw, cw, trans, out):
    """Pose one vertex through its ``n`` non-zero joints only: out (3,) = trans + sum w_k (aw_k t + cw_k).

    ``aw``, ``cw`` from :func:`world_joint_transforms`; ``jidx`` a row of :func:`sparse_weights`.
    Most face vertices follow one joint (the head), so this is one 3x3 product per vertex.
    """
    o0 = trans[0]
    o1 = trans[1]
    o2 = trans[2]
    for d in range(n):
        k = jidx[d]
        wk = w[k]
        o0 += wk * (cw[k, 0] + aw[k, 0, 0] * t[0] + aw[k, 0, 1] * t[1] + aw[k, 0, 2] * t[2])
        o1 += wk * (cw[k, 1] + aw[k, 1, 0] * t[0] + aw[k, 1, 1] * t[1] + aw[k, 1, 2] * t[2])
        o2 += wk * (cw[k, 2] + aw[k, 2, 0] * t[0] + aw[k, 2, 1] * t[1] + aw[k, 2, 2] * t[2])
    out[0] = o0
    out[1] = o1
    out[2] = o2


@njit(cache=True)
def points_jacobian(t, w, eb, sb, sj, anc, r0, trans, rg, tg, gpos, bm, cm, x_out, jac_out):
    """Posed positions and dense Jacobians of chosen vertices.

    Parameters
    ----------
    t : (n, 3) float64, template T(beta, psi) at the vertices (mm).
    w : (n, J) float64, skin weights.
    eb : (n, 3, E) float64, expression basis blocks.
    sb : (n, 3, K) float64, identity basis blocks (K = 0 to skip the identity columns).
    sj : (J, 3, K) float64, joint identity basis S_J.
    x_out : (n, 3) out.
    jac_out : (n, 3, POSE_DIM + E + K) out.
    """
    n = t.shape[0]
    nj = w.shape[1]
    ne = eb.shape[2]
    nk = sb.shape[2]
    pd = 6 + 3 * (nj - 1)
    rm = np.empty((3, 3))
    dpose = np.empty((3, pd))
    wsub = np.empty(nj)
    work = np.empty((nj + 5, 3))
    g = np.empty(3)
    for p in range(n):
        skin_vertex(t[p], w[p], anc, r0, trans, rg, tg, gpos, bm, x_out[p], rm, dpose, wsub, work)
        for i in range(3):
            for c in range(pd):
                jac_out[p, i, c] = dpose[i, c]
        for e in range(ne):
            e0 = eb[p, 0, e]
            e1 = eb[p, 1, e]
            e2 = eb[p, 2, e]
            for i in range(3):
                jac_out[p, i, pd + e] = rm[i, 0] * e0 + rm[i, 1] * e1 + rm[i, 2] * e2
        for k in range(nk):
            u0 = sb[p, 0, k]
            u1 = sb[p, 1, k]
            u2 = sb[p, 2, k]
            g[0] = 0.0
            g[1] = 0.0
            g[2] = 0.0
            # Rg_parent (I - R_m) S_J[m] weighted by the subtree weights
            for mm in range(1, nj):
                wm = wsub[mm]
                if wm == 0.0:
                    continue
                for i in range(3):
                    g[i] += wm * (cm[mm, i, 0] * sj[mm, 0, k] + cm[mm, i, 1] * sj[mm, 1, k]
                                  + cm[mm, i, 2] * sj[mm, 2, k])
            for i in range(3):
                s = rm[i, 0] * u0 + rm[i, 1] * u1 + rm[i, 2] * u2
                s += r0[i, 0] * g[0] + r0[i, 1] * g[1] + r0[i, 2] * g[2]
                jac_out[p, i, pd + ne + k] = s


# --------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoseState:
    """Per-frame pose chain (outputs of :func:`pose_chain`)."""
    r0: np.ndarray
    jl0: np.ndarray
    rg: np.ndarray
    tg: np.ndarray
    gpos: np.ndarray
    bm: np.ndarray
    cm: np.ndarray
    translation: np.ndarray


def check_params(model: FaceModel, params: Params):
    """Validate shapes and finiteness of ``params`` against ``model``; raises ValueError."""
    want = {"identity": (model.n_identity,), "expression": (model.n_expression,),
            "rotations": (model.n_joints, 3), "translation": (3,)}
    for name, shape in want.items():
        a = np.asarray(getattr(params, name))
        if a.shape != shape:
            raise ValueError(f"params.{name} must have shape {shape}, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"params.{name} contains NaN or inf")


def pose(model: FaceModel, params: Params) -> PoseState:
    """Run the pose chain for ``params`` (joint locations follow the identity)."""
    check_params(model, params)
    nj = model.n_joints
    out = PoseState(np.empty((3, 3)), np.empty((3, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3)),
                    np.empty((nj, 3)), np.empty((nj, 3, 3)), np.empty((nj, 3, 3)),
                    np.ascontiguousarray(params.translation, dtype=np.float64))
    pose_chain(np.ascontiguousarray(params.rotations, dtype=np.float64), model.joints(params.identity),
               model.joint_parents.astype(np.int64), out.r0, out.jl0, out.rg, out.tg, out.gpos, out.bm,
               out.cm)
    return out


def evaluate_mesh(model: FaceModel, params: Params, template=None):
    """Posed full mesh M(beta, psi, theta), (V, 3) float64 mm.

    ``template`` may pass a precomputed T(beta, psi) (V, 3) to skip the basis products.
    """
    st = pose(model, params)
    t = model.template(params.identity, params.expression) if template is None else template
    out = np.empty((model.n_vertices, 3))
    skin_mesh(np.ascontiguousarray(t, dtype=np.float64), model.skin_weights, st.r0, st.translation,
              st.rg, st.tg, out)
    return out


def evaluate_points(model: FaceModel, params: Params, vertex_ids, with_identity=False):
    """Posed positions and dense Jacobians of chosen vertices (without the full mesh).

    Returns
    -------
    x : ndarray (n, 3) float64, mm.
    jac : ndarray (n, 3, POSE_DIM + E [+ K]) float64; columns as in the module docstring.
    """
    ids = np.asarray(vertex_ids, dtype=np.int64)
    if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= model.n_vertices)):
        raise ValueError(f"vertex_ids must be 1-D in [0, {model.n_vertices})")
    st = pose(model, params)
    beta = np.asarray(params.identity, float)
    psi = np.asarray(params.expression, float)
    sb = model.identity_basis[ids].astype(np.float64)
    eb = model.expression_basis[ids].astype(np.float64)
    t = model.vertices[ids].astype(np.float64) + sb @ beta + eb @ psi
    if not with_identity:
        sb = np.zeros((ids.size, 3, 0))
    x = np.empty((ids.size, 3))
    jac = np.empty((ids.size, 3, POSE_DIM + model.n_expression + sb.shape[2]))
    points_jacobian(t, model.skin_weights[ids].astype(np.float64), eb, sb,
                    np.ascontiguousarray(model.joint_identity), ancestry(model.joint_parents), st.r0,
                    st.translation, st.rg, st.tg, st.gpos, st.bm, st.cm, x, jac)
    return x, jac


# --------------------------------------------------------------------------------------------
# Structure-of-arrays kernels: many vertices at once, loops over vertices innermost (SIMD)
# --------------------------------------------------------------------------------------------

# Floating-point licences of the vectorised kernels: reassociation and fused multiply-add only, so
# the compiler may vectorise sums across vertices; NaN and inf keep their IEEE meaning.
SIMD_MATH = {"reassoc", "contract", "nsz"}


class SoaSkin(NamedTuple):
    """Static tables of :func:`skin_points_soa` for one vertex set (built by :func:`soa_skin`; a named
    tuple the kernels take as it is).

    Attributes
    ----------
    weights_t : (J, n) float64, skin weights, joint-major.
    ranges : (J, 6) int64, vertex ranges [lo, hi) per joint k: columns 0:2, the blended vertices
        with a non-zero weight on k; 2:4 (k >= 1), where k's rotation moves vertices (non-zero
        subtree weight); 4:6, a run of vertices skinned to k alone with weight 1 (no blending:
        positions and R_root M are stored, not accumulated).  (0, 0) when empty.
    acc : (J, J) float64, acc[k, m] = 1 when joint k's weighted transform w_k y_k is summed into the
        subtree workspace of joint m >= 1.
    complement : (J,) bool, joint m's workspace sums the joints *outside* its subtree (fewer vertices
        to visit when the subtree holds most of the weight); the subtree sum is then x - sum.
    zero_ranges : (J, 2) int64, the part of joint m's workspace cleared and summed into every call
        (where contributing joints have weight).
    wsub : (J, n) float64, subtree weight W_m = sum_{k in sub(m)} w_k per vertex (static).
    """

    weights_t: np.ndarray
    ranges: np.ndarray
    acc: np.ndarray
    complement: np.ndarray
    zero_ranges: np.ndarray
    wsub: np.ndarray


def _span(mask):
    nz = np.flatnonzero(mask)
    return (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)


def _longest_run(mask):
    """[lo, hi) of the longest run of True in a 1-D bool array ((0, 0) if none)."""
    d = np.diff(np.r_[0, mask.astype(np.int8), 0])
    lo, hi = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    if lo.size == 0:
        return 0, 0
    i = int(np.argmax(hi - lo))
    return int(lo[i]), int(hi[i])


def soa_skin(weights, parents):
    """:class:`SoaSkin` of (n, J) skin weights for a skeleton with ``parents`` (J,).

    Vertices are best given grouped by the joints they are skinned to (``tracking_points.table_soa`` sorts
    them): each joint then visits one short range.  Each joint m >= 1 needs
    sum_{k in sub(m)} w_k y_k; it is summed directly or as the complement
    x - sum_{k not in sub(m)} w_k y_k, whichever visits fewer vertices (exact either way).
    """
    w = np.ascontiguousarray(np.asarray(weights, dtype=np.float64).T)
    anc = ancestry(parents)
    nj, n = w.shape
    nz = w != 0.0
    ranges = np.zeros((nj, 6), np.int64)
    in_single = np.zeros(n, bool)
    for k in range(nj):
        alone = (w[k] == 1.0) & (nz.sum(0) == 1)
        ranges[k, 4:6] = _longest_run(alone)
        in_single[ranges[k, 4]:ranges[k, 5]] = True
    full = np.array([_span(nz[k]) for k in range(nj)]).reshape(nj, 2)
    for k in range(nj):
        ranges[k, :2] = _span(nz[k] & ~in_single)
    size = full[:, 1] - full[:, 0]
    acc = np.zeros((nj, nj))
    complement = np.zeros(nj, bool)
    zero_ranges = np.zeros((nj, 2), np.int64)
    for m in range(1, nj):
        inside = anc[:, m] != 0.0
        ranges[m, 2:4] = _span(nz[inside].any(0))
        complement[m] = size[~inside].sum() < size[inside].sum()
        contrib = ~inside if complement[m] else inside
        acc[contrib, m] = 1.0
        spans = ([] if complement[m] else [ranges[m, 2:4]]) + [full[k] for k in np.flatnonzero(contrib) if size[k]]
        spans = [sp for sp in spans if sp[1] > sp[0]]
        zero_ranges[m] = (min(sp[0] for sp in spans), max(sp[1] for sp in spans)) if spans else (0, 0)
    wsub = np.ascontiguousarray(anc.T @ w)
    return SoaSkin(w, ranges, acc, complement, zero_ranges, wsub)


@njit(cache=True)
def init_pose_jacobian(ranges, jpose):
    """Write the constant entries of a (POSE_DIM, 3, n) :func:`skin_points_soa` pose Jacobian once:
    the translation block (identity) and, per joint m >= 1, zeros outside its subtree range."""
    n = jpose.shape[2]
    jpose[3:6] = 0.0
    for i in range(3):
        jpose[3 + i, i, :] = 1.0
    for m in range(1, ranges.shape[0]):
        c = 6 + 3 * (m - 1)
        jpose[c:c + 3, :, :ranges[m, 2]] = 0.0
        jpose[c:c + 3, :, ranges[m, 3]:n] = 0.0


@njit(cache=True)
def soa_frame(r0, rg, tg, gpos, bm, frame):
    """Per-frame products for :func:`skin_points_soa`, frame (J, 2, 3, 4) out.

    frame[k, 0] = [R_root Rg_k | R_root tg_k] (joint k's transform, root rotation applied);
    frame[k, 1] = [R_root bm_k | R_root g_k] for k >= 1 (joint-rotation Jacobian factor and posed
    joint location) and [J_l(root) | 0] for k = 0: the products of :func:`single_joint_frame`.
    """
    single_joint_frame(r0, rg, gpos, bm, frame[:, 0, :, :3], frame[:, 1, :, :3], frame[:, 1, :, 3])
    for k in range(rg.shape[0]):
        for i in range(3):
            frame[k, 0, i, 3] = r0[i, 0] * tg[k, 0] + r0[i, 1] * tg[k, 1] + r0[i, 2] * tg[k, 2]


@njit(cache=True, fastmath=SIMD_MATH)
def skin_points_soa(t, w, ranges, acc, complement, zero_ranges, wsub, frame, trans, x_out, rm_out, jpose_out,
                    sub, ybuf):
    """Pose n vertices with their pose Jacobian, vertex index innermost (vectorised LBS).

    x = trans + sum_k w_k R_root (Rg_k t + tg_k); the pose Jacobian columns are those of
    :func:`skin_vertex`: root -[R v]_x J_l0, translation I, and per joint m >= 1
    -[R_root (sum_{k in sub(m)} w_k y_k - W_m g_m)]_x R_root bm_m.

    Parameters
    ----------
    t : (3, n) float64, template T(beta, psi) (mm), coordinate-major.
    w, ranges, acc, complement, zero_ranges, wsub : a :class:`SoaSkin`.
    frame : (J, 2, 3, 4) from :func:`soa_frame`; trans : (3,) root translation (mm).
    x_out : (3, n) out, camera-space positions (mm).
    rm_out : (9, n) out, R_root M row-major per vertex (M = sum_k w_k Rg_k): d x / d t, so the
        Jacobian of x over any template-space basis (identity, expression) is rm_out @ basis block.
    jpose_out : (POSE_DIM, 3, n) in/out, d x / d [root rotation, translation, joints 1..J-1].  Its
        constant entries (translation block, joint columns outside each subtree range) are
        written once by :func:`init_pose_jacobian` and not touched here.
    sub : (J, 3, n), ybuf : (3, n) workspaces (subtree sums of w_k y_k; one joint's w_k y_k).
    """
    nj = w.shape[0]
    blo, bhi = _clear_blended(ranges, x_out)
    rm_out[:, blo:bhi] = 0.0
    for m in range(1, nj):
        sub[m, :, zero_ranges[m, 0]:zero_ranges[m, 1]] = 0.0
    # Every vertex loop writes one 1-D view and reads few others, with range(len): numba then emits
    # no negative-index wrap-around and LLVM's alias checks stay few enough for it to vectorise.
    for k in range(nj):
        feeds = False               # does joint k's w y go into some subtree workspace?
        for m in range(1, nj):
            feeds = feeds or acc[k, m] != 0.0
        for single in (False, True):
            lo = ranges[k, 4 if single else 0]
            hi = ranges[k, 5 if single else 1]
            if hi <= lo:
                continue
            wr = w[k, lo:hi]
            _joint_positions(t, wr, frame, k, single, lo, hi, x_out, ybuf, feeds)
            for i in range(3):
                y = ybuf[i, lo:hi]
                for m in range(1, nj):
                    if acc[k, m] != 0.0:
                        sm = sub[m, i, lo:hi]
                        for p in range(hi - lo):
                            sm[p] += y[p]
            for ij in range(9):
                aij = frame[k, 0, ij // 3, ij % 3]
                r = rm_out[ij, lo:hi]
                if single:
                    r[:] = aij
                else:
                    for p in range(hi - lo):
                        r[p] += wr[p] * aij
    # root rotation columns: -[x - trans]_x J_l0 = J_l0[:, j] x (x - trans), before x += trans
    x0, x1, x2 = x_out[0], x_out[1], x_out[2]
    for j in range(3):
        c0 = frame[0, 1, 0, j]
        c1 = frame[0, 1, 1, j]
        c2 = frame[0, 1, 2, j]
        _cross_col(c0, c1, c2, x0, x1, x2, jpose_out[j, 0], jpose_out[j, 1], jpose_out[j, 2])
    for m in range(1, nj):
        lo = ranges[m, 2]
        hi = ranges[m, 3]
        wm = wsub[m, lo:hi]
        if complement[m]:
            # subtree sum = x - (sum outside the subtree); that sum is 0 outside zero_ranges[m]
            zlo = min(max(lo, zero_ranges[m, 0]), hi)
            zhi = max(min(hi, zero_ranges[m, 1]), zlo)
            for i in range(3):
                g = frame[m, 1, i, 3]
                _minus_offset(x_out[i, lo:zlo], wsub[m, lo:zlo], g, sub[m, i, lo:zlo])
                s, x, wz = sub[m, i, zlo:zhi], x_out[i, zlo:zhi], wsub[m, zlo:zhi]
                for p in range(zhi - zlo):
                    s[p] = x[p] - s[p] - wz[p] * g
                _minus_offset(x_out[i, zhi:hi], wsub[m, zhi:hi], g, sub[m, i, zhi:hi])
        else:
            for i in range(3):
                s = sub[m, i, lo:hi]
                g = frame[m, 1, i, 3]
                for p in range(hi - lo):
                    s[p] -= wm[p] * g
        s0, s1, s2 = sub[m, 0, lo:hi], sub[m, 1, lo:hi], sub[m, 2, lo:hi]
        for j in range(3):
            col = 6 + 3 * (m - 1) + j
            _cross_col(frame[m, 1, 0, j], frame[m, 1, 1, j], frame[m, 1, 2, j], s0, s1, s2,
                       jpose_out[col, 0, lo:hi], jpose_out[col, 1, lo:hi], jpose_out[col, 2, lo:hi])
    _add_translation(trans, x_out)


@njit(cache=True, fastmath=SIMD_MATH)
def skin_positions_soa(t, w, ranges, frame, trans, x_out, ybuf):
    """Positions only of :func:`skin_points_soa` (no R_root M, no pose Jacobian): the same
    operations, so the same positions bit for bit.

    t (3, n) template (mm); w, ranges from a :class:`SoaSkin`; frame (J, 2, 3, 4) from
    :func:`soa_frame`; trans (3,) mm; x_out (3, n) out, camera-space positions (mm); ybuf (3, n)
    workspace (w_k y_k stored before it is added, as :func:`skin_points_soa` does).
    """
    _clear_blended(ranges, x_out)
    for k in range(w.shape[0]):
        for single in (False, True):
            lo = ranges[k, 4 if single else 0]
            hi = ranges[k, 5 if single else 1]
            if hi > lo:
                _joint_positions(t, w[k, lo:hi], frame, k, single, lo, hi, x_out, ybuf, False)
    _add_translation(trans, x_out)


@njit(cache=True, inline="always")
def _clear_blended(ranges, x_out):
    """Zero x_out (3, n) over the vertices blended from several joints (the union of the weight
    ranges, columns 0:2 of ``ranges``), which are summed into; returns that range (lo, hi)."""
    n = x_out.shape[1]
    blo = n
    bhi = 0
    for k in range(ranges.shape[0]):
        if ranges[k, 1] > ranges[k, 0]:
            blo = min(blo, ranges[k, 0])
            bhi = max(bhi, ranges[k, 1])
    if bhi <= blo:
        return 0, 0
    x_out[:, blo:bhi] = 0.0
    return blo, bhi


@njit(cache=True, inline="always")
def _joint_positions(t, wr, frame, k, single, lo, hi, x_out, ybuf, keep_y):
    """Joint k's part of the positions over vertices lo..hi-1 (before the root translation): for a
    run of vertices skinned to k alone, x = A_k t + c_k is stored (and copied to ybuf when keep_y);
    for blended vertices ybuf = w_k (A_k t + c_k) and x += ybuf.  wr = w[k, lo:hi]."""
    t0, t1, t2 = t[0, lo:hi], t[1, lo:hi], t[2, lo:hi]
    for i in range(3):
        a0 = frame[k, 0, i, 0]
        a1 = frame[k, 0, i, 1]
        a2 = frame[k, 0, i, 2]
        a3 = frame[k, 0, i, 3]
        x = x_out[i, lo:hi]
        y = ybuf[i, lo:hi]
        if single:
            for p in range(hi - lo):
                x[p] = a0 * t0[p] + a1 * t1[p] + a2 * t2[p] + a3
            if keep_y:
                y[:] = x
        else:
            for p in range(hi - lo):
                y[p] = wr[p] * (a0 * t0[p] + a1 * t1[p] + a2 * t2[p] + a3)
            for p in range(hi - lo):
                x[p] += y[p]


@njit(cache=True, inline="always")
def _add_translation(trans, x_out):
    """x_out (3, n) += trans (3,)."""
    for i in range(3):
        ti = trans[i]
        x = x_out[i]
        for p in range(x.shape[0]):
            x[p] += ti


@njit(cache=True, inline="always")
def _minus_offset(x, w, g, out):
    """out = x - w g for rows x, w and a scalar g."""
    for p in range(x.shape[0]):
        out[p] = x[p] - w[p] * g


@njit(cache=True, inline="always")
def _cross_col(c0, c1, c2, a0, a1, a2, o0, o1, o2):
    """o = c x a for a constant vector c and vectors a given as three 1-D rows (one output per loop)."""
    for p in range(a0.shape[0]):
        o0[p] = c1 * a2[p] - c2 * a1[p]
    for p in range(a0.shape[0]):
        o1[p] = c2 * a0[p] - c0 * a2[p]
    for p in range(a0.shape[0]):
        o2[p] = c0 * a1[p] - c1 * a0[p]
