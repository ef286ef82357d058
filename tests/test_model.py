"""The face model: agreement with the ICT-FaceKit OBJ files (mm), the rig, building and saving."""
import dataclasses
import os

import numpy as np
import pytest
from conftest import run_without_jit

from lmfit3d.cli import main
from lmfit3d.meshio import MeshFormatError, read_obj_vertices
from lmfit3d.model import (CM_TO_MM, EXPRESSION_NAMES, FORMAT_VERSION, JOINT_NAMES, N_VERTICES, SCLERA_L,
                           SCLERA_R, Params, build_model, fit_sphere, load_model, save_model)
from lmfit3d.skinning import evaluate_mesh, pose

# float32 storage of positions and displacements of up to ~200 mm: ~1e-5 mm rounding.
F32_TOL_MM = 1e-3
EYES = [("eye_L", "eyeball_L", SCLERA_L), ("eye_R", "eyeball_R", SCLERA_R)]


def _obj_mm(facex_dir, name):
    return read_obj_vertices(facex_dir / f"{name}.obj", N_VERTICES) * CM_TO_MM


def _random_params(model, rng, rot_scale=0.3):
    return Params(identity=rng.normal(size=model.n_identity),
                  expression=rng.uniform(0.0, 1.0, model.n_expression),
                  rotations=rng.normal(scale=rot_scale, size=(model.n_joints, 3)),
                  translation=rng.normal(scale=50.0, size=3))


# --------------------------------------------------------------------------------------------
# Agreement with the source OBJ files
# --------------------------------------------------------------------------------------------

def test_zero_params_give_neutral_mesh_in_mm(model, facex_dir):
    mesh = evaluate_mesh(model, Params.zeros(model))
    assert mesh.shape == (N_VERTICES, 3)
    np.testing.assert_allclose(mesh, _obj_mm(facex_dir, "generic_neutral_mesh"), rtol=0, atol=F32_TOL_MM)


@pytest.mark.parametrize("k", [0, 1, 42, 99])
def test_unit_identity_coefficient_gives_identity_obj(model, facex_dir, k):
    params = Params.zeros(model)
    params = params.replace(identity=np.eye(model.n_identity)[k])
    np.testing.assert_allclose(evaluate_mesh(model, params), _obj_mm(facex_dir, f"identity{k:03d}"),
                               rtol=0, atol=F32_TOL_MM)


@pytest.mark.parametrize("name", ["jawOpen", "eyeBlink_L", "mouthSmile_R", "browInnerUp_R", "eyeLookUp_L"])
def test_unit_expression_weight_gives_expression_obj(model, facex_dir, name):
    psi = np.zeros(model.n_expression)
    psi[model.expression_names.index(name)] = 1.0
    mesh = evaluate_mesh(model, Params.zeros(model).replace(expression=psi))
    expected = _obj_mm(facex_dir, name)
    np.testing.assert_allclose(mesh, expected, rtol=0, atol=F32_TOL_MM)
    # the shape does move the mesh, so the comparison above is not against the neutral by accident
    assert np.abs(expected - _obj_mm(facex_dir, "generic_neutral_mesh")).max() > 0.5


def test_template_kernel_matches_numpy(rng):
    """The fused template pass equals v + S beta + E psi in float64 NumPy (zero rows of E skipped)."""
    from lmfit3d.model import template_kernel
    v = rng.normal(size=30).astype(np.float32)
    s = rng.normal(size=(30, 7)).astype(np.float32)
    e = rng.normal(size=(30, 5)).astype(np.float32)
    e[::3] = 0.0
    rows = (e != 0).any(1)
    beta, psi = rng.normal(size=7), rng.uniform(0, 1, 5)
    ref = v.astype(float) + s.astype(float) @ beta + e.astype(float) @ psi
    for b, p, want in ((beta, psi, ref), (beta, np.zeros(0), ref - e.astype(float) @ psi),
                       (np.zeros(0), np.zeros(0), v.astype(float))):
        out = np.empty(30)
        template_kernel(v, s, b, e, p, rows, out)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_template_kernel_without_jit():
    out = run_without_jit(__file__, "template_kernel_matches_numpy")
    assert "1 passed" in out


def test_expression_names_are_ict_order(model):
    assert model.expression_names == EXPRESSION_NAMES
    assert model.n_expression == 53 and model.n_identity == 100


# --------------------------------------------------------------------------------------------
# Rig: skin weights and joints
# --------------------------------------------------------------------------------------------

def test_skin_weights_are_a_partition_of_unity(model):
    w = model.skin_weights.astype(np.float64)
    assert w.shape == (N_VERTICES, len(JOINT_NAMES))
    assert w.min() >= 0.0 and w.max() <= 1.0
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    # the neck/head blend is real: some vertices are shared between joints
    assert ((w > 0.01) & (w < 0.99)).any(1).sum() > 100


