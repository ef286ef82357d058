"""glTF export (`--gltf`): structure, that glTF skinning of the file reproduces lmfit3d's mesh, the Khronos
validator (where node and gltf-validator are installed), and the CLI paths (track, fit)."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pygltflib = pytest.importorskip("pygltflib")

from lmfit3d.gltf import MORPH_EPS_M, axis_angle_to_quaternion, skin_attributes, target_names, write_gltf  # noqa: E402
from lmfit3d.model import Params  # noqa: E402
from lmfit3d.render import visible_faces  # noqa: E402
from lmfit3d.rotation import rodrigues  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402

_DTYPES = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}
_COMPS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_accessor(g, blob, i):
    """An accessor's elements (count, comps) decoded by hand (sparse substitution included)."""
    acc = g.accessors[i]
    comps, dt = _COMPS[acc.type], _DTYPES[acc.componentType]
    if acc.bufferView is not None:
        bv = g.bufferViews[acc.bufferView]
        a = np.frombuffer(blob, dt, acc.count * comps, bv.byteOffset + (acc.byteOffset or 0)).reshape(acc.count, comps)
        a = a.copy()
    else:
        a = np.zeros((acc.count, comps), dt)
    if acc.sparse is not None:
        sp = acc.sparse
        idt = _DTYPES[sp.indices.componentType]
        idx = np.frombuffer(blob, idt, sp.count, g.bufferViews[sp.indices.bufferView].byteOffset)
        val = np.frombuffer(blob, dt, sp.count * comps, g.bufferViews[sp.values.bufferView].byteOffset)
        a[idx] = val.reshape(sp.count, comps)
    return a


