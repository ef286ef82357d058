"""MediaPipe's custom TFLite operators of the attention face mesh, as ONNX subgraphs (build time only).

``face_landmark_with_attention.tflite`` (mediapipe==0.10.21) crops its 48 x 48 feature map around
the lips and both eyes with three operators that neither tflite2onnx nor the plain TFLite
interpreter know (MediaPipe's ``mediapipe/util/tflite/operations/*.cc``, version 2 of each):

* ``Landmarks2TransformMatrix`` (landmarks (1, 468, 3) -> 4 x 4 matrix): the rotation that levels
  ``left_rotation_idx -> right_rotation_idx`` (minus ``target_rotation_radians``), the bounding box
  of the ``subset_idxs`` points in that rotated frame, and the matrix
  ``shift(centre) . rot(-r) . scale(scale_x w / out_w, scale_y h / out_h) . shift(-out_w/2, -out_h/2)``
  mapping output-crop pixels to input pixels.
* ``TransformTensorBilinear`` (features NHWC, matrix -> out_h x out_w crop): for each output pixel
  (x, y), the input point ``M (x + 0.5, y + 0.5) - 0.5`` (their "align corners" correction), sampled
  bilinearly; the whole output pixel is 0 when that point lies outside [0, W-1] x [0, H-1].
* ``TransformLandmarks`` (points (1, N, 2), matrix -> (1, N, 2)): ``x' = M[0,:2] . (x, y) + M[0,3]``,
  ``y' = M[1,:2] . (x, y) + M[1,3]``.

:func:`register` teaches tflite2onnx to emit each of them as one placeholder node in the domain
:data:`DOMAIN` (its options as JSON in the node's doc string; the feature map in NCHW like a
convolution's); :func:`expand` then replaces each placeholder by standard ONNX operators
(Gather/MatMul/ReduceMin/ReduceMax/Sqrt/Div for the matrix, GridSample (opset 16) times an in-bounds mask
for the crop, MatMul/Add for the points).  :func:`add_refined_output` adds MediaPipe's landmark
refinement (``tensors_to_face_landmarks_with_attention.pbtxt``) as one more output: 478 points whose
lips, eyes (x, y) replace the mesh's, and the 10 iris points (z: mean of their eye's 16 lid points).
The NumPy functions ``np_*`` restate MediaPipe's C++ for the tests.
"""
import json

import numpy as np

DOMAIN = "com.google.mediapipe"
OPSET = 16                  # GridSample
REFINED_OUTPUT = "landmarks_refined"

# MediaPipe's LandmarksRefinementCalculator: mesh index of each refined point, per head (lips, left
# eye, right eye = the ``subset_idxs`` of the crops; irises: new points 468-472 and 473-477)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
        76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
        62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407)
LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
            130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
            226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
            35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
            156, 70, 63, 105, 66, 107, 55, 193)
RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
             359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
             446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
             265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
             383, 300, 293, 334, 296, 336, 285, 417)
LID_POINTS = 16             # the first 16 of each eye head: its lid contour (iris z = their mean z)


# ----------------------------------------------------------------------------------------------
# NumPy restatements of MediaPipe's C++ (version 2 of each operator)
# ----------------------------------------------------------------------------------------------

def np_landmarks_to_matrix(lm, opts):
    """Landmarks2TransformMatrix v2: (1, N, 3) float32 -> (1, 4, 4) float32."""
    p = np.asarray(lm, np.float64)[0]
    a, b = p[opts["left_rotation_idx"], :2], p[opts["right_rotation_idx"], :2]
    r = opts.get("target_rotation_radians", 0.0) - np.arctan2(b[1] - a[1], b[0] - a[0])
    c, s = np.cos(r), np.sin(r)
    q = p[list(opts["subset_idxs"]), :2]
    u, v = c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1]
    w, h = u.max() - u.min(), v.max() - v.min()
    mu, mv = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
    cx, cy = np.cos(-r) * mu - np.sin(-r) * mv, np.sin(-r) * mu + np.cos(-r) * mv
    ow, oh = opts["output_width"], opts["output_height"]

    def m4(a00, a01, a03, a10, a11, a13):
        return np.array([[a00, a01, 0, a03], [a10, a11, 0, a13], [0, 0, 1, 0], [0, 0, 0, 1]])
    t = (m4(1, 0, cx, 0, 1, cy) @ m4(np.cos(-r), -np.sin(-r), 0, np.sin(-r), np.cos(-r), 0)
         @ m4(opts["scale_x"] * w / ow, 0, 0, 0, opts["scale_y"] * h / oh, 0) @ m4(1, 0, -ow / 2, 0, 1, -oh / 2))
    return t[None].astype(np.float32)


