"""NumPy references of the model evaluation shared by the kernel tests (the full and the tiny model)."""
import numpy as np
from scipy.spatial.transform import Rotation

from lmfit3d.model import Params


def reference_template(model, params):
    """T(beta, psi) in float64 (the model stores the bases in float32)."""
    return (model.vertices.astype(np.float64)
            + np.einsum("vck,k->vc", model.identity_basis.astype(np.float64), params.identity)
            + np.einsum("vce,e->vc", model.expression_basis.astype(np.float64), params.expression))


def reference_lbs(model, params, template):
    """Plain LBS: every non-root joint k rotates about its bind location J_k(beta), composed along the
    parent chain; the blended result is rotated by the root rotation, then translated."""
    joints = model.joint_mean + model.joint_identity @ params.identity
    rots = Rotation.from_rotvec(params.rotations).as_matrix()
    world = np.zeros((model.n_joints, 4, 4))
    world[0] = np.eye(4)  # the root acts after the blend
    for k in range(1, model.n_joints):
        local = np.eye(4)
        local[:3, :3] = rots[k]
        local[:3, 3] = joints[k] - rots[k] @ joints[k]
        world[k] = world[model.joint_parents[k]] @ local
    homog = np.hstack([template, np.ones((len(template), 1))])
    blended = np.zeros_like(template)
    for k in range(model.n_joints):
        blended += model.skin_weights[:, k:k + 1].astype(np.float64) * (homog @ world[k, :3, :].T)
    return blended @ rots[0].T + params.translation


def random_params(model, rng, rot_scale):
    return Params(identity=rng.normal(size=model.n_identity),
                  expression=rng.uniform(0.0, 1.0, model.n_expression),
                  rotations=rng.normal(scale=rot_scale, size=(model.n_joints, 3)),
                  translation=rng.normal(scale=50.0, size=3))
