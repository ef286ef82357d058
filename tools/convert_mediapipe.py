"""Convert MediaPipe's face detectors, face mesh, iris and attention mesh models (TFLite, Apache-2.0) to ONNX.

The models ship inside the PyPI wheel ``mediapipe==0.10.21`` (see ../shared/notes/mediapipe-onnx.md).
This set-up step fetches that wheel with ``pip download --no-deps`` (or takes ``--wheel PATH``),
extracts the ``.tflite`` files (kept beside the output, for the parity test) and converts them
with ``tflite2onnx`` (pure Python; installed by the ``tools`` extra, never a runtime dependency) into
``$LMFIT3D_HOME/mediapipe/``.  ``convert_version.txt`` there records the conversion version; an
older or missing stamp makes the next run convert again.

``tflite2onnx`` 0.4.1 fails on face_landmark.tflite: its PReLU alphas are fp16 constants of shape
[1, 1, C] that pass through DEQUANTIZE, and the tool applies a 4-D NHWC->NCHW permutation to the
3-D constant.  Padding short shapes with leading 1s before the permutation fixes it (patched below).
The full-range detector's sparse weights, DEPTH_TO_SPACE and shared PAD constants are taught to
tflite2onnx by ``tools/tflite_sparse.py``.

The attention mesh (``face_landmark_with_attention``: 468 mesh points refined by lips, eye and
iris heads on crops of its feature map) has three MediaPipe custom operators; they are emitted as
placeholders and expanded into standard ONNX subgraphs (``tools/mediapipe_custom_ops.py``), and
MediaPipe's landmark refinement becomes one more output, ``landmarks_refined`` (1, 478, 3).  Two
more tflite2onnx fixes are patched below for it (a tensor feeding several Reshapes; a rank
broadcast outside any NHWC layout).  ``tools/attention_reference.py`` checks the result against
MediaPipe's own graph (max abs diff 2e-4 px).

Graph rewrites for speed (onnxruntime, CPU), all exact up to float rounding (checked against the
TFLite originals by tests/test_predict.py):

* every ``PRelu(x, a)`` (per-channel slope a) becomes ``x + Relu((a - 1) x)`` (valid where every
  a <= 1; else ``x + (1 - a) Relu(-x)``), the per-channel scales as 1x1 depthwise convolutions;
* in the face mesh and iris models, every Pad that appends zero channels (the BlazeBlock residuals)
  becomes a 1x1 convolution with identity weights (in the detector, whose activations are plain
  Relu, the Pads are cheaper and stay).
  onnxruntime's PRelu kernel is slow, and PRelu, Mul and Pad are outside its blocked NCHWc layout
  (a reorder to NCHW and back around each); with only Conv, Relu, Add and MaxPool left, the whole
  network runs in NCHWc: face mesh 3.0 -> 1.1 ms, iris 3.3 -> 1.3 ms per crop (one thread;
  docs/history/NOTES_frontend.md);
* the iris model keeps its iris and eye-contour outputs (the eyelid contour refines the mesh's
  lid points, issue 13; version 3 dropped it for 10 % of the iris time) and takes a dynamic batch,
  so both eyes run in one call.

Usage::

    python tools/convert_mediapipe.py [--wheel mediapipe-0.10.21-...whl] [--out DIR] [--force]
"""
import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import tflite_sparse  # noqa: E402
from lmfit3d.paths import atomic_write  # noqa: E402
from lmfit3d.detect import mediapipe_dir  # noqa: E402

WHEEL_SPEC = "mediapipe==0.10.21"
MODELS = {
    "face_detection_short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "iris_landmark": "mediapipe/modules/iris_landmark/iris_landmark.tflite",
    "face_landmark_with_attention": "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
}