def np_transform_tensor_bilinear(x, m, out_h, out_w):
    """TransformTensorBilinear v2: features (1, H, W, C) NHWC, matrix (1, 4, 4) -> (1, out_h, out_w, C)."""
    x = np.asarray(x, np.float64)[0]
    h, w, _ = x.shape
    m = np.asarray(m, np.float64).reshape(16)
    xt = m[[0, 1, 2, 3]].copy()
    yt = m[[4, 5, 6, 7]].copy()
    xt[3] += xt[0] * 0.5 + xt[1] * 0.5 - 0.5
    yt[3] += yt[0] * 0.5 + yt[1] * 0.5 - 0.5
    out = np.zeros((out_h, out_w, x.shape[2]))

    def read(i, j):
        return x[i, j] if 0 <= i < h and 0 <= j < w else 0.0
    for oy in range(out_h):
        for ox in range(out_w):
            tx, ty = xt[0] * ox + xt[1] * oy + xt[3], yt[0] * ox + yt[1] * oy + yt[3]
            if tx < 0 or tx > w - 1 or ty < 0 or ty > h - 1:
                continue
            fx, fy = int(np.floor(tx)), int(np.floor(ty))
            rx, ry = tx - fx, ty - fy
            up = (1 - rx) * read(fy, fx) + rx * read(fy, fx + 1)
            lo = (1 - rx) * read(fy + 1, fx) + rx * read(fy + 1, fx + 1)
            out[oy, ox] = ry * lo + (1 - ry) * up
    return out[None].astype(np.float32)


def np_transform_landmarks(p, m):
    """TransformLandmarks v2: points (1, N, 2), matrix (1, 4, 4) -> (1, N, 2)."""
    p = np.asarray(p, np.float64)[0]
    m = np.asarray(m, np.float64)[0]
    return (p @ m[:2, :2].T + m[:2, 3])[None].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# tflite2onnx: placeholder nodes for the custom operators
# ----------------------------------------------------------------------------------------------

def register():
    """Register a tflite2onnx converter for TFLite CUSTOM operators (idempotent)."""
    import tflite
    from flatbuffers import flexbuffers
    from tflite2onnx.layout import Layout
    from tflite2onnx.op.common import OpFactory, Operator

    if tflite.BuiltinOperator.CUSTOM in OpFactory.registry:
        return

    class Custom(Operator):
        TypeMapping = {tflite.BuiltinOperator.CUSTOM: "Custom"}

        def __init__(self, TFactory, index):
            super().__init__(TFactory, index)
            self.custom = self.model.OperatorCodes(self.tflite.OpcodeIndex()).CustomCode().decode()
            self.setInited()

        @property
        def type(self):
            return self.custom

        def parse(self):
            op = self.tflite
            nhwc = self.custom == "TransformTensorBilinear"
            for i in range(op.InputsLength()):
                self.parseInput(i, Layout("NHWC", "NCHW") if nhwc and i == 0 else None)
            self.parseOutput(0, Layout("NHWC", "NCHW") if nhwc else None)
            opts = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy())) if op.CustomOptionsLength() else {}
            self.attrs["domain"] = DOMAIN
            self.attrs["doc_string"] = json.dumps(opts)
            self.setParsed()

        def propagatableTensors(self):
            return []

        def transform(self):
            pass

    OpFactory.register(Custom)


# ----------------------------------------------------------------------------------------------
# ONNX subgraphs
# ----------------------------------------------------------------------------------------------

class _Builder:
    """Appends nodes and constants with unique names to a list (one custom node's expansion)."""

    def __init__(self, prefix, inits):
        self.prefix, self.inits, self.nodes, self.k = prefix, inits, [], 0

    def name(self):
        self.k += 1
        return f"{self.prefix}_{self.k}"

    def const(self, value, dtype=np.float32):
        from onnx import numpy_helper
        n = self.name() + "_c"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), n))
        return n

    def op(self, op_type, *inputs, out=None, **attrs):
        from onnx import helper
        out = out or self.name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def gather(self, x, idx, axis):
        return self.op("Gather", x, self.const(np.asarray(idx, np.int64), np.int64), axis=axis)


