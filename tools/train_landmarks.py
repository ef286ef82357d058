"""Train the probabilistic dense landmark network (paper sec. 3.1.2) on shards of tools/synth_faces.py.

A MobileNetV2-style network (no pretrained weights) regresses, per landmark, x, y (normalised to
[-1, 1] over the square crop) and log sigma (in the same units); the loss is the paper's Gaussian
negative log likelihood

    L = sum_i lambda_i ( log sigma_i^2 + ||x_i - mu_i||^2 / (2 sigma_i^2) )

(``--loss gnll``) or, for the ablation, plain L2 on positions (``--loss l2``); ``--loss both`` trains
one network of each kind on the very same batches (same data, same schedule).  AdamW, warm-up + cosine
learning rate scheduled by training time (resumable), bf16 autocast on CUDA; random similarity
warps.  Data live on the device as uint8; the shard folder is re-scanned every 30 s, so training
can run while tools/synth_faces.py is still writing shards.
Checkpoints (``ckpt_<loss>.pt``) hold model, optimiser, step and training time and resume with ``--resume``.

The ONNX export (``--export``) takes NCHW float input in [0, 1] and outputs ``mu`` (1, L, 2) in crop
pixels and ``log_sigma`` (1, L), the log of sigma in crop pixels.

torch is needed here only (tools/); the runtime uses the ONNX file through onnxruntime.
"""
import argparse
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmfit3d.landmarks import load_landmark_set  # noqa: E402


# ----------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------

