"""Where lmfit3d finds its inputs and keeps its cache.

- ``$LMFIT3D_HOME`` (default ``~/.cache/lmfit3d``): git-ignored cache of built artefacts
  (the face model file, converted ONNX models).
- ``$ICT_FACEKIT`` (default ``../shared/ict-facekit`` next to the checkout): ICT-FaceKit sources.
- ``data/`` in the repository: small project-made files (landmark index lists).
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of the cache (``$LMFIT3D_HOME`` or ``~/.cache/lmfit3d``)."""
    env = os.environ.get("LMFIT3D_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmfit3d"


def default_ict_dir() -> Path:
    """ICT-FaceKit root: ``$ICT_FACEKIT`` or ``../shared/ict-facekit`` beside the checkout."""
    env = os.environ.get("ICT_FACEKIT")
    if env:
        return Path(env).expanduser()
    for cand in (REPO_ROOT.parent / "shared" / "ict-facekit", Path.cwd().parent / "shared" / "ict-facekit"):
        if cand.is_dir():
            return cand
    return REPO_ROOT.parent / "shared" / "ict-facekit"


def data_dir() -> Path:
    """Directory of the project's small data files (``data/`` of the checkout)."""
    for cand in (Path(__file__).resolve().parent / "data", REPO_ROOT / "data"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("lmfit3d data/ directory not found; install with `pip install -e .`")


def shared_media_dir() -> Path:
    """The shared test media folder (``../shared/media``)."""
    return default_ict_dir().parent / "media"


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success.

    A failure (exception) removes the temporary file, so no half-written output is left that
    looks complete.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_npz(path, required=()):
    """All arrays of an .npz file as a dict; ValueError naming the file when it is missing, not a
    readable .npz, or lacks one of the ``required`` keys."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: input file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    for key in required:
        if key not in data:
            raise ValueError(f"{path}: missing required key {key!r}")
    return data
