"""Several faces against one (issue 18): cost per face-frame, id switches, identity error per face.

Renders (``lmfit3d.synthetic.multi_face_clip``: 2-3 heads, one leaving before a cut that reverses
their places): the clip tracked with ``--max-faces`` = heads + 1, and each head's single-face
baseline, the same clip rendered with that head alone, tracked with ``--max-faces 1``, in the same
run.  Reported per clip: seconds per face-frame (CPU time of ``track_video`` / frames with a fitted
face) of both, their ratio, id switches (a face id carrying a second head, or a head carried by a
second face id), heads re-identified after the cut, and each head's identity error (mm RMS over the
landmark vertices of the identity shape against the true one) in both modes.

Times are CPU seconds of this process (all its threads; wall time on a shared machine measures the
load), the least of ``--repeat`` alternate runs of each mode, after a warm-up of both; for the real
clips also the median and range of the ratios of the ``--repeat`` alternate pairs.
``--clip FILE...``: real videos tracked both ways (frames, runs and ids of each face), e.g. the
shared ``short_hamilton_clip.mp4``.

``--pair A B``: two real one-person videos side by side (:func:`lmfit3d.synthetic.side_by_side`,
each cropped square around its face and scaled to ``--pair-half`` px), built in memory at run time,
tracked with every face (the default): left|right for ``--pair-shot`` frames, then a hard cut to
right|left; the same without the swap (one shot, no cut); the swap with person B at
``--pair-scale`` of its half; the swap in grey levels; the swap with B's colours mapped to A's
face's mean and spread (two people of like colour).  Per person: the share of frames on which a
face's landmarks lie on its half; id switches; whether the face id carrying it before the cut
carries it after; the re-identification scores (:func:`lmfit3d.faces.reid_score`, recorded) of one
person's tracklets (max) and of different people's (min) against the threshold 1, and the identity
distances within them (mm, :func:`lmfit3d.faces.identity_distance`; 4 mm a unit of the score).
Seeds and heads empty (``--seeds``) skip the renders.

``--write-doc``: the tables into docs/results.md ("faces_eval": renders and ``--clip``;
"faces_eval.pair": ``--pair``).

    python bench/faces_eval.py [--seeds 0 1 2 3] [--heads 2 3] [--shot 10] [--face-px 90 --face-px2 90]
        [--clip ../shared/media/short_hamilton_clip.mp4 ...] [--write-doc]
        [--pair ../shared/media/W040_level_3_happy_029.mp4 ../shared/media/W023_level_2_surprised_010.mp4]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import results_doc  # noqa: E402
import lmfit3d.track as track_module  # noqa: E402
from lmfit3d.faces import identity_distance  # noqa: E402
from lmfit3d.media import FrameList, VideoReader  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.predict import MediaPipeLandmarks  # noqa: E402
from lmfit3d.synthetic import multi_face_clip, side_by_side, square_crop  # noqa: E402
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
    """One rendered clip: multi-face tracking against each head's single-face baseline (times: the
    least of ``args.repeat`` alternate runs of each)."""
    kw = dict(n_heads=n_heads, shot=args.shot, size=(160 * n_heads, 240), face_px=args.face_px,
              face_px2=args.face_px2)
    clip = multi_face_clip(model, np.random.default_rng(seed), **kw)
    alone = [FrameList(multi_face_clip(model, np.random.default_rng(seed), only=h, **kw).frames, name="heads")
             for h in range(n_heads)]
    vids = mp.vertex_ids
    multi_s, single_s = np.inf, np.inf
    for _ in range(args.repeat):
        wall, s, zs = _run(FrameList(clip.frames, name="heads"), n_heads + 1, model, mp)
        multi_s = min(multi_s, wall)
        singles = [_run(a, 1, model, mp) for a in alone]
        single_s = min(single_s, sum(w for w, _, _ in singles))
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
    err_single = [identity_distance(model, vids, z[0]["identity"], clip.identities[h])
                  for h, (_, _, z) in enumerate(singles)]
    ff, single_ff = sum(s.face_frames), sum(s1.success for _, s1, _ in singles)
    return dict(multi_s_per_ff=multi_s / max(ff, 1), single_s_per_ff=single_s / max(single_ff, 1),
                face_frames=ff, single_face_frames=single_ff, switches=switches, reid_after_cut=after,
                err_multi=err_multi, err_single=err_single)


def clip_case(model, mp, path, max_faces, repeat=2):
    """Both modes on a video, alternately ``repeat`` times: per mode the run of least time, and
    ``pair_ratios``, each pair's ratio of seconds per face-frame (several faces / single face)."""
    rows, per_ff = {}, {1: [], max_faces: []}
    _warm_up(model, mp, path)
    for mf in (1, max_faces) * repeat:
        wall, s, zs = _run(path, mf, model, mp)
        per_ff[mf].append(wall / max(sum(s.face_frames), 1))
        if mf in rows and rows[mf]["wall"] <= wall:
            continue
        faces = []
        for z in zs:
            idx = np.flatnonzero(z["success"])
            runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []
            faces.append((len(idx), [(int(r[0]), int(r[-1])) for r in runs]))
        rows[mf] = dict(wall=wall, face_frames=sum(s.face_frames), s_per_ff=wall / max(sum(s.face_frames), 1),
                        faces=faces)
    rows[max_faces]["pair_ratios"] = np.array(per_ff[max_faces]) / np.array(per_ff[1])
    return rows