def _c(v, width):
    return max(8, int(round(v * width / 8)) * 8)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hid = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
                   nn.ReLU6(inplace=True), nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class LandmarkNet(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with a last fully connected layer of 3 L outputs."""

    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))

    def __init__(self, n_landmarks, width=1.0, head=1280):
        super().__init__()
        cin = _c(32, width)
        layers = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)]
        for t, c, n, s in self.CFG:
            cout = _c(c, width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        hd = _c(head, max(width, 1.0))
        layers += [nn.Conv2d(cin, hd, 1, bias=False), nn.BatchNorm2d(hd), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(hd, 3 * n_landmarks)
        self.n = n_landmarks
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        with torch.no_grad():
            self.fc.bias[2::3] = math.log(0.1)          # start at sigma = 5 % of the crop

    def forward(self, x):
        """x (B, 3, S, S) in [0, 1] -> (B, L, 3): x, y in [-1, 1] and log sigma (normalised units)."""
        f = self.features((x - 0.5) / 0.25).mean((2, 3))
        return self.fc(f).view(-1, self.n, 3)


class Exported(nn.Module):
    """ONNX wrapper: crop pixels out (mu (1, L, 2), log_sigma (1, L))."""

    def __init__(self, net, size):
        super().__init__()
        self.net = net
        self.half = size / 2.0

    def forward(self, x):
        o = self.net(x)
        return (o[..., :2] + 1.0) * self.half, o[..., 2] + math.log(self.half)


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------

def gnll_loss(out, target, weight):
    """Paper eq. 1, averaged over the batch: sum_i w_i (log sigma_i^2 + |x_i - mu_i|^2 / (2 sigma_i^2)).

    out (B, L, 3) (mu x, mu y, log sigma), target (B, L, 2), weight (L,); normalised units.
    """
    log_sigma = out[..., 2].clamp(-12.0, 5.0)
    d2 = ((target - out[..., :2]) ** 2).sum(-1)
    per = 2.0 * log_sigma + 0.5 * d2 * torch.exp(-2.0 * log_sigma)
    return (per * weight).sum(-1).mean() / weight.sum()


def l2_loss(out, target, weight):
    d2 = ((target - out[..., :2]) ** 2).sum(-1)
    return (d2 * weight).sum(-1).mean() / weight.sum()


LOSSES = {"gnll": gnll_loss, "l2": l2_loss}


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

class ShardPool:
    """All shards of a folder as device tensors; ``refresh()`` loads shards written since."""

    def __init__(self, folder, columns, device, holdout=0):
        self.folder, self.columns, self.device = folder, torch.as_tensor(columns), device
        self.seen = set()
        self.x, self.y = [], []
        self.holdout = holdout          # shards numbered below this are kept out of training
        self.val = None

    def refresh(self):
        files = sorted(glob.glob(os.path.join(self.folder, "shard_*.npz")))
        for f in files:
            i = int(Path(f).stem.split("_")[1])
            if f in self.seen:
                continue
            try:
                d = np.load(f)
                x = torch.from_numpy(d["crops"]).to(self.device)
                y = torch.from_numpy(d["points"])[:, self.columns].to(self.device)
            except Exception:            # noqa: BLE001  (shard being written)
                continue
            self.seen.add(f)
            if i < self.holdout:
                self.val = (x, y) if self.val is None else (torch.cat([self.val[0], x]), torch.cat([self.val[1], y]))
            else:
                self.x.append(x)
                self.y.append(y)
        if self.x:
            self.x, self.y = [torch.cat(self.x)], [torch.cat(self.y)]
        return self.size

    @property
    def size(self):
        return sum(x.shape[0] for x in self.x)


def to_input(xb, size):
    """uint8 (B, H, W, 3) -> float (B, 3, S, S) in [0, 1]."""
    x = xb.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


def augment(x, y, gen, scale=0.08, rot=0.08, shift=0.05):
    """Random similarity warp of a batch x (B, 3, S, S) with its labels y (B, L, 2) in [-1, 1] units,
    and per-image brightness/contrast; the labels follow the warp exactly."""
    b = x.shape[0]
    r = lambda *s: torch.randn(*s, device=x.device, generator=gen)  # noqa: E731
    sc = torch.exp(r(b) * scale)
    th = r(b) * rot
    t = r(b, 2) * shift
    a = torch.stack([torch.stack([torch.cos(th), -torch.sin(th)], -1),
                     torch.stack([torch.sin(th), torch.cos(th)], -1)], -2) * sc[:, None, None]
    grid = F.affine_grid(torch.cat([a, t[:, :, None]], 2), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # input point p = a q + t  =>  output q = a^-1 (p - t)
    y = torch.linalg.solve(a, (y - t[:, None, :]).transpose(1, 2)).transpose(1, 2)
    x = (x - 0.5) * torch.exp(r(b, 1, 1, 1) * 0.1) + 0.5 + r(b, 1, 1, 1) * 0.05
    return x.clamp(0, 1).contiguous(memory_format=torch.channels_last), y


def landmark_weights(name, sub):
    """Per-landmark weights lambda_i: 2 on the ibug68 subset (eyes, brows, nose, lips, jaw), else 1."""
    ids = np.array(load_landmark_set(name))
    w = np.ones(ids.size)
    w[np.isin(ids, load_landmark_set("ibug68"))] = 2.0
    return w


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(net, x, y, size, crop_px, batch=512):
    """NME (mean error / crop side) and the share of errors within 1, 2, 3 sigma."""
    net.eval()
    errs, sig = [], []
    for i in range(0, x.shape[0], batch):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            o = net(to_input(x[i:i + batch], size)).float()
        t = y[i:i + batch] / crop_px * 2 - 1
        errs.append(((o[..., :2] - t) ** 2).sum(-1).sqrt())
        sig.append(o[..., 2].exp())
    net.train()
    e, s = torch.cat(errs), torch.cat(sig)
    # circular 2D Gaussian: |e| / sigma is Rayleigh; P(<= k sigma) = 1 - exp(-k^2 / 2)
    return {"nme_crop": float(e.mean() / 2), "within": [float((e <= k * s).float().mean()) for k in (1, 2, 3)],
            "median_sigma_crop": float(s.median() / 2)}


def export_onnx(net, size, path):
    net = net.float().eval().cpu()
    wrapped = Exported(net, size)
    dummy = torch.rand(1, 3, size, size)
    torch.onnx.export(wrapped, dummy, str(path), input_names=["input"], output_names=["mu", "log_sigma"],
                      opset_version=17, dynamo=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="shard folder (tools/synth_faces.py shards)")
    ap.add_argument("--out", required=True, help="checkpoint / export folder")
    ap.add_argument("--landmarks", default="dense320")
    ap.add_argument("--input", type=int, default=160, help="network input side (crops are resized)")
    ap.add_argument("--crop", type=int, default=160, help="side of the stored crops")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--loss", choices=("gnll", "l2", "both"), default="gnll")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--budget-minutes", type=float, default=16.0,
                    help="training time of the whole schedule (warm-up + cosine), summed over resumed runs")
    ap.add_argument("--minutes", type=float, default=1e9, help="stop this run after this wall time")
    ap.add_argument("--min-pool", type=int, default=2000, help="wait until this many training samples")
    ap.add_argument("--holdout", type=int, default=1, help="shards held out for validation")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)

    t0 = time.time()
    dev = torch.device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    all_ids = np.array(load_landmark_set("dense703"))
    sub_ids = np.array(load_landmark_set(a.landmarks))
    cols = np.array([np.flatnonzero(all_ids == v)[0] for v in sub_ids])
    L = cols.size
    weight = torch.tensor(landmark_weights(a.landmarks, cols), dtype=torch.float32, device=dev)
    kinds = ("gnll", "l2") if a.loss == "both" else (a.loss,)
    runs = {}
    for k in kinds:
        net = LandmarkNet(L, a.width).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
        state = {"step": 0, "log": [], "train_s": 0.0}
        ck = out / f"ckpt_{k}.pt"
        wt = out / f"weights_{k}.pt"
        if a.resume and ck.is_file():
            c = torch.load(ck, map_location=dev, weights_only=False)
            net.load_state_dict(c["model"])
            opt.load_state_dict(c["opt"])
            state = c["state"]
            print(f"[{k}] resumed at step {state['step']}", flush=True)
        elif a.resume and wt.is_file():        # weights only (optimiser moments restart)
            c = torch.load(wt, map_location=dev, weights_only=False)
            net.load_state_dict(c["model"])
            state = c["state"]
            print(f"[{k}] resumed from weights at step {state['step']}", flush=True)
        runs[k] = (net, opt, None, state)

    pool = ShardPool(a.data, cols, dev, a.holdout)
    while pool.refresh() < a.min_pool or pool.val is None:
        if time.time() - t0 > a.minutes * 60:
            raise SystemExit("no data arrived")
        time.sleep(5)
    print(f"pool {pool.size} + val {pool.val[0].shape[0]} at {time.time() - t0:.0f} s", flush=True)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)

    def save(k):
        net, opt, sched, state = runs[k]
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(),
                    "state": state, "args": vars(a), "landmarks": a.landmarks, "n": L}, out / f".ckpt_{k}.pt")
        os.replace(out / f".ckpt_{k}.pt", out / f"ckpt_{k}.pt")
        torch.save({"model": net.state_dict(), "state": state, "landmarks": a.landmarks, "width": a.width,
                    "input": a.input}, out / f".weights_{k}.pt")
        os.replace(out / f".weights_{k}.pt", out / f"weights_{k}.pt")

    step0 = min(r[3]["step"] for r in runs.values())
    train_s0 = min(r[3]["train_s"] for r in runs.values())
    budget = a.budget_minutes * 60
    t_start = time.time()
    step, last_refresh, last_log = step0, time.time(), time.time()
    while time.time() - t0 < a.minutes * 60:
        prog = (train_s0 + time.time() - t_start) / budget       # schedule by training time
        if prog >= 1:
            break
        lr = a.lr * min(1.0, prog / 0.03) * 0.5 * (1 + math.cos(math.pi * prog))
        if time.time() - last_refresh > 30:
            pool.refresh()
            last_refresh = time.time()
        xs, ys = pool.x[0], pool.y[0]
        idx = torch.randint(0, xs.shape[0], (a.batch,), device=dev, generator=gen)
        xb, yb = augment(to_input(xs[idx], a.input), ys[idx] / a.crop * 2 - 1, gen)
        for k, (net, opt, sched, state) in runs.items():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                o = net(xb).float()
            loss = LOSSES[k](o, yb, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            state["step"] = step + 1
            state["train_s"] = train_s0 + time.time() - t_start
            state["loss"] = float(loss.detach()) if step % 50 == 0 else state.get("loss")
        step += 1
        if time.time() - last_log > 60:
            last_log = time.time()
            for k, (net, _, _, state) in runs.items():
                ev = evaluate(net, pool.val[0], pool.val[1], a.input, a.crop)
                ev.update(step=step, loss=state["loss"], lr=lr, pool=pool.size, t=round(time.time() - t0),
                          steps_per_s=(step - step0) / (time.time() - t_start))
                state["log"].append(ev)
                print(f"[{k}] {json.dumps(ev)}", flush=True)
                save(k)
    for k, (net, _, _, state) in runs.items():
        ev = evaluate(net, pool.val[0], pool.val[1], a.input, a.crop)
        ev.update(step=step, pool=pool.size, t=round(time.time() - t0))
        state["log"].append(ev)
        print(f"[{k}] final {json.dumps(ev)}", flush=True)
        save(k)
        (out / f"log_{k}.json").write_text(json.dumps(state["log"]))
        if a.export:
            export_onnx(net, a.input, out / f"{a.landmarks}_{k}.onnx")
            net.to(dev)


if __name__ == "__main__":
    main()
