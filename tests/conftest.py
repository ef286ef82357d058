"""Shared fixtures: the built face model (built into the cache on first use) and a seeded RNG."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def model_path():
    """Path of the cached model file, building it first (about 3 s) when it is missing."""
    from lmfit3d.model import build_model, default_model_path, save_model

    path = default_model_path()
    if not path.is_file():
        save_model(build_model(), path)
    return path


@pytest.fixture(scope="session")
def model(model_path):
    """The face model (:class:`lmfit3d.model.FaceModel`), loaded once per session."""
    from lmfit3d.model import load_model

    return load_model(model_path)


@pytest.fixture(scope="session")
def facex_dir():
    """ICT-FaceKit's ``FaceXModel`` folder (the build's input)."""
    from lmfit3d.paths import default_ict_dir

    return default_ict_dir() / "FaceXModel"


@pytest.fixture
def rng():
    """Seeded generator: every test draws reproducible random inputs."""
    return np.random.default_rng(12345)
