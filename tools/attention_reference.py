"""Check the converted attention mesh against MediaPipe itself (tool time only; mediapipe is never a
dependency of lmfit3d).

Three steps, the second in a separate virtual environment with ``pip install mediapipe==0.10.21``
(python 3.11), whose ``FaceLandmarkCpu`` graph with ``WITH_ATTENTION`` runs the same TFLite model
with MediaPipe's own custom-operator kernels::

    python tools/attention_reference.py crops  CROPS.npy IMAGE_OR_VIDEO ...   # lmfit3d: 192-px face crops
    /path/to/mp-venv/bin/python tools/attention_reference.py reference CROPS.npy REF.npy
    python tools/attention_reference.py compare CROPS.npy REF.npy            # max abs diff, 192-px units

``crops`` takes each image (and frames 30, 120 and 200 of each video) through the face-mesh
backend's detector and ROI and writes the (K, 192, 192, 3) uint8 crops the network sees.
``reference`` feeds each crop as a whole image with a full-image ROI, so MediaPipe's landmarks come
back in crop pixels.  ``compare`` runs ``face_landmark_with_attention.onnx``'s refined output
(``landmarks_refined``) on the same crops.  Measured on 12 crops of the shared media (5 photos,
frames of the 4 clips, open mouths among them): max abs diff 1.6e-4 px (x, y of all 478 points),
4e-5 in z; the same crops rotated by 15-35 degrees (11 faces found): 2.0e-4 px.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FRAMES = (30, 120, 200)


def make_crops(out, inputs):
    sys.path.insert(0, str(ROOT))
    import imageio
    from lmfit3d.imaging import crop
    from lmfit3d.media import read_image
    from lmfit3d.predict import MediaPipeLandmarks
    mp = MediaPipeLandmarks(iris=False)
    crops = []

    def add(img):
        mp.reset()
        pred = mp.track(np.ascontiguousarray(img[..., :3]))
        if pred is not None:
            c = crop(img, pred.roi, 192, scale=1.0)
            crops.append(np.clip(np.round(c.transpose(1, 2, 0)), 0, 255).astype(np.uint8))
    for path in inputs:
        if Path(path).suffix.lower() in (".mp4", ".avi", ".mov", ".mkv", ".webm"):
            for i, frame in enumerate(imageio.get_reader(path)):
                if i in FRAMES:
                    add(frame)
                if i >= max(FRAMES):
                    break
        else:
            add(read_image(path))
    np.save(out, np.stack(crops))
    print(f"attention_reference: {len(crops)} crops -> {out}")


def reference(crops_path, out):
    import mediapipe as mp
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.framework.formats import rect_pb2
    from mediapipe.python import packet_creator, packet_getter
    crops = np.load(crops_path)
    cfg = text_format.Parse(
        'input_stream: "image" input_stream: "roi" output_stream: "landmarks" '
        'node { calculator: "FaceLandmarkCpu" input_stream: "IMAGE:image" input_stream: "ROI:roi" '
        'input_side_packet: "WITH_ATTENTION:with_attention" output_stream: "LANDMARKS:landmarks" }',
        calculator_pb2.CalculatorGraphConfig())
    graph = mp.CalculatorGraph(graph_config=cfg)
    got = {}
    graph.observe_output_stream("landmarks", lambda s, p: got.__setitem__(p.timestamp.value, packet_getter.get_proto(p)))
    graph.start_run({"with_attention": packet_creator.create_bool(True)})
    full = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, width=1.0, height=1.0, rotation=0.0)
    for k, im in enumerate(crops):
        graph.add_packet_to_input_stream(
            "image", packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=im).at(k))
        graph.add_packet_to_input_stream("roi", packet_creator.create_proto(full).at(k))
    graph.close()
    arr = np.full((len(crops), 478, 3), np.nan)
    for k, lm in got.items():
        arr[k] = [[p.x * 192, p.y * 192, p.z * 192] for p in lm.landmark]
    np.save(out, arr)
    print(f"attention_reference: MediaPipe found the face in {len(got)} of {len(crops)} crops -> {out}")


def compare(crops_path, ref_path):
    sys.path.insert(0, str(ROOT))
    from lmfit3d.detect import _session
    from lmfit3d.paths import cache_dir
    from lmfit3d.predict import ATTENTION_ONNX, ATTENTION_OUTPUT
    crops, ref = np.load(crops_path), np.load(ref_path)
    sess = _session(cache_dir() / ATTENTION_ONNX)
    name = sess.get_inputs()[0].name
    out = np.stack([sess.run([ATTENTION_OUTPUT], {name: (c.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]})[0][0]
                    for c in crops])
    ok = np.isfinite(ref).all(axis=(1, 2))
    dxy = np.abs(out[ok, :, :2] - ref[ok, :, :2])
    dz = np.abs(out[ok, :, 2] - ref[ok, :, 2])
    print(f"attention_reference: {ok.sum()} crops; max abs diff x, y {dxy.max():.2e} px "
          f"(mesh {dxy[:, :468].max():.2e}, irises {dxy[:, 468:].max():.2e}), z {dz.max():.2e}")
    return 0 if dxy.max() < 1e-2 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("crops", "reference", "compare"))
    ap.add_argument("args", nargs="+")
    a = ap.parse_args(argv)
    if a.step == "crops":
        return make_crops(a.args[0], a.args[1:]) or 0
    if len(a.args) != 2:
        ap.error(f"{a.step}: give CROPS.npy and REF.npy")
    return reference(*a.args) or 0 if a.step == "reference" else compare(*a.args)


if __name__ == "__main__":
    sys.exit(main())
