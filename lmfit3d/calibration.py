"""Multi-camera calibration: per-camera world-to-camera rotation, translation (mm), focal length and
image size, read from and written to JSON (``lmfit3d capture --calibration``).

Cameras follow ``lmfit3d.camera``'s axes (x right, y up, looking along -z); x_cam = R x_world + t.
A calibration in OpenCV axes (y down, looking along +z) is converted on reading.
"""
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Calibration:
    """Per-camera pinhole calibration, world-to-camera, in this project's camera axes.

    Attributes
    ----------
    rotation : (C, 3, 3) float64, R_j (NaN rows where unknown).
    translation : (C, 3) float64, T_j mm (x_cam = R_j x_world + T_j).
    focal : (C,) float64 pixels, NaN where unknown.
    image_size : (C, 2) float64 (width, height) pixels.
    free_extrinsics, free_focal : (C,) bool, optimise even though known.
    """

    rotation: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    image_size: np.ndarray
    free_extrinsics: np.ndarray
    free_focal: np.ndarray

    @property
    def n_cameras(self):
        return self.focal.size

    @property
    def known_extrinsics(self):
        return np.isfinite(self.rotation).all((1, 2)) & np.isfinite(self.translation).all(1)

    @classmethod
    def unknown(cls, image_size):
        """All cameras unknown, of the given (C, 2) image sizes."""
        size = np.asarray(image_size, dtype=np.float64)
        c = size.shape[0]
        return cls(np.full((c, 3, 3), np.nan), np.full((c, 3), np.nan), np.full(c, np.nan), size,
                   np.zeros(c, bool), np.zeros(c, bool))

    def to_json(self):
        """JSON-serialisable dict (``read_calibration`` reads it back)."""
        cams = []
        for j in range(self.n_cameras):
            d = {"image_size": [float(v) for v in self.image_size[j]]}
            if np.isfinite(self.focal[j]):
                d["focal"] = float(self.focal[j])
            if self.known_extrinsics[j]:
                d["R"] = self.rotation[j].tolist()
                d["t"] = self.translation[j].tolist()
            cams.append(d)
        return {"convention": "opengl", "units": "mm", "cameras": cams}


def _num_array(value, shape, what):
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers of shape {shape}") from None
    if a.shape != shape or not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite numbers of shape {shape}, got shape {a.shape}")
    return a


def parse_calibration(data, n_cameras, image_size=None, source="calibration"):
    """Calibration from a JSON-like dict or list (see ``read_calibration``); raises ValueError."""
    conv = "opengl"
    if isinstance(data, dict):
        conv = str(data.get("convention", "opengl")).lower()
        data = data.get("cameras")
    if conv not in ("opengl", "opencv"):
        raise ValueError(f"{source}: convention must be 'opengl' or 'opencv', got {conv!r}")
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a list of cameras (or an object with a \"cameras\" list)")
    if len(data) != n_cameras:
        raise ValueError(f"{source}: {len(data)} cameras given, the landmarks have {n_cameras}")
    cal = Calibration.unknown(np.zeros((n_cameras, 2)) if image_size is None else image_size)
    rot, tr, foc, size = cal.rotation.copy(), cal.translation.copy(), cal.focal.copy(), cal.image_size.copy()
    fe, ff = cal.free_extrinsics.copy(), cal.free_focal.copy()
    for j, cam in enumerate(data):
        what = f"{source}: camera {j}"
        if not isinstance(cam, dict):
            raise ValueError(f"{what} must be an object")
        if "image_size" in cam:
            size[j] = _num_array(cam["image_size"], (2,), f"{what} image_size")
        if not (size[j] > 0).all():
            raise ValueError(f"{what}: image_size (width, height) missing or not > 0")
        if "K" in cam:
            k = _num_array(cam["K"], (3, 3), f"{what} K")
            foc[j] = 0.5 * (k[0, 0] + k[1, 1])
            if abs(k[0, 2] - size[j, 0] / 2) > 0.02 * size[j, 0] or abs(k[1, 2] - size[j, 1] / 2) > 0.02 * size[j, 1]:
                warnings.warn(f"{what}: principal point ({k[0, 2]:.1f}, {k[1, 2]:.1f}) is not at the image "
                              f"centre; the model assumes it is", stacklevel=3)
        elif "focal" in cam or "focal_px" in cam:
            foc[j] = float(_num_array(cam.get("focal", cam.get("focal_px")), (), f"{what} focal"))
        if np.isfinite(foc[j]) and foc[j] <= 0:
            raise ValueError(f"{what}: focal length must be > 0 pixels, got {foc[j]}")
        if ("R" in cam) != ("t" in cam):
            raise ValueError(f"{what}: give both R and t, or neither")
        if "R" in cam:
            r = _num_array(cam["R"], (3, 3), f"{what} R")
            t = _num_array(cam["t"], (3,), f"{what} t")
            if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
                raise ValueError(f"{what}: R is not a rotation matrix")
            if conv == "opencv":
                r, t = _CV_TO_GL @ r, _CV_TO_GL @ t
            rot[j], tr[j] = r, t
        fe[j] = bool(cam.get("free_extrinsics", cam.get("free", False)))
        ff[j] = bool(cam.get("free_focal", cam.get("free", False)))
    return Calibration(rot, tr, foc, size, fe, ff)


def read_calibration(path, n_cameras, image_size=None):
    """Read a calibration JSON file.

    Format: ``{"convention": "opengl" | "opencv", "cameras": [cam, ...]}`` (or the bare list), one
    object per camera with optional keys ``K`` (3x3; focal = mean of fx, fy, principal point
    assumed at the image centre) or ``focal`` (pixels); ``R`` (3x3) and ``t`` (3,) mm, world to
    camera, x_cam = R x_world + t; ``image_size`` [width, height]; ``free_extrinsics``,
    ``free_focal`` or ``free`` (bool: refine even though given).  ``"opencv"`` means camera axes
    x right, y down, looking along +z (converted to ours).  Missing values are estimated.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: calibration file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return parse_calibration(data, n_cameras, image_size, str(path))


# --------------------------------------------------------------------------------------------
# Inputs
def image_sizes(image_size, n_cameras):
    """(C, 2) float64 image sizes (width, height) from one size (2,) or one per camera; ValueError
    when not positive or of the wrong shape."""
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape == (2,):
        size = np.tile(size, (n_cameras, 1))
    if size.shape != (n_cameras, 2) or not (np.isfinite(size) & (size > 0)).all():
        raise ValueError(f"image_size must be (width, height) > 0 or one per camera ({n_cameras}, 2), "
                         f"got shape {size.shape}")
    return size


def write_calibration(path, calibration):
    """Write a :class:`Calibration` as JSON (``read_calibration`` format), atomically."""
    from .paths import atomic_write
    with atomic_write(Path(path), "w") as fh:
        json.dump(calibration.to_json(), fh, indent=1)
