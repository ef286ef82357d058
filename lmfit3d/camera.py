"""Pinhole camera: square pixels, principal point at the image centre.

Conventions (also in the README):

* Camera coordinates (mm): x right, y up, z towards the viewer; the camera looks along -z
  (the ARKit / OpenGL convention).  With zero root rotation the face looks straight into the camera.
* Image coordinates (pixels): origin at the top-left corner of the image, u right, v down; the
  centre of pixel (i, j) is at (i + 0.5, j + 0.5), so the principal point is (W / 2, H / 2)::

      u = W / 2 + f x / (-z),    v = H / 2 - f y / (-z)
"""
import math
from dataclasses import dataclass

import numpy as np
from numba import njit


def focal_from_fov(width, fov_deg=45.0):
    """Focal length (pixels) giving a horizontal field of view of ``fov_deg`` for ``width`` pixels."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of an image ``width`` x ``height`` pixels with focal length ``focal`` (pixels)."""

    focal: float
    width: int
    height: int

    def __post_init__(self):
        if not (np.isfinite(self.focal) and self.focal > 0):
            raise ValueError(f"focal length must be a positive finite number of pixels, got {self.focal}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_fov(cls, width, height, fov_deg=45.0):
        return cls(focal_from_fov(width, fov_deg), int(width), int(height))

    @property
    def center(self):
        return np.array([self.width / 2.0, self.height / 2.0])

    def project(self, points):
        """Project camera-space points (..., 3) mm to pixels (..., 2)."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {p.shape}")
        flat = np.ascontiguousarray(p.reshape(-1, 3))
        out = np.empty((flat.shape[0], 2))
        project_points(flat, self.focal, self.width / 2.0, self.height / 2.0, out)
        return out.reshape(p.shape[:-1] + (2,))


@njit(cache=True)
def project_points(x, f, cx, cy, out):
    """out (n, 2) = pixel projections of camera points x (n, 3)."""
    for i in range(x.shape[0]):
        iz = -1.0 / x[i, 2]
        out[i, 0] = cx + f * x[i, 0] * iz
        out[i, 1] = cy - f * x[i, 1] * iz


@njit(cache=True, inline="always")
def project_jac(x, f, cx, cy, uv, dx, df):
    """Projection of one point x (3,) with Jacobians dx (2, 3) w.r.t. x and df (2,) w.r.t. f."""
    iz = -1.0 / x[2]
    a = x[0] * iz
    b = x[1] * iz
    uv[0] = cx + f * a
    uv[1] = cy - f * b
    df[0] = a
    df[1] = -b
    fi = f * iz
    dx[0, 0] = fi
    dx[0, 1] = 0.0
    dx[0, 2] = fi * a
    dx[1, 0] = 0.0
    dx[1, 1] = -fi
    dx[1, 2] = -fi * b
