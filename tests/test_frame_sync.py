"""Per-camera frame offsets from landmark motion (lmfit3d.frame_sync) on synthetic shifted clips."""
import numpy as np
import pytest

from lmfit3d.frame_sync import apply_frame_offsets, estimate_frame_offsets
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.synthetic import make_multiview

TRUE = np.array([0, 4, -3])
BASE, T = 8, 34


@pytest.fixture(scope="module")
def clips(model):
    ids = load_landmark_set("dense320")
    mv = make_multiview(model, ids, np.random.default_rng(1), n_cameras=3, n_frames=50, noise_px=1.0,
                        outlier_fraction=0.1, period_frames=20, expression_amplitude=0.9, yaw_span_deg=60.0,
                        pitch_deg=(0.0,))
    # camera j's frame t + TRUE[j] shows the reference's frame t
    mu = [mv.mu[j, BASE - o:BASE - o + T] for j, o in enumerate(TRUE)]
    sigma = [mv.sigma[j, BASE - o:BASE - o + T] for j, o in enumerate(TRUE)]
    return mv, mu, sigma


def test_offsets_found_from_landmark_motion(clips):
    mv, mu, sigma = clips
    off, score = estimate_frame_offsets(mu, sigma)
    assert off[0] == 0 and score[0] == 1.0
    assert np.abs(off - TRUE).max() <= 1, off          # slow synthetic motion: to within one frame
    assert (score[1:] > 0.2).all()
    # unrelated motion (camera 1 time-reversed) scores lower than the true pairing
    _, bad = estimate_frame_offsets([mu[0], mu[1][::-1]], [sigma[0], sigma[1][::-1]])
    assert bad[1] < score[1]


def test_apply_offsets_realigns_and_pads(clips):
    mv, mu, sigma = clips
    out, sg = apply_frame_offsets(mu, sigma, TRUE)
    assert out.shape == (3, T + 3, mu[0].shape[1], 2)          # camera 2 reaches 3 frames further
    np.testing.assert_array_equal(out[1, 5], mv.mu[1, BASE + 5])
    np.testing.assert_array_equal(out[2, 10], mv.mu[2, BASE + 10])
    assert np.isnan(out[1, T - 4:]).all() and (sg[1, T - 4:] == 1).all()    # camera 1 ends 4 frames early
    with pytest.raises(ValueError, match="one frame offset per camera"):
        apply_frame_offsets(mu, sigma, [0, 1])
    with pytest.raises(ValueError, match="reference camera"):
        estimate_frame_offsets(mu, reference=5)


def test_cli_frame_offsets(model, clips, tmp_path):
    """``capture --frame-offsets``: explicit offsets re-index the cameras, auto ones are written out."""
    import json

    from lmfit3d.cli import main
    mv, mu, sigma = clips
    src = tmp_path / "in.npz"
    np.savez(src, mu=np.stack(mu)[:, :12], sigma=np.stack(sigma)[:, :12], landmark_set="dense320",
             image_size=np.array([512, 512]))
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(mv.calibration_json()))
    out = tmp_path / "out.npz"
    assert main(["capture", str(src), "-o", str(out), "--calibration", str(cal), "--max-iter", "20",
                 "--frame-offsets", "0,4,-3"]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["frame_offsets"], TRUE)
        assert z["vertices"].shape[0] == 12 + 3                  # camera 2's last 3 frames come after
    assert main(["capture", str(src), "-o", str(out), "--frame-offsets", "0,x"]) == 2
