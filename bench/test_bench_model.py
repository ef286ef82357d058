"""Face-model evaluation benchmarks (pytest-benchmark), one thread, with NumPy baselines for ratios.

Run::

    python -m pytest bench/test_bench_model.py -q --benchmark-only
    python bench/report.py                       # the same, as a markdown table with ratios

Groups (``benchmark.group``) and goals (``extra_info["goal_us"]``):

* ``points_jacobian-<set>``: per-frame landmark-vertex evaluation for ``dense320`` / ``dense703``:
  ``pose_chain`` + the ``points_jacobian`` kernel (positions and the pose + expression Jacobian, no
  identity columns) on preallocated arrays; the template gather is done outside the timed call.
  Goal <= 20 us.  Baseline: the same quantities in vectorised NumPy.
* ``table_jacobian-<set>``: the same frame through the fitter's sparsity table
  (``terms.table_points_jacobian``, structure-of-arrays, vertex index innermost): pose chain,
  template points from the table's expression entries (inside the timed call), positions,
  R_root M, pose Jacobian and the sparse expression Jacobian (shapes moving the vertex by
  >= 0.01 mm).  Goal <= 20 us.
* ``full_mesh``: ``evaluate_mesh`` (template T(beta, psi) from the bases, then LBS of all 26,719
  vertices), goal <= 3 ms; baseline: NumPy matrix products + einsum LBS.
* ``skinning``: the ``skin_mesh`` kernel alone on a precomputed template and pose; baseline: the
  einsum LBS alone.
* ``load``: ``load_model`` from the cache file with the in-process cache cleared, goal <= 100 ms.

Every benchmark first checks that what it times computes the right thing.
"""
import numpy as np
import pytest

from lmfit3d.landmarks import load_landmark_set
from lmfit3d.model import Params
from lmfit3d.skinning import (POSE_DIM, ancestry, evaluate_mesh, evaluate_points, points_jacobian, pose,
                              pose_chain, skin_mesh)
from lmfit3d.sparsity import DEFAULT_THRESHOLD_MM, build_sparsity
from lmfit3d.tracking_points import expression_jacobian, table_points_buffers, table_points_jacobian, table_soa

SETS = ("dense320", "dense703")
SEED = 2022


def bench_params(model):
    """A fixed, moderately posed and expressive frame."""
    rng = np.random.default_rng(SEED)
    return Params(identity=rng.normal(size=model.n_identity),
                  expression=rng.uniform(0.0, 0.6, model.n_expression),
                  rotations=rng.normal(scale=0.2, size=(model.n_joints, 3)),
                  translation=np.array([5.0, -10.0, -600.0]))


def _setup(benchmark, group, impl, goal_us=None):
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    if goal_us is not None:
        benchmark.extra_info["goal_us"] = goal_us


# --------------------------------------------------------------------------------------------
# NumPy baselines
# --------------------------------------------------------------------------------------------

def _hat_cols(a, b):
    """-[a]_x b for a (n, 3) and b (3, 3): (n, 3, 3)."""
    return -np.cross(a[:, None, :], b.T[None, :, :]).transpose(0, 2, 1)


def np_rodrigues(w):
    """(R, J_l) of one axis-angle vector (closed form; the baseline only sees angles > 1e-6)."""
    t = np.linalg.norm(w)
    k = np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    k2 = k @ k
    a, b, c = np.sin(t) / t, (1.0 - np.cos(t)) / t ** 2, (t - np.sin(t)) / t ** 3
    eye = np.eye(3)
    return eye + a * k + b * k2, eye + b * k + c * k2


def np_pose_chain(rot, joints, parents):
    nj = len(parents)
    rg, tg, gpos, bm = np.zeros((nj, 3, 3)), np.zeros((nj, 3)), np.zeros((nj, 3)), np.zeros((nj, 3, 3))
    r0, jl0 = np_rodrigues(rot[0])
    rg[0], bm[0] = np.eye(3), jl0
    for k in range(1, nj):
        p = parents[k]
        rk, jk = np_rodrigues(rot[k])
        rg[k] = rg[p] @ rk
        bm[k] = rg[p] @ jk
        tg[k] = tg[p] + rg[p] @ (joints[k] - rk @ joints[k])
        gpos[k] = tg[p] + rg[p] @ joints[k]
    return r0, rg, tg, gpos, bm


