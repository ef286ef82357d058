"""Importing lmfit3d stays light: no deep-learning frameworks, and numba only when a kernel is used."""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "tensorflow", "mediapipe")


def _modules_after(code):
    """Top-level module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("code, also_absent", [
    ("import lmfit3d", ("numba", "numpy")),
    ("import lmfit3d.cli", ("numba", "numpy")),
    ("import lmfit3d.cli; lmfit3d.cli.build_parser().format_help()", ("numba", "numpy")),
    ("import lmfit3d.skinning", ()),
    ("import lmfit3d, importlib\nfor m in lmfit3d._SUBMODULES: importlib.import_module('lmfit3d.' + m)",
     ("onnx", "tflite2onnx", "skimage", "jax")),
    ("from lmfit3d.predict import MediaPipeLandmarks, NetworkLandmarks\nMediaPipeLandmarks(); NetworkLandmarks()",
     ("onnx", "tflite2onnx", "skimage", "jax")),
], ids=["package", "cli", "cli-help", "skinning", "every-module", "onnx-backends"])
def test_import_is_light(code, also_absent):
    loaded = _modules_after(code)
    assert "lmfit3d" in loaded
    assert not loaded & set(HEAVY + also_absent)


def test_skinning_does_load_numba():
    # the probe above can see numba when it is imported (so its absence elsewhere means something)
    assert "numba" in _modules_after("import lmfit3d.skinning")


def test_lazy_attributes():
    import lmfit3d

    assert lmfit3d.Params is lmfit3d.model.Params
    assert callable(lmfit3d.load_model)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        lmfit3d.nonexistent  # noqa: B018