def _matrix_nodes(b, x, y, opts):
    """Landmarks2TransformMatrix: landmarks x (1, N, 3) -> y (1, 4, 4), in 2 x 2 blocks (few nodes:
    onnxruntime spends microseconds per node, more than these tiny products take)."""
    xy = b.gather(x, [0, 1], 2)                                           # (1, N, 2)
    ends = b.gather(xy, [opts["left_rotation_idx"], opts["right_rotation_idx"]], 1)   # (1, 2, 2)
    d = b.op("MatMul", b.const([[[-1.0, 1.0]]]), ends)                    # (1, 1, 2) right - left
    e = b.op("Div", d, b.op("Sqrt", b.op("ReduceSumSquare", d, axes=[2], keepdims=1)))  # (cos, sin) eye line
    t = float(opts.get("target_rotation_radians", 0.0))
    # r = t - atan2(dy, dx): (cos r, sin r) = (cos t ct + sin t st, sin t ct - cos t st)
    cs = b.op("MatMul", e, b.const([[np.cos(t), np.sin(t)], [np.sin(t), -np.cos(t)]]))
    # rot = [[c, s], [-s, c]]: row points times rot = MediaPipe's rotation by r; rot itself = rotation by -r
    rot = b.op("Reshape", b.op("MatMul", cs, b.const([[1, 0, 0, 1], [0, 1, -1, 0]])), b.const([1, 2, 2], np.int64))
    uv = b.op("MatMul", b.gather(xy, list(opts["subset_idxs"]), 1), rot)  # (1, K, 2) rotated subset
    lo, hi = b.op("ReduceMin", uv, axes=[1], keepdims=1), b.op("ReduceMax", uv, axes=[1], keepdims=1)
    mid = b.op("Mul", b.op("Add", lo, hi), b.const(0.5))
    centre = b.op("MatMul", mid, b.op("Transpose", rot, perm=[0, 2, 1]))  # rot(-r) mid, as a row
    ow, oh = float(opts["output_width"]), float(opts["output_height"])
    scale = b.op("Mul", b.op("Sub", hi, lo), b.const([opts["scale_x"] / ow, opts["scale_y"] / oh]))
    lin = b.op("Mul", rot, scale)                                         # rot(-r) diag(sx, sy)
    shift = b.op("MatMul", b.const([[[ow / 2, oh / 2]]]), b.op("Transpose", lin, perm=[0, 2, 1]))
    trans = b.op("Transpose", b.op("Sub", centre, shift), perm=[0, 2, 1])  # (1, 2, 1)
    top = b.op("Concat", lin, b.const(np.zeros((1, 2, 1))), trans, axis=2)
    b.op("Concat", top, b.const([[[0, 0, 1, 0], [0, 0, 0, 1]]]), axis=1, out=y)


def _affine_nodes(b, m, cache=None):
    """(1, 2, 2) linear part transposed and (1, 1, 2) translation of a (1, 4, 4) matrix (made once
    per matrix when a ``cache`` dict is given)."""
    if cache is not None and m in cache:
        return cache[m]
    rows = b.gather(m, [0, 1], 1)                                         # (1, 2, 4)
    lin_t = b.op("Transpose", b.gather(rows, [0, 1], 2), perm=[0, 2, 1])
    trans = b.op("Transpose", b.gather(rows, [3], 2), perm=[0, 2, 1])
    if cache is not None:
        cache[m] = (lin_t, trans)
    return lin_t, trans


def _crop_nodes(b, x, m, y, in_hw, out_hw):
    """TransformTensorBilinear: features x (1, C, H, W), matrix m -> y (1, C, oh, ow)."""
    (h, w), (oh, ow) = in_hw, out_hw
    gy, gx = np.mgrid[0:oh, 0:ow]
    base = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], 1)[None]        # (1, oh ow, 2)
    lin_t, trans = _affine_nodes(b, m)
    tc = b.op("Sub", b.op("Add", b.op("MatMul", b.const(base), lin_t), trans), b.const(0.5))
    hi = b.const(np.array([w - 1, h - 1], np.float32))
    inside = b.op("And", b.op("GreaterOrEqual", tc, b.const(0.0)), b.op("LessOrEqual", tc, hi))
    mask = b.op("ReduceMin", b.op("Cast", inside, to=1), axes=[2], keepdims=0)      # (1, oh ow)
    grid = b.op("Sub", b.op("Mul", tc, b.const(np.array([2.0 / (w - 1), 2.0 / (h - 1)], np.float32))),
                b.const(1.0))
    grid = b.op("Reshape", grid, b.const([1, oh, ow, 2], np.int64))
    s = b.op("GridSample", x, grid, align_corners=1, mode="bilinear", padding_mode="zeros")
    b.op("Mul", s, b.op("Reshape", mask, b.const([1, 1, oh, ow], np.int64)), out=y)