def np_points_jacobian(t, w, eb, anc, rot, joints, parents, trans):
    """Positions (n, 3) and the [root, translation, joints, expression] Jacobian (n, 3, 18 + E)."""
    r0, rg, tg, gpos, bm = np_pose_chain(rot, joints, parents)
    y = np.einsum("kij,nj->nki", rg, t) + tg                   # per-joint transformed vertex
    v = np.einsum("nk,nki->ni", w, y)
    rm = np.einsum("ij,nk,kjl->nil", r0, w, rg)                 # R_root M
    rv = v @ r0.T
    n, nj = len(t), len(parents)
    jac = np.empty((n, 3, POSE_DIM + eb.shape[2]))
    jac[:, :, 0:3] = _hat_cols(rv, bm[0])
    jac[:, :, 3:6] = np.eye(3)
    wsub = w @ anc                                              # (n, J) subtree weights
    ysub = np.einsum("nk,km,nki->nmi", w, anc, y)
    a = ysub - wsub[:, :, None] * gpos[None]
    for m in range(1, nj):
        jac[:, :, 6 + 3 * (m - 1):9 + 3 * (m - 1)] = np.einsum("ij,njc->nic", r0, _hat_cols(a[:, m], bm[m]))
    jac[:, :, POSE_DIM:] = np.einsum("nij,nje->nie", rm, eb)
    return rv + trans, jac


def np_lbs(t, w, rot, joints, parents, trans):
    """Full-mesh LBS: blend the joint transforms per vertex (einsum), apply, then the root."""
    r0, rg, tg, _, _ = np_pose_chain(rot, joints, parents)
    a = np.einsum("vk,kij->vij", w, rg)
    v = np.einsum("vij,vj->vi", a, t) + w @ tg
    return v @ r0.T + trans


class NumpyMesh:
    """Plain-NumPy M(beta, psi, theta): template from the float32 bases (BLAS), then :func:`np_lbs`."""

    def __init__(self, model):
        self.v = model.vertices.astype(np.float64)
        self.s = model.identity_basis.reshape(-1, model.n_identity)
        self.e = model.expression_basis.reshape(-1, model.n_expression)
        self.w = model.skin_weights.astype(np.float64)
        self.joint_mean, self.joint_identity = model.joint_mean, model.joint_identity
        self.parents = model.joint_parents

    def template(self, params):
        d = self.s @ params.identity.astype(np.float32) + self.e @ params.expression.astype(np.float32)
        return self.v + d.reshape(-1, 3)

    def __call__(self, params):
        joints = self.joint_mean + self.joint_identity @ params.identity
        return np_lbs(self.template(params), self.w, params.rotations, joints, self.parents,
                      params.translation)


# --------------------------------------------------------------------------------------------
# (a) landmark vertices with Jacobians
# --------------------------------------------------------------------------------------------

class PointsProblem:
    """Preallocated inputs and workspaces of one frame's landmark-vertex evaluation."""

    def __init__(self, model, name):
        p = bench_params(model)
        self.params = p
        self.ids = np.array(load_landmark_set(name))
        n, nj = len(self.ids), model.n_joints
        eb = model.expression_basis[self.ids].astype(np.float64)
        sb = model.identity_basis[self.ids].astype(np.float64)
        # template gather (per identity change in a tracker, not per frame): outside the timed call
        self.t = model.vertices[self.ids].astype(np.float64) + sb @ p.identity + eb @ p.expression
        self.w = model.skin_weights[self.ids].astype(np.float64)
        self.eb = eb
        self.sb = np.zeros((n, 3, 0))
        self.sj = np.ascontiguousarray(model.joint_identity)
        self.anc = ancestry(model.joint_parents)
        self.rot = np.ascontiguousarray(p.rotations, dtype=np.float64)
        self.joints = model.joints(p.identity)
        self.parents = model.joint_parents.astype(np.int64)
        self.trans = np.ascontiguousarray(p.translation, dtype=np.float64)
        self.r0, self.jl0 = np.empty((3, 3)), np.empty((3, 3))
        self.rg, self.tg, self.gpos = np.empty((nj, 3, 3)), np.empty((nj, 3)), np.empty((nj, 3))
        self.bm, self.cm = np.empty((nj, 3, 3)), np.empty((nj, 3, 3))
        self.x = np.empty((n, 3))
        self.jac = np.empty((n, 3, POSE_DIM + model.n_expression))

    def run(self):
        pose_chain(self.rot, self.joints, self.parents, self.r0, self.jl0, self.rg, self.tg, self.gpos,
                   self.bm, self.cm)
        points_jacobian(self.t, self.w, self.eb, self.sb, self.sj, self.anc, self.r0, self.trans, self.rg,
                        self.tg, self.gpos, self.bm, self.cm, self.x, self.jac)

    def run_numpy(self):
        return np_points_jacobian(self.t, self.w, self.eb, self.anc, self.rot, self.joints, self.parents,
                                  self.trans)


