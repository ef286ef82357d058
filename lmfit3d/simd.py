"""Fixed-width vector updates (W = 4 float64 lanes) for the short rows of the accumulation kernels.

The J^T J accumulation of the tracking fit (``tracking_normal.vertex_term_tracking``) and the Cholesky
factorisation of the LM step (``solvers``) are made of thousands of row updates
``y[i:i + n] += a0 x0[j:j + n] + a1 x1[j:j + n]`` with n about 8 to 40.  Numba's loop vectoriser
leaves such loops scalar in practice (its vector body needs 16 to 32 iterations, its run-time alias
checks cost as much as the row, and numba runs LLVM without the SLP vectoriser), so these helpers
emit the vector operations directly: one call updates W consecutive entries, and a row of n
entries is ``ceil(n / W)`` calls over zero-padded buffers (see :func:`padded`).

Each helper is a plain Python function (used as is under ``NUMBA_DISABLE_JIT=1``, and the
reference of the tests) with a numba overload that lowers to LLVM ``<W x double>`` loads,
multiplies, adds and a store, in the same order of operations, hence bit for bit the same result
as the Python version.  W = 4 (256 bits): measured faster than 8 lanes on the accumulation rows
(AMD Zen 4; AVX2 machines run it natively); LLVM splits the vectors on SSE2-only machines.

:func:`vdot` is the matching W-wide dot product (the back substitution of the Cholesky solve and the
predicted reduction of ``solvers.lm_trial``): one vector multiply and a fixed tree of adds.

**No bounds checks**: the caller guarantees ``yo + W <= y.size`` and ``xo + W <= x.size``.  The
arrays must be 1-D, C-contiguous float64 (a row view ``a[i]`` or ``a[i, j:]`` of a C array is).
"""
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

W = 4                                           # lanes per update (256-bit: AVX2 and up)
_VEC = ir.VectorType(ir.DoubleType(), W)


@njit(cache=True)
def padded(n):
    """Smallest multiple of :data:`W` that is >= n + W - 1 (room for a chunked row from any start)."""
    return -(-(n + W - 1) // W) * W


@njit(cache=True)
def n_chunks(n):
    """Number of W-wide updates covering n entries."""
    return (n + W - 1) // W


def vaxpy(y, yo, a, x, xo):
    """y[yo:yo + W] += a * x[xo:xo + W]."""
    y[yo:yo + W] += a * x[xo:xo + W]


def vaxpy2(y, yo, a0, x0, a1, x1, xo):
    """y[yo:yo + W] += (a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W])."""
    y[yo:yo + W] += a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]


def vaxpy3(y, yo, a0, x0, a1, x1, a2, x2, xo):
    """y[yo:yo + W] += ((a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]) + a2 * x2[xo:xo + W])."""
    y[yo:yo + W] += a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W] + a2 * x2[xo:xo + W]


def vset2(y, yo, a0, x0, a1, x1, xo):
    """y[yo:yo + W] = a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]."""
    y[yo:yo + W] = a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]


def vdot(x, xo, y, yo):
    """sum(x[xo:xo + W] * y[yo:yo + W]) as a float, the W products summed as a tree (halves added
    lane by lane until one is left: the order of the compiled horizontal sum)."""
    p = x[xo:xo + W] * y[yo:yo + W]
    while p.size > 1:
        h = p.size // 2
        p = p[:h] + p[h:]
    return float(p[0])


def _is_row(t):
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.float64


def _vec_ptr(context, builder, aty, arr, off):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), _VEC.as_pointer())


def _splat(builder, v):
    u = builder.insert_element(ir.Constant(_VEC, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))


def _codegen(n_terms, add=True):
    """Lowering of y[yo:yo+W] (+)= sum_k a_k x_k[xo:xo+W] (summed left to right), n_terms sources."""

    def codegen(context, builder, signature, args):
        ty = signature.args
        yo = context.cast(builder, args[1], ty[1], types.int64)
        xo = context.cast(builder, args[-1], ty[-1], types.int64)
        acc = None
        for k in range(n_terms):
            a = context.cast(builder, args[2 + 2 * k], ty[2 + 2 * k], types.float64)
            px = _vec_ptr(context, builder, ty[3 + 2 * k], args[3 + 2 * k], xo)
            term = builder.fmul(_splat(builder, a), builder.load(px, align=8))
            acc = term if acc is None else builder.fadd(acc, term)
        py = _vec_ptr(context, builder, ty[0], args[0], yo)
        builder.store(builder.fadd(builder.load(py, align=8), acc) if add else acc, py, align=8)
        return context.get_dummy_value()

    return codegen


