"""Shared fixtures: the built face model (built into the cache on first use) and a seeded RNG."""
import os

# one CPU thread, as the CLI (lmfit3d.cli.main) and the benchmarks (bench/one_thread.py) run: set before
# NumPy starts its BLAS pool (the capture's LM solver is BLAS-bound; a pool per core on a shared machine
# made its matrix products 6x slower)
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model():
    """The face model (:class:`lmfit3d.model.FaceModel`), built into the cache on first use."""
    from lmfit3d.model import ensure_model

    return ensure_model()


@pytest.fixture(scope="session")
def model_path(model):
    """Path of the cached model file (built by the ``model`` fixture when missing)."""
    from lmfit3d.model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def facex_dir():
    """ICT-FaceKit's ``FaceXModel`` folder (the build's input)."""
    from lmfit3d.paths import default_ict_dir

    return default_ict_dir() / "FaceXModel"


@pytest.fixture
def rng():
    """Seeded generator: every test draws reproducible random inputs."""
    return np.random.default_rng(12345)


def run_without_jit(test_file, selector, timeout=600):
    """Run the tests of ``test_file`` matching ``-k selector`` in a subprocess with NUMBA_DISABLE_JIT=1,
    so the kernels' Python source (not only their compiled form) is checked; returns pytest's stdout
    (the caller checks how many passed) after asserting the run succeeded."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-o", "addopts=", "-p",
                           "no:cacheprovider", "-k", selector], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_model():
    """A small synthetic face model (``lmfit3d.testing.tiny_model``, seed 0: ~600 vertices, the real
    rig, 6 identity modes, 12 ICT-named expression shapes): kernel tests that run without ../shared."""
    from lmfit3d.testing import tiny_model as build

    return build(np.random.default_rng(0))