@pytest.mark.parametrize("joint, region, _", EYES)
def test_eyeballs_follow_their_eye_joint_only(model, joint, region, _):
    w = model.skin_weights[model.region_mask(region)]
    j = JOINT_NAMES.index(joint)
    assert len(w) > 1000
    np.testing.assert_array_equal(w[:, j], 1.0)
    np.testing.assert_array_equal(np.delete(w, j, axis=1), 0.0)
    # and nothing outside the eyeball is weighted to the eye joint
    assert not model.skin_weights[~model.region_mask(region), j].any()


def test_fit_sphere_recovers_a_sphere(rng):
    d = rng.normal(size=(300, 3))
    pts = np.array([3.0, -2.0, 7.0]) + 12.5 * d / np.linalg.norm(d, axis=1, keepdims=True)
    centre, radius = fit_sphere(pts)
    np.testing.assert_allclose(centre, [3.0, -2.0, 7.0], atol=1e-9)
    assert radius == pytest.approx(12.5, abs=1e-9)


@pytest.mark.parametrize("joint, region, sclera", EYES)
def test_eye_joint_at_sclera_sphere_centre(model, rng, joint, region, sclera):
    j = JOINT_NAMES.index(joint)
    a, b = sclera
    beta = rng.normal(size=model.n_identity)
    for ident in (None, beta):
        tmpl = model.template(ident)
        centre, radius = fit_sphere(tmpl[a:b + 1])
        joints = model.joints(ident)
        # the joint follows the identity linearly; the fitted centre of the combined shape agrees to 0.05 mm
        np.testing.assert_allclose(joints[j], centre, atol=1e-3 if ident is None else 0.05)
        dist = np.linalg.norm(tmpl[a:b + 1] - joints[j], axis=1)
        assert abs(dist.mean() - radius) < 0.1
    np.testing.assert_allclose(model.eye_radius[j - 3], fit_sphere(model.vertices[a:b + 1])[1], atol=1e-3)
    assert 12.0 < model.eye_radius[j - 3] < 17.0  # ICT's eyeball is ~31 mm across: mm, not cm


@pytest.mark.parametrize("joint, region, _", EYES)
def test_eyeball_rotates_rigidly_about_its_joint(model, rng, joint, region, _):
    j = JOINT_NAMES.index(joint)
    mask = model.region_mask(region)
    params = _random_params(model, rng)
    rot = params.rotations.copy()
    rot[j] = 0.0
    still = params.replace(rotations=rot)
    rot = rot.copy()
    rot[j] = [0.3, -0.25, 0.1]
    turned = params.replace(rotations=rot)

    def eye_centre(p):
        st = pose(model, p)
        return st.r0 @ st.gpos[j] + st.translation

    centre = eye_centre(still)
    np.testing.assert_allclose(eye_centre(turned), centre, atol=1e-9)  # rotating the eye leaves its joint
    v_still = evaluate_mesh(model, still)
    v_turned = evaluate_mesh(model, turned)
    d_still = np.linalg.norm(v_still[mask] - centre, axis=1)
    d_turned = np.linalg.norm(v_turned[mask] - centre, axis=1)
    np.testing.assert_allclose(d_turned, d_still, atol=1e-9)
    assert np.linalg.norm(v_turned[mask] - v_still[mask], axis=1).max() > 3.0  # the eye did turn
    np.testing.assert_array_equal(v_turned[~mask], v_still[~mask])  # and nothing else moved


def test_joints_are_linear_in_identity(model, rng):
    b1, b2 = rng.normal(size=(2, model.n_identity))
    j0 = model.joints()
    d1, d2 = model.joints(b1) - j0, model.joints(b2) - j0
    np.testing.assert_allclose(model.joints(2.0 * b1 - 0.5 * b2) - j0, 2.0 * d1 - 0.5 * d2, atol=1e-9)
    np.testing.assert_array_equal(model.joints(b1)[0], 0.0)  # the root stays at the origin
    assert np.abs(d1[1:]).max(1).min() > 0.01  # every non-root joint moves with identity (mm)


@pytest.mark.parametrize("k", [0, 57])
def test_eye_joints_of_one_mode_are_sphere_fit_of_its_obj(model, facex_dir, k):
    shape = _obj_mm(facex_dir, f"identity{k:03d}")
    joints = model.joints(np.eye(model.n_identity)[k])
    for joint, _, (a, b) in EYES:
        np.testing.assert_allclose(joints[JOINT_NAMES.index(joint)], fit_sphere(shape[a:b + 1])[0], atol=1e-4)


