"""Several faces against one (issue 18): cost per face-frame, id switches, identity error per face.

Renders (``lmfit3d.synthetic.multi_face_clip``: 2-3 heads, one leaving before a cut that reverses
their places): the clip tracked with ``--max-faces`` = heads + 1, and each head's single-face
baseline, the same clip rendered with that head alone, tracked with ``--max-faces 1``, in the same
run.  Reported per clip: seconds per face-frame (CPU time of ``track_video`` / frames with a fitted
face) of both, their ratio, id switches (a face id carrying a second head, or a head carried by a
second face id), heads re-identified after the cut, and each head's identity error (mm RMS over the
landmark vertices of the identity shape against the true one) in both modes.

``--clip FILE``: a real video tracked both ways (time per face-frame; frames, runs and ids of
each face), e.g. the shared ``short_hamilton_clip.mp4``.

    python bench/faces_eval.py [--seeds 0 1 2 3] [--heads 2 3] [--clip ../shared/media/short_hamilton_clip.mp4]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmfit3d.faces import identity_distance  # noqa: E402
from lmfit3d.media import FrameList  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.predict import MediaPipeLandmarks  # noqa: E402
from lmfit3d.synthetic import multi_face_clip  # noqa: E402
from lmfit3d.track import TrackOptions, track_video  # noqa: E402


def _warm_up(model, mp, src=None):
    """Both modes once on a few frames (loads, numba kernels, detector): not in the timings."""
    if src is None:
        src = FrameList(multi_face_clip(model, np.random.default_rng(0), n_heads=2, shot=3, size=(320, 240),
                                        face_px=90).frames, name="heads")
    for mf in (1, 3):
        with tempfile.TemporaryDirectory() as out:
            track_video(src, out, TrackOptions(progress=False, max_faces=mf, max_frames=6), model, mp)


def _run(src, max_faces, model, mp):
    """(seconds, summary, [NPZ of each face]) of one tracking run in a temporary folder; seconds of
    CPU time of this process (all its threads): wall time on a shared machine measures the load."""
    with tempfile.TemporaryDirectory() as out:
        t = time.process_time()
        s = track_video(src, out, TrackOptions(progress=False, max_faces=max_faces), model, mp)
        wall = time.process_time() - t
        name = getattr(src, "name", None) or Path(src).stem
        zs = [dict(np.load(Path(out) / (f"{name}.npz" if k == 0 else f"{name}_face{k}.npz"))) for k in range(s.faces)]
    return wall, s, zs


def heads_of(clip, z):
    """The head each frame of a face lies on (-1: not fitted), by the nearest projected head centre."""
    out = np.full(len(z["mu"]), -1)
    for f, m in enumerate(z["mu"]):
        if z["success"][f] and np.isfinite(m).any():
            d = np.linalg.norm(clip.centres[f] - np.nanmean(m, 0), axis=1)
            out[f] = int(np.nanargmin(d))
    return out


def id_switches(per_face):
    """Id switches of the faces' head labels (F,) each: extra heads per face + extra faces per head."""
    heads = {}
    n = 0
    for k, h in enumerate(per_face):
        seen = set(h[h >= 0].tolist())
        n += max(len(seen) - 1, 0)
        for x in seen:
            heads.setdefault(x, set()).add(k)
    return n + sum(len(v) - 1 for v in heads.values()), heads


def render_case(model, mp, seed, n_heads, args):
    kw = dict(n_heads=n_heads, shot=args.shot, size=(160 * n_heads, 240), face_px=args.face_px,
              face_px2=args.face_px2)
    clip = multi_face_clip(model, np.random.default_rng(seed), **kw)
    vids = mp.vertex_ids
    wall, s, zs = _run(FrameList(clip.frames, name="heads"), n_heads + 1, model, mp)
    per_face = [heads_of(clip, z) for z in zs]
    switches, carriers = id_switches(per_face)
    after = all(len(carriers.get(h, ())) == 1 and any((p[clip.cut:] == h).any() for p in per_face)
                for h in range(n_heads))
    # each head's identity: the face id carrying most of its frames
    err_multi = []
    for h in range(n_heads):
        k = max(range(len(zs)), key=lambda k: int((per_face[k] == h).sum()))
        err_multi.append(identity_distance(model, vids, zs[k]["identity"], clip.identities[h])
                         if (per_face[k] == h).any() else np.nan)
    single_wall, single_ff, err_single = 0.0, 0, []
    for h in range(n_heads):
        alone = multi_face_clip(model, np.random.default_rng(seed), only=h, **kw)
        w1, s1, z1 = _run(FrameList(alone.frames, name="heads"), 1, model, mp)
        single_wall += w1
        single_ff += s1.success
        err_single.append(identity_distance(model, vids, z1[0]["identity"], clip.identities[h]))
    ff = sum(s.face_frames)
    return dict(seed=seed, heads=n_heads, multi_s_per_ff=wall / max(ff, 1), single_s_per_ff=single_wall / max(single_ff, 1),
                face_frames=ff, single_face_frames=single_ff, switches=switches, reid_after_cut=after,
                err_multi=err_multi, err_single=err_single)


