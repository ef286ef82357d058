"""`--report` (the HTML report), `--overlay-style`, and `--gltf` / `--report` through `lmfit3d track` and
`lmfit3d fit` on real media."""
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from lmfit3d.cli import main
from lmfit3d.model import Params
from lmfit3d.outputs import _OverlayRenderer
from lmfit3d.paths import shared_media_dir
from lmfit3d.report import ContactFrames, write_report
from lmfit3d.skinning import evaluate_mesh

MEDIA = shared_media_dir()
SMALL_CLIP = MEDIA / "QoT0S2vu9m4_00002.mp4"        # 224 x 224, 55 frames, 25 frames/s
SECTIONS = ("summary", "sheet", "blendshapes", "pose", "gaze", "fit")


def synthetic_track(model, rng, nf, missing=()):
    """A track's arrays (NAME.npz keys) of a head turning and opening its mouth; ``missing`` frames
    have no face."""
    t = np.arange(nf)
    ok = np.ones(nf, bool)
    ok[list(missing)] = False
    expr = np.zeros((nf, model.n_expression))
    expr[:, list(model.expression_names).index("jawOpen")] = 0.5 + 0.5 * np.sin(t / 7.0)
    rot = np.zeros((nf, model.n_joints, 3))
    rot[:, 2, 1] = 0.3 * np.sin(t / 11.0)
    trans = np.tile([0.0, 0.0, -600.0], (nf, 1))
    for a in (expr, trans):
        a[~ok] = np.nan
    rot[~ok] = np.nan
    return dict(identity=rng.normal(size=model.n_identity) * 0.5, focal_px=np.array(500.0),
                image_size=np.array([320, 240]), fps=np.array(25.0), expression=expr, root_rotation=rot[:, 0],
                joint_rotations=rot[:, 1:], translation=trans, success=ok, confidence=np.where(ok, 0.9, 0.0),
                fit_rms_px=np.where(ok, 1.0 + rng.uniform(0, 0.5, nf), np.nan),
                landmarks68=np.full((nf, 68, 2), 160.0))


def assert_self_contained(text):
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:|#)", text), "a resource outside the file"
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    for s in SECTIONS:
        assert f"id='{s}'" in text


def test_contact_frames_keep_evenly_spaced_frames(rng):
    sheet = ContactFrames(n=6, size=32)
    frame = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for f in range(1000):
        sheet.offer(f, frame, None if f % 3 else np.array([[40.0, 30.0], [70.0, 60.0], [55.0, 80.0]]))
    assert 6 <= len(sheet.items) <= 12 and len({k % sheet.stride for k in sheet.items}) == 1
    picked = [c[0] for c in sheet.chosen()]
    assert len(picked) == 6 and picked[0] == 0 and picked[-1] >= 1000 - 2 * sheet.stride
    steps = np.diff(picked)
    assert steps.max() <= 2 * steps.min()
    for f, img, origin, scale in sheet.chosen():
        assert max(img.shape[:2]) <= 32 and img.dtype == np.uint8
        if f % 3 == 0:                                     # cropped around the landmarks
            assert origin != (0.0, 0.0) and scale > 32 / 128


def test_report_of_300_frames_is_small_and_marks_frames_without_a_face(model, rng, tmp_path):
    data = synthetic_track(model, rng, 300, missing=list(range(100, 130)) + [200])
    sheet = ContactFrames()
    frame = np.full((240, 320, 3), 90, np.uint8)
    for f in range(300):
        sheet.offer(f, frame, None if not data["success"][f] else np.array([[120.0, 80.0], [200.0, 80.0], [160.0, 170.0]]))
    t0 = time.perf_counter()
    size = write_report(tmp_path / "clip_report.html", model, data, "clip", sheet, timings={"fit": 1.0})
    seconds = time.perf_counter() - t0
    text = (tmp_path / "clip_report.html").read_text()
    assert size == (tmp_path / "clip_report.html").stat().st_size < 5e6
    assert seconds < 20
    assert_self_contained(text)
    assert "269 (89.7 %)" in text and "100-129, 200" in text
    assert text.count("<figure class='fit'>") + text.count("<figure class='none'>") == 12
    # every plot shades the two runs without a face: 52 blendshapes + pose (2) + gaze + error + confidence
    assert text.count("fill=\"#f4b6b6\"") == 2 * (52 + 5)
    assert len(re.findall(r"<img alt='frame \d+' src='data:image/jpeg;base64,", text)) == 12


