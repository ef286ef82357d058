"""The tracking report (``--report``): one self-contained HTML file to look at a tracked clip.

``NAME_report.html`` holds, with no external resource (images inline as base64 JPEG/PNG, plots as
inline SVG, no script):

* the summary: frames, frames with a face, frame rate, tracking speed, focal length, image size, the
  fitted identity (its norm and a render of the neutral head), and the frame ranges without a face;
* a contact sheet: evenly spaced frames (:class:`ContactFrames`, kept small while the video is read
  the first time) with the fitted mesh drawn as a wireframe (or the fitted landmarks) over the face;
* the 52 ARKit blendshape curves as small multiples, grouped (eyes, brows, jaw, mouth, cheeks and nose);
* head pose (yaw, pitch, roll of the head's global rotation, degrees; root translation, mm), gaze (each
  eye's yaw and pitch, degrees), per-frame fit error (RMS px) and confidence.

Frames without a face are shaded in every plot.  No plotting library is needed: the plots are SVG
polylines written here; curves longer than :data:`MAX_POINTS` are decimated (min/max kept per bin).
"""
import base64
import html
import math

import numpy as np

from .model import Params
from .outputs import ARKIT_NAMES, _global_rotations, arkit_mapping, gaze_angles, gaze_blendshapes, yaw_pitch_roll
from .paths import atomic_write
from .render import draw_points, draw_wireframe, model_albedo, quad_edges, render, shade, visible_faces
from .skinning import evaluate_mesh

MAX_POINTS = 600
GROUPS = (("Eyes", ("Eye",)), ("Brows", ("Brow",)), ("Jaw", ("Jaw",)), ("Mouth", ("Mouth",)),
          ("Cheeks, nose, tongue", ("Cheek", "Nose", "Tongue")))
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")


