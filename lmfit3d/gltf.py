"""glTF 2.0 export (``--gltf``): the fitted head as a skinned, morphable mesh with its animation, one .glb.

What :func:`write_gltf` writes (units metres, glTF axes = the model's and the camera's: y up, the face
looks along +z, a camera looks along -z):

* one mesh, the drawn part of the ICT head (skin, eyeballs, teeth, mouth; ``render.visible_faces``),
  shaped by the fitted identity: ``POSITION`` T(beta), ``NORMAL``, ``COLOR_0`` (``render.model_albedo``),
  ``JOINTS_0`` (unsigned byte) / ``WEIGHTS_0`` (normalised unsigned short, summing to exactly 1);
* 53 morph targets, the expression shapes as ``POSITION`` deltas, sparse accessors holding only the
  vertices a shape moves by more than :data:`MORPH_EPS_M`; named in ``mesh.extras.targetNames`` (the
  Blender convention) by their ARKit names (``eyeBlinkLeft``, ``jawOpen``; ICT's own name where ARKit
  has no sided one: ``browInnerUp_L``, ``cheekPuff_R`` ...) (:func:`target_names`);
* a skin over the model's skeleton (``root``, ``neck``, ``head``, ``eye_L``, ``eye_R``), each joint a node
  at its bind location J(beta) relative to its parent, inverse bind matrices translate(-J): the glTF
  skinning of a frame reproduces ``skinning.evaluate_mesh`` (/1000) to float32 precision;
* one animation at the clip's frame rate: a LINEAR sampler for the morph weights (K x 53 outputs), one
  for each joint's rotation (quaternions), one for the root translation; keyframes are the frames with a
  fit (others are interpolated); a single frame is written as the nodes' pose and the mesh's weights,
  without an animation;
* cameras (optional): the tracking camera at the origin, or the capture's cameras in the world frame.

pygltflib (the ``export`` extra) is imported inside :func:`write_gltf` only.
"""
import numpy as np

from .outputs import ARKIT_NAMES, arkit_mapping
from .paths import atomic_write
from .render import model_albedo, vertex_normals, visible_faces
from .rotation import matrix_to_axis_angle

MM_TO_M = 1e-3
MORPH_EPS_M = 1e-6          # a morph target stores the vertices it moves by more than 1 micrometre
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125


def target_names(expression_names):
    """Morph target names: the ARKit name (``eyeBlinkLeft``) of each ICT shape that has one sided
    ARKit counterpart, else the ICT name (``browInnerUp_L``, ``cheekPuff_L``: ARKit's are unsided)."""
    mat = arkit_mapping(expression_names)
    out = []
    for e, name in enumerate(expression_names):
        rows = np.flatnonzero(mat[:, e] == 1.0)
        out.append(ARKIT_NAMES[rows[0]][0].lower() + ARKIT_NAMES[rows[0]][1:] if rows.size else name)
    return out


def axis_angle_to_quaternion(w):
    """Unit quaternions (..., 4) as (x, y, z, w) of axis-angle vectors (..., 3) (radians)."""
    w = np.asarray(w, dtype=np.float64)
    t = np.linalg.norm(w, axis=-1, keepdims=True)
    half = 0.5 * t
    s = np.where(t > 1e-8, np.sin(half) / np.where(t > 1e-8, t, 1.0), 0.5 - t * t / 48.0)
    q = np.concatenate([w * s, np.cos(half)], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _continuous(q):
    """Quaternion track (K, 4) with signs flipped so neighbours lie in one hemisphere (LINEAR/slerp)."""
    q = q.copy()
    for k in range(1, q.shape[0]):
        if q[k] @ q[k - 1] < 0:
            q[k] = -q[k]
    return q


def skin_attributes(weights, n_slots=4):
    """JOINTS_0 (N, 4) uint8 and WEIGHTS_0 (N, 4) uint16 (normalised; each row sums to exactly 65535)
    of LBS weights (N, J): the ``n_slots`` largest weights per vertex, renormalised, rounded by largest
    remainder.  Unused slots hold joint 0 with weight 0."""
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-w, axis=1, kind="stable")[:, :n_slots]
    top = np.take_along_axis(w, order, axis=1)
    top = top / top.sum(1, keepdims=True)
    scaled = top * 65535.0
    q = np.floor(scaled).astype(np.int64)
    short = 65535 - q.sum(1)                       # 0 .. n_slots - 1 units to hand out
    rank = np.argsort(-(scaled - q), axis=1, kind="stable")
    for r in range(n_slots):
        add = short > r
        q[add, rank[add, r]] += 1
    joints = np.where(q > 0, order, 0)
    return joints.astype(np.uint8), q.astype(np.uint16)