def _points_nodes(b, p, m, y, cache=None):
    """TransformLandmarks: points p (1, N, 2), matrix m -> y (1, N, 2)."""
    lin_t, trans = _affine_nodes(b, m, cache)
    b.op("Add", b.op("MatMul", p, lin_t), trans, out=y)


def expand(model):
    """Replace the placeholder nodes of :func:`register` by standard ONNX subgraphs (in place);
    sets the default opset to :data:`OPSET` and returns the number of nodes replaced."""
    import onnx
    g = model.graph
    shapes = _shapes(model)
    nodes, inits, k, cache = [], [], 0, {}
    for nd in g.node:
        if nd.domain != DOMAIN:
            nodes.append(nd)
            continue
        opts = json.loads(nd.doc_string or "{}")
        b = _Builder(f"mp{k}_{nd.op_type}", inits)
        if nd.op_type == "Landmarks2TransformMatrix":
            _matrix_nodes(b, nd.input[0], nd.output[0], opts)
        elif nd.op_type == "TransformTensorBilinear":
            in_hw = shapes[nd.input[0]][2:]
            _crop_nodes(b, nd.input[0], nd.input[1], nd.output[0], in_hw,
                        (opts["output_height"], opts["output_width"]))
        elif nd.op_type == "TransformLandmarks":
            _points_nodes(b, nd.input[0], nd.input[1], nd.output[0], cache)
        else:
            raise ValueError(f"unknown MediaPipe custom operator {nd.op_type!r}")
        nodes += b.nodes
        k += 1
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    others = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", OPSET)] + others)
    return k


def _shapes(model):
    """Static shapes of the graph's tensors (value_info, inputs, outputs)."""
    g = model.graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input) + list(g.output)}


def refinement_indices():
    """(478,) source row of each refined point's (x, y) among [mesh 468, lips 80, left eye 71,
    right eye 71, left iris 5, right iris 5], and (478,) source of its z among [mesh 468, left
    lid mean, right lid mean]."""
    src = np.arange(478)
    off = 468
    for head in (LIPS, LEFT_EYE, RIGHT_EYE):
        src[list(head)] = off + np.arange(len(head))
        off += len(head)
    src[468:478] = off + np.arange(10)
    zsrc = np.concatenate([np.arange(468), np.full(5, 468), np.full(5, 469)])
    return src, zsrc


def add_refined_output(model, mesh, heads):
    """Add output :data:`REFINED_OUTPUT` (1, 478, 3): MediaPipe's refined landmarks (crop pixels).

    ``mesh``: the (1, 468, 3) mesh tensor; ``heads``: the (1, n, 2) tensors of the lips, left eye,
    right eye, left iris and right iris heads (after their TransformLandmarks)."""
    from onnx import TensorProto, helper
    g = model.graph
    inits = []
    b = _Builder("refine", inits)
    src, zsrc = refinement_indices()
    xy = b.op("Concat", b.gather(mesh, [0, 1], 2), *heads, axis=1)        # (1, 700, 2)
    z = b.gather(mesh, [2], 2)                                            # (1, 468, 1)
    lids = [b.op("ReduceMean", b.gather(z, list(e[:LID_POINTS]), 1), axes=[1], keepdims=1)
            for e in (LEFT_EYE, RIGHT_EYE)]
    zall = b.op("Concat", z, *lids, axis=1)                               # (1, 470, 1)
    b.op("Concat", b.gather(xy, src, 1), b.gather(zall, zsrc, 1), axis=2, out=REFINED_OUTPUT)
    g.node.extend(b.nodes)
    g.initializer.extend(inits)
    g.output.append(helper.make_tensor_value_info(REFINED_OUTPUT, TensorProto.FLOAT, [1, 478, 3]))
