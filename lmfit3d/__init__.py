"""lmfit3d: 3D face reconstruction from dense probabilistic landmarks.

Implements "3D Face Reconstruction with Dense Landmarks" (Wood et al., ECCV 2022) on a
Numba-accelerated NumPy engine.  Importing the package is light: submodules (and numba) load
on first attribute access, so ``import lmfit3d`` stays fast in constrained environments.

Pipeline modules, imports flowing one way::

    model -> rotation / skinning -> camera / calibration -> imaging / render -> landmarks -> energy
          -> sparsity -> terms -> intersection / tracking_points / tracking_normal / gradients -> solvers
          -> frame_lm -> problem -> fit -> detect / predict (ONNX) -> temporal -> faces -> capture
          -> media / points68 -> outputs -> gltf / report -> exports -> track
          -> landmark_files / capture_files / stills / streams -> live -> batch -> warmup
          -> manifest / cluster -> dataset -> cli
    (docs/architecture.md)
"""
from importlib import import_module

__version__ = "0.2.0"

_SUBMODULES = (
    "paths", "meshio", "model", "rotation", "skinning", "camera", "calibration", "imaging", "render",
    "landmarks",
    "sparsity", "energy", "terms", "intersection", "tracking_points", "tracking_normal", "capture_cameras",
    "gradients", "simd",
    "solvers", "frame_lm", "context", "problem", "fit", "synthetic", "detect", "predict", "temporal", "faces",
    "capture", "media",
    "outputs", "gltf", "report", "exports", "track", "landmark_files", "capture_files", "stills", "streams", "live",
    "batch", "manifest", "cluster", "dataset", "cli",
)
_EXPORTS = {
    "FaceModel": "model",
    "load_model": "model",
    "build_model": "model",
    "Params": "model",
    "Camera": "camera",
    "FitResult": "solvers",
    "fit_landmarks": "fit",
    "track_video": "track",
    "fit_image": "stills",
    "fit_capture": "capture",
}

__all__ = ["__version__", *_SUBMODULES, *_EXPORTS]


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lmfit3d' has no attribute {name!r}")
