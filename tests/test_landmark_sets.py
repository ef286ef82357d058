"""The landmark sets in data/landmarks (made by tools/make_landmark_sets.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmfit3d.landmarks import available_sets, load_landmark_set
from lmfit3d.model import (LOWER_TEETH, N_VERTICES, REGION_NAMES, UPPER_TEETH, build_model,
                           default_model_path, load_model, save_model)
from lmfit3d.paths import default_ict_dir

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_landmark_sets.py"
SIZES = {"ibug68": 68, "dense320": 320, "dense703": 703}
ALLOWED_REGIONS = ("face", "head_neck", "mouth_socket", "teeth", "eyeball_L", "eyeball_R")


@pytest.fixture(scope="session")
def face_model():
    """The built face model; built (and saved to the cache) first if the file is missing."""
    if not default_model_path().is_file():
        if not default_ict_dir().is_dir():
            pytest.skip(f"no face model and no ICT-FaceKit at {default_ict_dir()}")
        save_model(build_model())
    return load_model()


@pytest.fixture(scope="session")
def sets():
    return {name: np.asarray(load_landmark_set(name)) for name in SIZES}


def _region_ids(*names):
    return [REGION_NAMES.index(n) for n in names]


def test_sets_are_available():
    assert set(SIZES) <= set(available_sets())


def test_files_have_a_header_comment():
    for name in SIZES:
        first = (ROOT / "data" / "landmarks" / f"{name}.txt").read_text().splitlines()[0]
        assert first.startswith("#"), name


@pytest.mark.parametrize("name", sorted(SIZES))
def test_size_range_and_no_duplicates(sets, name):
    ids = sets[name]
    assert ids.shape == (SIZES[name],)
    assert len(np.unique(ids)) == len(ids)
    assert ids.min() >= 0 and ids.max() < N_VERTICES


@pytest.mark.parametrize("name", sorted(SIZES))
def test_only_allowed_regions(face_model, sets, name):
    labels = face_model.region_labels[sets[name]]
    assert np.isin(labels, _region_ids(*ALLOWED_REGIONS)).all()


def test_nested(sets):
    assert set(sets["ibug68"]) <= set(sets["dense320"]) <= set(sets["dense703"])


def test_ibug68_is_the_upstream_list(sets):
    path = default_ict_dir() / "FaceXModel" / "vertex_indices.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with open(path) as f:
        upstream = json.load(f)["idx_to_landmark_verts"]
    assert sets["ibug68"].tolist() == upstream


def test_dense703_covers_the_whole_head(face_model, sets):
    ids = sets["dense703"]
    p = face_model.vertices[ids].astype(np.float64)
    labels = face_model.region_labels[ids]
    # most points on the face region
    assert (labels == REGION_NAMES.index("face")).sum() > len(ids) / 2
    # ears: far out to each side around eye height, behind the jaw
    for sign in (1, -1):
        on_ear = (sign * p[:, 0] > 70) & (p[:, 1] > -25) & (p[:, 1] < 40) & (p[:, 2] > -26) & (p[:, 2] < 15)
        assert on_ear.sum() >= 15
    # back of the head and top of the scalp
    assert ((p[:, 2] < -50) & (labels == REGION_NAMES.index("head_neck"))).sum() >= 30
    assert (p[:, 1] > 110).sum() >= 10
    # neck: below the jaw, front and back
    assert (p[:, 1] < -100).sum() >= 20
    assert ((p[:, 1] < -60) & (p[:, 2] < -30)).sum() >= 10
    # eyeballs: iris points on both, including one near the front pole of each eye
    for side in ("L", "R"):
        eye = labels == REGION_NAMES.index(f"eyeball_{side}")
        assert eye.sum() >= 6
        eye_all = face_model.vertices[face_model.region_labels == REGION_NAMES.index(f"eyeball_{side}")]
        assert p[eye, 2].max() > eye_all[:, 2].max() - 2.0
    # teeth, upper and lower, on the front teeth
    teeth = ids[labels == REGION_NAMES.index("teeth")]
    assert ((teeth >= UPPER_TEETH[0]) & (teeth <= UPPER_TEETH[1])).sum() >= 4
    assert ((teeth >= LOWER_TEETH[0]) & (teeth <= LOWER_TEETH[1])).sum() >= 4
    assert face_model.vertices[teeth, 2].min() > 85.0
    # inner mouth
    assert (labels == REGION_NAMES.index("mouth_socket")).sum() >= 4


def test_dense320_is_weighted_to_the_front(face_model, sets):
    z = {name: face_model.vertices[sets[name], 2].astype(np.float64) for name in ("dense320", "dense703")}
    assert z["dense320"].mean() > z["dense703"].mean() + 10.0
    assert (z["dense320"] < 0).mean() < 0.05          # few points on the back half of the head
    labels = face_model.region_labels[sets["dense320"]]
    assert (labels == REGION_NAMES.index("face")).mean() > 0.8
    for side in ("L", "R"):
        assert (labels == REGION_NAMES.index(f"eyeball_{side}")).sum() >= 3


@pytest.mark.parametrize("name", ["dense320", "dense703"])
def test_dense_sets_are_left_right_symmetric(face_model, sets, name):
    p = face_model.vertices[sets[name]].astype(np.float64)
    mirrored = p * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(mirrored[:, None, :] - p[None, :, :], axis=2).min(axis=1)
    assert d.max() < 0.1


def test_tool_check_passes(face_model):
    res = subprocess.run([sys.executable, str(TOOL), "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_tool_check_detects_a_stale_file(face_model, tmp_path):
    out = tmp_path / "landmarks"
    res = subprocess.run([sys.executable, str(TOOL), "--out-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in SIZES:     # written output equals the committed files
        assert (out / f"{name}.txt").read_text() == (ROOT / "data" / "landmarks" / f"{name}.txt").read_text()
    stale = (out / "dense320.txt").read_text().replace("\n0\n", "\n1\n", 1)
    (out / "dense320.txt").write_text(stale + "5\n")
    res = subprocess.run([sys.executable, str(TOOL), "--check", "--out-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1


# MediaPipe point pairs across an opening: (upper, lower) inner lip and (upper, lower) eyelid
_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))
_LID_PAIRS = ((159, 145), (386, 374))


def _pair_distance(model, vids, pairs, axes=slice(None), **shapes):
    """Distance (mm) of each vertex pair on the mean head with the given expression weights; ``axes``
    slice(0, 2): in the face plane only (what a frontal camera sees)."""
    psi = np.zeros(model.n_expression)
    for name, w in shapes.items():
        psi[list(model.expression_names).index(name)] = w
    t = model.template(expression=psi)[:, axes]
    return np.array([np.linalg.norm(t[vids[a]] - t[vids[b]]) for a, b in pairs])


@pytest.mark.parametrize("name", ["mediapipe", "ibug68"])
def test_correspondence_opens_with_the_mouth_and_closes_with_the_lids(face_model, name):
    """Upper and lower inner-lip points sit on different lips, upper and lower lid points on
    different lids: jawOpen opens their gap by > 10 mm (the lips move apart) and a blink closes the
    lids' gap to < 40 % of its open size (issue 13: the old table put 13 and 14 on one lip)."""
    from lmfit3d.predict import load_manifest
    if name == "ibug68":            # iBUG points 62/66 etc.: the same contours (our network's labels)
        ibug = load_landmark_set("ibug68")
        vids = {13: ibug[62], 14: ibug[66], 82: ibug[61], 87: ibug[67], 312: ibug[63], 317: ibug[65],
                159: ibug[38], 145: ibug[40], 386: ibug[43], 374: ibug[47]}
    else:
        man = load_manifest("mediapipe")
        vids = dict(zip(man.points.tolist(), man.vertex_ids.tolist()))
    closed = _pair_distance(face_model, vids, _LIP_PAIRS)
    opened = _pair_distance(face_model, vids, _LIP_PAIRS, jawOpen=1.0)
    assert (opened - closed > 10.0).all(), (closed, opened)
    open_eyes = _pair_distance(face_model, vids, _LID_PAIRS)
    blink = _pair_distance(face_model, vids, _LID_PAIRS, eyeBlink_L=1.0, eyeBlink_R=1.0)
    assert (blink < 0.4 * open_eyes).all(), (open_eyes, blink)