def _colours_like(frames, like):
    """``frames`` with each channel mapped linearly so that the middle of the first one (the face)
    has the mean and spread of that of ``like``: two people of like colour."""
    def stats(img):
        h, w = img.shape[:2]
        mid = img[h * 5 // 18:h * 13 // 18, w * 3 // 10:w * 7 // 10].reshape(-1, 3).astype(np.float64)
        return mid.mean(0), mid.std(0)
    (ma, sa), (mb, sb) = stats(like), stats(frames[0])
    return [np.clip((f - mb) * (sa / sb) + ma, 0, 255).astype(np.uint8) for f in frames]


def pair_case(model, mp, clips, shot, half, swap, scales, grey=False, recolour=False):
    """Two real people side by side (person 0 = clips[0] on the left first): per person the share of
    frames tracked (a face's landmarks on its half), id switches, and whether each person keeps its
    face id across the cut (with ``swap``), and the re-identification scores of the tracklets (the
    largest of one person's, the least of different people's; 1 the threshold) with their identity
    distances (mm).  ``grey``: both in grey levels (less colour to tell them apart by); ``recolour``:
    person B's colours matched to A's face (:func:`_colours_like`)."""
    if grey:
        clips = [[np.repeat(f.mean(2, keepdims=True), 3, 2).astype(np.uint8) for f in c] for c in clips]
    if recolour:
        clips = [clips[0], _colours_like(clips[1], clips[0][0])]
    clip = side_by_side(clips, shot, half=half, swap=swap, scales=scales)

    def person(t):                  # the person a tracklet followed: its side on its last frame
        side = int((t.box[0][0] + t.box[1][0]) / 2 > half)
        return 1 - side if clip.swap and t.end >= clip.cut else side

    scores, reid_score = [], track_module.reid_score

    def recorded(model_, vids, a, b, **kw):       # every re-identification score, with the truth
        sc = reid_score(model_, vids, a, b, **kw)
        known = a.identity() is not None and b.identity() is not None
        mm = identity_distance(model_, vids, a.identity(), b.identity()) if known else np.nan
        scores.append((person(a) == person(b), sc, mm))
        return sc
    track_module.reid_score = recorded
    try:
        _, s, zs = _run(FrameList(clip.frames, name="pair"), 0, model, mp)
    finally:
        track_module.reid_score = reid_score
    same = np.array([(sc, mm) for ok, sc, mm in scores if ok]).reshape(-1, 2)
    other = np.array([(sc, mm) for ok, sc, mm in scores if not ok]).reshape(-1, 2)
    per_face = [heads_of(clip, z) for z in zs]
    switches, carriers = id_switches(per_face)
    n = len(clip.frames)
    tracked = [np.mean([any(p[f] == h for p in per_face) for f in range(n)]) for h in range(2)]
    kept = all(len(carriers.get(h, ())) == 1 and any((p[:clip.cut] == h).any() and (p[clip.cut:] == h).any()
                                                      for p in per_face) for h in range(2)) if swap else None
    return dict(frames=n, faces=s.faces, face_frames=list(s.face_frames), tracked=tracked, switches=switches,
                kept=kept, same=same.max(0) if len(same) else np.full(2, np.nan),
                other=other.min(0) if len(other) else np.full(2, np.nan))


def _f(x):
    return "-" if np.isnan(x) else f"{x:.2f}"


def _pairs(model, mp, args):
    """Markdown rows of the side-by-side cases of ``args.pair`` (and a line per case printed)."""
    clips = []
    for p in args.pair:             # each frame cropped square around the face as it is read (memory)
        frames = []
        for _, img in zip(range(2 * args.pair_shot), VideoReader(p)):
            if not frames:
                found = mp.detect(img, max_candidates=1)
                cx = found[0].cx if found else img.shape[1] / 2
            frames.append(square_crop(img, cx, args.pair_half))
        clips.append(frames)
    names = " \\| ".join(Path(p).stem for p in args.pair)
    out = []
    for label, swap, scales, grey, recolour in (
            ("swap at the cut", True, (1.0, 1.0), False, False), ("no cut, no swap", False, (1.0, 1.0), False, False),
            (f"swap, B at {args.pair_scale:g} size", True, (1.0, args.pair_scale), False, False),
            ("swap, grey levels", True, (1.0, 1.0), True, False),
            ("swap, B's colours matched to A's face", True, (1.0, 1.0), False, True)):
        r = pair_case(model, mp, clips, args.pair_shot, args.pair_half, swap, scales, grey, recolour)
        print(f"pair {label}: {r}", flush=True)
        kept = "-" if r["kept"] is None else ("yes" if r["kept"] else "no")
        out.append(f"| {names}, {2 * args.pair_half} x {args.pair_half}, {label} | {r['frames']} | {r['faces']} | "
                   f"{100 * r['tracked'][0]:.1f} % / {100 * r['tracked'][1]:.1f} % | {r['switches']} | {kept} | "
                   f"{_f(r['same'][0])} / {_f(r['other'][0])} | {_f(r['same'][1])} / {_f(r['other'][1])} |")
    return out


def _renders(model, mp, args):
    """Markdown table row of the render clips of ``args`` (and a line per clip printed)."""
    ratios, both, switches, reid, ff = [], [], 0, 0, [0, 0]
    for n_heads in args.heads:
        for seed in args.seeds:
            r = render_case(model, mp, seed, n_heads, args)
            ratios.append(r["multi_s_per_ff"] / r["single_s_per_ff"])
            both += list(zip(r["err_multi"], r["err_single"]))
            switches += r["switches"]
            reid += r["reid_after_cut"]
            ff[0] += r["face_frames"]
            ff[1] += r["single_face_frames"]
            print(f"heads {n_heads} seed {seed}: ms per face-frame multi {1e3 * r['multi_s_per_ff']:.1f} "
                  f"({r['face_frames']} face-frames), single {1e3 * r['single_s_per_ff']:.1f} "
                  f"({r['single_face_frames']}), ratio {ratios[-1]:.2f}; id switches {r['switches']}, "
                  f"re-identified after the cut {r['reid_after_cut']}; identity error mm multi "
                  f"{' '.join(f'{e:.2f}' for e in r['err_multi'])} single {' '.join(f'{e:.2f}' for e in r['err_single'])}",
                  flush=True)
    e = np.array(both, float)
    er = e[:, 0] / e[:, 1]
    size = f"{args.face_px:g}" + (f" -> {args.face_px2:g}" if args.face_px2 else "")
    return (f"| {'/'.join(map(str, args.heads))} heads x seeds {','.join(map(str, args.seeds))}, shots of "
            f"{args.shot}, {size} px | {len(ratios)} | {switches} | {reid}/{len(ratios)} | {ff[0]} / {ff[1]} | "
            f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {np.nanmean(e[:, 0]):.2f} / "
            f"{np.nanmean(e[:, 1]):.2f} ({np.nanmean(e[:, 0]) / np.nanmean(e[:, 1]):.2f}) | "
            f"{np.nanmedian(er):.2f} ({np.nanmin(er):.2f}-{np.nanmax(er):.2f}) |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    ap.add_argument("--heads", type=int, nargs="*", default=[2, 3])
    ap.add_argument("--shot", type=int, default=10)
    ap.add_argument("--face-px", type=float, default=90.0, help="the heads' size in shot 1")
    ap.add_argument("--face-px2", type=float, help="the heads' size in shot 2 (default: --face-px; a zoom at the cut)")
    ap.add_argument("--repeat", type=int, default=2, help="alternate runs of each mode (the least time counts)")
    ap.add_argument("--clip", nargs="*", default=[], help="real videos tracked single-face and with --max-faces")
    ap.add_argument("--max-faces", type=int, default=0, help="the real videos' several-faces mode (0: all, the default)")
    ap.add_argument("--pair", nargs=2, default=[], metavar=("A", "B"),
                    help="two real one-person videos composited side by side (swapped at a cut)")
    ap.add_argument("--pair-shot", type=int, default=80, help="frames before and after the cut")
    ap.add_argument("--pair-half", type=int, default=540, help="each person's half: its side in px")
    ap.add_argument("--pair-scale", type=float, default=0.5, help="person B's size in the third case")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    model = load_model()
    mp = MediaPipeLandmarks()
    _warm_up(model, mp)
    md = []
    if args.seeds and args.heads:
        md += ["| renders | clips | id switches | re-identified after the cut | face-frames multi / single | "
               "time per face-frame, multi / single: median (range) | identity error mm, mean multi / single "
               "(ratio) | per face ratio median (range) |", "|---|---:|---:|---:|---:|---:|---:|---:|",
               _renders(model, mp, args), ""]
    if args.clip:
        md += ["| video | mode | CPU s | face-frames | ms per face-frame | ratio (pairs: median, range) | "
               "faces: frames (runs) |", "|---|---|---:|---:|---:|---:|---|"]
    for clip in args.clip:
        rows = clip_case(model, mp, clip, args.max_faces, args.repeat)
        for mf, r in rows.items():
            faces = "; ".join(f"{k}: {nf} ({', '.join(f'{a}-{b}' for a, b in runs)})"
                              for k, (nf, runs) in enumerate(r["faces"]))
            pr = r.get("pair_ratios")
            pairs = f" ({np.median(pr):.2f}, {pr.min():.2f}-{pr.max():.2f})" if pr is not None else ""
            md.append(f"| {Path(clip).name} | --max-faces {mf} | {r['wall']:.2f} | {r['face_frames']} | "
                      f"{1e3 * r['s_per_ff']:.1f} | {r['s_per_ff'] / rows[1]['s_per_ff']:.2f}{pairs} | {faces} |")
    sections = {}
    if md:
        sections["faces_eval"] = "\n".join(md + ["", results_doc.machine_line("CPU time of one process")])
    if args.pair:
        sections["faces_eval.pair"] = "\n".join(
            ["| two people side by side (A \\| B) | frames | faces | tracked: A / B | id switches | "
             "each keeps its id across the swap | re-id score: same person (max) / other (min) | "
             "its identity part, mm: same (max) / other (min) |", "|---|---:|---:|---:|---:|---|---:|---:|"]
            + _pairs(model, mp, args) + ["", results_doc.machine_line()])
    print("\n\n".join(sections.values()))
    results_doc.maybe_write(args, sections)


if __name__ == "__main__":
    main()