class _Blob:
    """The .glb's binary buffer: bufferViews appended 4-byte aligned, accessors over them."""

    def __init__(self, g):
        self.g = g
        self.parts = []
        self.size = 0

    def view(self, arr, target=None):
        import pygltflib as gl
        data = np.ascontiguousarray(arr).tobytes()
        self.parts.append(data + b"\0" * (-len(data) % 4))
        self.g.bufferViews.append(gl.BufferView(buffer=0, byteOffset=self.size, byteLength=len(data),
                                                target=target))
        self.size += len(self.parts[-1])
        return len(self.g.bufferViews) - 1

    def accessor(self, arr, kind, ctype, target=None, minmax=False, normalized=None):
        """Append ``arr`` (N, ...) and its accessor; returns the accessor index."""
        import pygltflib as gl
        arr = np.asarray(arr)
        flat = arr.reshape(arr.shape[0], -1)
        acc = gl.Accessor(bufferView=self.view(arr, target), componentType=ctype, count=int(arr.shape[0]),
                          type=kind, normalized=normalized)
        if minmax:
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.g.accessors.append(acc)
        return len(self.g.accessors) - 1

    def sparse_vec3(self, shapes, eps):
        """Float32 VEC3 accessors of the columns of ``shapes`` (N, 3, S), each storing only the rows whose
        norm exceeds ``eps`` (sparse, over zeros), with min/max of the values so substituted; their indices."""
        import pygltflib as gl
        shapes = np.asarray(shapes, dtype=np.float32)
        moved = np.sqrt(np.einsum("nis,nis->ns", shapes, shapes)) > eps
        kept = shapes * moved[:, None, :]
        lo, hi = kept.min(0), kept.max(0)
        itype, idt = (_USHORT, np.uint16) if shapes.shape[0] <= 65535 else (_UINT, np.uint32)
        out = []
        for e in range(shapes.shape[2]):
            rows = np.flatnonzero(moved[:, e])
            acc = gl.Accessor(componentType=_FLOAT, count=int(shapes.shape[0]), type="VEC3", byteOffset=None,
                              min=lo[:, e].tolist(), max=hi[:, e].tolist())
            if rows.size:
                acc.sparse = gl.Sparse(count=int(rows.size),
                                       indices=gl.AccessorSparseIndices(bufferView=self.view(rows.astype(idt)),
                                                                        componentType=itype),
                                       values=gl.AccessorSparseValues(bufferView=self.view(shapes[rows, :, e])))
            self.g.accessors.append(acc)
            out.append(len(self.g.accessors) - 1)
        return out

    def bytes(self):
        return b"".join(self.parts)


