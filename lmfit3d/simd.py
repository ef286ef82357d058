"""Fixed-width vector updates (8 float64 lanes) for the short rows of the accumulation kernels.

The J^T J accumulation of the tracking fit (``terms.vertex_term_tracking``) and the Cholesky
factorisation of the LM step (``solvers``) are made of thousands of row updates
``y[i:i + n] += a0 x0[j:j + n] + a1 x1[j:j + n]`` with n about 8 to 40.  Numba's loop vectoriser
leaves such loops scalar in practice (its vector body needs 16 to 32 iterations, its run-time alias
checks cost as much as the row, and numba runs LLVM without the SLP vectoriser), so these helpers
emit the vector operations directly: one call updates W = 8 consecutive entries, and a row of n
entries is ``ceil(n / W)`` calls over zero-padded buffers (see :func:`padded`).

Each helper is a plain Python function (used as is under ``NUMBA_DISABLE_JIT=1``, and the
reference of the tests) with a numba overload that lowers to LLVM ``<8 x double>`` loads,
multiplies, adds and a store, in the same order of operations, hence bit for bit the same result
as the Python version.  LLVM splits the vectors for narrower machines (AVX2, SSE2).

:func:`dot8` is the matching W-wide dot product (the back substitution of the Cholesky solve and the
predicted reduction of ``solvers.lm_trial``): one vector multiply and a fixed tree of adds.

**No bounds checks**: the caller guarantees ``yo + W <= y.size`` and ``xo + W <= x.size``.  The
arrays must be 1-D, C-contiguous float64 (a row view ``a[i]`` or ``a[i, j:]`` of a C array is).
"""
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

W = 8                                           # lanes per update
_VEC = ir.VectorType(ir.DoubleType(), W)


@njit(cache=True)
def padded(n):
    """Smallest multiple of :data:`W` that is >= n + W - 1 (room for a chunked row from any start)."""
    return -(-(n + W - 1) // W) * W


@njit(cache=True)
def n_chunks(n):
    """Number of W-wide updates covering n entries."""
    return (n + W - 1) // W


def axpy8(y, yo, a, x, xo):
    """y[yo:yo + W] += a * x[xo:xo + W]."""
    y[yo:yo + W] += a * x[xo:xo + W]


def axpy2_8(y, yo, a0, x0, a1, x1, xo):
    """y[yo:yo + W] += (a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W])."""
    y[yo:yo + W] += a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]


def axpy3_8(y, yo, a0, x0, a1, x1, a2, x2, xo):
    """y[yo:yo + W] += ((a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W]) + a2 * x2[xo:xo + W])."""
    y[yo:yo + W] += a0 * x0[xo:xo + W] + a1 * x1[xo:xo + W] + a2 * x2[xo:xo + W]


def dot8(x, xo, y, yo):
    """sum(x[xo:xo + W] * y[yo:yo + W]) as a float, the W products summed as a tree: lanes i and i + 4,
    then i and i + 2, then 0 and 1 (the order of the compiled horizontal sum)."""
    p = x[xo:xo + W] * y[yo:yo + W]
    q = p[:4] + p[4:]
    r = q[:2] + q[2:]
    return float(r[0] + r[1])


def _is_row(t):
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.float64


def _vec_ptr(context, builder, aty, arr, off):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), _VEC.as_pointer())


def _splat(builder, v):
    u = builder.insert_element(ir.Constant(_VEC, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))


def _codegen(n_terms):
    """Lowering of y[yo:yo+W] += sum_k a_k x_k[xo:xo+W] (summed left to right), n_terms sources."""

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
        builder.store(builder.fadd(builder.load(py, align=8), acc), py, align=8)
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
def _axpy8_ir(typingctx, y, yo, a, x, xo):
    return _signature(y, yo, (a,), (x,), xo), _codegen(1)


@intrinsic
def _axpy2_8_ir(typingctx, y, yo, a0, x0, a1, x1, xo):
    return _signature(y, yo, (a0, a1), (x0, x1), xo), _codegen(2)


@intrinsic
def _axpy3_8_ir(typingctx, y, yo, a0, x0, a1, x1, a2, x2, xo):
    return _signature(y, yo, (a0, a1, a2), (x0, x1, x2), xo), _codegen(3)


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
    q = builder.fadd(_half(builder, v, 0, 4), _half(builder, v, 4, 4))
    r = builder.fadd(_half(builder, q, 0, 2), _half(builder, q, 2, 2))
    i32 = ir.IntType(32)
    return builder.fadd(builder.extract_element(r, ir.Constant(i32, 0)),
                        builder.extract_element(r, ir.Constant(i32, 1)))


@intrinsic
def _dot8_ir(typingctx, x, xo, y, yo):
    if not (_is_row(x) and _is_row(y) and isinstance(xo, types.Integer) and isinstance(yo, types.Integer)):
        return None
    return types.float64(x, xo, y, yo), _dot_codegen


def _check(name, y, rows):
    for t in (y, *rows):
        if not _is_row(t):
            raise TypingError(f"simd.{name} needs 1-D C-contiguous float64 arrays, got {t}")


@overload(axpy8, inline="always")
def _ol_axpy8(y, yo, a, x, xo):
    _check("axpy8", y, (x,))
    return lambda y, yo, a, x, xo: _axpy8_ir(y, yo, a, x, xo)


@overload(axpy2_8, inline="always")
def _ol_axpy2_8(y, yo, a0, x0, a1, x1, xo):
    _check("axpy2_8", y, (x0, x1))
    return lambda y, yo, a0, x0, a1, x1, xo: _axpy2_8_ir(y, yo, a0, x0, a1, x1, xo)


@overload(axpy3_8, inline="always")
def _ol_axpy3_8(y, yo, a0, x0, a1, x1, a2, x2, xo):
    _check("axpy3_8", y, (x0, x1, x2))
    return lambda y, yo, a0, x0, a1, x1, a2, x2, xo: _axpy3_8_ir(y, yo, a0, x0, a1, x1, a2, x2, xo)


@overload(dot8, inline="always")
def _ol_dot8(x, xo, y, yo):
    _check("dot8", x, (y,))
    return lambda x, xo, y, yo: _dot8_ir(x, xo, y, yo)


__all__ = ["W", "padded", "n_chunks", "axpy8", "axpy2_8", "axpy3_8", "dot8"]
