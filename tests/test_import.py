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
     ("onnx", "tflite2onnx", "skimage", "jax", "pygltflib", "matplotlib", "dask", "distributed")),
    ("import lmfit3d.cli; lmfit3d.cli.main(['track', '--help'])", ("numba", "numpy", "dask", "distributed")),
    ("from lmfit3d.predict import MediaPipeLandmarks, NetworkLandmarks\nMediaPipeLandmarks(); NetworkLandmarks()",
     ("onnx", "tflite2onnx", "skimage", "jax")),
], ids=["package", "cli", "cli-help", "skinning", "every-module", "track-help", "onnx-backends"])
def test_import_is_light(code, also_absent):
    loaded = _modules_after(code)
    assert "lmfit3d" in loaded
    assert not loaded & set(HEAVY + also_absent)


def test_skinning_does_load_numba():
    # the probe above can see numba when it is imported (so its absence elsewhere means something)
    assert "numba" in _modules_after("import lmfit3d.skinning")


def test_the_dask_path_does_load_distributed():
    # the probe sees dask.distributed when --dask's code path imports it (so its absence above means something)
    pytest.importorskip("distributed", reason="the cluster extra (pip install 'lmfit3d[cluster]')")
    assert {"dask", "distributed"} <= _modules_after("import lmfit3d.cluster; lmfit3d.cluster.require_distributed()")


def test_lazy_attributes():
    import lmfit3d

    assert lmfit3d.Params is lmfit3d.model.Params
    assert callable(lmfit3d.load_model)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        lmfit3d.nonexistent  # noqa: B018


def _package_imports():
    """{module: {modules of lmfit3d it imports}} from the source of every ``lmfit3d/*.py``: top-level
    and function-local ``from .x import ...``, ``from . import x``, ``import lmfit3d.x``."""
    import ast
    from pathlib import Path

    import lmfit3d
    pkg = Path(lmfit3d.__file__).parent
    mods = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for path in sorted(pkg.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "lmfit3d"):
                    parts = (node.module or "").split(".")
                    parts = parts[1:] if node.level == 0 else parts
                    if parts and parts[0]:
                        deps.add(parts[0])
                    else:                       # from . import x (x a submodule or a package attribute)
                        deps.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names
                            if a.name.startswith("lmfit3d.") and a.name.split(".")[1] in mods)
        graph[path.stem] = deps & mods - {path.stem}
    return graph


def _find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state = {}                                   # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d, path)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def test_find_cycle_reports_the_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_package_imports_have_no_cycle():
    graph = _package_imports()
    assert {"track", "media", "outputs", "stills", "batch", "capture", "capture_files", "detect"} <= set(graph)
    assert "fit" in graph["track"] and "track" in graph["stills"]      # the parser sees the edges
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle between lmfit3d modules: " + " -> ".join(cycle)