@pytest.fixture(scope="module", params=SETS)
def points_problem(request, model):
    prob = PointsProblem(model, request.param)
    prob.run()  # compile / load the cached kernels before timing
    x, jac = evaluate_points(model, prob.params, prob.ids)
    np.testing.assert_allclose(prob.x, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(prob.jac, jac, rtol=0, atol=1e-9)
    x_np, jac_np = prob.run_numpy()
    np.testing.assert_allclose(x_np, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(jac_np, jac, rtol=0, atol=1e-9)
    return request.param, prob


def test_points_jacobian_numba(benchmark, points_problem):
    name, prob = points_problem
    _setup(benchmark, f"points_jacobian-{name}", "numba", goal_us=20)
    benchmark.extra_info["n_points"] = len(prob.ids)
    benchmark(prob.run)
    assert np.isfinite(prob.jac).all()


def test_points_jacobian_numpy(benchmark, points_problem):
    name, prob = points_problem
    _setup(benchmark, f"points_jacobian-{name}", "numpy")
    benchmark.extra_info["n_points"] = len(prob.ids)
    x, _ = benchmark(prob.run_numpy)
    np.testing.assert_allclose(x, prob.x, rtol=0, atol=1e-9)


class TableProblem:
    """The same frame through the fitter's sparsity table (``terms.table_points_jacobian``).

    One kernel call per frame: pose chain and its root-applied products, template points
    T(beta, psi) from the table's kept expression entries (psi changes every frame, so this is
    inside the timed call), positions, R_root M (the factor of the expression and identity
    Jacobians), the pose Jacobian (18 columns); ``run_explicit`` adds the explicit sparse
    expression Jacobian (only the shapes moving the vertex by >= ``threshold`` mm).  Landmark index
    innermost (structure of arrays), landmarks grouped by the joints they are skinned to.
    """

    def __init__(self, model, name, threshold=DEFAULT_THRESHOLD_MM):
        p = bench_params(model)
        self.params = p
        self.ids = np.array(load_landmark_set(name))
        self.table = build_sparsity(model, self.ids, threshold)
        self.soa = table_soa(self.table, model.joint_parents)
        self.psi = np.ascontiguousarray(p.expression, dtype=np.float64)
        self.t_beta_t = self.soa.to_columns(self.table.mean + self.table.identity_blocks @ p.identity)
        self.rot = np.ascontiguousarray(p.rotations, dtype=np.float64)
        self.joints = model.joints(p.identity)
        self.parents = model.joint_parents.astype(np.int64)
        self.trans = np.ascontiguousarray(p.translation, dtype=np.float64)
        (self.chain, self.chain_t, self.frame, self.xyz, self.rm, self.jpose, self.jexpr, self.t_work, self.sub,
         self.ybuf) = table_points_buffers(self.soa, model.n_joints)

    def run(self):
        s, k = self.soa, self.soa.skin
        table_points_jacobian(self.rot, self.joints, self.parents, self.trans, self.psi, self.t_beta_t, s.ptr,
                              s.shape_idx, s.blocks, k.weights_t, k.ranges, k.acc, k.complement, k.zero_ranges,
                              k.wsub, self.chain, self.chain_t, self.frame, self.xyz, self.rm, self.jpose,
                              self.t_work, self.sub, self.ybuf)

    def run_explicit(self):
        self.run()
        expression_jacobian(self.soa.ptr, self.soa.blocks, self.rm, self.jexpr)


@pytest.fixture(scope="module", params=SETS)
def table_problem(request, model):
    # with threshold 0 the table holds every shape: the kernel equals evaluate_points' dense Jacobian
    exact = TableProblem(model, request.param, threshold=0.0)
    exact.run_explicit()
    x, jac = evaluate_points(model, exact.params, exact.ids)
    s = exact.soa                                                  # kernel order -> table order
    np.testing.assert_allclose(s.to_rows(exact.xyz), x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s.to_rows(exact.jpose).transpose(0, 2, 1), jac[:, :, :POSE_DIM], rtol=0, atol=1e-9)
    lm, e = s.entries()
    np.testing.assert_allclose(exact.jexpr.T, jac[lm, :, POSE_DIM + e], rtol=0, atol=1e-9)
    eb = model.expression_basis[exact.ids].astype(np.float64)      # factored form: R_root M E
    rm = s.to_rows(exact.rm).reshape(-1, 3, 3)
    np.testing.assert_allclose(np.einsum("nij,nje->nie", rm, eb), jac[:, :, POSE_DIM:], rtol=0, atol=1e-9)
    prob = TableProblem(model, request.param)
    prob.run_explicit()
    return request.param, prob


def test_table_jacobian_numba(benchmark, table_problem):
    name, prob = table_problem
    _setup(benchmark, f"table_jacobian-{name}", "numba", goal_us=20)
    benchmark.extra_info["n_points"] = len(prob.ids)
    benchmark.extra_info["mean_expression_entries"] = float(prob.soa.shape_idx.size / len(prob.ids))
    benchmark(prob.run)
    assert np.isfinite(prob.jpose).all() and np.isfinite(prob.rm).all()


def test_table_jacobian_explicit(benchmark, table_problem):
    name, prob = table_problem
    _setup(benchmark, f"table_jacobian-{name}", "numba+explicit")
    benchmark.extra_info["n_points"] = len(prob.ids)
    benchmark(prob.run_explicit)
    assert np.isfinite(prob.jexpr).all()


# --------------------------------------------------------------------------------------------
# (b) full mesh and (d) its NumPy baseline
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mesh_problem(model):
    params = bench_params(model)
    ref = evaluate_mesh(model, params)  # also compiles / loads the kernels
    baseline = NumpyMesh(model)
    np.testing.assert_allclose(baseline(params), ref, rtol=0, atol=1e-4)  # float32 template sums
    return params, ref, baseline


def test_full_mesh_numba(benchmark, model, mesh_problem):
    params, ref, _ = mesh_problem
    _setup(benchmark, "full_mesh", "numba", goal_us=3000)
    out = benchmark(evaluate_mesh, model, params)
    np.testing.assert_array_equal(out, ref)


def test_full_mesh_numpy(benchmark, mesh_problem):
    params, ref, baseline = mesh_problem
    _setup(benchmark, "full_mesh", "numpy")
    out = benchmark(baseline, params)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def skin_problem(model, mesh_problem):
    params, ref, baseline = mesh_problem
    st = pose(model, params)
    t = np.ascontiguousarray(model.template(params.identity, params.expression))
    out = np.empty_like(t)
    args = (t, model.skin_weights, st.r0, st.translation, st.rg, st.tg, out)
    skin_mesh(*args)
    np.testing.assert_array_equal(out, ref)
    return params, t, args, baseline


def test_skinning_numba(benchmark, skin_problem):
    _, _, args, _ = skin_problem
    _setup(benchmark, "skinning", "numba")
    benchmark(skin_mesh, *args)
    assert np.isfinite(args[-1]).all()


def test_skinning_numpy(benchmark, model, skin_problem):
    params, t, args, baseline = skin_problem
    _setup(benchmark, "skinning", "numpy")
    joints = model.joints(params.identity)
    out = benchmark(np_lbs, t, baseline.w, params.rotations, joints, baseline.parents, params.translation)
    np.testing.assert_allclose(out, args[-1], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# (c) model load
# --------------------------------------------------------------------------------------------

def test_model_load(benchmark, model):
    from lmfit3d import model as model_mod

    _setup(benchmark, "load", "numpy", goal_us=100_000)
    loaded = benchmark.pedantic(model_mod.load_model, args=(model_mod.default_model_path(),), setup=model_mod._LOADED.clear,
                                rounds=10, iterations=1, warmup_rounds=1)
    assert loaded is not model and loaded.n_vertices == model.n_vertices
    np.testing.assert_array_equal(loaded.vertices, model.vertices)
