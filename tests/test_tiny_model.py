"""Kernels and the per-frame fit on the small synthetic model (``lmfit3d.testing``): these tests need
neither ICT-FaceKit (../shared) nor the built model in the cache.

Mirrors tests/test_skinning.py (LBS against a float64 NumPy reference, the analytic Jacobian against
finite differences), test_fit_kernels.py (the fitter's structure-of-arrays kernel against the dense
one) and test_fit.py (noiseless recovery), on the tiny model; the last test reruns the file with
NUMBA_DISABLE_JIT=1 and without ../shared or a model cache.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lmfit3d.model import EXPRESSION_NAMES, JOINT_NAMES, JOINT_PARENTS, fit_sphere
from lmfit3d.skinning import POSE_DIM, evaluate_mesh, evaluate_points
from lmfit3d.testing import tiny_landmarks
from lmfit3d.testing import tiny_model as build_tiny_model
from lbs_reference import random_params, reference_lbs, reference_template


@pytest.fixture(scope="module")
def ids(tiny_model):
    return tiny_landmarks(tiny_model)


def blocks(model):
    """Jacobian column blocks: name -> (first column, Params field, row of the field or None, size)."""
    return {"root_rotation": (0, "rotations", 0, 3), "translation": (3, "translation", None, 3),
            "neck": (6, "rotations", 1, 3), "head": (9, "rotations", 2, 3), "eye_L": (12, "rotations", 3, 3),
            "eye_R": (15, "rotations", 4, 3), "expression": (POSE_DIM, "expression", None, model.n_expression),
            "identity": (POSE_DIM + model.n_expression, "identity", None, model.n_identity)}


BLOCK_NAMES = ("root_rotation", "translation", "neck", "head", "eye_L", "eye_R", "expression", "identity")


# --------------------------------------------------------------------------------------------
# The fixture model itself
# --------------------------------------------------------------------------------------------

def test_tiny_model_is_deterministic_and_shaped_like_the_real_one(tiny_model, ids):
    m = tiny_model
    again = build_tiny_model(np.random.default_rng(0))
    for name in ("vertices", "faces", "identity_basis", "expression_basis", "joint_mean", "joint_identity",
                 "skin_weights", "region_labels"):
        np.testing.assert_array_equal(getattr(m, name), getattr(again, name), err_msg=name)
    other = build_tiny_model(np.random.default_rng(1))
    np.testing.assert_array_equal(other.vertices, m.vertices)                 # the seed draws identity only
    assert not np.array_equal(other.identity_basis, m.identity_basis)
    assert 300 <= m.n_vertices <= 1000
    assert m.joint_names == JOINT_NAMES and np.array_equal(m.joint_parents, JOINT_PARENTS)
    assert m.n_joints == 5 and POSE_DIM == 18
    names = list(m.expression_names)
    assert names == sorted(names, key=EXPRESSION_NAMES.index)                  # ICT names, ICT order
    for n in ("jawOpen", "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookUp_R"):
        assert n in names
    assert m.vertices.dtype == m.identity_basis.dtype == m.expression_basis.dtype == np.float32
    assert m.faces.dtype == np.int32 and m.faces.min() == 0 and m.faces.max() == m.n_vertices - 1
    assert m.gmm_weights.shape == (1,) and m.gmm_means.shape == m.gmm_stds.shape == (1, m.n_identity)
    np.testing.assert_allclose(m.identity_mode_rms, np.sqrt((m.identity_basis.astype(float) ** 2).sum(1).mean(0)))
    # landmarks: unique vertices on the face, the sides, the neck and both eyeballs
    assert ids.dtype == np.int64 and np.unique(ids).size == ids.size
    labels = set(m.region_labels[ids].tolist())
    assert {0, 1, 7, 8} <= labels


def test_tiny_skin_weights(tiny_model, ids):
    w = tiny_model.skin_weights.astype(np.float64)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    assert (w >= 0).all()
    for j, region in ((3, "eyeball_L"), (4, "eyeball_R")):                    # eyeballs: rigid, own joint
        mask = tiny_model.region_mask(region)
        np.testing.assert_array_equal(w[mask, j], 1.0)
        assert not w[~mask, j].any()
    blended = ((w > 0.01) & (w < 0.99)).any(1)
    assert blended[ids].sum() >= 5                                           # landmarks in the blend bands
    assert (w[ids] > 0).any(0).all()                                         # every joint moves a landmark
    # expression shapes move no eyeball vertex (gaze belongs to the eye joints)
    eyes = tiny_model.region_mask("eyeball_L", "eyeball_R")
    assert not tiny_model.expression_basis[eyes].any()


def test_tiny_eye_joints_follow_the_eyeballs(tiny_model, rng):
    beta = rng.normal(size=tiny_model.n_identity)
    for j, region in ((3, "eyeball_L"), (4, "eyeball_R")):
        mask = tiny_model.region_mask(region)
        for b in (None, beta):
            centre, radius = fit_sphere(tiny_model.template(b)[mask])
            np.testing.assert_allclose(tiny_model.joints(b)[j], centre, atol=1e-3)
            np.testing.assert_allclose(radius, tiny_model.eye_radius[j - 3], atol=1e-3)


# --------------------------------------------------------------------------------------------
# LBS against the NumPy reference, Jacobians against finite differences (as test_skinning.py)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rot_scale", [1e-3, 0.3, 1.5])
def test_tiny_skin_mesh_matches_reference(tiny_model, rng, rot_scale):
    params = random_params(tiny_model, rng, rot_scale)
    tmpl = reference_template(tiny_model, params)
    np.testing.assert_allclose(tiny_model.template(params.identity, params.expression), tmpl, rtol=0, atol=1e-9)
    ref = reference_lbs(tiny_model, params, tmpl)
    np.testing.assert_allclose(evaluate_mesh(tiny_model, params, template=tmpl), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(evaluate_mesh(tiny_model, params), ref, rtol=0, atol=1e-9)
    assert np.abs(ref - tmpl).max() > 1.0


@pytest.mark.parametrize("rot_scale", [1e-3, 0.3, 1.5])
def test_tiny_evaluate_points_matches_reference(tiny_model, rng, ids, rot_scale):
    params = random_params(tiny_model, rng, rot_scale)
    tmpl = reference_template(tiny_model, params)
    x, jac = evaluate_points(tiny_model, params, ids)
    np.testing.assert_allclose(x, reference_lbs(tiny_model, params, tmpl)[ids], rtol=0, atol=1e-9)
    assert jac.shape == (ids.size, 3, POSE_DIM + tiny_model.n_expression)


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_tiny_points_jacobian_matches_finite_differences(tiny_model, rng, ids, block):
    params = random_params(tiny_model, rng, 0.4)
    first, field, row, size = blocks(tiny_model)[block]
    _, jac = evaluate_points(tiny_model, params, ids, with_identity=True)
    analytic = jac[:, :, first:first + size]
    h = 1e-5
    for i in range(size):
        shifted = []
        for delta in (h, -h):
            arr = np.array(getattr(params, field), dtype=np.float64)
            if row is None:
                arr[i] += delta
            else:
                arr[row, i] += delta
            shifted.append(evaluate_points(tiny_model, params.replace(**{field: arr}), ids)[0])
        np.testing.assert_allclose(analytic[:, :, i], (shifted[0] - shifted[1]) / (2.0 * h), rtol=0, atol=1e-7,
                                   err_msg=f"{block} column {i}")
    assert np.abs(analytic).max() > 1e-2                                   # the block is exercised


def test_tiny_table_points_jacobian_matches_dense(tiny_model, rng, ids):
    """The fitter's structure-of-arrays kernel (``tracking_points.table_points_jacobian``) against
    ``evaluate_points``, with every shape kept and with the 0.01 mm sparsity threshold."""
    from lmfit3d.sparsity import build_sparsity
    from lmfit3d.tracking_points import expression_jacobian, table_points_buffers, table_points_jacobian, table_soa

    m = tiny_model
    p = random_params(m, rng, 0.3)
    ref_x, ref_j = evaluate_points(m, p, ids)
    for threshold in (0.0, 0.01):
        table = build_sparsity(m, ids, threshold)
        soa = table_soa(table, m.joint_parents)
        sk = soa.skin
        chain, chain_t, frame, xyz, rm, jpose, jexpr, t_work, sub, ybuf = table_points_buffers(soa, m.n_joints)
        table_points_jacobian(np.ascontiguousarray(p.rotations), m.joints(p.identity), m.joint_parents.astype(np.int64),
                              np.asarray(p.translation, float), np.asarray(p.expression, float),
                              soa.to_columns(table.mean + table.identity_blocks @ p.identity), soa.ptr,
                              soa.shape_idx, soa.blocks, sk.weights_t, sk.ranges, sk.acc, sk.complement,
                              sk.zero_ranges, sk.wsub, chain, chain_t, frame, xyz, rm, jpose, t_work, sub, ybuf)
        expression_jacobian(soa.ptr, soa.blocks, rm, jexpr)
        lm, e = soa.entries()
        dense = np.zeros((ids.size, 3, m.n_expression))
        dense[lm, :, e] = jexpr.T
        kept = np.zeros((ids.size, m.n_expression), bool)
        kept[lm, e] = True
        assert kept.sum(1).min() == (0 if threshold else m.n_expression)      # some landmarks move with no shape
        # positions (and through them the rotation columns) leave out the dropped shapes (< 0.01 mm each)
        atol = 1e-9 if threshold == 0 else 0.05
        np.testing.assert_allclose(soa.to_rows(xyz), ref_x, rtol=0, atol=atol)
        np.testing.assert_allclose(soa.to_rows(jpose).transpose(0, 2, 1), ref_j[:, :, :POSE_DIM], rtol=0, atol=atol)
        ref_e = ref_j[:, :, POSE_DIM:].transpose(0, 2, 1)
        np.testing.assert_allclose(dense.transpose(0, 2, 1)[kept], ref_e[kept], rtol=0, atol=1e-9)
        assert np.abs(ref_e[~kept]).max(initial=0.0) < 0.05


def test_tiny_sparsity_table(tiny_model, ids):
    from lmfit3d.sparsity import build_sparsity
    table = build_sparsity(tiny_model, ids)
    moved = (np.abs(tiny_model.expression_basis[ids]).max(1) >= table.threshold)
    np.testing.assert_array_equal((table.expr_idx >= 0).sum(1), moved.sum(1))
    eye_l = tiny_model.region_mask("eyeball_L")[ids]
    np.testing.assert_array_equal(table.joint_active[:, 3], eye_l)           # eye_L moves its eyeball only
    assert table.joint_active[:, 1].all() and not table.joint_active[:, 2].all()  # neck: all; head: not the root-only


# --------------------------------------------------------------------------------------------
# Recovery of known pose and expression from synthetic landmarks (as test_fit.py)
# --------------------------------------------------------------------------------------------

def _noiseless_frame(model, ids, rng):
    from lmfit3d.synthetic import make_frame, random_params as prior_params
    p = prior_params(model, rng, yaw_deg=25.0)
    return make_frame(model, p, ids, rng, noise_px=0.0)


@pytest.mark.parametrize("identity_known", [True, False])
def test_tiny_fit_recovers_pose_and_expression(tiny_model, rng, ids, identity_known):
    """``fit_landmarks`` on noiseless projections (sigma 0.02 px: the priors do not bias the result)
    recovers the mesh to < 0.1 mm and, with the identity given, the expression weights to < 0.01.
    The intersection term is off: the tiny model has no teeth (see lmfit3d.testing)."""
    from lmfit3d.fit import FitConfig, fit_landmarks

    fr = _noiseless_frame(tiny_model, ids, rng)
    res = fit_landmarks(fr.mu, np.full(ids.size, 0.02), vertex_ids=ids, image_size=(512, 512),
                        focal_px=fr.camera.focal, model=tiny_model, config=FitConfig(w_intersection=0.0),
                        identity=fr.params.identity if identity_known else None)
    assert res.status[0] >= 1
    assert np.abs(res.uv[0] - fr.clean).max() < 0.05                          # pixels
    err = np.linalg.norm(res.vertices(tiny_model, 0) - fr.vertices, axis=1)
    assert err.max() < 0.1, err.max()                                         # mm, camera space, all vertices
    if identity_known:
        np.testing.assert_allclose(res.expression[0], fr.params.expression, atol=0.01)
        np.testing.assert_allclose(res.translation[0], fr.params.translation, atol=0.5)
        ang = Rotation.from_rotvec(res.rotations[0, 0]) * Rotation.from_rotvec(fr.params.rotations[0]).inv()
        assert np.degrees(ang.magnitude()) < 0.5                              # root rotation
        for j in (3, 4):                                                      # gaze
            np.testing.assert_allclose(res.rotations[0, j], fr.params.rotations[j], atol=2e-3)


# --------------------------------------------------------------------------------------------
# The same without numba and without ../shared
# --------------------------------------------------------------------------------------------

def test_tiny_kernels_are_compiled_unless_jit_disabled():
    """In the NUMBA_DISABLE_JIT=1 run below, the kernels are the plain Python functions."""
    from numba.core.registry import CPUDispatcher

    from lmfit3d import frame_lm, model, skinning, tracking_points

    jit_off = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
    for kernel in (skinning.skin_mesh, skinning.points_jacobian, model.template_kernel, tracking_points.table_points_jacobian,
                   frame_lm.tracking_lm):
        assert isinstance(kernel, CPUDispatcher) is not jit_off


def test_tiny_tests_without_jit_and_without_shared(tmp_path):
    """Rerun this file in a subprocess with NUMBA_DISABLE_JIT=1 (the kernels' Python source), ICT-FaceKit
    pointed at a missing folder and an empty model cache: every test passes the same."""
    if os.environ.get("NUMBA_DISABLE_JIT", "0") == "1":
        pytest.skip("already running without jit")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", ICT_FACEKIT=str(tmp_path / "no-ict"),
               LMFIT3D_HOME=str(tmp_path / "empty-cache"))
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                           "-k", "not without_jit"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    n = sum(1 for _ in re.finditer(r"^def test_tiny_", open(__file__).read(), re.M))
    expected = n - 1 + (3 - 1) + (3 - 1) + (len(BLOCK_NAMES) - 1) + (2 - 1)      # parametrised cases
    assert re.match(rf"{expected} passed\b", summary), proc.stdout[-2000:]