def _signature(y, yo, coeffs, rows, xo):
    ok = (_is_row(y) and all(_is_row(r) for r in rows) and all(isinstance(c, types.Float) for c in coeffs)
          and isinstance(yo, types.Integer) and isinstance(xo, types.Integer))
    if not ok:
        return None
    args = [y, yo]
    for c, r in zip(coeffs, rows):
        args += [c, r]
    return types.void(*args, xo)


@intrinsic
def _vaxpy_ir(typingctx, y, yo, a, x, xo):
    return _signature(y, yo, (a,), (x,), xo), _codegen(1)


@intrinsic
def _vaxpy2_ir(typingctx, y, yo, a0, x0, a1, x1, xo):
    return _signature(y, yo, (a0, a1), (x0, x1), xo), _codegen(2)


@intrinsic
def _vaxpy3_ir(typingctx, y, yo, a0, x0, a1, x1, a2, x2, xo):
    return _signature(y, yo, (a0, a1, a2), (x0, x1, x2), xo), _codegen(3)


@intrinsic
def _vset2_ir(typingctx, y, yo, a0, x0, a1, x1, xo):
    return _signature(y, yo, (a0, a1), (x0, x1), xo), _codegen(2, add=False)


def _half(builder, v, start, width):
    """Lanes start .. start + width - 1 of vector v."""
    mask = ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(start, start + width)))
    return builder.shuffle_vector(v, v, mask)


def _dot_codegen(context, builder, signature, args):
    ty = signature.args
    xo = context.cast(builder, args[1], ty[1], types.int64)
    yo = context.cast(builder, args[3], ty[3], types.int64)
    px = _vec_ptr(context, builder, ty[0], args[0], xo)
    py = _vec_ptr(context, builder, ty[2], args[2], yo)
    v = builder.fmul(builder.load(px, align=8), builder.load(py, align=8))
    w = W
    while w > 1:
        w //= 2
        v = builder.fadd(_half(builder, v, 0, w), _half(builder, v, w, w))
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


@intrinsic
def _vdot_ir(typingctx, x, xo, y, yo):
    if not (_is_row(x) and _is_row(y) and isinstance(xo, types.Integer) and isinstance(yo, types.Integer)):
        return None
    return types.float64(x, xo, y, yo), _dot_codegen


def _check(name, y, rows):
    for t in (y, *rows):
        if not _is_row(t):
            raise TypingError(f"simd.{name} needs 1-D C-contiguous float64 arrays, got {t}")


@overload(vaxpy, inline="always")
def _ol_vaxpy(y, yo, a, x, xo):
    _check("vaxpy", y, (x,))
    return lambda y, yo, a, x, xo: _vaxpy_ir(y, yo, a, x, xo)


@overload(vaxpy2, inline="always")
def _ol_vaxpy2(y, yo, a0, x0, a1, x1, xo):
    _check("vaxpy2", y, (x0, x1))
    return lambda y, yo, a0, x0, a1, x1, xo: _vaxpy2_ir(y, yo, a0, x0, a1, x1, xo)


@overload(vaxpy3, inline="always")
def _ol_vaxpy3(y, yo, a0, x0, a1, x1, a2, x2, xo):
    _check("vaxpy3", y, (x0, x1, x2))
    return lambda y, yo, a0, x0, a1, x1, a2, x2, xo: _vaxpy3_ir(y, yo, a0, x0, a1, x1, a2, x2, xo)


@overload(vset2, inline="always")
def _ol_vset2(y, yo, a0, x0, a1, x1, xo):
    _check("vset2", y, (x0, x1))
    return lambda y, yo, a0, x0, a1, x1, xo: _vset2_ir(y, yo, a0, x0, a1, x1, xo)


@overload(vdot, inline="always")
def _ol_vdot(x, xo, y, yo):
    _check("vdot", x, (y,))
    return lambda x, xo, y, yo: _vdot_ir(x, xo, y, yo)


__all__ = ["W", "padded", "n_chunks", "vaxpy", "vaxpy2", "vaxpy3", "vset2", "vdot"]
