"""MediaPipe's attention face mesh: its custom operators as ONNX subgraphs (tools/mediapipe_custom_ops.py)
against NumPy restatements of MediaPipe's C++, the converted model, and the ``mediapipe-attention``
backend."""
import sys
from pathlib import Path

import numpy as np
import pytest

from lmfit3d.detect import mediapipe_dir
from lmfit3d.imaging import crop
from lmfit3d.paths import shared_media_dir
from lmfit3d.predict import ATTENTION_ONNX, MediaPipeLandmarks
from lmfit3d.paths import cache_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import mediapipe_custom_ops as mco  # noqa: E402

# the lips crop's options in face_landmark_with_attention.tflite
LIPS_OPTS = {"left_rotation_idx": 61, "right_rotation_idx": 291, "output_width": 16, "output_height": 16,
             "scale_x": 1.5, "scale_y": 1.5, "subset_idxs": list(mco.LIPS), "target_rotation_radians": 0.0}


def _run_subgraph(build, inputs, out_shape):
    """Run the nodes ``build(builder, *input_names, "y")`` adds, on ``inputs`` (float32 arrays)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    inits = []
    b = mco._Builder("t", inits)
    names = [f"x{i}" for i in range(len(inputs))]
    build(b, *names, "y")
    g = helper.make_graph(b.nodes, "sub", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape))
                                           for n, x in zip(names, inputs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", mco.OPSET)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], dict(zip(names, inputs)))[0]


def _face_like(rng, angle):
    """(1, 468, 3) float32 points in a 48-px feature map, rotated by ``angle``."""
    p = rng.uniform(14, 34, size=(468, 3))
    p[61, :2], p[291, :2] = (18, 30), (30, 30)
    c, s = np.cos(angle), np.sin(angle)
    xy = (p[:, :2] - 24) @ np.array([[c, s], [-s, c]]) + 24
    return np.concatenate([xy, p[:, 2:]], 1)[None].astype(np.float32)


def test_numpy_matrix_of_an_axis_aligned_box():
    """Level corners, points spanning 8 x 4: scale 1.5 * 8 / 16 and 1.5 * 4 / 16, centred on the box."""
    p = np.zeros((1, 468, 3), np.float32)
    p[0, LIPS_OPTS["subset_idxs"], :2] = (20, 30)
    p[0, 61, :2], p[0, 291, :2], p[0, 0, :2], p[0, 17, :2] = (16, 30), (24, 30), (20, 28), (20, 32)
    m = mco.np_landmarks_to_matrix(p, LIPS_OPTS)[0]
    sx, sy = 1.5 * 8 / 16, 1.5 * 4 / 16
    np.testing.assert_allclose(m[:2, :2], np.diag([sx, sy]), atol=1e-6)
    np.testing.assert_allclose(m[:2, 3], [20 - 8 * sx, 30 - 8 * sy], atol=1e-5)
    np.testing.assert_allclose(m[2:], [[0, 0, 1, 0], [0, 0, 0, 1]])


def test_numpy_bilinear_crop_identity_and_out_of_bounds(rng):
    """An identity matrix crops the top-left corner exactly (MediaPipe's half-pixel correction
    cancels); a shift of half a pixel averages neighbours; points beyond the map give zeros."""
    x = rng.normal(size=(1, 20, 20, 3)).astype(np.float32)
    eye = np.eye(4, dtype=np.float32)[None]
    np.testing.assert_allclose(mco.np_transform_tensor_bilinear(x, eye, 16, 16)[0], x[0, :16, :16], atol=1e-6)
    half = eye.copy()
    half[0, 0, 3] = 0.5
    out = mco.np_transform_tensor_bilinear(x, half, 4, 4)[0]
    np.testing.assert_allclose(out, (x[0, :4, :4] + x[0, :4, 1:5]) / 2, atol=1e-6)
    far = eye.copy()
    far[0, 0, 3] = 10.0                          # columns 10 + 0..15: beyond 19 from output column 10
    out = mco.np_transform_tensor_bilinear(x, far, 16, 16)[0]
    assert not out[:, 10:].any() and out[:, :9].all()


@pytest.mark.parametrize("angle", [0.0, 0.35, -1.2])
def test_matrix_subgraph_matches_numpy(angle, rng):
    p = _face_like(rng, angle)
    got = _run_subgraph(lambda b, x, y: mco._matrix_nodes(b, x, y, LIPS_OPTS), [p], (1, 4, 4))
    ref = mco.np_landmarks_to_matrix(p, LIPS_OPTS)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert abs(np.arctan2(-ref[0, 1, 0], ref[0, 0, 0]) + angle) < 1e-4   # the crop follows the rotation


@pytest.mark.parametrize("angle", [0.0, 0.6])
def test_crop_subgraph_matches_numpy(angle, rng):
    """GridSample times the in-bounds mask = MediaPipe's bilinear crop, including a crop that
    leaves the feature map (zeros)."""
    feat = rng.normal(size=(1, 48, 48, 5)).astype(np.float32)
    p = _face_like(rng, angle)
    p[0, :, :2] += (14 if angle else 0)           # push the second crop over the map's edge
    m = mco.np_landmarks_to_matrix(p, LIPS_OPTS)
    ref = mco.np_transform_tensor_bilinear(feat, m, 16, 16)
    got = _run_subgraph(lambda b, x, mm, y: mco._crop_nodes(b, x, mm, y, (48, 48), (16, 16)),
                        [np.ascontiguousarray(feat.transpose(0, 3, 1, 2)), m], (1, 5, 16, 16))
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), ref, atol=2e-5)
    assert (ref == 0).all(-1).any() == bool(angle)


def test_points_subgraph_matches_numpy(rng):
    pts = rng.uniform(0, 16, size=(1, 80, 2)).astype(np.float32)
    m = np.eye(4, dtype=np.float32)[None]
    m[0, :2, :2] = rng.normal(size=(2, 2))
    m[0, :2, 3] = (3.0, -7.0)
    got = _run_subgraph(lambda b, x, mm, y: mco._points_nodes(b, x, mm, y), [pts, m], (1, 80, 2))
    np.testing.assert_allclose(got, mco.np_transform_landmarks(pts, m), atol=1e-5)


def test_refinement_indices_follow_mediapipe():
    src, zsrc = mco.refinement_indices()
    assert src[13] == 468 + mco.LIPS.index(13)
    assert src[159] == 468 + 80 + mco.LEFT_EYE.index(159)
    assert src[386] == 468 + 80 + 71 + mco.RIGHT_EYE.index(386)
    assert src[1] == 1 and list(src[468:]) == list(range(690, 700))
    assert list(zsrc[:468]) == list(range(468)) and set(zsrc[468:473]) == {468} and set(zsrc[473:]) == {469}


def _attention_outputs(x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(cache_dir() / ATTENTION_ONNX), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


def test_converted_attention_mesh_on_a_face():
    """The converted model on a real face crop: the refined output is MediaPipe's merge of its heads,
    the face score is high, and the points agree with the plain face mesh's (another network, so a
    few pixels at most)."""
    from lmfit3d.media import read_image
    img = read_image(shared_media_dir() / "obama.jpg")
    mp = MediaPipeLandmarks(iris=False)
    roi = mp.track(img).roi
    x = crop(img, roi, 192)[None]
    out = _attention_outputs(x)
    ref = out[mco.REFINED_OUTPUT][0]
    mesh = out["output_mesh_identity"].reshape(468, 3)
    lips = out["output_lips"].reshape(80, 2)
    eye_l = out["output_left_eye"].reshape(71, 2)
    iris_r = out["output_right_iris"].reshape(5, 2)
    assert ref.shape == (478, 3) and out["conv_faceflag"].ravel()[0] > 5
    np.testing.assert_allclose(ref[list(mco.LIPS), :2], lips, atol=1e-5)
    np.testing.assert_allclose(ref[list(mco.LEFT_EYE), :2], eye_l, atol=1e-5)
    np.testing.assert_allclose(ref[473:, :2], iris_r, atol=1e-5)
    np.testing.assert_allclose(ref[:, 2][:468], mesh[:, 2], atol=1e-5)
    np.testing.assert_allclose(ref[468:473, 2], mesh[list(mco.LEFT_EYE[:16]), 2].mean(), atol=1e-4)
    plain = mp.mesh._run(img, roi)[0]
    err = np.linalg.norm(ref[:468, :2] - plain, axis=1)
    assert np.median(err) < 2.0 and np.percentile(err, 95) < 6.0, (np.median(err), np.percentile(err, 95))
    c = ref[468, :2]                               # the subject's right iris centre lies between its eye corners
    assert min(ref[33, 0], ref[133, 0]) < c[0] < max(ref[33, 0], ref[133, 0])


def test_attention_backend_tracks_a_face_without_the_iris_network():
    from lmfit3d.media import read_image
    img = read_image(shared_media_dir() / "obama.jpg")
    att = MediaPipeLandmarks(attention=True)
    assert att.iris is None and att.manifest.onnx.endswith("face_landmark_with_attention.onnx")
    pred = att.track(img)
    assert pred is not None and pred.presence > 0.9 and pred.points.shape == (470, 2)
    assert np.isfinite(pred.points).all() and pred.mu.shape == (len(att.vertex_ids), 2)
    plain = MediaPipeLandmarks().track(img)
    d = np.linalg.norm(pred.points - plain.points, axis=1)
    assert np.median(d) < 0.02 * pred.roi.size            # the same face, a few pixels apart
    assert d[468:].max() < 0.02 * pred.roi.size           # iris centres as the iris network's
    no_iris = MediaPipeLandmarks(attention=True, iris=False).track(img)
    assert np.isnan(no_iris.points[468:]).all() and np.isfinite(no_iris.points[:468]).all()
    assert att.track(np.full((240, 320, 3), 90, np.uint8)) is None


def test_attention_backend_option():
    from lmfit3d.track import TrackOptions, make_predictor
    pred = make_predictor(TrackOptions(backend="mediapipe-attention"))
    assert pred.attention and pred.iris is None
    with pytest.raises(ValueError, match="--backend"):
        TrackOptions(backend="attention")
    assert (mediapipe_dir() / "face_landmark_with_attention.onnx").is_file()


def test_attention_manifest_has_its_own_table():
    from lmfit3d.predict import load_manifest
    att, mesh = load_manifest("mediapipe_attention"), load_manifest("mediapipe")
    assert att.mu_output == "landmarks_refined" and att.onnx.endswith("face_landmark_with_attention.onnx")
    assert list(att.points) == list(range(470)) and (att.sigma_table >= 0.5).all()
    assert 0.5 < (att.vertex_ids == mesh.vertex_ids).mean() < 1.0     # learnt again, mostly the same vertices
    assert (att.vertex_ids[468:] == mesh.vertex_ids[468:]).all()        # iris centres: the pupils