def _head_mesh(blob, model, identity):
    """The mesh (one primitive, skin attributes, 53 sparse morph targets) and its bind-pose joints (mm)."""
    import pygltflib as gl
    faces = visible_faces(model)
    used = np.unique(faces)
    remap = np.full(model.n_vertices, -1, np.int64)
    remap[used] = np.arange(used.size)
    tmpl = model.template(identity)
    normals = np.empty_like(tmpl)
    vertex_normals(tmpl, np.ascontiguousarray(faces, dtype=np.int64), normals)
    nrm = normals[used]
    nrm[np.linalg.norm(nrm, axis=1) < 0.5] = (0.0, 0.0, 1.0)
    col = np.concatenate([model_albedo(model, identity=identity)[used], np.ones((used.size, 1))], 1)
    joints, weights = skin_attributes(model.skin_weights[used])
    itype = np.uint16 if used.size <= 65535 else np.uint32
    attrs = gl.Attributes(
        POSITION=blob.accessor((tmpl[used] * MM_TO_M).astype(np.float32), "VEC3", _FLOAT, _ARRAY_BUFFER, True),
        NORMAL=blob.accessor(nrm.astype(np.float32), "VEC3", _FLOAT, _ARRAY_BUFFER),
        COLOR_0=blob.accessor(np.round(col * 255).astype(np.uint8), "VEC4", _UBYTE, _ARRAY_BUFFER,
                              normalized=True),
        JOINTS_0=blob.accessor(joints, "VEC4", _UBYTE, _ARRAY_BUFFER),
        WEIGHTS_0=blob.accessor(weights, "VEC4", _USHORT, _ARRAY_BUFFER, normalized=True))
    targets = [{"POSITION": a} for a in blob.sparse_vec3(model.expression_basis[used] * np.float32(MM_TO_M),
                                                           MORPH_EPS_M)]
    indices = blob.accessor(remap[faces].reshape(-1).astype(itype), "SCALAR",
                            _USHORT if itype is np.uint16 else _UINT, _ELEMENT_ARRAY_BUFFER)
    prim = gl.Primitive(attributes=attrs, indices=indices, material=0, targets=targets, mode=4)
    return gl.Mesh(name="head", primitives=[prim], weights=[0.0] * model.n_expression,
                   extras={"targetNames": target_names(model.expression_names)})