def _patch_tflite2onnx():
    import numpy as np
    from tflite2onnx import tensor

    if getattr(tensor.Tensor.transform, "_lmfit3d_patched", False):
        return
    orig = tensor.Tensor.transform

    def transform(self):
        if self.layout is not None and len(self.shape) < len(self.layout.source):
            self.shape = [1] * (len(self.layout.source) - len(self.shape)) + list(self.shape)
            if self.isInitializer:
                self.data = np.asarray(self.data).reshape(self.shape)
        return orig(self)

    transform._lmfit3d_patched = True
    tensor.Tensor.transform = transform

    # A tensor read by several Reshapes that each need a Transpose in front (the attention mesh's
    # 1404-vector feeds four) asks for the same helper tensor name each time: number the repeats.
    orig_ref = tensor.TensorFactory.getWithRef

    def get_with_ref(self, ref, name, forceUnique=False):
        if forceUnique and name in self.registery:
            k = 1
            while f"{name}_{k}" in self.registery:
                k += 1
            name = f"{name}_{k}"
        return orig_ref(self, ref, name, forceUnique)

    tensor.TensorFactory.getWithRef = get_with_ref

    # A rank-broadcasting Reshape (a constant [1] times a (1, 468, 3) tensor) outside any NHWC
    # layout needs no permutation; the tool asked for a layout anyway.
    from tflite2onnx.op.reshape import Reshape
    orig_reshape = Reshape.transform

    def reshape_transform(self):
        if self.forFakeBroadcasting and self.outputs[0].layout is None:
            return
        return orig_reshape(self)

    Reshape.transform = reshape_transform


CONVERT_VERSION = "6"     # bump when the conversion changes: cached ONNX files are then rebuilt
STAMP = "convert_version.txt"
KEEP_OUTPUTS = {"iris_landmark": ("output_iris", "output_eyes_contours_and_brows")}
DYNAMIC_BATCH = ("iris_landmark",)
# the detectors (Relu, no PRelu) are faster with their Pads
PAD_TO_CONV = ("face_landmark", "iris_landmark", "face_landmark_with_attention")


def rewrite_prelu(model):
    """Replace each PRelu node by 1x1 depthwise convolutions, Relu and Add (see the module docstring);
    returns the count."""
    import numpy as np
    from onnx import helper, numpy_helper
    g = model.graph
    init = {i.name: i for i in g.initializer}
    nodes, k = [], 0

    def dw(x, w, y, name):        # per-channel scale: 1x1 depthwise convolution, weights (C, 1, 1, 1)
        g.initializer.append(numpy_helper.from_array(w.reshape(-1, 1, 1, 1).astype(np.float32), name + "_w"))
        return helper.make_node("Conv", [x, name + "_w"], [y], name=name, group=w.size, kernel_shape=[1, 1])

    for nd in g.node:
        if nd.op_type != "PRelu" or nd.input[1] not in init:
            nodes.append(nd)
            continue
        x, y, p = nd.input[0], nd.output[0], f"{nd.output[0]}_prelu_"
        a = numpy_helper.to_array(init[nd.input[1]]).astype(np.float32).ravel()
        if (a <= 1).all():          # y = x + Relu((a - 1) x): for x < 0, x + (a - 1) x = a x
            nodes += [dw(x, a - 1, p + "m", p + "scale"),
                      helper.make_node("Relu", [p + "m"], [p + "r"], name=p + "relu")]
        else:                       # y = x + (1 - a) Relu(-x)
            nodes += [dw(x, -np.ones_like(a), p + "n", p + "neg"),
                      helper.make_node("Relu", [p + "n"], [p + "nr"], name=p + "relu"),
                      dw(p + "nr", 1 - a, p + "r", p + "scale")]
        nodes.append(helper.make_node("Add", [x, p + "r"], [y], name=p + "add"))
        k += 1
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused_initializers(model)          # the PRelu slopes are gone
    return k


