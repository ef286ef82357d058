"""Image kernels: crops for the landmark networks (similarity warps) and simple drawing.

An ROI is a square in the image given by its centre (pixels), side length ``size`` (pixels) and
``rotation`` (radians, counter-clockwise as seen on screen, i.e. the crop's x axis points along
``(cos r, -sin r)`` in image coordinates with v down).  Image coordinates follow the README:
origin at the top-left corner, u right, v down, pixel (i, j) centred at (i + 0.5, j + 0.5).
"""
import math
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
        c, n = math.cos(self.rotation) * s, math.sin(self.rotation) * s
        h = out_size / 2.0
        # crop x axis -> image (c, -n), crop y axis (down) -> image (n, c); the crop centre -> (cx, cy)
        return np.array([[c, n, self.cx - (c * h + n * h)], [-n, c, self.cy - (-n * h + c * h)]])

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


def _make_prefetch():
    """``_prefetch(arr, k)``: a software prefetch of element k of a 1-D array (LLVM ``llvm.prefetch``,
    read, high locality).  It never faults and changes no result.  A no-op in plain Python
    (``NUMBA_DISABLE_JIT=1``)."""
    from numba import config
    if config.DISABLE_JIT:
        def _prefetch(arr, k):
            return None
        return _prefetch

    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _prefetch(typingctx, arr, k):
        def codegen(context, builder, signature, args):
            arrty = signature.args[0]
            ary = context.make_array(arrty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [args[1]], wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p],
                                                  ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()
        return types.void(arr, k), codegen

    return _prefetch


_prefetch = _make_prefetch()

# uint8 -> float64 by table look-up: a load is cheaper than the integer-to-float conversion, whose
# port limited the interior loop (12 taps a pixel); the values are exact, so the crop is unchanged.
_U8 = np.arange(256, dtype=np.float64)


@njit(cache=True, fastmath=True)
def warp_chw(image, m, out_size, mirror, scale, offset, out):
    """Bilinear crop of a C-contiguous (H, W, 3) uint8 image into out (C, S, S) float32
    = pixel * scale + offset (channels 0..C-1, C <= 3).

    m is the (2, 3) crop-to-image affine map (pixel coordinates); pixels outside the image read 0.
    ``mirror`` flips the crop horizontally (crop x -> S - x).  (fastmath: every value is finite.)

    While output row i is interpolated, the image lines under row i + 1's sample line (both image
    rows of its bilinear taps, about one prefetch per 16 image pixels) are prefetched.  A crop of
    a frame that is not in cache is bound by memory latency: a rotated crop row crosses many image
    rows, which the hardware prefetchers do not follow.  Interior pixels convert their uint8 taps
    through a look-up table (exact).  Cold 192 x 192 crop of a 1080p frame: 1.37 ms without
    prefetching, 0.62 ms with the earlier block-wise touching loads, 0.42 ms now (warm: 0.37 ->
    0.26 ms; docs/history/NOTES_frontend.md, docs/history/NOTES_frontend4.md).  Returns 0.
    """
    h, w = image.shape[0], image.shape[1]
    nc = out.shape[0]
    flat = image.reshape(-1)
    last = flat.size - 1
    row = 3 * w
    sx = -1.0 if mirror else 1.0
    x0 = (out_size - 0.5) if mirror else 0.5
    du = m[0, 0] * sx                       # image step per output column
    dv = m[1, 0] * sx
    pstep = max(1, int(16.0 / max(abs(du) + abs(dv), 1e-6)))     # output columns per prefetch
    for i in range(-1, out_size):
        # sample line of the next row: image position of its first sample
        ip = i + 1
        up = m[0, 0] * x0 + m[0, 1] * (ip + 0.5) + m[0, 2] - 0.5
        vp = m[1, 0] * x0 + m[1, 1] * (ip + 0.5) + m[1, 2] - 0.5
        if i < 0:                           # prime: prefetch row 0's lines
            for j in range(0, out_size + pstep, pstep):
                _prefetch_taps(flat, up + du * j, vp + dv * j, h, w, row, last)
            continue
        pf = ip < out_size
        cnt = 0
        u = m[0, 0] * x0 + m[0, 1] * (i + 0.5) + m[0, 2] - 0.5
        v = m[1, 0] * x0 + m[1, 1] * (i + 0.5) + m[1, 2] - 0.5
        for j in range(out_size):
            if pf:
                if cnt == 0:
                    _prefetch_taps(flat, up, vp, h, w, row, last)
                    cnt = pstep
                cnt -= 1
                up += du
                vp += dv
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
                k = (v0 * w + u0) * 3           # tap (v0, u0) in the flat image
                if nc == 3:
                    for c in range(3):
                        acc = (w00 * _U8[flat[k + c]] + w01 * _U8[flat[k + 3 + c]]
                               + w10 * _U8[flat[k + row + c]] + w11 * _U8[flat[k + row + 3 + c]])
                        out[c, i, j] = acc * scale + offset
                else:
                    for c in range(nc):
                        acc = (w00 * _U8[flat[k + c]] + w01 * _U8[flat[k + 3 + c]]
                               + w10 * _U8[flat[k + row + c]] + w11 * _U8[flat[k + row + 3 + c]])
                        out[c, i, j] = acc * scale + offset
            else:
                _border_pixel(image, u0, v0, fu, fv, scale, offset, out, i, j)
            u += du
            v += dv
    return 0


@njit(cache=True, fastmath=True)
def _border_pixel(image, u0, v0, fu, fv, scale, offset, out, i, j):
    """Output pixel (i, j) of :func:`warp_chw` whose bilinear taps (v0..v0+1, u0..u0+1) are not all
    inside the image; taps outside read 0."""
    h, w = image.shape[0], image.shape[1]
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


@njit(cache=True, fastmath=True, inline="always")
def _prefetch_taps(flat, u, v, h, w, row, last):
    """Prefetch the image lines of the bilinear taps at (u, v) (clamped into the image)."""
    uu = min(max(u, 0.0), w - 1.0)
    vv = min(max(v, 0.0), h - 1.0)
    k = (int(vv) * w + int(uu)) * 3
    _prefetch(flat, k)
    _prefetch(flat, min(k + row, last))


def as_image(image):
    """``image`` as a C-contiguous (H, W, 3) uint8 RGB array; ValueError otherwise."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return image


def crop(image, roi, out_size, scale=1.0 / 255.0, offset=0.0, mirror=False, out=None):
    """Crop ``roi`` of an (H, W, 3) uint8 RGB image to a (3, S, S) float32 array (NCHW body)."""
    image = as_image(image)
    if out is None:
        out = np.empty((3, out_size, out_size), np.float32)
    warp_chw(image, roi.matrix(out_size), out_size, mirror, scale, offset, out)
    return out


@njit(cache=True)
def affine_points(src, dim, m, out):
    """Map network points to image pixels: ``out[k] = m @ (src[dim k], src[dim k + 1], 1)`` for
    k < len(out).

    src : (>= dim * len(out),) float32 or float64, flat network output, ``dim`` numbers per point
    (x, y first, crop pixels); m : (2, 3) float64 crop-to-image map (:meth:`ROI.matrix`);
    out : (K, 2) float64, written in place.
    """
    for k in range(out.shape[0]):
        x = np.float64(src[dim * k])
        y = np.float64(src[dim * k + 1])
        out[k, 0] = x * m[0, 0] + y * m[0, 1] + m[0, 2]
        out[k, 1] = x * m[1, 0] + y * m[1, 1] + m[1, 2]


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
