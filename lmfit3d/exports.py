"""The optional outputs of a fitted clip or photo: ``NAME.glb`` (``--gltf``, :mod:`lmfit3d.gltf`) and
``NAME_report.html`` (``--report``, :mod:`lmfit3d.report`), written from the arrays the other outputs
hold (the ``NAME.npz`` keys), after them, each atomically.  Used by ``track``, ``fit`` and ``capture``.
"""
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .gltf import write_gltf
from .report import write_report


def require_gltf():
    """ValueError (one line) unless pygltflib, the writer of ``--gltf``, is installed."""
    if find_spec("pygltflib") is None:
        raise ValueError("--gltf needs pygltflib: pip install 'lmfit3d[export]' (or pip install pygltflib)")


def frame_rotations(data):
    """(F, J, 3) axis-angles (root first) from the ``root_rotation`` and ``joint_rotations`` keys."""
    return np.concatenate([np.asarray(data["root_rotation"])[:, None], np.asarray(data["joint_rotations"])], 1)


def write_track_gltf(path, model, data, name, cameras=None):
    """``NAME.glb`` of a track's arrays (``NAME.npz`` keys), with the tracking camera at the origin."""
    if cameras is None:
        cameras = [(np.eye(3), np.zeros(3), float(data["focal_px"]), tuple(data["image_size"]))]
    return write_gltf(path, model, data["identity"], data["expression"], frame_rotations(data),
                      data["translation"], float(data["fps"]), data["success"], cameras=cameras, name=name)


def write_extras(outs, model, opt, data, sheet=None, timings=None):
    """``NAME.glb`` (``opt.gltf``) and ``NAME_report.html`` (``opt.report``) of one clip into the run's
    private folder ``outs.work``, registered with ``outs`` (moved into place with the other outputs by
    ``outs.commit``); the seconds spent go to ``timings["export"]``."""
    t = time.perf_counter()
    base = outs.work / outs.name
    if opt.gltf:
        write_track_gltf(f"{base}.glb", model, data, outs.name)
        outs.add(f"{outs.name}.glb")
    if opt.report:
        style = "landmarks" if opt.overlay_style == "landmarks" else "wireframe"
        write_report(f"{base}_report.html", model, data, outs.name, sheet, style,
                     None if timings is None else dict(timings))
        outs.add(f"{outs.name}_report.html")
    if timings is not None and (opt.gltf or opt.report):
        timings["export"] = timings.get("export", 0.0) + time.perf_counter() - t


def write_still_gltf(path, model, info):
    """``NAME.glb`` of one fitted face of a photo (its ``NAME.json`` dict ``info``): the head posed as
    fitted, seen by the photo's camera at the origin; no animation."""
    rot = np.array([info["root_rotation"]] + [info["joint_rotations"][n] for n in model.joint_names[1:]])
    return write_gltf(path, model, info["identity"], [[info["expression"][n] for n in model.expression_names]],
                      rot[None], [info["translation_mm"]], 1.0,
                      cameras=[(np.eye(3), np.zeros(3), info["focal_px"], info["image_size"])], name=Path(path).stem)


def write_capture_gltf(path, model, res, fps):
    """``.glb`` of a :class:`lmfit3d.capture.CaptureResult`: the performance in the world frame (mm -> m)
    with every camera that saw the face."""
    cams = [(res.camera_rotation[c], res.camera_translation[c], float(res.focal[c]), tuple(res.image_size[c]))
            for c in range(res.focal.size) if res.camera_ok[c]]
    return write_gltf(path, model, res.identity, res.expression, res.rotations, res.translation, fps,
                      np.asarray(res.status) >= 0, cameras=cams, name=Path(path).stem)
