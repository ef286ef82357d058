"""tflite2onnx extensions for MediaPipe's full-range face detector (build time only).

``face_detection_full_range_sparse.tflite`` (mediapipe==0.10.21) stores 46 of its convolution
weights as sparse fp16 constants that a ``DENSIFY`` operator expands at run time, upsamples with
``DEPTH_TO_SPACE``, and shares one paddings constant between many ``PAD`` operators.  tflite2onnx
0.4.1 knows none of these ("Unsupported TFLite OP: 124 DENSIFY"); :func:`register` teaches it:

* a sparse constant is read dense (:func:`densify`: TFLite's sparsity format with dense leading
  dimensions and a compressed-row (CSR) last dimension, the layout these weights use), and each
  ``DENSIFY`` is folded away, so the usual fp16 ``DEQUANTIZE`` folding turns the weights into fp32
  initializers;
* ``DEPTH_TO_SPACE`` becomes ONNX ``DepthToSpace`` (mode DCR: TensorFlow's channel order in NHWC);
* a ``PAD``'s paddings constant is transformed once even when several PADs share it (tflite2onnx
  transforms it in place per operator).

Checked against the TFLite original run by ai-edge-litert (tests/test_predict.py).
"""
import numpy as np

# TFLite's SparseIndexVector union: 1 Int32Vector, 2 Uint16Vector, 3 Uint8Vector
_INDEX_VECTORS = {1: "Int32Vector", 2: "Uint16Vector", 3: "Uint8Vector"}
_VALUE_DTYPES = {0: np.float32, 1: np.float16, 9: np.int8}      # TensorType FLOAT32, FLOAT16, INT8


def _index_vector(kind, table):
    import tflite
    vec = getattr(tflite, _INDEX_VECTORS[kind])()
    vec.Init(table.Bytes, table.Pos)
    return vec.ValuesAsNumpy().astype(np.int64)


def densify(model, tensor):
    """The dense array of a sparse TFLite constant ``tensor`` (a ``tflite.Tensor`` of ``model``).

    Supports the layout MediaPipe's sparse detector uses: identity traversal order, no blocks, every
    dimension dense except a compressed-row last one; anything else raises ValueError.
    """
    sp = tensor.Sparsity()
    shape = [int(s) for s in tensor.ShapeAsNumpy()]
    n = sp.DimMetadataLength()
    if (list(sp.TraversalOrderAsNumpy()) != list(range(len(shape))) or sp.BlockMapLength() or n != len(shape)
            or any(sp.DimMetadata(d).Format() != 0 for d in range(n - 1)) or sp.DimMetadata(n - 1).Format() != 1):
        raise ValueError(f"{tensor.Name().decode()}: sparse layout not supported (only dense rows, CSR last dim)")
    last = sp.DimMetadata(n - 1)
    seg = _index_vector(last.ArraySegmentsType(), last.ArraySegments())
    idx = _index_vector(last.ArrayIndicesType(), last.ArrayIndices())
    values = model.Buffers(tensor.Buffer()).DataAsNumpy().view(_VALUE_DTYPES[tensor.Type()])
    rows = int(np.prod(shape[:-1]))
    if seg.size != rows + 1 or not idx.size == values.size == seg[-1]:
        raise ValueError(f"{tensor.Name().decode()}: inconsistent sparse constant")
    out = np.zeros((rows, shape[-1]), values.dtype)
    out[np.repeat(np.arange(rows), np.diff(seg)), idx] = values
    return out.reshape(shape)


def register():
    """Teach tflite2onnx sparse constants, DENSIFY, DEPTH_TO_SPACE and shared PAD paddings (idempotent)."""
    import tflite
    from tflite2onnx import graph, tensor
    from tflite2onnx.layout import Layout
    from tflite2onnx.op.common import OpFactory, Operator
    from tflite2onnx.op.padding import Padding

    if tflite.BuiltinOperator.DENSIFY in OpFactory.registry:
        return
    get_data = tensor.TensorFactory.getData

    def dense_data(model, g, index, dtype):
        t = g.Tensors(index)
        return densify(model, t).reshape(-1) if t.Sparsity() is not None else get_data(model, g, index, dtype)

    tensor.TensorFactory.getData = staticmethod(dense_data)

    class _Simple(Operator):
        def __init__(self, TFactory, index):
            super().__init__(TFactory, index)
            self.setInited()

        @property
        def type(self):
            return next(iter(self.TypeMapping.values()))

        def transform(self):
            pass

    class Densify(_Simple):
        TypeMapping = {tflite.BuiltinOperator.DENSIFY: "Densify"}

        def parse(self):
            self.parseInput(0)
            self.parseOutput(0)
            self.setParsed()

        def propagatableTensors(self):
            return self.inputs + self.outputs

    class DepthToSpace(_Simple):
        TypeMapping = {tflite.BuiltinOperator.DEPTH_TO_SPACE: "DepthToSpace"}

        def parse(self):
            opts, table = tflite.DepthToSpaceOptions(), self.tflite.BuiltinOptions()
            opts.Init(table.Bytes, table.Pos)
            self.attrs.update(blocksize=int(opts.BlockSize()), mode="DCR")
            self.parseInput(0, Layout("NHWC", "NCHW"))
            self.parseOutput(0, Layout("NHWC", "NCHW"))
            self.setParsed()

        def propagatableTensors(self):
            return []

    OpFactory.register(Densify)
    OpFactory.register(DepthToSpace)

    pad_transform = Padding.transform

    def pad_once(self):             # the shared paddings constant is already (2n,) after the first PAD
        if len(self.inputs[1].shape) == 2:
            pad_transform(self)

    Padding.transform = pad_once
    fold_fp16 = graph.foldFP16QuantPattern

    def fold(ops):                  # DENSIFY(sparse const) -> its consumers read the dense constant
        for op in [o for o in ops if o.type == "Densify"]:
            src, out = op.inputs[0], op.outputs[0]
            for consumer in list(out.consumers):
                consumer.replaceInput(out, src)
                src.addConsumer(consumer)
            src.removeConsumer(op)
            ops.remove(op)
        return fold_fp16(ops)

    graph.foldFP16QuantPattern = fold
