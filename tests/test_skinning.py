"""LBS kernels against a float64 NumPy reference, and their analytic Jacobians against finite differences."""
import os
import re

import numpy as np
import pytest

from lmfit3d.model import JOINT_NAMES, Params
from lmfit3d.skinning import POSE_DIM, ancestry, evaluate_mesh, evaluate_points
from conftest import run_without_jit
from lbs_reference import random_params, reference_lbs, reference_template

# Parameter blocks of the Jacobian columns: [root rot 3, translation 3, neck, head, eye_L, eye_R (3 each),
# expression 53, identity 100].  Each entry: (first column, Params field, row of the field or None).
BLOCKS = {
    "root_rotation": (0, "rotations", 0),
    "translation": (3, "translation", None),
    "neck": (6, "rotations", 1),
    "head": (9, "rotations", 2),
    "eye_L": (12, "rotations", 3),
    "eye_R": (15, "rotations", 4),
    "expression": (POSE_DIM, "expression", None),
    "identity": (POSE_DIM + 53, "identity", None),
}


@pytest.fixture(scope="module")
def vertex_ids(model):
    """Vertices that exercise every joint: random ones, neck/head blend band, both eyeballs."""
    rng = np.random.default_rng(7)
    w = model.skin_weights
    blended = np.flatnonzero(((w > 0.01) & (w < 0.99)).any(1))
    picks = [rng.choice(model.n_vertices, 20, replace=False), rng.choice(blended, 12, replace=False)]
    for region in ("eyeball_L", "eyeball_R"):
        picks.append(rng.choice(np.flatnonzero(model.region_mask(region)), 5, replace=False))
    return np.unique(np.concatenate(picks))


# --------------------------------------------------------------------------------------------
# Positions against the NumPy reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rot_scale", [1e-3, 0.3, 1.5])
def test_skin_mesh_matches_reference(model, rng, rot_scale):
    params = random_params(model, rng, rot_scale)
    tmpl = reference_template(model, params)
    ref = reference_lbs(model, params, tmpl)
    # the kernel itself, on the same float64 template
    np.testing.assert_allclose(evaluate_mesh(model, params, template=tmpl), ref, rtol=0, atol=1e-9)
    # the whole evaluation (template summed in float32 from the stored bases)
    np.testing.assert_allclose(evaluate_mesh(model, params), ref, rtol=0, atol=1e-4)
    assert np.abs(ref - tmpl).max() > 1.0  # the pose does move the mesh


@pytest.mark.parametrize("rot_scale", [1e-3, 0.3, 1.5])
def test_evaluate_points_matches_mesh_and_reference(model, rng, vertex_ids, rot_scale):
    params = random_params(model, rng, rot_scale)
    tmpl = reference_template(model, params)
    x, jac = evaluate_points(model, params, vertex_ids)
    np.testing.assert_allclose(x, reference_lbs(model, params, tmpl)[vertex_ids], rtol=0, atol=1e-9)
    np.testing.assert_allclose(x, evaluate_mesh(model, params, template=tmpl)[vertex_ids], rtol=0, atol=1e-9)
    np.testing.assert_allclose(x, evaluate_mesh(model, params)[vertex_ids], rtol=0, atol=1e-4)


def test_translation_is_added_last(model, rng, vertex_ids):
    params = random_params(model, rng, 0.4)
    x0, _ = evaluate_points(model, params.replace(translation=np.zeros(3)), vertex_ids)
    x1, _ = evaluate_points(model, params, vertex_ids)
    np.testing.assert_allclose(x1 - x0, np.broadcast_to(params.translation, x0.shape), atol=1e-12)


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------

def _shifted(params, block, i, delta):
    _, field, row = BLOCKS[block]
    arr = np.array(getattr(params, field), dtype=np.float64)
    if row is None:
        arr[i] += delta
    else:
        arr[row, i] += delta
    return params.replace(**{field: arr})


@pytest.mark.parametrize("block", list(BLOCKS))
def test_points_jacobian_matches_finite_differences(model, rng, vertex_ids, block):
    params = random_params(model, rng, 0.4)
    _, jac = evaluate_points(model, params, vertex_ids, with_identity=True)
    first = BLOCKS[block][0]
    size = {"expression": model.n_expression, "identity": model.n_identity}.get(block, 3)
    analytic = jac[:, :, first:first + size]
    h = 1e-5
    for i in range(size):
        xp, _ = evaluate_points(model, _shifted(params, block, i, h), vertex_ids)
        xm, _ = evaluate_points(model, _shifted(params, block, i, -h), vertex_ids)
        np.testing.assert_allclose(analytic[:, :, i], (xp - xm) / (2.0 * h), rtol=0, atol=1e-7,
                                   err_msg=f"{block} column {i}")
    assert np.abs(analytic).max() > 1e-2  # the block is exercised by these vertices


