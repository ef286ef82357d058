"""The reconstruction-designed landmark set dense320v2 and its tool (tools/select_landmarks.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from lmfit3d.landmarks import available_sets, load_landmark_set
from lmfit3d.model import N_VERTICES, REGION_NAMES
from lmfit3d.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import select_landmarks as sl  # noqa: E402
from make_landmark_sets import _mirror_into  # noqa: E402


def test_dense320v2_loads_with_320_unique_valid_ids():
    assert "dense320v2" in available_sets()
    ids = np.asarray(load_landmark_set("dense320v2"))
    assert ids.shape == (320,) and len(np.unique(ids)) == 320
    assert ids.min() >= 0 and ids.max() < N_VERTICES
    assert set(load_landmark_set("ibug68")) <= set(ids.tolist())
    assert (ROOT / "data" / "landmarks" / "dense320v2.txt").read_text().startswith("#")


def test_dense320v2_covers_sides_jaw_neck_and_eyes(model):
    face_model = model
    ids = np.asarray(load_landmark_set("dense320v2"))
    p = face_model.vertices[ids].astype(np.float64)
    labels = face_model.region_labels[ids]
    allowed = [REGION_NAMES.index(r) for r in ("face", "head_neck", "mouth_socket", "eyeball_L", "eyeball_R")]
    assert np.isin(labels, allowed).all()                 # skin, inner lips and eyes; no teeth
    for sign in (1, -1):
        side = sign * p[:, 0]
        assert (side > 60).sum() >= 35                    # side of the face and head (dense320: 32)
        assert ((p[:, 1] < -40) & (p[:, 1] > -110) & (side > 30)).sum() >= 15     # jaw line
        assert ((side > 70) & (p[:, 2] < 15)).sum() >= 4  # ear region
        eye = labels == REGION_NAMES.index("eyeball_L" if sign > 0 else "eyeball_R")
        assert eye.sum() == 6
    assert (p[:, 1] < -90).sum() >= 20                    # neck (dense320: 12)
    assert (p[:, 2] < -50).sum() == 0                     # nothing at the back of the head
    mirrored = p * np.array([-1.0, 1.0, 1.0])
    assert np.linalg.norm(mirrored[:, None] - p[None], axis=2).min(axis=1).max() < 0.1   # symmetric


@pytest.fixture(scope="module")
def tiny_design():
    model = tiny_model()
    lab = model.region_labels
    skin = np.flatnonzero(np.isin(lab, [REGION_NAMES.index("face"), REGION_NAMES.index("head_neck")]))
    cand = skin[::3]
    v = model.vertices.astype(np.float64)
    mirror_v = _mirror_into(v, cand, cand)
    pos = {int(c): k for k, c in enumerate(cand)}
    mirror = np.array([pos.get(int(m), -1) for m in mirror_v])
    jac, sig, hes, pri = sl.design_problem(model, cand, n_faces=3, seed=5)
    return model, cand, v[cand], mirror, jac, sig, hes, pri


def test_greedy_selection_is_deterministic_symmetric_and_tracks_the_trace(tiny_design):
    _, cand, pos, mirror, jac, sig, hes, pri = tiny_design
    seeds = [int(np.flatnonzero(mirror == np.arange(len(cand)))[0])]        # one midline seed
    picks, trace = sl.greedy_select(jac, sig, hes, pri, pos, mirror, seeds, 21, min_separation=5.0)
    again, trace2 = sl.greedy_select(jac, sig, hes, pri, pos, mirror, seeds, 21, min_separation=5.0)
    assert picks.tolist() == again.tolist() and trace == trace2
    assert picks[0] == seeds[0] and len(np.unique(picks)) == 21
    assert set(mirror[picks].tolist()) == set(picks.tolist())               # mirror pairs or midline
    d = np.linalg.norm(pos[picks][:, None] - pos[picks][None], axis=2) + np.eye(21) * 1e9
    assert d.min() >= 5.0
    assert all(b < a for a, b in zip(trace, trace[1:]))                     # every pick lowers tr(H P)
    # the rank-2 updated trace equals tr(H P) computed from scratch for the chosen set
    direct = []
    for f in range(len(jac)):
        a = (jac[f, picks] / sig[f, picks, None, None]).reshape(-1, jac.shape[3])
        direct.append(np.sum(hes[f] * np.linalg.inv(a.T @ a + np.diag(pri[f]))))
    assert trace[-1] == pytest.approx(np.mean(direct), rel=1e-6)


def test_greedy_beats_random_completions_on_its_criterion(tiny_design):
    _, cand, pos, mirror, jac, sig, hes, pri = tiny_design
    rng = np.random.default_rng(3)
    seeds = rng.choice(len(cand), size=10, replace=False).tolist()
    single = np.arange(len(cand))            # every candidate its own twin: picks one at a time
    picks, trace = sl.greedy_select(jac, sig, hes, pri, pos, single, seeds, 30, min_separation=0.0)
    rest = np.setdiff1d(np.arange(len(cand)), seeds)
    for _ in range(5):
        other = np.concatenate([seeds, rng.choice(rest, size=20, replace=False)])
        vals = []
        for f in range(len(jac)):
            a = (jac[f, other] / sig[f, other, None, None]).reshape(-1, jac.shape[3])
            vals.append(np.sum(hes[f] * np.linalg.inv(a.T @ a + np.diag(pri[f]))))
        assert trace[-1] < np.mean(vals)


def test_greedy_rejects_bad_arguments(tiny_design):
    _, cand, pos, mirror, jac, sig, hes, pri = tiny_design
    with pytest.raises(ValueError, match="criterion"):
        sl.greedy_select(jac, sig, hes, pri, pos, mirror, [], 5, criterion="x")
    with pytest.raises(ValueError, match="seeds"):
        sl.greedy_select(jac, sig, hes, pri, pos, mirror, [0, 0], 5)
