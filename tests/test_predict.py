"""The ONNX landmark front end: crops, ROIs, detector decoding, converted models, correspondence."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from lmfit3d.imaging import ROI, affine_points, crop, warp_chw
from lmfit3d.paths import shared_media_dir
from conftest import run_without_jit
from lmfit3d.detect import FaceDetector, ModelMissingError, _blazeface_anchors, _weighted_nms, mediapipe_dir
from lmfit3d.predict import IrisPredictor, Manifest, MediaPipeLandmarks, load_manifest, roi_from_points
from lmfit3d.landmark_files import read_pts

MEDIA = shared_media_dir()


def _read(name):
    from lmfit3d.media import read_image
    return read_image(MEDIA / name)


# ------------------------------------------------------------------------------------------------
# Crops and ROIs
# ------------------------------------------------------------------------------------------------

def _warp_reference(image, m, size, mirror, scale, offset):
    """Plain NumPy bilinear crop (zero outside), the reference for ``warp_chw``."""
    h, w = image.shape[:2]
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    xc = (size - jj - 0.5) if mirror else (jj + 0.5)
    yc = ii + 0.5
    u = m[0, 0] * xc + m[0, 1] * yc + m[0, 2] - 0.5
    v = m[1, 0] * xc + m[1, 1] * yc + m[1, 2] - 0.5
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    out = np.zeros((3, size, size))
    for dv in (0, 1):
        for du in (0, 1):
            uu, vv = u0 + du, v0 + dv
            wgt = (u - u0 if du else 1 - (u - u0)) * (v - v0 if dv else 1 - (v - v0))
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            pix = image[np.clip(vv, 0, h - 1), np.clip(uu, 0, w - 1)].astype(np.float64)
            out += np.where(ok, wgt, 0.0)[None] * np.moveaxis(pix, 2, 0)
    return out * scale + offset


@pytest.mark.parametrize("mirror", [False, True])
def test_crop_kernel_matches_numpy_reference(rng, mirror):
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    roi = ROI(20.3, 17.8, 41.0, 0.4)
    m = roi.matrix(24)
    out = np.empty((3, 24, 24), np.float32)
    warp_chw(image, m, 24, mirror, 2.0 / 255.0, -1.0, out)
    ref = _warp_reference(image, m, 24, mirror, 2.0 / 255.0, -1.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert (out == -1.0).any(), "the ROI reaches outside the image: those pixels must read 0 -> -1"


@pytest.mark.parametrize("shape, roi, size, channels", [
    ((120, 90, 3), ROI(44.7, 61.2, 70.0, -0.3), 32, 3),      # inside the image, 2x down-sampling
    ((120, 90, 3), ROI(44.7, 61.2, 70.0, -0.3), 32, 1),      # first channel only (tools/synth_faces.py)
    ((40, 30, 3), ROI(35.0, -4.0, 50.0, 1.2), 20, 3),        # mostly outside: border pixels and clamps
    ((40, 30, 3), ROI(200.0, 300.0, 10.0, 0.0), 8, 3),       # wholly outside: every pixel reads 0
    ((1, 17, 3), ROI(8.0, 0.5, 12.0, 0.1), 9, 3),            # one image row
    ((23, 1, 3), ROI(0.5, 11.0, 12.0, 0.0), 9, 2),           # one image column
    ((300, 400, 3), ROI(210.3, 140.9, 280.0, 0.07), 24, 3),  # strong down-sampling (prefetch every column)
])
def test_crop_kernel_matches_numpy_reference_in_every_case(rng, shape, roi, size, channels):
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    m = roi.matrix(size)
    for mirror in (False, True):
        out = np.full((channels, size, size), 7.0, np.float32)
        warp_chw(image, m, size, mirror, 2.0 / 255.0, -1.0, out)
        ref = _warp_reference(image, m, size, mirror, 2.0 / 255.0, -1.0)[:channels]
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_roi_matrix_matches_reference(rng):
    """ROI.matrix (float math) against the affine map written with NumPy: rotation, scale, centre."""
    for _ in range(20):
        roi = ROI(*rng.uniform(-100, 2000, 2), rng.uniform(1, 900), rng.uniform(-3, 3))
        s = roi.size / 192
        a = np.array([[np.cos(roi.rotation), np.sin(roi.rotation)], [-np.sin(roi.rotation), np.cos(roi.rotation)]]) * s
        ref = np.column_stack([a, np.array([roi.cx, roi.cy]) - a @ [96.0, 96.0]])
        np.testing.assert_allclose(roi.matrix(192), ref, rtol=1e-13, atol=1e-10)


@pytest.mark.parametrize("dim, dtype", [(2, np.float64), (3, np.float32), (3, np.float64)])
def test_affine_points_kernel_matches_numpy_reference(rng, dim, dtype):
    src = rng.uniform(-10, 200, size=(50, dim)).astype(dtype)
    m = ROI(600.0, 400.0, 350.0, 0.3).matrix(192)
    out = np.full((48, 2), np.nan)                       # fewer rows than points: only those are mapped
    affine_points(src.reshape(-1), dim, m, out)
    ref = src[:48, :2].astype(np.float64) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-10)


def test_crop_identity_roi_copies_pixels(rng):
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    out = crop(image, ROI(8.0, 8.0, 16.0, 0.0), 16, scale=1.0)
    np.testing.assert_allclose(out, np.moveaxis(image, 2, 0).astype(np.float32), atol=1e-4)


def test_crop_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop(np.zeros((8, 8), np.uint8), ROI(4, 4, 8), 8)
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop(np.zeros((8, 8, 3), np.float32), ROI(4, 4, 8), 8)


def test_roi_maps_are_inverse_and_rotate_counter_clockwise(rng):
    roi = ROI(100.0, 50.0, 80.0, np.radians(30))
    p = rng.uniform(0, 192, size=(10, 2))
    np.testing.assert_allclose(roi.to_crop(roi.to_image(p, 192), 192), p, atol=1e-9)
    np.testing.assert_allclose(roi.to_image(np.array([[96.0, 96.0]]), 192), [[100.0, 50.0]])
    # the crop's x axis points along (cos r, -sin r) in the image (v down): up and to the right
    d = roi.to_image(np.array([[192.0, 96.0]]), 192)[0] - [100.0, 50.0]
    np.testing.assert_allclose(d, 40.0 * np.array([np.cos(np.radians(30)), -np.sin(np.radians(30))]))


def test_roi_from_points_recovers_rotation_and_centre(rng):
    r = np.radians(-20)
    roi = ROI(300.0, 200.0, 100.0, r)
    crop_pts = rng.uniform(20, 172, size=(468, 2))
    crop_pts[33], crop_pts[263] = (20.0, 60.0), (172.0, 60.0)        # eye corners on a level line
    pts = roi.to_image(crop_pts, 192)
    got = roi_from_points(pts, (33, 263), 1.5, "aligned")
    assert got.rotation == pytest.approx(r, abs=1e-9)
    centre = roi.to_image(((crop_pts.min(0) + crop_pts.max(0)) / 2)[None], 192)[0]
    np.testing.assert_allclose([got.cx, got.cy], centre, atol=1e-9)
    assert got.size == pytest.approx((crop_pts.max(0) - crop_pts.min(0)).max() * 100 / 192 * 1.5)
    axis = roi_from_points(pts, (33, 263), 1.5, "axis")
    assert axis.rotation == 0.0
    np.testing.assert_allclose([axis.cx, axis.cy], (pts.min(0) + pts.max(0)) / 2)


def _roi_reference(pts, eye_points, scale, strategy):
    """Plain NumPy ROI around the finite points (the reference for the ``_rotated_box`` kernel)."""
    p = pts[np.isfinite(pts).all(1)]
    lo, hi = p.min(0), p.max(0)
    c, rot = (lo + hi) / 2, 0.0
    if strategy == "aligned":
        d = pts[eye_points[1]] - pts[eye_points[0]]
        rot = float(np.arctan2(-d[1], d[0]))
        a = np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])   # crop axes (columns)
        q = (p - c) @ a
        lo, hi = q.min(0), q.max(0)
        c = c + a @ ((lo + hi) / 2)
    return np.array([c[0], c[1], (hi - lo).max() * scale, rot])


@pytest.mark.parametrize("strategy", ["aligned", "axis"])
def test_roi_from_points_kernel_matches_numpy_reference(strategy, rng):
    for _ in range(5):
        pts = rng.normal(500, 120, size=(470, 2))
        pts[rng.integers(0, 470, 5)] = np.nan             # missing points (iris without the iris net)
        pts[rng.integers(0, 470, 2), 1] = np.inf
        pts[33], pts[263] = rng.normal(500, 100, 2), rng.normal(500, 100, 2)
        got = roi_from_points(pts, (33, 263), 1.5, strategy)
        np.testing.assert_allclose([got.cx, got.cy, got.size, got.rotation],
                                   _roi_reference(pts, (33, 263), 1.5, strategy), rtol=1e-12, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Detector decoding
# ------------------------------------------------------------------------------------------------

def test_blazeface_anchors_layout():
    a = _blazeface_anchors()
    assert a.shape == (896, 2)
    np.testing.assert_allclose(a[0], a[1])                           # two anchors per 16x16 cell
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))   # six per 8x8 cell
    assert (a > 0).all() and (a < 1).all()


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kps = np.zeros((3, 6, 2))
    kps[1] += 1.0
    scores = np.array([0.9, 0.6, 0.8])
    out = _weighted_nms(boxes, kps, scores, 0.3)
    assert len(out) == 2
    np.testing.assert_allclose(out[0][0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5)
    np.testing.assert_allclose(out[0][1], np.full((6, 2), 0.6 / 1.5))
    assert out[0][2] == 0.9 and out[1][2] == 0.8
    np.testing.assert_allclose(out[1][0], boxes[2])


# ------------------------------------------------------------------------------------------------
# Converted models
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["face_detection_short_range", "face_detection_full_range", "face_landmark",
                                  "iris_landmark"])
def test_onnx_matches_original_tflite(name, rng):
    """The converted ONNX model gives the TFLite model's outputs (max abs diff <= 1e-3 px)."""
    from ai_edge_litert.interpreter import Interpreter
    import onnxruntime as ort
    tfl = mediapipe_dir() / f"{name}.tflite"
    it = Interpreter(model_path=str(tfl))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    n, h, w, c = inp["shape"]
    if name == "face_landmark":                   # a real face crop, as the network sees it
        det = FaceDetector()
        img = _read("obama.jpg")
        x = crop(img, det(img)[0].roi(), 192)[None]
    else:
        x = rng.uniform(0, 1, size=(1, 3, h, w)).astype(np.float32)
    it.set_tensor(inp["index"], np.ascontiguousarray(np.moveaxis(x, 1, 3)))
    it.invoke()
    ref = {tuple(o["shape"][-1:]): it.get_tensor(o["index"]) for o in it.get_output_details()}
    sess = ort.InferenceSession(str(mediapipe_dir() / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    assert len(outs) == len(ref)                 # every output kept (iris: centres and eye contours)
    for o in outs:
        flat = o.reshape(-1)
        match = [r for r in ref.values() if r.size == flat.size]
        assert match, f"no TFLite output of size {flat.size}"
        diff = min(np.abs(r.reshape(-1) - flat).max() for r in match)
        assert diff <= 1e-3, f"{name}: max abs diff {diff}"


def test_detector_finds_faces_and_rejects_non_faces(rng):
    det = FaceDetector()
    one = det(_read("obama.jpg"))
    assert len(one) == 1 and one[0].score > 0.8
    x0, y0, x1, y1 = one[0].box
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    assert len(det(_read("two_people.jpg"))) == 2
    small = det(_read("einstein.jpg"))              # small faces: found by the window search
    gt = read_pts(MEDIA / "einstein.pts")
    assert len(small) >= 2
    x0, y0, x1, y1 = small[0].box                   # largest first: the annotated speaker
    assert x0 < gt[:, 0].mean() < x1 and y0 < gt[:, 1].mean() < y1
    assert det(np.full((300, 300, 3), 128, np.uint8)) == []
    far = FaceDetector(kind="full")(_read("einstein.jpg"), levels=1)    # the speaker, in one pass
    assert far and far[0].box[0] < gt[:, 0].mean() < far[0].box[2] and far[0].box[1] < gt[:, 1].mean() < far[0].box[3]
    with pytest.raises(ValueError, match="kind"):
        FaceDetector(kind="medium")


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_turned_photo_gives_the_turned_landmarks(turns):
    """A photo turned by quarter turns (upside down: BlazeFace alone reads the mouth as the eyes and
    the face mesh then fits an upright face over it) gives the upright photo's landmarks turned."""
    img = _read("obama.jpg")
    h, w = img.shape[:2]
    mp = MediaPipeLandmarks()
    up = mp.predict(img, mp.detect(img)[0]).mu
    turned = np.ascontiguousarray(np.rot90(img, turns))
    rois = mp.detect(turned)
    assert rois, "no face found in the turned photo"
    got = mp.predict(turned, rois[0]).mu
    # np.rot90 turns counter-clockwise: image point (x, y) goes to (y, w-1-x), (w-1-x, h-1-y), (h-1-y, x)
    x, y = up[:, 0], up[:, 1]
    want = {1: (y, w - 1 - x), 2: (w - 1 - x, h - 1 - y), 3: (h - 1 - y, x)}[turns]
    err = np.nanmedian(np.hypot(got[:, 0] - want[0], got[:, 1] - want[1]))
    iod = np.linalg.norm(up[mp.manifest.points.tolist().index(33)] - up[mp.manifest.points.tolist().index(263)])
    assert err < 0.05 * iod, f"{turns} quarter turns: median error {err:.1f} px (eye distance {iod:.0f} px)"


def test_no_face_in_noise_or_flat_images(rng):
    """The detector's window search may fire on noise; the face score of the landmark network
    rejects such candidates."""
    mp = MediaPipeLandmarks()
    assert mp.track(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)) is None
    assert mp.track(np.full((300, 400, 3), 90, np.uint8)) is None
    assert mp.roi is None


def _prelu_model(alpha, rng):
    """A small ONNX graph: Conv -> PRelu -> Conv -> Add -> PRelu, slopes ``alpha`` (C,)."""
    from onnx import TensorProto, helper, numpy_helper
    c = alpha.size
    inits = [numpy_helper.from_array(rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(c, c, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(alpha.reshape(1, c, 1, 1).astype(np.float32), "a1"),
             numpy_helper.from_array(alpha[::-1].reshape(1, c, 1, 1).astype(np.float32), "a2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c1", "a1"], ["p1"]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"]),
             helper.make_node("Add", ["c2", "p1"], ["s"]),
             helper.make_node("PRelu", ["s", "a2"], ["y"])]
    g = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_converter_channel_pad_rewrite_is_exact(rng):
    """tools/convert_mediapipe.py turns a channel-appending Pad into an identity 1x1 Conv; spatial
    pads stay."""
    import sys
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from convert_mediapipe import rewrite_channel_pad
    inits = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 5, 0, 0], np.int64), "pc"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "ps"),
             numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Pad", ["m", "pc"], ["p"]),
             helper.make_node("Conv", ["m", "w"], ["c"]),
             helper.make_node("Add", ["p", "c"], ["s"]),
             helper.make_node("Pad", ["s", "ps"], ["y"])]
    g = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    run = lambda mdl: ort.InferenceSession(mdl.SerializeToString(),  # noqa: E731
                                           providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = run(model)
    assert rewrite_channel_pad(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MaxPool", "Conv", "Conv", "Add", "Pad"]
    np.testing.assert_allclose(run(model), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha_hi", [0.9, 1.6])       # every slope <= 1, and some above 1
def test_converter_prelu_rewrite_is_exact(alpha_hi, rng):
    """tools/convert_mediapipe.py replaces PRelu by depthwise 1x1 Conv/Relu/Add exactly."""
    import sys
    import onnxruntime as ort
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from convert_mediapipe import rewrite_prelu
    alpha = np.linspace(-1.2, alpha_hi, 6)
    model = _prelu_model(alpha, rng)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert rewrite_prelu(model) == 2
    assert "PRelu" not in {n.op_type for n in model.graph.node}
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert (ref < 0).any() and (ref > 0).any()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_iris_both_eyes_in_one_call_equal_one_eye_calls():
    iris = IrisPredictor()
    assert iris.batched                       # the converter makes the batch dynamic
    img = _read("obama.jpg")
    mp = MediaPipeLandmarks(iris=False)
    pts = mp.track(img).points[:468]
    rois = iris.eye_rois(pts)
    both = iris.crop_points(img, rois)
    one = np.concatenate([iris.crop_points(img, rois, (e,)) for e in (0, 1)])
    np.testing.assert_allclose(both, one, atol=1e-4)
    centres, sizes = iris(img, pts)
    np.testing.assert_allclose(centres[1], rois[1].to_image(both[1:], 64)[0])
    assert sizes[0] == rois[0].size


def test_alternating_iris_policy_measures_one_eye_and_carries_the_other():
    """With iris_policy="alternate" a tracked frame runs one eye (taking turns); the other eye's
    centre follows its eye corners.  On a still image shown twice both policies nearly agree."""
    from lmfit3d.media import VideoReader
    import itertools
    frames = list(itertools.islice(iter(VideoReader(MEDIA / "W040_level_3_happy_029.mp4")), 6))
    alt, both = MediaPipeLandmarks(), MediaPipeLandmarks(iris_policy="both")
    calls = []
    orig = alt.iris.crop_landmarks
    alt.iris.crop_landmarks = lambda image, rois, eyes=(0, 1): calls.append(tuple(eyes)) or orig(image, rois, eyes)
    lids = np.zeros(468, bool)
    lids[np.ravel(np.array(IrisPredictor.EYE_POINTS)[:, :alt.refined_eye_points])] = True
    for f in frames:
        pa, pb = alt.track(f), both.track(f)
        eye_w = np.linalg.norm(pb.points[133] - pb.points[33])
        # the other points: the same network, its ROI from the (refined) eye corners of either path
        assert np.abs(pa.points[:468][~lids] - pb.points[:468][~lids]).max() < 0.01 * eye_w
        # the eye not run this frame: iris centre and refined lids carried from the last measurement
        assert np.linalg.norm(pa.points[:468][lids] - pb.points[:468][lids], axis=1).max() < 0.1 * eye_w
        assert np.linalg.norm(pa.points[468:] - pb.points[468:], axis=1).max() < 0.1 * eye_w
    assert calls == [(0, 1), (0,), (1,), (0,), (1,), (0,)]      # detection frame: both eyes
    alt.reset()
    assert alt.track(frames[0]) is not None and calls[-1] == (0, 1)
    from lmfit3d.stills import image_landmarks
    del calls[:]
    image_landmarks(MEDIA / "obama.jpg", alt)                  # stills: both eyes on both passes
    assert calls == [(0, 1), (0, 1)] and alt.iris_policy == "alternate"
    with pytest.raises(ValueError, match="iris_policy"):
        MediaPipeLandmarks(iris_policy="sometimes")


def test_tracking_fast_path_matches_the_plain_numpy_path():
    """MediaPipeLandmarks.predict (affine_points, sigma = table * px, eye ROIs in float math) equals
    the plain path: network points mapped with ROI.to_image, eye crops from those points, iris
    centres and eyelid contours mapped with ROI.to_image, sigma = sqrt((table px)^2)."""
    img = _read("obama.jpg")
    mp = MediaPipeLandmarks(iris_policy="both")
    roi = mp.track(img).roi
    pred = mp.predict(img, roi)
    pts_crop, _, presence = mp.mesh._run(img, roi)
    pts = roi.to_image(pts_crop, 192)
    lid_ids = np.array(IrisPredictor.EYE_POINTS)[:, :mp.refined_eye_points]
    lids = np.zeros(468, bool)
    lids[lid_ids.ravel()] = True
    np.testing.assert_allclose(pred.points[:468][~lids], pts[~lids], rtol=0, atol=1e-9)
    assert pred.presence == pytest.approx(presence, rel=1e-12)
    rois = mp.iris.eye_rois(pts)
    iris, lid_crop = mp.iris.crop_landmarks(img, rois)
    ref = np.stack([rois[e].to_image(iris[e:e + 1], 64)[0] for e in range(2)])
    np.testing.assert_allclose(pred.points[468:], ref, rtol=0, atol=1e-6)
    for e in range(2):          # lids: the iris network's eyelid contour replaces the mesh's
        np.testing.assert_allclose(pred.points[lid_ids[e]], rois[e].to_image(lid_crop[e, :lid_ids.shape[1]], 64),
                                   atol=1e-6)
    plain = MediaPipeLandmarks(iris_policy="both", refine_lids=False).predict(img, roi)
    np.testing.assert_allclose(plain.points[:468], pts, rtol=0, atol=1e-9)
    m = mp.manifest
    px = roi.size / 192
    np.testing.assert_array_equal(pred.sigma, np.sqrt((m.sigma_table * px) ** 2))
    np.testing.assert_array_equal(pred.mu, pred.points[m.points])
    no_iris = MediaPipeLandmarks(iris=False).predict(img, roi)
    assert np.isnan(no_iris.points[468:]).all() and np.isfinite(no_iris.points[:468]).all()
    # a face score under min_presence: a rejected prediction, the iris networks not run
    rejected = mp.predict(img, roi, min_presence=pred.presence + 1e-6)
    np.testing.assert_allclose(rejected.points[:468], pts, rtol=0, atol=1e-9)     # the mesh's own lids
    assert np.isnan(rejected.points[468:]).all() and rejected.presence == pred.presence
    assert np.isfinite(mp.predict(img, roi, min_presence=pred.presence).points[468:]).all()
    with pytest.raises(ValueError, match="out must be"):
        mp.mesh.image_points(img, roi, out=np.empty((10, 2)))


def test_iris_centres_lie_between_the_eye_corners():
    mp = MediaPipeLandmarks()
    img = _read("obama.jpg")
    p = mp.track(img)
    centres = p.points[468:]
    for e, (i, j) in enumerate(IrisPredictor.CORNERS):
        a, b = p.points[i], p.points[j]
        t = (centres[e] - a) @ (b - a) / ((b - a) @ (b - a))
        d = centres[e] - a
        off = abs((b - a)[0] * d[1] - (b - a)[1] * d[0]) / np.linalg.norm(b - a)
        assert 0.2 < t < 0.8 and off < 0.3 * np.linalg.norm(b - a)


# ------------------------------------------------------------------------------------------------
# Manifest and correspondence
# ------------------------------------------------------------------------------------------------

def test_manifest_and_correspondence_table(model):
    man = load_manifest()
    assert man.points.tolist() == list(range(470))
    assert man.vertex_ids.min() >= 0 and man.vertex_ids.max() < model.n_vertices
    assert (man.sigma_table >= 0.5).all() and np.isfinite(man.sigma_table).all()
    assert Path(man.onnx).name == "face_landmark.onnx"
    # iris centres sit on the eyeballs (468: subject's right eye, 469: left eye)
    assert model.region_mask("eyeball_R")[man.vertex_ids[468]]
    assert model.region_mask("eyeball_L")[man.vertex_ids[469]]
    assert model.region_mask("face", "head_neck")[man.vertex_ids[:468]].all()


# MediaPipe face-mesh points with well-known meanings and the matching iBUG-68 index
KNOWN = {1: 30, 152: 8, 33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54, 0: 51, 17: 57}


def test_correspondence_has_the_right_semantics(model):
    """Well-known MediaPipe points land near the model's iBUG vertices of the same meaning
    (no left/right swap, no vertical flip)."""
    from lmfit3d.landmarks import load_landmark_set
    man = load_manifest()
    ibug = load_landmark_set("ibug68")
    t = model.template()
    for mp_idx, ib in KNOWN.items():
        d = np.linalg.norm(t[man.vertex_ids[mp_idx]] - t[ibug[ib]])
        assert d < 8.0, f"MediaPipe point {mp_idx} is {d:.1f} mm from iBUG {ib}"
    # subject's right eye corner (33) has negative x (model x points to the subject's left)
    assert t[man.vertex_ids[33], 0] < 0 < t[man.vertex_ids[263], 0]


def test_manifest_load_errors(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable manifest"):
        Manifest.load(bad)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        load_manifest("no_such_backend")


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelMissingError, match="convert_mediapipe"):
        FaceDetector(path=tmp_path / "absent.onnx")


def test_roi_strategy_is_validated():
    with pytest.raises(ValueError, match="roi_strategy"):
        MediaPipeLandmarks(roi_strategy="diagonal")


# ------------------------------------------------------------------------------------------------
# Kernels as plain Python
# ------------------------------------------------------------------------------------------------

def test_crop_kernel_without_jit_matches_reference():
    """The crop and ROI kernels' source (not only their compiled form) against the NumPy references."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        from numba.core.registry import CPUDispatcher
        assert not isinstance(warp_chw, CPUDispatcher)
        return
    out = run_without_jit(__file__, "crop_kernel or roi_from_points_kernel or affine_points_kernel")
    assert re.search(r"\b15 passed\b", out), out[-500:]


def test_sigma_jitter_adds_the_spread_of_jittered_crops():
    img = _read("obama.jpg")
    plain, jit = MediaPipeLandmarks(), MediaPipeLandmarks(sigma_jitter=2)
    a, b = plain.track(img), jit.track(img)
    np.testing.assert_allclose(a.mu, b.mu)                       # same ROI, same means
    assert (b.sigma >= a.sigma - 1e-12).all() and (b.sigma > a.sigma + 1e-3).mean() > 0.5
    np.testing.assert_allclose(b.sigma[468:], a.sigma[468:])     # iris points: table sigma only
    fixed = MediaPipeLandmarks(fixed_sigma=True).track(img)
    assert np.ptp(fixed.sigma[:468]) < 1e-9 and np.ptp(a.sigma) > 1.0


def test_iris_network_lids_close_with_a_rendered_blink(model):
    """Issue 13: on a rendered face with eyeBlink_L/R = 0.9 the refined lid points (iris network's
    eye contour) are nearer the true lid aperture than the face mesh's own points, which stay open."""
    from lmfit3d.synthetic import render_random_face
    psi = np.zeros(model.n_expression)
    names = list(model.expression_names)
    psi[names.index("eyeBlink_L")] = psi[names.index("eyeBlink_R")] = 0.9
    rng = np.random.default_rng(7)
    errs = {True: [], False: []}
    for _ in range(3):
        sc = render_random_face(model, rng, expression=psi, yaw_deg=10.0, pitch_deg=5.0)
        vid = dict(zip(load_manifest().points.tolist(), load_manifest().vertex_ids.tolist()))
        true = sc.camera.project(sc.vertices[[vid[159], vid[145], vid[386], vid[374]]])
        true_ap = np.linalg.norm(true[0::2] - true[1::2], axis=1)
        for refine in (True, False):
            mp = MediaPipeLandmarks(iris_policy="both", refine_lids=refine)
            p = mp.track(sc.image)
            p = mp.track(sc.image)
            ap = np.array([np.linalg.norm(p.points[159] - p.points[145]), np.linalg.norm(p.points[386] - p.points[374])])
            errs[refine].append(np.abs(ap - true_ap))
    assert np.mean(errs[True]) < 0.7 * np.mean(errs[False]), errs