def clip_case(model, mp, path, max_faces, repeat=2):
    """Both modes on a video, alternately ``repeat`` times (the least time of each)."""
    rows = {}
    _warm_up(model, mp, path)
    for mf in (1, max_faces) * repeat:
        wall, s, zs = _run(path, mf, model, mp)
        if mf in rows and rows[mf]["wall"] <= wall:
            continue
        faces = []
        for z in zs:
            idx = np.flatnonzero(z["success"])
            runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []
            faces.append((len(idx), [(int(r[0]), int(r[-1])) for r in runs]))
        rows[mf] = dict(wall=wall, face_frames=sum(s.face_frames), s_per_ff=wall / max(sum(s.face_frames), 1),
                        faces=faces, timings=s.timings)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    ap.add_argument("--heads", type=int, nargs="*", default=[2, 3])
    ap.add_argument("--shot", type=int, default=10)
    ap.add_argument("--face-px", type=float, default=90.0, help="the heads' size in shot 1")
    ap.add_argument("--face-px2", type=float, help="the heads' size in shot 2 (default: --face-px; a zoom at the cut)")
    ap.add_argument("--clip", help="a real video tracked single-face and with --max-faces")
    ap.add_argument("--max-faces", type=int, default=4)
    args = ap.parse_args(argv)
    model = load_model()
    mp = MediaPipeLandmarks()
    _warm_up(model, mp)
    ratios, errs, both = [], [], []
    for n_heads in args.heads:
        for seed in args.seeds:
            r = render_case(model, mp, seed, n_heads, args)
            ratio = r["multi_s_per_ff"] / r["single_s_per_ff"]
            ratios.append(ratio)
            er = np.array(r["err_multi"]) / np.array(r["err_single"])
            errs += er.tolist()
            both += list(zip(r["err_multi"], r["err_single"]))
            print(f"heads {n_heads} seed {seed}: s/face-frame multi {1e3 * r['multi_s_per_ff']:.1f} ms "
                  f"({r['face_frames']} face-frames), single {1e3 * r['single_s_per_ff']:.1f} ms "
                  f"({r['single_face_frames']}), ratio {ratio:.2f}; id switches {r['switches']}, "
                  f"re-identified after the cut {r['reid_after_cut']}; identity error mm multi "
                  f"{' '.join(f'{e:.2f}' for e in r['err_multi'])} single {' '.join(f'{e:.2f}' for e in r['err_single'])} "
                  f"(ratio {' '.join(f'{e:.2f}' for e in er)})", flush=True)
    if ratios:
        e = np.array(both, float)
        print(f"renders: time ratio median {np.median(ratios):.2f} max {max(ratios):.2f}; identity error ratio "
              f"median {np.nanmedian(errs):.2f} max {np.nanmax(errs):.2f}; mean identity error multi "
              f"{np.nanmean(e[:, 0]):.2f} mm, single {np.nanmean(e[:, 1]):.2f} mm (ratio "
              f"{np.nanmean(e[:, 0]) / np.nanmean(e[:, 1]):.2f})")
    if args.clip:
        rows = clip_case(model, mp, args.clip, args.max_faces)
        for mf, r in rows.items():
            t = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
            print(f"{Path(args.clip).name} --max-faces {mf}: {r['wall']:.2f} s, {r['face_frames']} face-frames, "
                  f"{1e3 * r['s_per_ff']:.1f} ms per face-frame ({t})")
            for k, (nf, runs) in enumerate(r["faces"]):
                print(f"  face {k}: {nf} frames {runs}")
        print(f"ratio per face-frame: {rows[args.max_faces]['s_per_ff'] / rows[1]['s_per_ff']:.2f}")


if __name__ == "__main__":
    main()