def rewrite_channel_pad(model):
    """Replace each Pad that only appends zero channels (BlazeBlock residuals: C -> C + E) by a 1x1
    convolution with identity weights (C + E, C, 1, 1), which onnxruntime keeps in its NCHWc layout
    (a Pad needs a reorder to NCHW and back); returns the count."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    g = model.graph
    init = {i.name: i for i in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input)}
    nodes, k = [], 0
    for nd in g.node:
        pads = numpy_helper.to_array(init[nd.input[1]]) if nd.op_type == "Pad" and nd.input[1] in init else None
        mode = [a.s for a in nd.attribute if a.name == "mode"]
        value = nd.input[2] if len(nd.input) > 2 else ""
        zero = not value or (value in init and not numpy_helper.to_array(init[value]).any())
        shape = shapes.get(nd.input[0], [])
        if (pads is None or pads.size != 8 or pads[[0, 1, 2, 3, 4, 6, 7]].any() or pads[5] <= 0
                or mode not in ([], [b"constant"]) or not zero or len(shape) != 4 or shape[1] <= 0):
            nodes.append(nd)
            continue
        c, e = shape[1], int(pads[5])
        w = np.zeros((c + e, c, 1, 1), np.float32)
        w[np.arange(c), np.arange(c)] = 1.0
        name = f"{nd.output[0]}_padconv"
        g.initializer.append(numpy_helper.from_array(w, name + "_w"))
        nodes.append(helper.make_node("Conv", [nd.input[0], name + "_w"], [nd.output[0]], name=name,
                                      kernel_shape=[1, 1]))
        k += 1
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused_initializers(model)
    return k


def _drop_unused_initializers(model):
    g = model.graph
    used = {i for nd in g.node for i in nd.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def keep_outputs(model, names):
    """Drop the outputs not in ``names`` and every node and initializer only they need."""
    g = model.graph
    prod = {o: nd for nd in g.node for o in nd.output}
    need, stack = set(), list(names)
    while stack:
        nd = prod.get(stack.pop())
        if nd is not None and nd.output[0] not in need:
            need.add(nd.output[0])
            stack += list(nd.input)
    nodes = [nd for nd in g.node if nd.output[0] in need]
    outs = [o for o in g.output if o.name in names]
    used = {i for nd in nodes for i in nd.input}
    inits = [i for i in g.initializer if i.name in used]
    for field_, keep in ((g.node, nodes), (g.output, outs), (g.initializer, inits)):
        keep = list(keep)
        del field_[:]
        field_.extend(keep)
    del g.value_info[:]


def dynamic_batch(model):
    """Make the batch dimension symbolic ("N"); Reshape targets keep dimension 0 (value 0)."""
    import numpy as np
    from onnx import numpy_helper
    g = model.graph
    init = {i.name: i for i in g.initializer}
    for nd in g.node:
        if nd.op_type == "Reshape" and nd.input[1] in init:
            shape = numpy_helper.to_array(init[nd.input[1]]).copy()
            if shape[0] == 1:
                shape[0] = 0
                init[nd.input[1]].CopyFrom(numpy_helper.from_array(shape.astype(np.int64), nd.input[1]))
    for v in list(g.input) + list(g.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    del g.value_info[:]


def optimise(model, name):
    """The speed rewrites of the module docstring, in place; checked with onnx.checker."""
    import onnx
    rewrite_prelu(model)
    if name in PAD_TO_CONV:
        rewrite_channel_pad(model)
    if name in KEEP_OUTPUTS:
        keep_outputs(model, KEEP_OUTPUTS[name])
    if name in DYNAMIC_BATCH:
        dynamic_batch(model)
    onnx.checker.check_model(model)
    return model


def fetch_wheel(dest):
    """Download the mediapipe wheel (no dependencies) into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "-d", str(dest), WHEEL_SPEC]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("mediapipe-*.whl"))
    if res.returncode != 0 or not wheels:
        raise SystemExit(f"convert_mediapipe: could not download {WHEEL_SPEC}: {res.stderr.strip()[-300:]}")
    return wheels[0]


def extract_tflite(wheel, dest):
    """Extract the .tflite models of MODELS from the wheel into ``dest``; returns name -> path."""
    out = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for name, member in MODELS.items():
                path = Path(dest) / f"{name}.tflite"
                path.write_bytes(z.read(member))
                out[name] = path
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SystemExit(f"convert_mediapipe: {wheel}: not a mediapipe 0.10.21 wheel ({exc})")
    return out


