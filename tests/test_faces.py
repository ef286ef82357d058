"""Every face of a video (issue 18): tracklets, re-identification, per-face outputs, on rendered heads."""
import csv
from types import SimpleNamespace

import numpy as np
import pytest

from lmfit3d.cli import main
from lmfit3d.faces import Tracklet, assign_faces, face_colour, scene_cut
from lmfit3d.media import FrameList
from lmfit3d.synthetic import multi_face_clip
from lmfit3d.track import TrackOptions, track_video


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def clip(model):
    """Two rendered heads side by side (head 1 leaves on frames 7-9), a cut at frame 10 (new
    background) after which their places are swapped and both are back."""
    return multi_face_clip(model, np.random.default_rng(2), n_heads=2, shot=10, size=(320, 240), face_px=90)


@pytest.fixture(scope="module")
def tracked(clip, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    s = track_video(FrameList(clip.frames, name="heads"), out, TrackOptions(progress=False, overlay=True, max_faces=3), model)
    return s, out


def head_of_frames(clip, npz):
    """The head each frame's landmarks lie on (-1: no landmarks), by the nearest projected head centre."""
    centre = np.array([np.nanmean(m, 0) if np.isfinite(m).any() else (np.nan, np.nan) for m in npz["mu"]])
    out = np.full(len(centre), -1)
    for f, c in enumerate(centre):
        if np.isfinite(c).all():
            d = np.linalg.norm(clip.centres[f] - c, axis=1)
            out[f] = int(np.nanargmin(d))
    return out


def test_each_head_keeps_one_id_across_leaving_and_the_cut(clip, tracked):
    s, out = tracked
    assert s.faces == 2 and s.frames == 20
    heads = []
    for name in ("heads.npz", "heads_face1.npz"):
        z = np.load(out / name)
        h = head_of_frames(clip, z)
        seen = set(h[h >= 0].tolist())
        assert len(seen) == 1, f"{name}: id switch between heads {seen}"          # 0 id switches
        assert (h[:clip.cut] >= 0).any() and (h[clip.cut:] >= 0).all()           # re-identified after the cut
        assert int(z["face_id"]) == len(heads) and int(z["faces"]) == 2
        heads.append(seen.pop())
    assert sorted(heads) == [0, 1]
    # the head that left the frame has no rows there; the other is on every frame
    z1 = np.load(out / "heads_face1.npz") if heads[1] == 1 else np.load(out / "heads.npz")
    assert not z1["success"][7:10].any() and z1["success"][:7].all()
    assert s.face_frames[heads.index(0)] == 20


def test_the_command_line_counts_frames_with_any_face_then_the_main_face(clip, tmp_path, capsys):
    import imageio.v2 as imageio
    video = tmp_path / "heads.mp4"
    imageio.mimwrite(video, clip.frames, fps=25, codec="libx264", quality=9, macro_block_size=1)
    assert main(["track", str(video), "-o", str(tmp_path / "out"), "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    z = np.load(tmp_path / "out" / "heads.npz")
    other = int(np.load(tmp_path / "out" / "heads_face1.npz")["success"].sum())
    assert other < 20                                       # one head leaves on frames 7-9
    assert (f"heads.mp4: 20 frames, 20 with a face (100.0 %), 2 faces (the main face on "
            f"{int(z['success'].sum())}; per face [") in line and f", {other}]" in line


def test_a_batch_summary_counts_frames_with_any_face(tracked):
    from dataclasses import replace

    from lmfit3d.manifest import figures
    s, _ = tracked
    assert s.any_face == 20 and s.faces == 2
    row = figures("video", replace(s, success=12))          # the main face on 12 frames, another on the rest
    assert row["faces"] == 2 and row["frames"] == 20
    assert row["success_rate"] == 1.0                       # any face; the main face alone: 0.6


def test_per_face_files_and_the_all_faces_table(clip, tracked):
    s, out = tracked
    names = sorted(p.name for p in out.iterdir())
    assert names == ["heads.csv", "heads.npz", "heads_arkit.csv", "heads_face1.csv", "heads_face1.npz",
                     "heads_face1_arkit.csv", "heads_faces.csv", "heads_overlay.mp4"]
    both = rows(out / "heads_faces.csv")
    assert len(both) == sum(s.face_frames)
    assert list(both[0])[:3] == ["frame", "face_id", "timestamp_s"]
    for k, name in enumerate(("heads.csv", "heads_face1.csv")):
        own = [r for r in rows(out / name) if r["success"] == "1"]
        mine = [r for r in both if r["face_id"] == str(k)]
        assert [r["frame"] for r in own] == [r["frame"] for r in mine]
        assert [r["pose_Tx"] for r in own] == [r["pose_Tx"] for r in mine]
    assert len(rows(out / "heads_face1_arkit.csv")) == 20
    # one camera: one focal length for both faces
    a, b = np.load(out / "heads.npz"), np.load(out / "heads_face1.npz")
    assert float(a["focal_px"]) == float(b["focal_px"])
    assert not np.allclose(a["identity"], b["identity"])


def test_max_faces_1_follows_one_face_and_a_rerun_replaces_the_set(clip, tracked, model, capsys):
    s, out = tracked
    one = track_video(FrameList(clip.frames, name="heads"), out, TrackOptions(progress=False, max_faces=1), model)
    assert one.faces == 1 and one.success == 20
    assert sorted(p.name for p in out.iterdir()) == ["heads.csv", "heads.npz", "heads_arkit.csv"]
    assert main(["track", "x.mp4", "--max-faces", "-1", "-o", str(out)]) == 2
    assert "--max-faces must be >= 0" in capsys.readouterr().err


def test_by_default_every_face_and_a_one_face_video_writes_the_single_face_layout(clip, model, tmp_path):
    """The default (every face) on a clip of one head: the files and columns of ``--max-faces 1``."""
    assert TrackOptions().face_limit(True) == TrackOptions(max_faces=0).face_limit(True) > 1
    assert TrackOptions().face_limit(False) == 10 and TrackOptions(max_faces=1).face_limit(True) == 1
    alone = FrameList(multi_face_clip(model, np.random.default_rng(2), n_heads=2, shot=10, size=(320, 240),
                                      face_px=90, only=0).frames, name="heads")
    names, npz, header = [], [], []
    for k, mf in enumerate((None, 1)):
        out = tmp_path / str(k)
        out.mkdir()
        s = track_video(alone, out, TrackOptions(progress=False, max_faces=mf), model)
        assert s.faces == 1 and s.success == 20
        names.append(sorted(p.name for p in out.iterdir()))
        z = np.load(out / "heads.npz")
        npz.append({k: z[k].shape for k in z.files})
        header.append(open(out / "heads.csv").readline())
        if mf is None:
            assert int(z["face_id"]) == 0 and int(z["faces"]) == 1
    assert names[0] == names[1] == ["heads.csv", "heads.npz", "heads_arkit.csv"]
    assert npz[0] == npz[1] and header[0] == header[1]


def test_two_inputs_whose_face_files_would_collide_are_refused(tmp_path, capsys):
    for stem in ("a", "a_face1"):
        (tmp_path / f"{stem}.mp4").write_bytes(b"not a video")
    args = ["track", str(tmp_path / "a.mp4"), str(tmp_path / "a_face1.mp4"), "-o", str(tmp_path / "o")]
    assert main(args + ["--max-faces", "2"]) == 2
    assert "would both write" in capsys.readouterr().err
    assert main(args) == 2                  # every face (the default): the same
    assert "would both write" in capsys.readouterr().err
    assert main(args + ["--max-faces", "1"]) == 1       # one face: no face files, the inputs just fail
    assert "would both write" not in capsys.readouterr().err


def _t(index, start, end, ident, colour, size=1.0):
    t = Tracklet(index, 0, start, end, size=size * (end - start + 1), refits=1)
    t.tracker = SimpleNamespace(keyframes=[0], identity=np.asarray(ident, float))
    t.colour, t.colour_n = np.asarray(colour, float)[None], np.ones((1, 1))
    return t


def _score(a, b):
    return float(np.linalg.norm(a.identity() - b.identity())) + float(np.linalg.norm(a.appearance() - b.appearance()))


def test_assign_faces_matches_best_pairs_never_two_at_once_and_drops_blips():
    ta = _t(0, 0, 9, [0, 0], [0.5, 0.4, 0.3], size=2.0)      # person A
    tb = _t(1, 0, 9, [3, 0], [0.2, 0.2, 0.2])                # person B, seen with A
    tb2 = _t(2, 12, 20, [2.8, 0.1], [0.2, 0.2, 0.2])         # after a cut: B (closest to A's face? no: to B)
    ta2 = _t(3, 12, 20, [0.4, 0.0], [0.5, 0.4, 0.3])         # A again
    blip = _t(4, 25, 26, [9, 9], [1, 1, 1])                  # a spurious two-frame detection
    c = _t(5, 30, 40, [0.5, 0.2], [0.5, 0.4, 0.3])           # like A, but A is still... not visible: joins A
    faces = assign_faces([ta, tb, tb2, ta2, blip, c], _score, max_faces=10)
    assert [[t.index for t in f] for f in faces] == [[0, 3, 5], [1, 2]]
    assert blip.face == -1 and ta.face == ta2.face == 0 and tb.face == tb2.face == 1
    # two tracklets visible at once never share a face, however alike
    same = assign_faces([_t(0, 0, 9, [0, 0], [0.5] * 3), _t(1, 5, 9, [0, 0], [0.5] * 3)], _score, 10)
    assert len(same) == 2
    # max_faces keeps the largest
    assert [[t.index for t in f] for f in assign_faces([ta, tb, tb2, ta2], _score, max_faces=1)] == [[0, 3]]


def test_scene_cut_and_face_colour():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    th, cut = scene_cut(a, None)
    assert th.shape == (16, 16) and not cut
    assert not scene_cut(np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8), th)[1]
    assert scene_cut(255 - a, th)[1]
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5] = (255, 0, 0)
    mu = np.array([[1.0, 1.0], [2.0, 8.0], [7.0, 3.0], [np.nan, np.nan], [50.0, 2.0]])
    assert np.allclose(face_colour(img, mu)[0], [2 / 3, 0, 0])
    assert face_colour(img, np.array([[50.0, 50.0]])) is None


def test_group_rule_and_small_faces():
    """The last pair of a returning group is matched under REID_GROUP only when others of the group
    were recognised; identities fitted from small faces weigh less against the colour."""
    from lmfit3d.faces import REID_FACE_PX, identity_weight
    a = _t(0, 0, 9, [0, 0], [0.5, 0.4, 0.3])
    b = _t(1, 0, 9, [3, 0], [0.2, 0.2, 0.2])
    a2 = _t(2, 12, 20, [0.5, 0], [0.5, 0.4, 0.3])           # A again: 0.5
    b2 = _t(3, 12, 20, [4.3, 0], [0.2, 0.2, 0.2])           # B again, but 1.3 away (> 1, < 1.5)
    faces = assign_faces([a, b, a2, b2], _score, max_faces=10)
    assert [[t.index for t in f] for f in faces] == [[0, 2], [1, 3]]
    # alone (nobody of its group recognised) the same 1.3 starts a new face
    faces = assign_faces([a, b, b2], _score, max_faces=10)
    assert len(faces) == 3 and b2.face not in (a.face, b.face)
    # weights: 1 at or above the renders' size, the squared size ratio below it
    small = _t(5, 0, 9, [0, 0], [0, 0, 0], size=REID_FACE_PX / 2)
    big = _t(6, 0, 9, [0, 0], [0, 0, 0], size=2 * REID_FACE_PX)
    assert identity_weight(big, big) == 1.0 and identity_weight(small, big) == pytest.approx(0.25)


class _FakeTracker:
    """Keyframes with root rotations; counts refits; focal as fit_identities sets it."""

    def __init__(self, rotations, focal=100.0):
        self._sl = {"identity": slice(3, 5), "focal": slice(5, 6)}
        self.keyframes = [(np.r_[r, 0.0, 0.0, 0.0, 0.0], None, None) for r in rotations]
        self.identity, self.focal, self.focal_known = np.zeros(2), focal, False
        self.refit_pending, self.refit_focal, self.cfg = True, [], SimpleNamespace(keyframe_angle_deg=10.0)

    def refit_identity(self):
        self.refit_focal.append((self.focal, self.focal_known, len(self.keyframes)))
        self.identity = np.ones(2) * len(self.keyframes)
        if not self.focal_known:
            self.focal = 123.0

    def fresh(self, focal=None):
        tr = _FakeTracker([], focal)
        tr.focal_known = True
        return tr


def test_one_refit_per_confirmed_tracklet_focal_from_the_largest_and_face_keyframes():
    from lmfit3d.faces import face_identity, fit_identities
    ts = []
    for i, (start, end, size, rots) in enumerate([(0, 9, 50, [[0, 0, 0]]), (10, 80, 200, [[0, 0, 0], [0, 0.3, 0]]),
                                                 (81, 83, 90, [[0, 0, 0]])]):
        t = Tracklet(i, 0, start, end, size=size * (end - start + 1))
        t.tracker = _FakeTracker(rots)
        ts.append(t)
    assert fit_identities(ts) == 123.0
    small, large, short = ts
    assert large.tracker.refit_focal == [(100.0, False, 2)]          # the largest first, focal free
    assert small.tracker.refit_focal == [(123.0, True, 1)]           # then held at its focal
    assert small.tracker.keyframes[0][0][5] == 123.0
    assert short.refits == 0 and short.identity() is None            # 3 frames: no refit
    proto = _FakeTracker([])
    # the small face's keyframe repeats a rotation of the large one's: the large one's identity as is
    ident, focal = face_identity([small, large], proto)
    assert np.allclose(ident, 2) and focal == 123.0
    # one new rotation from another tracklet (fewer than FACE_REFIT_GAIN more): still no refit
    small.tracker.keyframes.append((np.r_[0, -0.4, 0, 0, 0, 0], None, None))
    ident, focal = face_identity([small, large], proto)
    assert np.allclose(ident, 2)
    # two: one refit on the merged keyframes (focal held), as many as the face's budget (4: 75 frames)
    small.tracker.keyframes.append((np.r_[0.4, 0, 0, 0, 0, 0], None, None))
    ident, focal = face_identity([small, large], proto)
    assert np.allclose(ident, 4) and focal == 123.0


def test_keyframe_budget_follows_frames_and_size_and_keeps_the_most_varied():
    from lmfit3d.faces import KEYFRAME_FRAMES, REID_FACE_PX, fit_identities, keyframe_budget, spread_keyframes
    big = Tracklet(0, 0, 0, 2 * KEYFRAME_FRAMES - 1, size=REID_FACE_PX * 2 * KEYFRAME_FRAMES)
    half = Tracklet(1, 0, 0, 2 * KEYFRAME_FRAMES - 1, size=REID_FACE_PX / 2 * 2 * KEYFRAME_FRAMES)
    assert keyframe_budget([big], 5) == 3 and keyframe_budget([half], 5) == 2 and keyframe_budget([big], 2) == 2
    assert keyframe_budget([big, half], 5) == 4
    kfs = [(np.r_[a, 0.0, 0.0], None, None) for a in (0.0, 0.05, 0.5, 0.1, -0.3)]
    assert [kf[0][0] for kf in spread_keyframes(kfs, 3)] == [0.0, 0.5, -0.3]
    assert spread_keyframes(kfs, 9) == kfs
    # the half-size tracklet's fit: two keyframes of its five, the first and the farthest from it
    half.tracker = _FakeTracker([[a, 0, 0] for a in (0.0, 0.05, 0.5, 0.1, -0.3)])
    fit_identities([half])
    assert half.tracker.refit_focal == [(100.0, False, 2)]
    assert [kf[0][0] for kf in half.tracker.keyframes] == [0.0, 0.5]


class _ScriptedPredictor:
    """One face at a fixed place; its face score drops (follow fails) on the frames ``drop``."""
    vertex_ids = np.arange(4)

    def __init__(self, drop, place=(50.0, 50.0)):
        self.drop, self.place, self.n, self.state = drop, np.array(place), 0, None
        self.mu = self.place + np.array([[-10.0, -10], [10, -10], [10, 10], [-10, 10]])

    def _pred(self):
        return SimpleNamespace(mu=self.mu.copy(), sigma=np.ones(4), presence=1.0)

    def follow(self, frame):
        return None if self.state is None or self.n in self.drop else self._pred()

    def start(self, frame, roi):
        self.state = "on"
        return self._pred()

    def detect(self, frame, max_candidates=3, levels=1, exhaustive=False, far=None):
        return [SimpleNamespace(cx=self.place[0], cy=self.place[1])]

    def get_state(self):
        return self.state

    def set_state(self, state=None):
        self.state = state


def test_a_face_lost_and_found_again_in_the_same_frame_keeps_its_tracklet():
    from lmfit3d.faces import COLOUR_JUMP, FaceFollower, _colour_jump

    class Store:
        def __init__(self, *a):
            self.arr = np.zeros((20, 4, 6))

        def put(self, f, rec):
            self.arr[f] = rec

    mp = _ScriptedPredictor(drop={4, 7})
    fol = FaceFollower(mp, lambda: SimpleNamespace(keyframes=[], step=lambda mu, sg: None), Store,
                       TrackOptions(progress=False, max_faces=3))
    frame = np.full((100, 100, 3), 120, np.uint8)
    for n in range(10):
        mp.n = n
        fol.step(frame, n)
    assert len(fol.tracklets) == 1 and fol.tracklets[0].frames == 10
    # another face's colour in the same place ends the tracklet (an undetected cut)
    t = fol.tracklets[0]
    assert not _colour_jump(t, face_colour(frame, mp.mu))
    other = np.full((100, 100, 3), 120 + int(255 * 2 * COLOUR_JUMP), np.uint8)
    assert _colour_jump(t, face_colour(other, mp.mu))
    mp.n = 10
    fol.step(other, 10)
    assert len(fol.tracklets) == 2 and fol.tracklets[0].end == 9 and fol.tracklets[1].start == 10
    # a scene cut of the thumbnails (the background changes) with the face unchanged in its place goes on
    cut = np.full((100, 100, 3), 250, np.uint8)
    cut[35:66, 35:66] = other[35:66, 35:66]
    assert scene_cut(cut, fol._thumb)[1]
    mp.n = 11
    fol.step(cut, 11)
    assert len(fol.tracklets) == 2 and fol.tracklets[1].end == 11
    # a scene cut with a face of the same mean colour in that place, but another layout of it (another
    # person of like colour: the two people swapped at a cut) ends the tracklet
    from lmfit3d.faces import LAYOUT_SAME, _layout_jump
    like = np.full((100, 100, 3), 10, np.uint8)
    like[35:66, 35:66] = cut[35:66, 35:66]
    for (x, y), d in zip(mp.mu.astype(int), (40, -40, 40, -40)):
        like[y, x] = int(cut[y, x, 0]) + d
    assert scene_cut(like, fol._thumb)[1] and not _colour_jump(fol.tracklets[1], face_colour(like, mp.mu), 0.025)
    assert _layout_jump(cut, mp.mu, like, mp.mu) and not _layout_jump(cut, mp.mu, cut, mp.mu) and LAYOUT_SAME < 0.27
    mp.n = 12
    fol.step(like, 12)
    assert len(fol.tracklets) == 3 and fol.tracklets[1].end == 11 and fol.tracklets[2].start == 12


def test_two_real_people_keep_their_ids_when_they_swap_sides_at_a_cut(model, tmp_path):
    """Two shared real clips side by side (180 px halves), 8 frames, then a cut to the other sides:
    the default (every face) tracks both on every frame, each under one id on both sides."""
    from itertools import islice

    from lmfit3d.media import VideoReader
    from lmfit3d.paths import shared_media_dir
    from lmfit3d.synthetic import side_by_side, square_crop
    half, shot = 180, 8
    clips = [[square_crop(img, cx, half) for img in islice(VideoReader(shared_media_dir() / name), 2 * shot)]
             for name, cx in (("W040_level_3_happy_029.mp4", 912), ("W023_level_2_surprised_010.mp4", 1009))]
    clip = side_by_side(clips, shot, half=half, swap=True)
    assert clip.frames[0].shape == (half, 2 * half, 3) and len(clip.frames) == 2 * shot and clip.cut == shot
    assert np.array_equal(clip.frames[shot][:, :half], clips[1][shot])      # B on the left after the cut
    s = track_video(FrameList(clip.frames, name="pair"), tmp_path, TrackOptions(progress=False), model)
    assert s.faces == 2 and s.face_frames == [2 * shot, 2 * shot]
    for k, name in enumerate(("pair.npz", "pair_face1.npz")):
        person = head_of_frames(clip, np.load(tmp_path / name))
        assert (person >= 0).all() and len(set(person.tolist())) == 1, f"face {k}: persons {person}"
        sides = [int(np.argmin(np.abs(clip.centres[f, person[f], 0] - [half / 2, 1.5 * half]))) for f in (0, shot)]
        assert sides[0] != sides[1]                                            # it did change sides
