"""Import first in a benchmark script, before NumPy: every thread pool at one thread.

The project's speed figures are for one CPU thread; the BLAS, OpenMP and Numba pools read these
variables when they start, so they are set (unless the caller set them) before anything imports
NumPy, Numba or onnxruntime (whose sessions the front end already makes single-threaded).
"""
import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
