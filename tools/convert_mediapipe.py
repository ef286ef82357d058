"""Convert MediaPipe's face detector, face mesh and iris models (TFLite, Apache-2.0) to ONNX.

The models ship inside the PyPI wheel ``mediapipe==0.10.21`` (see ../shared/notes/mediapipe-onnx.md).
This set-up step fetches that wheel with ``pip download --no-deps`` (or takes ``--wheel PATH``),
extracts the three ``.tflite`` files (kept beside the output, for the parity test) and converts them with ``tflite2onnx`` (pure Python; installed
by the ``tools`` extra, never a runtime dependency) into ``$LMFIT3D_HOME/mediapipe/``.

``tflite2onnx`` 0.4.1 fails on face_landmark.tflite: its PReLU alphas are fp16 constants of shape
[1, 1, C] that pass through DEQUANTIZE, and the tool applies a 4-D NHWC->NCHW permutation to the
3-D constant.  Padding short shapes with leading 1s before the permutation fixes it (patched below).

Usage::

    python tools/convert_mediapipe.py [--wheel mediapipe-0.10.21-...whl] [--out DIR] [--force]
"""
import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmfit3d.paths import atomic_write  # noqa: E402
from lmfit3d.predict import mediapipe_dir  # noqa: E402

WHEEL_SPEC = "mediapipe==0.10.21"
MODELS = {
    "face_detection_short_range": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "iris_landmark": "mediapipe/modules/iris_landmark/iris_landmark.tflite",
}


def _patch_tflite2onnx():
    import numpy as np
    from tflite2onnx import tensor

    if getattr(tensor.Tensor.transform, "_lmfit3d_patched", False):
        return
    orig = tensor.Tensor.transform

    def transform(self):
        if self.layout is not None and len(self.shape) < len(self.layout.source):
            self.shape = [1] * (len(self.layout.source) - len(self.shape)) + list(self.shape)
            if self.isInitializer:
                self.data = np.asarray(self.data).reshape(self.shape)
        return orig(self)

    transform._lmfit3d_patched = True
    tensor.Tensor.transform = transform


def fetch_wheel(dest):
    """Download the mediapipe wheel (no dependencies) into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "-d", str(dest), WHEEL_SPEC]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("mediapipe-*.whl"))
    if res.returncode != 0 or not wheels:
        raise SystemExit(f"convert_mediapipe: could not download {WHEEL_SPEC}: {res.stderr.strip()[-300:]}")
    return wheels[0]


def extract_tflite(wheel, dest):
    """Extract the three .tflite models from the wheel into ``dest``; returns name -> path."""
    out = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for name, member in MODELS.items():
                path = Path(dest) / f"{name}.tflite"
                path.write_bytes(z.read(member))
                out[name] = path
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SystemExit(f"convert_mediapipe: {wheel}: not a mediapipe 0.10.21 wheel ({exc})")
    return out


def convert(tflite_path, onnx_path):
    """tflite2onnx conversion, written atomically to ``onnx_path``."""
    import tflite2onnx
    _patch_tflite2onnx()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        tflite2onnx.convert(str(tflite_path), str(tmp_onnx))
        with atomic_write(onnx_path, "wb") as fh:
            fh.write(tmp_onnx.read_bytes())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="a local mediapipe-0.10.21 wheel (default: pip download)")
    ap.add_argument("--out", default=None, help="output folder (default: $LMFIT3D_HOME/mediapipe)")
    ap.add_argument("--force", action="store_true", help="convert even if the ONNX files exist")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else mediapipe_dir()
    want = [out / f"{n}.{ext}" for n in MODELS for ext in ("onnx", "tflite")]
    if not args.force and all(p.is_file() for p in want):
        print(f"convert_mediapipe: up to date in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    import logging
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else fetch_wheel(tmp)
        tfl = extract_tflite(wheel, tmp)
        for name, path in tfl.items():
            convert(path, out / f"{name}.onnx")
            with atomic_write(out / f"{name}.tflite", "wb") as fh:    # kept for the parity test
                fh.write(path.read_bytes())
            print(f"convert_mediapipe: {out / (name + '.onnx')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
