"""Image kernels: crops for the landmark networks (similarity warps) and simple drawing.

An ROI is a square in the image given by its centre (pixels), side length ``size`` (pixels) and
``rotation`` (radians, counter-clockwise as seen on screen, i.e. the crop's x axis points along
``(cos r, -sin r)`` in image coordinates with v down).  Image coordinates follow the README:
origin at the top-left corner, u right, v down, pixel (i, j) centred at (i + 0.5, j + 0.5).
"""
from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass(frozen=True)
class ROI:
    """A square region of interest: centre (cx, cy) pixels, side ``size`` pixels, ``rotation`` radians."""

    cx: float
    cy: float
    size: float
    rotation: float = 0.0

    def matrix(self, out_size):
        """(2, 3) affine map from crop pixel coordinates (0..out_size) to image coordinates."""
        s = self.size / out_size
        c, n = np.cos(self.rotation) * s, np.sin(self.rotation) * s
        # crop x axis -> image (c, -n), crop y axis (down) -> image (n, c)
        a = np.array([[c, n], [-n, c]])
        t = np.array([self.cx, self.cy]) - a @ np.array([out_size / 2.0, out_size / 2.0])
        return np.column_stack([a, t])

    def to_image(self, pts, out_size):
        """Map crop pixel coordinates (N, 2) to image pixel coordinates."""
        m = self.matrix(out_size)
        return pts @ m[:, :2].T + m[:, 2]

    def to_crop(self, pts, out_size):
        """Map image pixel coordinates (N, 2) to crop pixel coordinates."""
        m = self.matrix(out_size)
        return np.linalg.solve(m[:, :2], (np.asarray(pts) - m[:, 2]).T).T

    def scaled(self, factor):
        return ROI(self.cx, self.cy, self.size * factor, self.rotation)


@njit(cache=True, fastmath=True)
def _touch_rows(image, m, out_size, mirror, i0, i1):
    """Read one byte about every 8 image pixels along the sample lines of output rows i0..i1-1
    (both image rows of the bilinear taps); returns their sum (so the loads are kept).

    A crop of a frame that is not in cache is bound by memory latency: a rotated crop row crosses
    many image rows, which the hardware prefetchers do not follow.  These loads are independent of
    each other, so the core keeps many misses in flight; the bilinear pass then reads cached lines
    (cold 192 x 192 crop of a 1080p frame: 1.37 -> 0.61 ms, docs/NOTES_frontend.md).
    """
    h, w = image.shape[0], image.shape[1]
    sx = -1.0 if mirror else 1.0
    x0 = (out_size - 0.5) if mirror else 0.5
    du = m[0, 0] * sx
    dv = m[1, 0] * sx
    step = max(1, int(8.0 / max(abs(du) + abs(dv), 1e-6)))
    acc = 0
    for i in range(i0, i1):
        yc = i + 0.5
        u = m[0, 0] * x0 + m[0, 1] * yc + m[0, 2] - 0.5
        v = m[1, 0] * x0 + m[1, 1] * yc + m[1, 2] - 0.5
        for j in range(0, out_size + step, step):
            jj = min(j, out_size - 1)
            uu = min(max(u + du * jj, 0.0), w - 1.0)
            vv = min(max(v + dv * jj, 0.0), h - 1.0)
            u0 = int(uu)
            v0 = int(vv)
            acc += image[v0, u0, 0] + image[min(v0 + 1, h - 1), u0, 0]
    return acc