class ContactFrames:
    """Evenly spaced frames of a stream, cropped around the face and shrunk, for the contact sheet.

    :meth:`offer` every frame in order; frames whose index is a multiple of the stride are kept, and the
    stride doubles whenever more than ``2 n`` are held, so any length ends with ``n`` to ``2 n`` evenly
    spaced frames without knowing the length in advance; a thumbnail is the crop's pixel at the centre
    of each s x s block (a thumbnail pixel (i, j) shows frame pixel origin + s (i, j) + s // 2).

    Parameters
    ----------
    n : number of frames on the sheet.
    size : longest side of a thumbnail (pixels).
    """

    def __init__(self, n=12, size=240):
        if n < 1 or size < 16:
            raise ValueError(f"ContactFrames needs n >= 1 and size >= 16, got {n}, {size}")
        self.n, self.size, self.stride, self.items = int(n), int(size), 1, {}

    def offer(self, f, frame, mu=None):
        """Consider frame ``f`` (H, W, 3) uint8; ``mu`` (L, 2) pixels (the detected landmarks) centres the crop."""
        if f % self.stride:
            return
        self.items[f] = self._thumb(frame, mu)
        if len(self.items) > 2 * self.n:
            self.stride *= 2
            self.items = {k: v for k, v in self.items.items() if k % self.stride == 0}

    def _thumb(self, frame, mu):
        h, w = frame.shape[:2]
        x0, y0, side_w, side_h = 0, 0, w, h
        pts = None if mu is None else np.asarray(mu, dtype=np.float64)
        if pts is not None and np.isfinite(pts).all(1).sum() >= 3:
            pts = pts[np.isfinite(pts).all(1)]
            c = 0.5 * (pts.min(0) + pts.max(0))
            side = int(min(1.7 * (pts.max(0) - pts.min(0)).max(), w, h))
            side_w = side_h = max(side, 8)
            x0 = int(np.clip(c[0] - side_w / 2, 0, w - side_w))
            y0 = int(np.clip(c[1] - side_h / 2, 0, h - side_h))
        s = max(1, math.ceil(max(side_w, side_h) / self.size))
        # every s-th pixel, the centre of each s x s block (cheap: this runs while the video is read)
        c = s // 2
        img = np.ascontiguousarray(frame[y0 + c:y0 + side_h:s, x0 + c:x0 + side_w:s])
        up = max(1, self.size // max(side_w, side_h))       # a small face: pixels repeated up to ~size
        if up > 1:
            img = np.repeat(np.repeat(img, up, 0), up, 1)
        return img, (float(x0), float(y0)), up / s

    def chosen(self):
        """[(frame index, thumbnail, origin (x, y), scale)] of about ``n`` evenly spaced frames held."""
        keys = sorted(self.items)
        if not keys:
            return []
        pick = np.unique(np.linspace(0, len(keys) - 1, min(self.n, len(keys))).round().astype(int))
        return [(keys[i],) + self.items[keys[i]] for i in pick]


# --------------------------------------------------------------------------------------------
# Per-frame series
# --------------------------------------------------------------------------------------------

def report_series(model, data, derive_gaze=True):
    """The report's per-frame curves from a track's arrays (``NAME.npz`` keys).

    Returns a dict of (F, ...) float arrays, NaN where there is no fit: ``arkit`` (F, 52), ``head``
    (F, 3) yaw/pitch/roll degrees, ``translation`` (F, 3) mm, ``gaze`` (F, 4) degrees (left yaw, left
    pitch, right yaw, right pitch), ``rms`` (F,) px, ``confidence`` (F,), ``ok`` (F,) bool.
    """
    expr = np.asarray(data["expression"], dtype=np.float64)
    rot = np.concatenate([np.asarray(data["root_rotation"])[:, None], np.asarray(data["joint_rotations"])], 1)
    ok = np.asarray(data["success"], bool) & np.isfinite(expr).all(1) & np.isfinite(rot).all((1, 2))
    nf = expr.shape[0]
    amap = arkit_mapping(model.expression_names)
    look = [i for i, n in enumerate(model.expression_names) if n.startswith("eyeLook")] if derive_gaze else []
    out = dict(arkit=np.full((nf, amap.shape[0]), np.nan), head=np.full((nf, 3), np.nan),
               gaze=np.full((nf, 4), np.nan), ok=ok, translation=np.where(ok[:, None], data["translation"], np.nan),
               rms=np.where(ok, data["fit_rms_px"], np.nan), confidence=np.asarray(data["confidence"], float))
    for f in np.flatnonzero(ok):
        e = expr[f].copy()
        if look:
            e[look] = gaze_blendshapes(model, rot[f])[look]
        out["arkit"][f] = amap @ e
        out["head"][f] = np.degrees(yaw_pitch_roll(_global_rotations(model, rot[f])[2]))
        out["gaze"][f] = np.degrees(gaze_angles(model, rot[f]).ravel())
    return out


def _runs(mask):
    """[(start, stop)] of the runs of True in a bool array (stop exclusive)."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


# --------------------------------------------------------------------------------------------
# SVG plots
# --------------------------------------------------------------------------------------------

def _decimate(t, y):
    """(t, y) with at most MAX_POINTS points: per bin the min and the max (in time order)."""
    if t.size <= MAX_POINTS:
        return t, y
    nb = MAX_POINTS // 2
    edges = np.linspace(0, t.size, nb + 1).astype(int)
    idx = []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = y[a:b]
        if np.isfinite(seg).any():
            lo, hi = a + int(np.nanargmin(seg)), a + int(np.nanargmax(seg))
            idx += sorted({lo, hi})
        else:
            idx.append(a)
    idx = np.asarray(idx)
    return t[idx], y[idx]


def svg_plot(t, series, gaps=(), width=640, height=150, ylim=None, unit="", legend=None, ticks=True):
    """An inline SVG line plot.

    t : (F,) seconds; series : list of (F,) arrays (NaN breaks a line); gaps : [(t0, t1)] spans shaded
    (frames without a face); ylim : (lo, hi) or None (the data's range); legend : names of the series.
    """
    ml, mr, mt, mb = (46, 8, 8, 18) if ticks else (2, 2, 2, 2)
    pw, ph = width - ml - mr, height - mt - mb
    vals = np.concatenate([s[np.isfinite(s)] for s in series] + [np.zeros(0)])
    lo, hi = ylim if ylim is not None else ((vals.min(), vals.max()) if vals.size else (0.0, 1.0))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    t1 = max(float(t[-1]) if t.size else 1.0, 1e-9)
    sx = lambda v: ml + pw * np.asarray(v) / t1                         # noqa: E731
    sy = lambda v: mt + ph * (1.0 - (np.asarray(v) - lo) / (hi - lo))    # noqa: E731
    out = [f'<svg width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" '
           'stroke="#ccc"/>']
    for a, b in gaps:
        out.append(f'<rect x="{sx(a):.1f}" y="{mt}" width="{max(sx(b) - sx(a), 1.0):.1f}" height="{ph}" '
                   'fill="#f4b6b6" opacity="0.6"/>')
    if ticks:
        for v in (lo, hi) + ((0.0,) if lo < 0 < hi else ()):
            out.append(f'<text x="{ml - 3}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
        out.append(f'<text x="{ml - 3}" y="{mt + ph / 2 + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{html.escape(unit)}</text>')
        for v in np.linspace(0.0, t1, 6):
            out.append(f'<text x="{sx(v):.1f}" y="{height - 4}" font-size="10" text-anchor="middle">{v:.1f} s</text>')
    for k, s in enumerate(series):
        tt, yy = _decimate(np.asarray(t, float), np.clip(np.asarray(s, float), lo, hi))
        finite = np.isfinite(yy)
        for a, b in _runs(finite):
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(sx(tt[a:b]), sy(yy[a:b])))
            if b - a == 1:
                pts += f" {sx(tt[a]) + 1:.1f},{sy(yy[a]):.1f}"
            out.append(f'<polyline fill="none" stroke="{COLORS[k % len(COLORS)]}" stroke-width="1.2" '
                       f'points="{pts}"/>')
    out.append("</svg>")
    if legend:
        out.append('<div class="legend">' + " ".join(
            f'<span style="color:{COLORS[k % len(COLORS)]}">&#9632; {html.escape(n)}</span>'
            for k, n in enumerate(legend)) + "</div>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def _data_uri(img, fmt="jpeg"):
    import imageio.v3 as iio
    kw = dict(quality=82) if fmt == "jpeg" else {}
    data = iio.imwrite("<bytes>", img, extension=".jpg" if fmt == "jpeg" else ".png", **kw)
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def identity_image(model, identity, size=200):
    """A frontal render (size x size, uint8) of the neutral head with the fitted identity."""
    v = model.template(identity) - model.joints(identity)[2]          # head joint at the origin
    v[:, 2] -= 700.0
    faces = visible_faces(model)
    img, _, _ = render(v, faces, shade(v, faces, model_albedo(model, identity=identity)), size * 2.6, size, size,
                       background=np.full((size, size, 3), 245, np.uint8))
    return img


def sheet_images(model, data, sheet, style="wireframe"):
    """The contact sheet's thumbnails: [(frame, thumbnail with the fit drawn, has fit)]."""
    items = sheet.chosen() if sheet is not None else []
    if not items:
        return []
    identity = np.asarray(data["identity"], dtype=np.float64)
    faces = visible_faces(model)
    edges = quad_edges(model.vertices, faces)
    focal = float(data["focal_px"])
    size = tuple(int(v) for v in data["image_size"])
    ok = np.asarray(data["success"], bool)
    out = []
    for f, img, origin, scale in items:
        if f >= ok.size or not ok[f]:
            out.append((f, img, False))
            continue
        rot = np.concatenate([data["root_rotation"][f][None], data["joint_rotations"][f]])
        p = Params(identity, data["expression"][f], rot, data["translation"][f])
        if style == "landmarks":
            uv = data["landmarks68"][f]
            img = draw_points(img, (uv - np.asarray(origin)) * scale, (255, 40, 40), radius=1)
        else:
            v = evaluate_mesh(model, p)
            img = draw_wireframe(img, v, faces, focal, origin, scale, color=(70, 255, 110), full_size=size,
                                 edges=edges)
        out.append((f, img, True))
    return out


# --------------------------------------------------------------------------------------------
# The HTML file
# --------------------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;margin:20px;color:#222;max-width:1100px}h1{font-size:22px}
h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}table.s td{padding:2px 12px 2px 0}
.sheet{display:flex;flex-wrap:wrap;gap:8px}.sheet figure{margin:0;text-align:center;font-size:11px}
.sheet img{display:block;height:160px;border:3px solid #8c8}.sheet .none img{border-color:#d44}
.sheet .none figcaption{color:#c22;font-weight:bold}.grid{display:grid;grid-template-columns:repeat(4,1fr);gap:4px 14px}
.grid div{font-size:11px}.legend{font-size:12px;margin:2px 0 10px 46px}.legend span{margin-right:14px}"""


def write_report(path, model, data, name, sheet=None, style="wireframe", timings=None, derive_gaze=True):
    """Write ``NAME_report.html`` (atomically) from a track's arrays.

    Parameters
    ----------
    path : output .html file.
    model : FaceModel.
    data : dict with the ``NAME.npz`` keys (identity, focal_px, image_size, fps, expression,
        root_rotation, joint_rotations, translation, success, confidence, fit_rms_px, landmarks68).
    name : the clip's name (title).
    sheet : ContactFrames, optional (no contact sheet without it).
    style : "wireframe" or "landmarks": what the contact sheet draws.
    timings : dict of seconds per stage, optional (tracking speed in the summary).

    Returns
    -------
    int, the file size in bytes.
    """
    s = report_series(model, data, derive_gaze)
    ok = s["ok"]
    nf = ok.size
    fps = float(data["fps"])
    t = np.arange(nf) / fps
    gaps = [(a / fps, b / fps) for a, b in _runs(~ok)]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)} - lmfit3d report</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(name)}: lmfit3d tracking report</h1>"]
    parts.append(_summary(model, data, s, name, timings))
    shots = sheet_images(model, data, sheet, style)
    if shots:
        what = "fitted landmarks" if style == "landmarks" else "fitted mesh"
        parts.append(f"<h2 id='sheet'>Contact sheet ({what})</h2>"
                     "<div class='sheet'>")
        for f, img, has in shots:
            cap = f"frame {f} &middot; {f / fps:.2f} s" + ("" if has else " &middot; no face")
            parts.append(f"<figure class='{'fit' if has else 'none'}'><img alt='frame {f}' src='{_data_uri(img)}'>"
                         f"<figcaption>{cap}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2 id='blendshapes'>Blendshapes (ARKit 52, 0 to 1)</h2>")
    for title, prefixes in GROUPS:
        parts.append(f"<h3>{title}</h3><div class='grid'>")
        for a, an in enumerate(ARKIT_NAMES):
            if an.startswith(prefixes):
                plot = svg_plot(t, [s["arkit"][:, a]], gaps, 250, 46, (0.0, 1.0), ticks=False)
                parts.append(f"<div>{an}<br>{plot}</div>")
        parts.append("</div>")
    parts.append("<h2 id='pose'>Head pose</h2>" + svg_plot(t, list(s["head"].T), gaps, unit="deg",
                                                          legend=("yaw", "pitch", "roll")))
    parts.append(svg_plot(t, list(s["translation"].T), gaps, unit="mm", legend=("x", "y", "z")))
    parts.append("<h2 id='gaze'>Gaze</h2>" + svg_plot(t, list(s["gaze"].T), gaps, unit="deg", legend=(
        "left yaw", "left pitch", "right yaw", "right pitch")))
    parts.append("<h2 id='fit'>Fit error and confidence</h2>" + svg_plot(t, [s["rms"]], gaps, unit="px",
                                                                        legend=("RMS landmark error",)))
    parts.append(svg_plot(t, [s["confidence"]], gaps, ylim=(0.0, 1.0), legend=("face confidence",)))
    parts.append("<p style='font-size:12px;color:#666'>Shaded: frames without a face.  Written by lmfit3d.</p>"
                 "</body></html>")
    text = "".join(parts).encode("utf-8")
    with atomic_write(path, "wb") as fh:
        fh.write(text)
    return len(text)


def _summary(model, data, s, name, timings):
    ok = s["ok"]
    nf = ok.size
    fps = float(data["fps"])
    identity = np.asarray(data["identity"], dtype=np.float64)
    focal = float(data["focal_px"])
    missing = ", ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in _runs(~ok)[:20]) or "none"
    rows = [("frames", f"{nf} ({nf / fps:.2f} s at {fps:.3g} frames/s)"),
            ("with a face", f"{int(ok.sum())} ({100.0 * ok.mean() if nf else 0:.1f} %)"),
            ("frames without a face", missing),
            ("image size", "{} x {} px".format(*[int(v) for v in data["image_size"]])),
            ("focal length", f"{focal:.1f} px (horizontal field of view "
                             f"{np.degrees(2 * np.arctan(0.5 * float(data['image_size'][0]) / focal)):.1f} deg)"),
            ("identity", f"|beta| = {np.linalg.norm(identity):.2f} over {identity.size} modes"),
            ("median fit error", f"{np.nanmedian(s['rms']):.2f} px" if ok.any() else "-")]
    if timings:
        total = sum(timings.values())
        rows.append(("tracking speed", f"{nf / max(total, 1e-9):.1f} frames/s (" + ", ".join(
            f"{k} {v:.2f} s" for k, v in timings.items()) + ")"))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    face = _data_uri(identity_image(model, identity), "png")
    return (f"<h2 id='summary'>Summary</h2><div style='display:flex;gap:24px;align-items:flex-start'>"
            f"<table class='s'>{table}</table><figure style='margin:0;text-align:center;font-size:11px'>"
            f"<img alt='identity' src='{face}'><figcaption>fitted identity (neutral)</figcaption></figure></div>")

