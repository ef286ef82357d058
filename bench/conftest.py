"""Benchmark fixtures.  Timings are single-threaded: Numba, and the BLAS behind NumPy, get one thread.

The thread settings must be in the environment before numba / numpy are first imported, which is
why they sit at the top of this conftest (pytest imports it before any benchmark module).
"""
import os

os.environ["NUMBA_NUM_THREADS"] = "1"
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model():
    """The face model, built into the cache on first use."""
    from lmfit3d.model import ensure_model

    return ensure_model()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