@njit(cache=True, fastmath=True)
def warp_chw(image, m, out_size, mirror, scale, offset, out):
    """Bilinear crop of an (H, W, 3) uint8 image into out (C, S, S) float32 = pixel * scale + offset
    (channels 0..C-1, C <= 3).

    m is the (2, 3) crop-to-image affine map (pixel coordinates); pixels outside the image read 0.
    ``mirror`` flips the crop horizontally (crop x -> S - x).  (fastmath: every value is finite.)
    Works in blocks of 8 rows: the image lines of the next block are touched (:func:`_touch_rows`)
    before the current block is interpolated.  Returns the touch checksum (unused).
    """
    blk = 8
    acc = _touch_rows(image, m, out_size, mirror, 0, min(blk, out_size))
    for i0 in range(0, out_size, blk):
        i1 = min(i0 + blk, out_size)
        if i1 < out_size:
            acc += _touch_rows(image, m, out_size, mirror, i1, min(i1 + blk, out_size))
        _warp_rows(image, m, out_size, mirror, scale, offset, out, i0, i1)
    return acc


@njit(cache=True, fastmath=True)
def _warp_rows(image, m, out_size, mirror, scale, offset, out, i0, i1):
    """Rows i0..i1-1 of :func:`warp_chw`."""
    h, w = image.shape[0], image.shape[1]
    sx = -1.0 if mirror else 1.0
    x0 = (out_size - 0.5) if mirror else 0.5
    for i in range(i0, i1):
        yc = i + 0.5
        # image position of the row's first sample, and its step per output column
        u = m[0, 0] * x0 + m[0, 1] * yc + m[0, 2] - 0.5
        v = m[1, 0] * x0 + m[1, 1] * yc + m[1, 2] - 0.5
        du = m[0, 0] * sx
        dv = m[1, 0] * sx
        for j in range(out_size):
            uf = np.floor(u)
            vf = np.floor(v)
            u0 = int(uf)
            v0 = int(vf)
            fu = u - uf
            fv = v - vf
            if u0 >= 0 and v0 >= 0 and u0 + 1 < w and v0 + 1 < h:
                w00 = (1.0 - fu) * (1.0 - fv)
                w01 = fu * (1.0 - fv)
                w10 = (1.0 - fu) * fv
                w11 = fu * fv
                for c in range(out.shape[0]):
                    acc = (w00 * image[v0, u0, c] + w01 * image[v0, u0 + 1, c]
                           + w10 * image[v0 + 1, u0, c] + w11 * image[v0 + 1, u0 + 1, c])
                    out[c, i, j] = acc * scale + offset
            else:
                for c in range(out.shape[0]):
                    acc = 0.0
                    for dvv in range(2):
                        vv = v0 + dvv
                        if vv < 0 or vv >= h:
                            continue
                        wv = fv if dvv else 1.0 - fv
                        for duu in range(2):
                            uu = u0 + duu
                            if uu < 0 or uu >= w:
                                continue
                            acc += wv * (fu if duu else 1.0 - fu) * image[vv, uu, c]
                    out[c, i, j] = acc * scale + offset
            u += du
            v += dv


def crop(image, roi, out_size, scale=1.0 / 255.0, offset=0.0, mirror=False, out=None):
    """Crop ``roi`` of an (H, W, 3) uint8 RGB image to a (3, S, S) float32 array (NCHW body)."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if out is None:
        out = np.empty((3, out_size, out_size), np.float32)
    warp_chw(image, roi.matrix(out_size), out_size, mirror, scale, offset, out)
    return out


@njit(cache=True)
def draw_points(image, pts, radius, color):
    """Draw filled discs of ``radius`` pixels at pts (N, 2) into an (H, W, 3) uint8 image in place."""
    h, w = image.shape[0], image.shape[1]
    r2 = radius * radius
    for k in range(pts.shape[0]):
        u, v = pts[k, 0], pts[k, 1]
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        for y in range(int(v - radius - 1), int(v + radius + 2)):
            if y < 0 or y >= h:
                continue
            for x in range(int(u - radius - 1), int(u + radius + 2)):
                if x < 0 or x >= w:
                    continue
                if (x + 0.5 - u) ** 2 + (y + 0.5 - v) ** 2 <= r2:
                    for c in range(3):
                        image[y, x, c] = color[c]
