"""The dense landmark network (issue 6): synthetic data labels, crops, the GNLL loss, the shipped ONNX."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import landmark_loss  # noqa: E402
from synth_faces import EYE_POINTS, FaceSynth  # noqa: E402

from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.predict import NetworkLandmarks, load_network_manifest  # noqa: E402


@pytest.fixture(scope="module")
def synth(model):
    return FaceSynth(model, image_px=224, crop_px=160)


@pytest.fixture(scope="module")
def samples(synth):
    rng = np.random.default_rng(7)
    return [synth.sample(rng, augment=False) for _ in range(4)]


def test_labels_are_projections_and_visible_ones_lie_on_the_drawn_surface(synth, samples):
    for s in samples:
        verts = s["vertices"]
        lm = verts[synth.lm]
        np.testing.assert_allclose(s["points"], s["camera"].project(lm), atol=1e-9)
        # a visible landmark's pixel shows the surface at that landmark: the interpolated 3D point
        # of the pixel under the label lies within a few mm of the landmark's vertex
        vis = np.flatnonzero(s["visible"])
        assert vis.size > 50
        u = np.floor(s["points"][vis]).astype(int)
        tri = s["tri"][u[:, 1], u[:, 0]]
        assert (tri >= 0).all()
        bary = s["bary"][u[:, 1], u[:, 0]].astype(float)
        surf = np.einsum("nk,nkd->nd", bary, verts[synth.faces[tri]])
        d = np.linalg.norm(surf - lm[vis], axis=1)
        assert np.median(d) < 1.5 and np.percentile(d, 90) < 5.0      # ~1 px is 1-2 mm; more at grazing angles
        # out-of-image landmarks keep their labels (never visible)
        h = s["image"].shape[0]
        outside = ((s["points"] < 0) | (s["points"] >= h)).any(1)
        assert not (s["visible"] & outside).any()


def test_hidden_landmarks_are_behind_the_surface(synth, samples):
    """Landmarks flagged hidden (and inside the image, no occluder drawn on the face) are farther
    from the camera than the surface drawn at their pixel, or fall on the background."""
    for s in samples:
        verts = s["vertices"]
        h = s["image"].shape[0]
        pts = s["points"]
        inside = ((pts >= 0) & (pts < h)).all(1)
        hid = np.flatnonzero(~s["visible"] & inside)
        u = np.floor(pts[hid]).astype(int)
        tri = s["tri"][u[:, 1], u[:, 0]]
        on = tri >= 0
        bary = s["bary"][u[on, 1], u[on, 0]].astype(float)
        zsurf = -np.einsum("nk,nk->n", bary, verts[synth.faces[tri[on]], 2])
        zlm = -verts[synth.lm[hid[on]], 2]
        occluded = zlm <= zsurf + 3.0           # hidden by an occluder instead of the mesh
        assert np.mean(zlm[~occluded] > zsurf[~occluded]) == 1.0


@pytest.mark.parametrize("strategy", ["aligned", "axis"])
def test_crops_and_labels_agree_for_both_roi_strategies(synth, samples, strategy):
    S = synth.crop_px
    for s in samples:
        cx, cy, size, rot = s[f"roi_{strategy}"]
        from lmfit3d.imaging import ROI, crop
        roi = ROI(cx, cy, size, rot)
        # crop labels map back to the image labels
        np.testing.assert_allclose(roi.to_image(s[f"points_{strategy}"], S), s["points"], atol=1e-6)
        # the stored crop is the image warped by that ROI
        ref = (np.transpose(crop(s["image"], roi, S), (1, 2, 0)) * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(s[f"crop_{strategy}"], ref)
        # the un-jittered ROI: eyes level in the aligned crop, no rotation for axis, ibug68 box inside
        r0 = synth.roi(s["points"], strategy)
        p0 = r0.to_crop(s["points"], S)
        eyes = p0[synth.ibug_in_lm[list(EYE_POINTS)]]
        if strategy == "aligned":
            assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6 and eyes[0, 0] < eyes[1, 0]
        else:
            assert r0.rotation == 0.0
        box = p0[synth.ibug_in_lm]
        assert box.min() > 0 and box.max() < S
        assert np.ptp(box, axis=0).max() == pytest.approx(S / synth.roi_scale, rel=1e-6)


def test_gnll_matches_the_paper_formula_and_its_sigma_optimum(rng):
    out = rng.normal(size=(3, 5, 3))
    target = rng.normal(size=(3, 5, 2))
    w = rng.uniform(0.5, 2.0, size=5)
    # direct per-term formula: lambda_i (log sigma_i^2 + |x_i - mu_i|^2 / (2 sigma_i^2))
    total = 0.0
    for b in range(3):
        acc = 0.0
        for i in range(5):
            s2 = np.exp(out[b, i, 2]) ** 2
            acc += w[i] * (np.log(s2) + np.sum((target[b, i] - out[b, i, :2]) ** 2) / (2 * s2))
        total += acc / w.sum()
    assert landmark_loss.gnll(out, target, w) == pytest.approx(total / 3, rel=1e-12)
    # for a fixed error the loss is smallest at sigma = |e| / sqrt(2) (central differences)
    e = np.array([[[0.3, -0.4]]])
    ls = landmark_loss.optimal_log_sigma(0.5)
    f = lambda t: landmark_loss.gnll(np.array([[[0.0, 0.0, t]]]), e, np.ones(1))  # noqa: E731
    h = 1e-5
    assert abs((f(ls + h) - f(ls - h)) / (2 * h)) < 1e-6
    assert f(ls + 0.1) > f(ls) and f(ls - 0.1) > f(ls)
    try:
        import torch
    except ImportError:
        return
    import train_landmarks
    got = train_landmarks.gnll_loss(torch.tensor(out), torch.tensor(target), torch.tensor(w))
    assert float(got) == pytest.approx(total / 3, rel=1e-9)
    assert float(train_landmarks.l2_loss(torch.tensor(out), torch.tensor(target), torch.tensor(w))) == \
        pytest.approx(landmark_loss.l2(out, target, w), rel=1e-9)


def test_shipped_network_predicts_finite_gaussians_near_the_truth(synth, samples):
    net = NetworkLandmarks()
    ids = np.array(load_landmark_set("dense320"))
    np.testing.assert_array_equal(net.vertex_ids, ids)
    cols = np.array([np.flatnonzero(synth.lm == v)[0] for v in ids])
    assert Path(net.manifest.onnx).stat().st_size <= 20e6
    errs = []
    for s in samples:
        roi = synth.roi(s["points"], "aligned")
        pred = net.predict(s["image"], roi)
        assert pred.mu.shape == (320, 2) and pred.sigma.shape == (320,)
        assert np.isfinite(pred.mu).all() and (pred.sigma > 0).all() and np.isfinite(pred.sigma).all()
        assert 0.0 <= pred.presence <= 1.0
        iod = np.linalg.norm(np.subtract(*s["points"][synth.ibug_in_lm[list(EYE_POINTS)]]))
        errs.append(np.linalg.norm(pred.mu - s["points"][cols], axis=1) / iod)
    errs = np.concatenate(errs)
    assert np.median(errs) < 0.1         # trained: median error under 10 % of the eye distance
    # a flat grey image is no face: much larger sigmas (lower presence) than on a face
    flat = np.full_like(samples[0]["image"], 128)
    roi = synth.roi(samples[0]["points"], "aligned")
    assert net.predict(flat, roi).presence < net.predict(samples[0]["image"], roi).presence


def test_network_backend_rejects_bad_configuration():
    with pytest.raises(ValueError, match="roi_strategy"):
        NetworkLandmarks(roi_strategy="diagonal")
    with pytest.raises(ValueError, match="sigma_output"):
        NetworkLandmarks(manifest=replace(load_network_manifest(), sigma_output=None))