# the attention mesh (MediaPipe custom operators, tools/mediapipe_custom_ops.py): the (1, 468, 3)
# mesh tensor and the lips, left eye, right eye, left iris, right iris heads after their
# TransformLandmarks, which MediaPipe's refinement merges into 478 points
ATTENTION = "face_landmark_with_attention"
ATTENTION_MESH = "reshape"
ATTENTION_HEADS = ("transform_landmarks_v2", "transform_landmarks_v2_1", "transform_landmarks_v2_3",
                   "transform_landmarks_v2_2", "transform_landmarks_v2_4")


def convert_attention(tflite_path):
    """The attention mesh as an ONNX model (before the speed rewrites): tflite2onnx with the
    custom operators as placeholders, expanded into standard operators, plus the refined
    478-point output (``landmarks_refined``, (1, 478, 3) crop pixels)."""
    import tflite
    from tflite2onnx.model import Model
    import mediapipe_custom_ops as mco
    mco.register()
    m = Model(tflite.Model.GetRootAsModel(Path(tflite_path).read_bytes(), 0))
    m.convert({})               # not tflite2onnx.convert: its checker rejects the placeholders
    model = m.onnx
    if mco.expand(model) != 11:
        raise SystemExit(f"convert_mediapipe: {tflite_path}: expected 11 MediaPipe custom operators")
    mco.add_refined_output(model, ATTENTION_MESH, list(ATTENTION_HEADS))
    return model


def convert(tflite_path, onnx_path, name):
    """tflite2onnx conversion and the speed rewrites, written atomically to ``onnx_path``."""
    import onnx
    import tflite2onnx
    _patch_tflite2onnx()
    tflite_sparse.register()            # the full-range detector's sparse weights and DEPTH_TO_SPACE
    with tempfile.TemporaryDirectory() as tmp:
        if name == ATTENTION:
            model = optimise(convert_attention(tflite_path), name)
        else:
            tmp_onnx = Path(tmp) / "model.onnx"
            tflite2onnx.convert(str(tflite_path), str(tmp_onnx))
            model = optimise(onnx.load(str(tmp_onnx)), name)
        with atomic_write(onnx_path, "wb") as fh:
            fh.write(model.SerializeToString())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="a local mediapipe-0.10.21 wheel (default: pip download)")
    ap.add_argument("--out", default=None, help="output folder (default: $LMFIT3D_HOME/mediapipe)")
    ap.add_argument("--force", action="store_true", help="convert even if the ONNX files exist")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else mediapipe_dir()
    want = [out / f"{n}.{ext}" for n in MODELS for ext in ("onnx", "tflite")]
    stamp = out / STAMP
    current = stamp.is_file() and stamp.read_text().strip() == CONVERT_VERSION
    if not args.force and current and all(p.is_file() for p in want):
        print(f"convert_mediapipe: up to date in {out}")
        return _warm_front_end()
    out.mkdir(parents=True, exist_ok=True)
    import logging
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else fetch_wheel(tmp)
        tfl = extract_tflite(wheel, tmp)
        for name, path in tfl.items():
            convert(path, out / f"{name}.onnx", name)
            with atomic_write(out / f"{name}.tflite", "wb") as fh:    # kept for the parity test
                fh.write(path.read_bytes())
            print(f"convert_mediapipe: {out / (name + '.onnx')}")
    with atomic_write(stamp, "w") as fh:
        fh.write(CONVERT_VERSION + "\n")
    return _warm_front_end()


def _warm_front_end():
    """Compile the front end's Numba kernels now (crops, landmark maps), so the first `lmfit3d track`
    does not; needs the face model (`lmfit3d model build`)."""
    from lmfit3d.model import load_model
    from lmfit3d.warmup import warm_front_end
    try:
        model = load_model()
    except (ValueError, OSError) as exc:
        print(f"convert_mediapipe: front-end kernels not compiled yet ({exc})")
        return 0
    warm_front_end(model)
    print("convert_mediapipe: front-end kernels compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
