"""`lmfit3d fit-landmarks`: the npz contract end to end, and bad input."""
import numpy as np
import pytest

from lmfit3d.cli import main
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.synthetic import make_frame, random_params, rigid_align_error


@pytest.fixture
def landmarks_npz(model, rng, tmp_path):
    ids = load_landmark_set("dense320")
    beta = rng.normal(size=model.n_identity)                       # one person, two frames
    frames = [make_frame(model, random_params(model, rng, identity=beta), ids, rng, noise_px=0.3)
              for _ in range(2)]
    path = tmp_path / "in.npz"
    np.savez(path, mu=np.stack([f.mu for f in frames]), sigma=np.stack([f.sigma for f in frames]),
             landmark_set="dense320", image_size=np.array([512, 512]), focal_px=frames[0].camera.focal)
    return path, frames


def test_fit_landmarks_round_trip(model, landmarks_npz, tmp_path, capsys):
    path, frames = landmarks_npz
    out = tmp_path / "out.npz"
    assert main(["fit-landmarks", str(path), "-o", str(out), "--mesh-dir", str(tmp_path / "m")]) == 0
    z = np.load(out)
    assert z["vertices"].shape == (2, model.n_vertices, 3)
    assert z["expression"].shape == (2, 53) and list(z["expression_names"]) == list(model.expression_names)
    assert z["root_rotation"].shape == (2, 3) and z["joint_rotations"].shape == (2, 4, 3)
    assert str(z["units"]) == "mm" and (z["status"] >= 0).all()
    assert ((z["expression"] >= 0) & (z["expression"] <= 1)).all()
    err = rigid_align_error(z["vertices"][0].astype(float), frames[0].vertices, model.face_mask())
    assert np.median(err) < 1.5
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["frame_00000.obj", "frame_00001.obj"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("mu"), "missing required key 'mu'"),
    (lambda d: d.update(sigma=-d["sigma"]), "sigma must be finite and > 0"),
    (lambda d: d.update(landmark_set="dense703"), "landmark set has 703"),
    (lambda d: d.update(image_size=np.array([512])), "image_size"),
])
def test_fit_landmarks_bad_input(landmarks_npz, tmp_path, capsys, mutate, message):
    path, _ = landmarks_npz
    data = dict(np.load(path))
    mutate(data)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    out = tmp_path / "out.npz"
    assert main(["fit-landmarks", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.npz.*"))      # nothing half-written


def test_fit_landmarks_unreadable_input(tmp_path, capsys):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"not a zip")
    assert main(["fit-landmarks", str(bad), "-o", str(tmp_path / "o.npz")]) == 2
    assert "not a readable .npz" in capsys.readouterr().err


def test_fit_landmarks_cauchy_loss(model, landmarks_npz, tmp_path, capsys):
    """--landmark-loss cauchy: 20 % of the landmarks 50 px off move the robust fit less than the squared."""
    path, frames = landmarks_npz
    data = dict(np.load(path))
    rng = np.random.default_rng(3)
    off = rng.random(data["mu"].shape[:2]) < 0.2
    data["mu"] = data["mu"] + off[..., None] * rng.normal(scale=50.0, size=data["mu"].shape)
    bad = tmp_path / "outliers.npz"
    np.savez(bad, **data)
    err = {}
    for loss in ("squared", "cauchy"):
        out = tmp_path / f"{loss}.npz"
        assert main(["fit-landmarks", str(bad), "-o", str(out), "--landmark-loss", loss, "--loss-scale", "2"]) == 0
        z = np.load(out)
        err[loss] = np.median(rigid_align_error(z["vertices"][0].astype(float), frames[0].vertices,
                                                model.face_mask()))
    assert err["cauchy"] < 0.8 * err["squared"], err
    assert main(["fit-landmarks", str(path), "-o", str(tmp_path / "x.npz"), "--landmark-loss", "cauchy",
                 "--loss-scale", "0"]) == 2
    msg = capsys.readouterr().err.strip()
    assert "loss_scale must be a finite number > 0" in msg and len(msg.splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()