def _check(model, identity, expression, rotations, translation, fps, success):
    identity = np.asarray(identity, dtype=np.float64)
    if identity.shape != (model.n_identity,) or not np.isfinite(identity).all():
        raise ValueError(f"identity must be {model.n_identity} finite values, got shape {identity.shape}")
    expression = np.asarray(expression, dtype=np.float64)
    nf = expression.shape[0] if expression.ndim == 2 else -1
    if expression.shape != (nf, model.n_expression):
        raise ValueError(f"expression must have shape (F, {model.n_expression}), got {expression.shape}")
    rotations = np.asarray(rotations, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    if rotations.shape != (nf, model.n_joints, 3) or translation.shape != (nf, 3):
        raise ValueError(f"rotations (F, {model.n_joints}, 3) and translation (F, 3) must match expression's "
                         f"{nf} frames, got {rotations.shape} and {translation.shape}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    ok = np.ones(nf, bool) if success is None else np.asarray(success, bool).reshape(nf)
    ok = ok & np.isfinite(expression).all(1) & np.isfinite(rotations).all((1, 2)) & np.isfinite(translation).all(1)
    return identity, expression, rotations, translation, np.flatnonzero(ok)


def write_gltf(path, model, identity, expression, rotations, translation, fps, success=None, cameras=(),
               name="lmfit3d"):
    """Write a fitted performance as a binary glTF 2.0 file (``.glb``, metres), atomically.

    Parameters
    ----------
    path : output file (.glb).
    model : FaceModel.
    identity : (K,) float, the fitted identity beta.
    expression : (F, E) float, per-frame expression weights (the fitted ones: the mesh's).
    rotations : (F, J, 3) float, axis-angle per joint (row 0 the root; radians).
    translation : (F, 3) float, root translation (mm).
    fps : float, frames per second (keyframe k of frame f at f / fps seconds).
    success : (F,) bool, optional; frames without a fit (or with NaN) are not keyframes.
    cameras : sequence of (R (3, 3), t (3,) mm, focal_px, (width, height)) with x_cam = R x + t, optional.
    name : scene and animation name.

    Returns
    -------
    dict: ``frames`` (keyframes written), ``bytes`` (file size), ``vertices``, ``targets``.
    """
    import pygltflib as gl
    identity, expression, rotations, translation, keys = _check(model, identity, expression, rotations,
                                                                  translation, fps, success)
    g = gl.GLTF2(asset=gl.Asset(version="2.0", generator="lmfit3d"), scene=0)
    g.materials.append(gl.Material(name="face", pbrMetallicRoughness=gl.PbrMetallicRoughness(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=0.6)))
    blob = _Blob(g)
    g.meshes.append(_head_mesh(blob, model, identity))
    # skeleton: node 1 + k is joint k; the root at the model origin, each joint at J(beta) - J(parent)
    jpos = model.joints(identity) * MM_TO_M
    jpos[0] = 0.0
    parents = model.joint_parents
    first = keys[0] if keys.size else None
    quats = axis_angle_to_quaternion(rotations[keys]) if keys.size else np.zeros((0, model.n_joints, 4))
    g.nodes.append(gl.Node(name="head", mesh=0, skin=0))
    for k, jname in enumerate(model.joint_names):
        children = [1 + c for c in np.flatnonzero(parents == k).tolist()]
        offset = jpos[k] - (jpos[parents[k]] if k else 0.0)
        node = gl.Node(name=jname, children=children or None, translation=offset.tolist())
        if first is not None:
            node.rotation = quats[0, k].tolist()
            if k == 0:
                node.translation = (translation[first] * MM_TO_M).tolist()
        g.nodes.append(node)
    if first is not None:
        g.meshes[0].weights = expression[first].tolist()
    ibm = np.tile(np.eye(4, dtype=np.float32), (model.n_joints, 1, 1))
    ibm[:, 3, :3] = -jpos                          # column-major: the last column holds the translation
    g.skins.append(gl.Skin(name="skeleton", skeleton=1, joints=list(range(1, 1 + model.n_joints)),
                           inverseBindMatrices=blob.accessor(ibm, "MAT4", _FLOAT)))
    scene_nodes = [0, 1] + _cameras(g, cameras)
    g.scenes.append(gl.Scene(name=name, nodes=scene_nodes))
    if keys.size > 1:
        _animation(g, blob, keys, fps, expression[keys], quats, translation[keys] * MM_TO_M, name)
    data = blob.bytes()
    g.buffers.append(gl.Buffer(byteLength=len(data)))
    g.set_binary_blob(data)
    out = b"".join(g.save_to_bytes())
    with atomic_write(path, "wb") as fh:
        fh.write(out)
    return dict(frames=int(keys.size), bytes=len(out), vertices=int(g.accessors[0].count),
                targets=model.n_expression)


def _animation(g, blob, keys, fps, weights, quats, trans_m, name):
    import pygltflib as gl
    times = blob.accessor((keys / float(fps)).astype(np.float32), "SCALAR", _FLOAT, minmax=True)
    samplers = [gl.AnimationSampler(input=times, interpolation="LINEAR",
                                    output=blob.accessor(weights.astype(np.float32).reshape(-1), "SCALAR", _FLOAT))]
    channels = [gl.AnimationChannel(sampler=0, target=gl.AnimationChannelTarget(node=0, path="weights"))]
    for k in range(quats.shape[1]):
        samplers.append(gl.AnimationSampler(input=times, interpolation="LINEAR", output=blob.accessor(
            _continuous(quats[:, k]).astype(np.float32), "VEC4", _FLOAT)))
        channels.append(gl.AnimationChannel(sampler=len(samplers) - 1,
                                            target=gl.AnimationChannelTarget(node=1 + k, path="rotation")))
    samplers.append(gl.AnimationSampler(input=times, interpolation="LINEAR",
                                        output=blob.accessor(trans_m.astype(np.float32), "VEC3", _FLOAT)))
    channels.append(gl.AnimationChannel(sampler=len(samplers) - 1,
                                        target=gl.AnimationChannelTarget(node=1, path="translation")))
    g.animations.append(gl.Animation(name=name, samplers=samplers, channels=channels))


def _cameras(g, cameras):
    """Camera nodes (world from camera: rotation R^T, position -R^T t) appended to ``g``; their indices."""
    import pygltflib as gl
    out = []
    for c, (r, t, focal, size) in enumerate(cameras):
        r = np.asarray(r, dtype=np.float64)
        w, h = float(size[0]), float(size[1])
        g.cameras.append(gl.Camera(name=f"camera{c}", type="perspective", perspective=gl.Perspective(
            yfov=float(2.0 * np.arctan(0.5 * h / float(focal))), aspectRatio=w / h, znear=0.01, zfar=100.0)))
        g.nodes.append(gl.Node(name=f"camera{c}", camera=len(g.cameras) - 1,
                               rotation=axis_angle_to_quaternion(matrix_to_axis_angle(r.T)).tolist(),
                               translation=(-r.T @ np.asarray(t, dtype=np.float64) * MM_TO_M).tolist()))
        out.append(len(g.nodes) - 1)
    return out