def quat_matrix(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def gltf_skinned_positions(g, blob, key):
    """Positions (N, 3) of the head mesh at animation keyframe ``key``, by the glTF 2.0 rules:
    morph targets, then jointMatrix_j = global(node_j) * inverseBindMatrix_j, weighted."""
    nodes = g.nodes
    trs = {i: [np.asarray(n.translation or [0, 0, 0], float), np.asarray(n.rotation or [0, 0, 0, 1], float)]
           for i, n in enumerate(nodes)}
    weights = np.asarray(g.meshes[0].weights, float)
    for ch in (g.animations[0].channels if g.animations else []):
        s = g.animations[0].samplers[ch.sampler]
        out = read_accessor(g, blob, s.output).astype(float)
        if ch.target.path == "weights":
            weights = out.reshape(-1, len(weights))[key]
        else:
            trs[ch.target.node][0 if ch.target.path == "translation" else 1] = out[key]
    parent = {c: i for i, n in enumerate(nodes) for c in (n.children or [])}

    def glob(i):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = quat_matrix(trs[i][1]), trs[i][0]
        return glob(parent[i]) @ m if i in parent else m

    prim = g.meshes[0].primitives[0]
    pos = read_accessor(g, blob, prim.attributes.POSITION).astype(float)
    for w, t in zip(weights, prim.targets):
        pos += w * read_accessor(g, blob, t["POSITION"])
    skin = g.skins[0]
    ibm = read_accessor(g, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    jm = np.stack([glob(j) @ ibm[k] for k, j in enumerate(skin.joints)])
    joints = read_accessor(g, blob, prim.attributes.JOINTS_0).astype(int)
    wq = read_accessor(g, blob, prim.attributes.WEIGHTS_0) / 65535.0
    hom = np.concatenate([pos, np.ones((pos.shape[0], 1))], 1)
    out = np.zeros((pos.shape[0], 3))
    for s in range(4):
        out += wq[:, s, None] * np.einsum("nij,nj->ni", jm[joints[:, s]], hom)[:, :3]
    return out


def random_clip(model, rng, nf=5):
    identity = rng.normal(size=model.n_identity) * 0.7
    expr = rng.uniform(0.0, 1.0, (nf, model.n_expression))
    rot = rng.normal(size=(nf, model.n_joints, 3)) * 0.15
    trans = np.array([0.0, 0.0, -600.0]) + rng.normal(size=(nf, 3)) * 20.0
    return identity, expr, rot, trans


# ------------------------------------------------------------------------------------------------

def test_target_names_are_arkit_or_ict(model):
    names = target_names(model.expression_names)
    assert len(names) == len(set(names)) == 53
    assert {"eyeBlinkLeft", "eyeBlinkRight", "jawOpen", "mouthSmileLeft", "eyeLookInRight", "noseSneerLeft"} <= set(names)
    # ARKit's BrowInnerUp and CheekPuff are unsided: ICT's sided shapes keep their names
    assert {"browInnerUp_L", "browInnerUp_R", "cheekPuff_L", "cheekPuff_R"} <= set(names)


def test_skin_attributes_are_normalised_exactly(rng):
    w = rng.uniform(0, 1, (500, 5)) * (rng.uniform(0, 1, (500, 5)) < 0.5)
    w[:, 0] += 1e-3
    w /= w.sum(1, keepdims=True)
    w[:10] = 0.0
    w[:10, 2] = 1.0                                  # rigid vertices
    joints, q = skin_attributes(w)
    assert q.dtype == np.uint16 and joints.dtype == np.uint8
    assert (q.astype(np.int64).sum(1) == 65535).all()
    assert (joints[q == 0] == 0).all() and (joints[:10, 0] == 2).all()
    dense = np.zeros_like(w)
    for s in range(4):
        np.add.at(dense, (np.arange(500), joints[:, s]), q[:, s] / 65535.0)
    top4 = np.sort(w, 1)[:, 1:].sum(1) >= 1 - 1e-12          # rows with at most 4 non-zero weights
    assert np.abs(dense - w)[top4].max() < 1e-4


def test_quaternions_match_rodrigues(rng):
    for w in rng.normal(size=(6, 3)):
        np.testing.assert_allclose(quat_matrix(axis_angle_to_quaternion(w)), rodrigues(w), atol=1e-12)


def test_glb_structure_and_skinning_reproduce_the_mesh(model, rng, tmp_path):
    identity, expr, rot, trans = random_clip(model, rng)
    success = np.array([True, False, True, True, True])
    expr[3, 0] = np.nan                               # a frame with NaN is not a keyframe either
    path = tmp_path / "clip.glb"
    info = write_gltf(path, model, identity, expr, rot, trans, 25.0, success,
                      cameras=[(np.eye(3), np.zeros(3), 900.0, (640, 480))])
    assert info["frames"] == 3 and path.stat().st_size == info["bytes"] < 15e6
    g = pygltflib.GLTF2.load(str(path))
    blob = g.binary_blob()
    assert g.asset.version == "2.0" and len(g.buffers) == 1 and g.buffers[0].byteLength <= len(blob)
    assert sum(bv.byteLength for bv in g.bufferViews) <= g.buffers[0].byteLength
    assert all(bv.byteOffset % 4 == 0 and bv.byteOffset + bv.byteLength <= len(blob) for bv in g.bufferViews)
    mesh = g.meshes[0]
    prim = mesh.primitives[0]
    assert len(prim.targets) == 53 and mesh.extras["targetNames"] == target_names(model.expression_names)
    assert [g.nodes[j].name for j in g.skins[0].joints] == list(model.joint_names)
    assert g.accessors[prim.attributes.JOINTS_0].componentType == 5121
    assert g.accessors[prim.attributes.WEIGHTS_0].componentType == 5123 and g.accessors[prim.attributes.WEIGHTS_0].normalized
    anim = g.animations[0]
    paths = sorted((g.nodes[c.target.node].name, c.target.path) for c in anim.channels)
    assert paths == sorted([("head", "weights"), ("root", "translation")] + [(n, "rotation") for n in model.joint_names])
    times = read_accessor(g, blob, anim.samplers[0].input).ravel()
    np.testing.assert_allclose(times, np.array([0, 2, 4]) / 25.0, rtol=1e-6)
    wsampler = [anim.samplers[c.sampler] for c in anim.channels if c.target.path == "weights"][0]
    assert g.accessors[wsampler.output].count == 3 * 53                # one sampler, K x 53 outputs
    # accessor min / max are those of the data (sparse ones over the substituted values)
    for i, acc in enumerate(g.accessors):
        if acc.min:
            a = read_accessor(g, blob, i)
            np.testing.assert_array_equal(np.float32(acc.min), a.min(0))
            np.testing.assert_array_equal(np.float32(acc.max), a.max(0))
    # units: metres (a head is a quarter of a metre tall), camera: yfov of 480 px at 900 px focal
    pos = read_accessor(g, blob, prim.attributes.POSITION)
    assert 0.15 < np.ptp(pos[:, 1]) < 0.4
    assert g.cameras[0].perspective.yfov == pytest.approx(2 * np.arctan(240 / 900.0))
    # glTF skinning at each keyframe = lmfit3d's mesh of that frame (mm -> m), vertices of the drawn faces
    used = np.unique(visible_faces(model))
    for key, f in enumerate([0, 2, 4]):
        want = evaluate_mesh(model, Params(identity, expr[f], rot[f], trans[f]))[used] / 1000.0
        got = gltf_skinned_positions(g, blob, key)
        err = np.abs(got - want).max()
        assert err < 53 * MORPH_EPS_M + 2e-5, f"frame {f}: {err * 1000:.4f} mm"


def test_a_single_frame_is_a_posed_still_without_animation(model, rng, tmp_path):
    identity, expr, rot, trans = random_clip(model, rng, nf=1)
    write_gltf(tmp_path / "still.glb", model, identity, expr, rot, trans, 1.0)
    g = pygltflib.GLTF2.load(str(tmp_path / "still.glb"))
    assert not g.animations
    np.testing.assert_allclose(g.meshes[0].weights, expr[0])
    want = evaluate_mesh(model, Params(identity, expr[0], rot[0], trans[0]))[np.unique(visible_faces(model))] / 1000
    assert np.abs(gltf_skinned_positions(g, g.binary_blob(), 0) - want).max() < 53 * MORPH_EPS_M + 2e-5


def test_bad_arrays_are_value_errors(model, rng, tmp_path):
    identity, expr, rot, trans = random_clip(model, rng)
    with pytest.raises(ValueError, match="rotations"):
        write_gltf(tmp_path / "x.glb", model, identity, expr, rot[:3], trans, 25.0)
    with pytest.raises(ValueError, match="fps"):
        write_gltf(tmp_path / "x.glb", model, identity, expr, rot, trans, 0.0)
    assert not list(tmp_path.iterdir())


def _validator():
    """Path of the gltf-validator npm package (NODE_PATH, then npm's global root), or None."""
    node = shutil.which("node")
    if node is None:
        return None
    import os
    roots = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    npm = shutil.which("npm")
    if npm:
        proc = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=60)
        roots.append(proc.stdout.strip())
    for r in roots:
        if (Path(r) / "gltf-validator" / "package.json").is_file():
            return Path(r) / "gltf-validator"
    return None


VALIDATOR = _validator()


@pytest.mark.skipif(VALIDATOR is None, reason="node and the gltf-validator npm package are not installed "
                                                "(npm install -g gltf-validator)")
def test_khronos_validator_reports_no_issue(model, rng, tmp_path):
    identity, expr, rot, trans = random_clip(model, rng)
    write_gltf(tmp_path / "clip.glb", model, identity, expr, rot, trans, 30.0,
               cameras=[(rodrigues([0.1, 0.3, 0.0]), [10.0, 0.0, 5.0], 800.0, (640, 480))])
    script = ("const v=require(process.argv[1]);const fs=require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
              ".then(r=>console.log(JSON.stringify(r.issues))).catch(e=>{console.error(e);process.exit(1)});")
    proc = subprocess.run(["node", "-e", script, str(VALIDATOR), str(tmp_path / "clip.glb")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    issues = json.loads(proc.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]


def test_gltf_needs_pygltflib(monkeypatch):
    from lmfit3d.track import TrackOptions
    monkeypatch.setattr("lmfit3d.exports.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pygltflib"):
        TrackOptions(gltf=True)
    TrackOptions(gltf=False)