def test_overlay_styles_draw_the_fit(model, rng):
    rot = np.zeros((model.n_joints, 3))
    v = evaluate_mesh(model, Params(np.zeros(model.n_identity), np.zeros(model.n_expression), rot,
                                    np.array([0.0, 0.0, -600.0])))
    frame = np.full((240, 320, 3), 100, np.uint8)
    wire = _OverlayRenderer(model, "wireframe")(frame, v, 500.0)
    shaded = _OverlayRenderer(model, "shaded")(frame, v, 500.0)
    face = (slice(60, 180), slice(110, 210))
    changed_w = (wire[face] != 100).any(2).mean()
    assert 0.05 < changed_w < 0.9, "a wireframe: lines with the frame between them"
    assert (shaded[face] != 100).any(2).mean() > 0.95, "shaded: the head covers the face"
    assert np.abs(wire.astype(int) - 100)[face].mean() < np.abs(shaded.astype(int) - 100)[face].mean()
    assert (wire[:, :50] == 100).all() and (wire[:, -50:] == 100).all(), "nothing drawn away from the head"
    det = np.array([[50.5, 50.5], [60.5, 70.5]])
    fit = np.array([[100.5, 100.5]])
    lm = _OverlayRenderer(model, "landmarks")(frame, v, 500.0, detected=det, fitted=fit)
    assert tuple(lm[50, 50]) == (60, 220, 60) and tuple(lm[70, 60]) == (60, 220, 60)
    assert tuple(lm[100, 100]) == (255, 40, 40)
    assert (lm != 100).any(2).sum() == 3 * 9
    with pytest.raises(ValueError, match="overlay-style"):
        _OverlayRenderer(model, "cartoon")


@pytest.fixture(scope="module")
def tracked_extras(tmp_path_factory):
    out = tmp_path_factory.mktemp("track_extras")
    code = main(["track", str(SMALL_CLIP), "-o", str(out), "--max-frames", "14", "--gltf", "--report", "--overlay",
                 "--overlay-style", "wireframe", "-q"])
    return code, out


def test_track_writes_glb_and_report(tracked_extras, model):
    pygltflib = pytest.importorskip("pygltflib")
    code, out = tracked_extras
    assert code == 0
    stem = SMALL_CLIP.stem
    z = np.load(out / f"{stem}.npz")
    g = pygltflib.GLTF2.load(str(out / f"{stem}.glb"))
    anim = g.animations[0]
    times = g.accessors[anim.samplers[0].input]
    assert times.count == int(z["success"].sum()) == 14 and times.max[0] == pytest.approx(13 / 25.0)
    root = [n for n in g.nodes if n.name == "root"][0]
    np.testing.assert_allclose(root.translation, z["translation"][0] / 1000.0, rtol=1e-6)
    assert g.cameras[0].perspective.aspectRatio == pytest.approx(1.0)
    text = (out / f"{stem}_report.html").read_text()
    assert_self_contained(text)
    assert "14 (100.0 %)" in text and (out / f"{stem}_report.html").stat().st_size < 5e6
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_wireframe_overlay_leaves_the_face_visible(tracked_extras):
    import imageio.v2 as imageio
    from lmfit3d.media import VideoReader
    _, out = tracked_extras
    over = imageio.mimread(out / f"{SMALL_CLIP.stem}_overlay.mp4", memtest=False)
    src = [f for _, f in zip(range(14), VideoReader(SMALL_CLIP))]
    assert len(over) == 14
    diff = np.abs(over[5].astype(int) - src[5].astype(int))
    green = over[5][..., 1].astype(int) - src[5][..., 1].astype(int)
    assert green[40:180, 40:180].mean() > 5, "green lines over the face"
    assert np.median(diff) < 40, "most of the frame still shows through"


def test_fit_photo_writes_a_posed_glb(tmp_path, capsys):
    pygltflib = pytest.importorskip("pygltflib")
    assert main(["fit", str(MEDIA / "obama.jpg"), "-o", str(tmp_path), "--gltf", "--max-faces", "1",
                 "--overlay-style", "landmarks"]) == 0
    import json
    info = json.loads((tmp_path / "obama.json").read_text())
    g = pygltflib.GLTF2.load(str(tmp_path / "obama.glb"))
    assert not g.animations
    np.testing.assert_allclose(g.meshes[0].weights, list(info["expression"].values()), atol=1e-12)
    root = [n for n in g.nodes if n.name == "root"][0]
    np.testing.assert_allclose(root.translation, np.array(info["translation_mm"]) / 1000.0)
    assert (tmp_path / "obama_overlay.png").is_file()


CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(model, rng, tmp_path):
    import imageio.v2 as imageio
    data = synthetic_track(model, rng, 300, missing=range(40, 60))
    sheet = ContactFrames()
    for f in range(300):
        sheet.offer(f, np.full((240, 320, 3), 60 + (f % 100), np.uint8), np.array([[120.0, 80.0], [200.0, 170.0], [160, 90]]))
    path = tmp_path / "r_report.html"
    write_report(path, model, data, "r", sheet)
    shot = tmp_path / "shot.png"
    t0 = time.perf_counter()
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,2400", "--hide-scrollbars", path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = imageio.imread(shot)[..., :3].astype(int)
    assert seconds <= 10, "headless start-up included; the page itself is static"
    assert img.std() > 20, "the page draws something"
    assert ((img[..., 0] > 200) & (img[..., 1] < 210) & (img[..., 1] > 150) & (img[..., 2] < 210)).any(), \
        "the pink bands of frames without a face"