@pytest.mark.parametrize("call", [
    lambda m: m.joints(np.zeros(3)),
    lambda m: m.template(np.zeros(m.n_identity), np.full(m.n_expression, np.nan)),
    lambda m: m.region_mask("nose"),
])
def test_model_rejects_bad_arguments(model, call):
    with pytest.raises(ValueError):
        call(model)


# --------------------------------------------------------------------------------------------
# Building: errors name the file (and line); nothing is written
# --------------------------------------------------------------------------------------------

def _vertex_lineno(path, nth):
    """1-based line number of the ``nth`` vertex line of an OBJ file."""
    count = 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("v "):
                count += 1
                if count == nth:
                    return lineno
    raise AssertionError(f"{path} has fewer than {nth} vertices")


def _break(src, case):
    """Damage the symlinked copy ``src`` (a FaceXModel folder); returns (ict arg, expected message parts)."""
    def rewrite(name, edit):
        path = src / name
        lines = path.read_text().splitlines(keepends=True)
        path.unlink()  # replace the symlink, never touch the shared file
        path.write_text("".join(edit(lines)))
        return len(lines)

    if case == "missing_folder":
        return src.parent / "no_such_dir", ["no_such_dir", "not found"]
    if case == "missing_obj":
        (src / "identity000.obj").unlink()
        return src, ["identity000.obj", "file not found"]
    if case == "truncated_obj":
        n = rewrite("identity000.obj", lambda lines: lines[:len(lines) // 2])
        return src, [f"identity000.obj:{n // 2}:", f"expected {N_VERTICES}", "truncated"]
    if case == "wrong_vertex_count":
        rewrite("generic_neutral_mesh.obj", lambda lines: lines + ["v 0 0 0\n"])
        return src, ["generic_neutral_mesh.obj", f"{N_VERTICES + 1} vertices, expected {N_VERTICES}"]
    if case in ("malformed_line", "non_finite"):
        lineno = _vertex_lineno(src / "identity000.obj", 1234)
        bad = "v 1.0 oops 2.0\n" if case == "malformed_line" else "v 1.0 nan 2.0\n"
        rewrite("identity000.obj", lambda lines: lines[:lineno - 1] + [bad] + lines[lineno:])
        return src, [f"identity000.obj:{lineno}:", "malformed" if case == "malformed_line" else "non-finite"]
    raise AssertionError(case)


@pytest.fixture
def facex_copy(tmp_path, facex_dir):
    """A FaceXModel folder of symlinks to the shared files, safe to damage one file at a time."""
    dst = tmp_path / "ict" / "FaceXModel"
    dst.mkdir(parents=True)
    for f in facex_dir.iterdir():
        os.symlink(f, dst / f.name)
    return dst


@pytest.mark.parametrize("case", ["missing_folder", "missing_obj", "truncated_obj", "wrong_vertex_count",
                                  "malformed_line", "non_finite"])
def test_build_errors_name_the_file_and_write_nothing(tmp_path, facex_copy, capsys, case):
    ict, parts = _break(facex_copy, case)
    with pytest.raises(MeshFormatError) as err:
        build_model(ict)
    for part in parts:
        assert part in str(err.value)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.npz"
    assert main(["model", "build", "--ict", str(ict), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("lmfit3d: error:")]
    assert len(errors) == 1 and all(part in errors[0] for part in parts)
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not out.exists() and os.listdir(out_dir) == []


def test_build_accepts_the_ict_root_or_the_facex_folder(facex_copy):
    # both spellings resolve to the same folder: the error for a missing OBJ names it either way
    (facex_copy / "identity000.obj").unlink()
    for arg in (facex_copy, facex_copy.parent):
        with pytest.raises(MeshFormatError, match=str(facex_copy / "identity000.obj")):
            build_model(arg)


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------

def test_save_load_round_trip(model, tmp_path):
    path = save_model(model, tmp_path / "sub" / "m.npz")
    back = load_model(path)
    assert back is not model
    for f in dataclasses.fields(model):
        a, b = getattr(model, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name
    assert load_model(path) is back  # cached while the file is unchanged


def test_load_rejects_other_format_version(model, tmp_path):
    path = save_model(dataclasses.replace(model, version=FORMAT_VERSION + 1), tmp_path / "new.npz")
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1}, expected {FORMAT_VERSION}"):
        load_model(path)


def test_load_rejects_damaged_file(tmp_path, rng):
    path = tmp_path / "junk.npz"
    path.write_bytes(rng.bytes(1000))
    with pytest.raises(ValueError, match="junk.npz: not a readable lmfit3d model"):
        load_model(path)


def test_load_missing_file_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="lmfit3d model build"):
        load_model(tmp_path / "absent.npz")
