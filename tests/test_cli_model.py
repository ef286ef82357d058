"""The ``lmfit3d model`` commands: info, export, build, and one-line errors for bad arguments."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from lmfit3d.cli import build_parser, main
from lmfit3d.meshio import read_obj_faces, read_obj_vertices, read_ply
from lmfit3d.model import EXPRESSION_NAMES, JOINT_NAMES, Params, load_model
from lmfit3d.skinning import evaluate_mesh


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_line_error(code, out, err):
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmfit3d: error: "), err


# --------------------------------------------------------------------------------------------
# model info
# --------------------------------------------------------------------------------------------

def test_info_json(model_path, model, capsys):
    code, out, err = _run(capsys, ["model", "info", "--json", "--model", str(model_path)])
    assert code == 0 and err == ""
    info = json.loads(out)
    assert info["units"] == "mm"
    assert info["n_vertices"] == 26719
    assert info["n_faces"] == model.faces.shape[0]
    assert info["n_identity"] == 100
    assert info["expression_names"] == list(EXPRESSION_NAMES) and len(info["expression_names"]) == 53
    assert info["joints"] == [{"name": "root", "parent": None}, {"name": "neck", "parent": "root"},
                              {"name": "head", "parent": "neck"}, {"name": "eye_L", "parent": "head"},
                              {"name": "eye_R", "parent": "head"}]
    assert set(info["landmark_sets"]) >= {"ibug68", "dense320", "dense703"}
    assert len(info["landmark_sets"]["ibug68"]) == 68
    for name, ids in info["landmark_sets"].items():
        assert all(0 <= i < info["n_vertices"] for i in ids), name


def test_info_json_uses_default_model(model_path, capsys):
    code, out, _ = _run(capsys, ["model", "info", "--json"])
    assert code == 0 and json.loads(out)["n_vertices"] == 26719


def test_info_summary_is_readable(model_path, capsys):
    code, out, _ = _run(capsys, ["model", "info", "--model", str(model_path)])
    assert code == 0
    assert "26719 vertices" in out and "units:       mm" in out
    for name in JOINT_NAMES + ("jawOpen", "noseSneer_R"):
        assert name in out


# --------------------------------------------------------------------------------------------
# model export
# --------------------------------------------------------------------------------------------

def _read_mesh(path):
    if path.suffix == ".obj":
        return read_obj_vertices(path), read_obj_faces(path)
    return read_ply(path)


@pytest.mark.parametrize("suffix, tol", [(".obj", 1e-6), (".ply", 1e-4)])  # 6 decimals / float32
@pytest.mark.parametrize("identity_from", ["inline", "file", "object"])
def test_export_writes_the_shaped_mesh(model_path, model, tmp_path, capsys, rng, suffix, tol, identity_from):
    beta = np.round(rng.normal(size=7), 3)
    text = json.dumps(beta.tolist())
    if identity_from == "object":
        text = json.dumps({"identity": beta.tolist()})
    elif identity_from == "file":
        (tmp_path / "beta.json").write_text(text)
        text = str(tmp_path / "beta.json")
    out = tmp_path / f"mesh{suffix}"
    code, stdout, _ = _run(capsys, ["model", "export", str(out), "--model", str(model_path),
                                    "--identity-coeffs", text, "--expression", "jawOpen=0.8",
                                    "mouthSmile_L=1", "--expression", "eyeBlink_R=0.5"])
    assert code == 0 and str(out) in stdout
    verts, faces = _read_mesh(out)
    assert verts.shape == (model.n_vertices, 3)
    np.testing.assert_array_equal(faces, model.faces)

    psi = np.zeros(model.n_expression)
    for name, w in (("jawOpen", 0.8), ("mouthSmile_L", 1.0), ("eyeBlink_R", 0.5)):
        psi[model.expression_names.index(name)] = w
    identity = np.zeros(model.n_identity)
    identity[:7] = beta
    expected = evaluate_mesh(model, Params.zeros(model).replace(identity=identity, expression=psi))
    np.testing.assert_allclose(verts, expected, rtol=0, atol=tol)
    # the shape did change the mesh
    assert np.abs(expected - model.vertices).max() > 1.0


def test_export_neutral_is_the_template(model_path, model, tmp_path, capsys):
    out = tmp_path / "neutral.ply"
    assert _run(capsys, ["model", "export", str(out), "--model", str(model_path)])[0] == 0
    np.testing.assert_array_equal(read_ply(out)[0], model.vertices)


# --------------------------------------------------------------------------------------------
# Errors: exit status 2, one line on stderr, nothing written
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["model"], "required: ACTION"),
    (["model", "paint"], "invalid choice: 'paint'"),
    (["model", "export"], "required: OUT"),
    (["model", "info", "--colour"], "unrecognized arguments: --colour"),
    (["model", "export", "{tmp}/out.stl"], "must end in .obj or .ply"),
    (["model", "export", "{tmp}/missing_dir/out.obj"], "output directory does not exist"),
    (["model", "export", "{tmp}/out.obj", "--expression", "smile=1"], "unknown expression 'smile'"),
    (["model", "export", "{tmp}/out.obj", "--expression", "jawOpen"], "expected NAME=WEIGHT"),
    (["model", "export", "{tmp}/out.obj", "--expression", "jawOpen=wide"], "weight must be a number"),
    (["model", "export", "{tmp}/out.obj", "--expression", "jawOpen=nan"], "weight must be finite"),
    (["model", "export", "{tmp}/out.obj", "--expression", "jawOpen=1", "jawOpen=0"], "more than once"),
    (["model", "export", "{tmp}/out.obj", "--identity-coeffs", "[1, 2"], "not valid JSON"),
    (["model", "export", "{tmp}/out.obj", "--identity-coeffs", "[1, \"a\"]"], "list of numbers"),
    (["model", "export", "{tmp}/out.obj", "--identity-coeffs", "{\"beta\": [1]}"], "\"identity\" list"),
    (["model", "export", "{tmp}/out.obj", "--identity-coeffs", json.dumps([0.0] * 101)],
     "101 identity coefficients given, the model has 100"),
    (["model", "export", "{tmp}/out.obj", "--identity-coeffs", "{tmp}/absent.json"],
     "neither a JSON list nor an existing file"),
    (["model", "info", "--model", "{tmp}/absent.npz"], "run `lmfit3d model build` first"),
    (["model", "export", "{tmp}/out.ply", "--model", "{tmp}/absent.npz"], "face model not found"),
])
def test_bad_arguments_give_one_line_error(model_path, tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = _run(capsys, argv)
    _assert_one_line_error(code, out, err)
    assert needle in err
    assert list(tmp_path.iterdir()) == []


def test_damaged_model_file_is_a_user_error(tmp_path, capsys, rng):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(rng.bytes(256))
    code, out, err = _run(capsys, ["model", "info", "--model", str(bad)])
    _assert_one_line_error(code, out, err)
    assert "bad.npz: not a readable lmfit3d model file" in err


@pytest.mark.parametrize("argv", [["--help"], ["model", "--help"], ["model", "export", "--help"], ["--version"]])
def test_help_and_version_exit_zero(capsys, argv):
    code, out, _ = _run(capsys, argv)
    assert code == 0 and out.strip()


def test_top_level_help_describes_commands():
    text = build_parser().format_help()
    for needle in ("model build", "model info", "model export", "README", "mm"):
        assert needle in text


def test_console_entry_point_runs_out_of_process(model_path):
    proc = subprocess.run([sys.executable, "-m", "lmfit3d.cli", "model", "info", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["units"] == "mm"
    proc = subprocess.run([sys.executable, "-m", "lmfit3d.cli", "model", "export", "x.stl"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["lmfit3d: error: x.stl: output must end in .obj or .ply"]


# --------------------------------------------------------------------------------------------
# model build (one full build, ~3 s)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_build_writes_the_same_model(model, tmp_path, capsys):
    out = tmp_path / "built.npz"
    code, stdout, stderr = _run(capsys, ["model", "build", "--out", str(out)])
    assert code == 0
    first, summary = stdout.strip().splitlines()
    assert first.startswith(str(out)) and "MiB" in first
    assert summary.startswith("26719 vertices") and "units mm" in summary
    assert "identity modes" in stderr  # progress goes to stderr
    assert [p.name for p in tmp_path.iterdir()] == ["built.npz"]  # no temporary file left
    built = load_model(out)
    for f in dataclasses.fields(model):
        a, b = getattr(model, f.name), getattr(built, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            # the cached model may come from an earlier build: float64 joints agree to rounding
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-9, err_msg=f.name)
        else:
            assert a == b, f.name