def test_jacobian_layout(model, rng, vertex_ids):
    params = random_params(model, rng, 0.4)
    x_small, jac_small = evaluate_points(model, params, vertex_ids)
    x_full, jac_full = evaluate_points(model, params, vertex_ids, with_identity=True)
    n = len(vertex_ids)
    assert POSE_DIM == 6 + 3 * (len(JOINT_NAMES) - 1) == 18
    assert jac_small.shape == (n, 3, POSE_DIM + model.n_expression)
    assert jac_full.shape == (n, 3, POSE_DIM + model.n_expression + model.n_identity)
    np.testing.assert_array_equal(x_small, x_full)
    np.testing.assert_array_equal(jac_full[:, :, :jac_small.shape[2]], jac_small)
    np.testing.assert_array_equal(jac_small[:, :, 3:6], np.broadcast_to(np.eye(3), (n, 3, 3)))


@pytest.mark.parametrize("joint", ["eye_L", "eye_R"])
def test_eye_columns_vanish_off_the_eyeball(model, rng, vertex_ids, joint):
    params = random_params(model, rng, 0.4)
    _, jac = evaluate_points(model, params, vertex_ids)
    first = BLOCKS[joint][0]
    on_eye = model.skin_weights[vertex_ids, JOINT_NAMES.index(joint)] > 0
    assert on_eye.any() and (~on_eye).any()
    np.testing.assert_array_equal(jac[~on_eye, :, first:first + 3], 0.0)
    assert np.abs(jac[on_eye, :, first:first + 3]).min(axis=(1, 2)).max() > 0.0


def test_ancestry_of_the_ict_rig(model):
    expected = np.array([[0, 0, 0, 0, 0],
                         [0, 1, 0, 0, 0],
                         [0, 1, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [0, 1, 1, 0, 1]], dtype=float)
    np.testing.assert_array_equal(ancestry(model.joint_parents), expected)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, match", [
    (np.array([0, 26719]), "vertex_ids must be 1-D"),
    (np.array([-1]), "vertex_ids must be 1-D"),
    (np.zeros((2, 2), int), "vertex_ids must be 1-D"),
])
def test_evaluate_points_rejects_bad_ids(model, ids, match):
    with pytest.raises(ValueError, match=match):
        evaluate_points(model, Params.zeros(model), ids)


@pytest.mark.parametrize("field, value, match", [
    ("rotations", np.zeros((4, 3)), r"params.rotations must have shape \(5, 3\)"),
    ("translation", np.array([0.0, np.nan, 0.0]), "params.translation contains NaN"),
    ("expression", np.zeros(52), r"params.expression must have shape \(53,\)"),
    ("identity", np.full(100, np.inf), "params.identity contains NaN or inf"),
])
def test_bad_params_raise_value_error(model, field, value, match):
    params = Params.zeros(model).replace(**{field: value})
    for call in (lambda: evaluate_mesh(model, params), lambda: evaluate_points(model, params, [0, 1])):
        with pytest.raises(ValueError, match=match):
            call()


# --------------------------------------------------------------------------------------------
# The same checks with the kernels running as plain Python
# --------------------------------------------------------------------------------------------

def test_reference_run_compiles_kernels_unless_jit_disabled():
    """In the NUMBA_DISABLE_JIT=1 subprocess below, the kernels must be the plain Python functions."""
    from numba.core.registry import CPUDispatcher

    from lmfit3d import skinning

    jit_off = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
    for kernel in (skinning.skin_mesh, skinning.points_jacobian, skinning.pose_chain):
        assert isinstance(kernel, CPUDispatcher) is not jit_off


def test_kernels_without_jit_match_reference():
    """Run this file's reference and finite-difference tests in a subprocess with NUMBA_DISABLE_JIT=1,
    so the kernel source itself (not only its compiled form) is checked."""
    out = run_without_jit(__file__, "(reference or finite_differences) and not without_jit")
    summary = out.strip().splitlines()[-1]
    assert re.match(rf"{3 + 3 + len(BLOCKS) + 1} passed\b", summary), out[-2000:]