@pytest.mark.parametrize("backend", ["mediapipe", "mediapipe_attention"])
def test_mediapipe_lid_pairs_meet_under_a_blink(face_model, backend):
    """Every upper/lower eyelid pair of a MediaPipe table (face mesh, attention mesh; 7 per eye,
    along the lids) meets under a full blink, within 1.5 mm in the face plane of the mean head (the
    tool's rule: 1 mm), as real lids do (issue 13: the face mesh's table learnt from renders alone
    left 3.7 mm between 159 and 145, which capped the fitted eye's closing; the attention mesh's
    5.7 mm until session 11).  Depth is left out: near the inner corner a lower-lid vertex may sit
    a few mm deeper than its upper partner and still meet it in the image."""
    from lmfit3d.predict import load_manifest
    man = load_manifest(backend)
    vids = dict(zip(man.points.tolist(), man.vertex_ids.tolist()))
    upper = (246, 161, 160, 159, 158, 157, 173, 466, 388, 387, 386, 385, 384, 398)
    lower = (7, 163, 144, 145, 153, 154, 155, 249, 390, 373, 374, 380, 381, 382)
    pairs = tuple(zip(upper, lower))
    open_eyes = _pair_distance(face_model, vids, pairs)
    blink = _pair_distance(face_model, vids, pairs, slice(0, 2), eyeBlink_L=1.0, eyeBlink_R=1.0)
    assert (open_eyes > 2.5).all(), open_eyes
    assert (blink < 1.5).all(), dict(zip(pairs, blink.round(2)))
