#!/usr/bin/env python
"""Train the small YOLOX-like demo detector on synthetic shapes and export it to ONNX.

The exported model follows the Megvii YOLOX ONNX contract with decode_in_inference=True:

* input  ``images``: float32 [1, 3, S, S], BGR, raw 0..255, letterboxed (top-left, pad 114)
* output ``output``: float32 [1, N, 5 + C], levels stride 8, 16, 32 (row-major cells, stride 8 first),
  rows ``[cx, cy, w, h, obj, cls...]``: boxes in input pixels (the head's grid offsets and log-sizes
  decoded in the graph by experiments/decode_in_graph.py; ``--raw`` skips it), obj/cls sigmoided.
  Pixel-sized boxes sharing a tensor with 0..1 scores is what makes int8 activations there costly.

Training data is rendered on the fly by ``autoq.demo.synthetic`` from a stream that is disjoint from the
eval/calibration streams used by ``generate_dataset``.

Example::

    python experiments/train_demo_detector.py --size 192 --minutes 39 --out autoq/demo/detector.onnx

The shipped model was produced by exactly this command (defaults: batch 32, AdamW lr 3e-3 cosine, wd 5e-4,
center radius 1.5, seed 1234, EMA weights exported); it ran 2428 steps (77,696 images) in 39 min on 2 CPU
cores.  The schedule is wall-clock based, so a rerun on a different machine differs slightly; use
``--steps 2428`` for a step-based (machine independent) schedule.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from autoq.demo.synthetic import CLASSES, sample_image  # noqa: E402

STRIDES = (8, 16, 32)
TRAIN_STREAM = 7  # eval = 1, calib = 2 (see autoq.demo.synthetic)


# ----------------------------------------------------------------------------------------------- model
class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 1)
        self.cv2 = ConvBNAct(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class CSP(nn.Module):
    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        h = cout // 2
        self.cv1 = ConvBNAct(cin, h, 1)
        self.cv2 = ConvBNAct(cin, h, 1)
        self.m = nn.Sequential(*[Bottleneck(h) for _ in range(n)])
        self.cv3 = ConvBNAct(2 * h, cout, 1)

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class Head(nn.Module):
    """YOLOX-style decoupled head for one level."""

    def __init__(self, cin: int, width: int, num_classes: int):
        super().__init__()
        self.stem = ConvBNAct(cin, width, 1)
        self.cls_conv = ConvBNAct(width, width, 3)
        self.reg_conv = ConvBNAct(width, width, 3)
        self.cls_pred = nn.Conv2d(width, num_classes, 1)
        self.reg_pred = nn.Conv2d(width, 4, 1)
        self.obj_pred = nn.Conv2d(width, 1, 1)
        prior = -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(self.cls_pred.bias, prior)
        nn.init.constant_(self.obj_pred.bias, prior)

    def forward(self, x):
        x = self.stem(x)
        c = self.cls_conv(x)
        r = self.reg_conv(x)
        return self.reg_pred(r), self.obj_pred(r), self.cls_pred(c)


class TinyYOLOX(nn.Module):
    def __init__(self, num_classes: int, width_mult: float = 1.0, head_width: int = 32):
        super().__init__()
        ch = [max(8, int(round(c * width_mult / 8)) * 8) for c in (16, 32, 64, 80, 96)]
        c0, c1, c2, c3, c4 = ch
        self.stem = ConvBNAct(3, c0, 3, 2)
        self.d1 = nn.Sequential(ConvBNAct(c0, c1, 3, 2), CSP(c1, c1))
        self.d2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), CSP(c2, c2))   # /8
        self.d3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), CSP(c3, c3))   # /16
        self.d4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), CSP(c4, c4))   # /32
        n5, n4, n3 = 64, 48, 48
        self.lat5 = ConvBNAct(c4, n5, 1)
        self.td4 = CSP(n5 + c3, n4 + 16)
        self.lat4 = ConvBNAct(n4 + 16, n4, 1)
        self.td3 = CSP(n4 + c2, n3)
        self.down3 = ConvBNAct(n3, n3, 3, 2)
        self.bu4 = CSP(n3 + n4, 64)
        self.down4 = ConvBNAct(64, 64, 3, 2)
        self.bu5 = CSP(64 + n5, 96)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.heads = nn.ModuleList([Head(n3, head_width, num_classes), Head(64, head_width, num_classes),
                                    Head(96, head_width, num_classes)])
        self.num_classes = num_classes

    def raw(self, x):
        """Per-level (reg, obj_logit, cls_logit) maps."""
        x = x * (1.0 / 255.0)
        x = self.d1(self.stem(x))
        c3 = self.d2(x)
        c4 = self.d3(c3)
        c5 = self.d4(c4)
        p5 = self.lat5(c5)
        p4 = self.td4(torch.cat([self.up(p5), c4], 1))
        p4l = self.lat4(p4)
        p3 = self.td3(torch.cat([self.up(p4l), c3], 1))
        q4 = self.bu4(torch.cat([self.down3(p3), p4l], 1))
        q5 = self.bu5(torch.cat([self.down4(q4), p5], 1))
        return [h(f) for h, f in zip(self.heads, (p3, q4, q5))]

    def forward(self, x):
        """Export path: [B, N, 5 + C] with sigmoid on obj/cls (YOLOX decode_in_inference=False)."""
        outs = []
        for reg, obj, cls in self.raw(x):
            o = torch.cat([reg, obj.sigmoid(), cls.sigmoid()], 1)
            outs.append(o.flatten(start_dim=2))
        return torch.cat(outs, dim=2).permute(0, 2, 1)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every ConvBNAct's BatchNorm into its convolution (in place, eval only)."""
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            conv, bn = m.conv, m.bn
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, bias=True)
            std = torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1)
            b = bn.bias - bn.running_mean * bn.weight / std
            fused.weight.data.copy_(w.detach())
            fused.bias.data.copy_(b.detach())
            m.conv = fused
            m.bn = nn.Identity()
    return model


# ------------------------------------------------------------------------------------------------ data
def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(w * r), int(h * r)
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r


def make_batch(seed: int, start: int, batch: int, size: int):
    imgs, targets = [], []
    for i in range(batch):
        img, boxes = sample_image(seed, TRAIN_STREAM, start + i)
        lb, r = letterbox(img, size)
        t = np.array([[x * r, y * r, (x + w) * r, (y + h) * r, c] for x, y, w, h, c in boxes],
                     dtype=np.float32).reshape(-1, 5)
        if random.random() < 0.5:  # horizontal flip of the content region keeps letterbox layout
            nw = int(img.shape[1] * r)
            lb[:, :nw] = lb[:, :nw][:, ::-1]
            x1 = nw - t[:, 2]
            x2 = nw - t[:, 0]
            t[:, 0], t[:, 2] = x1, x2
        imgs.append(lb.transpose(2, 0, 1))
        targets.append(torch.from_numpy(t))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs))).float()
    return x, targets


# ------------------------------------------------------------------------------------------------ loss
def make_grids(size: int):
    gxy, st = [], []
    for s in STRIDES:
        n = size // s
        yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        gxy.append(torch.stack([xx, yy], -1).reshape(-1, 2).float())
        st.append(torch.full((n * n,), float(s)))
    return torch.cat(gxy), torch.cat(st)


def giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of paired xyxy boxes."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    elt = torch.min(a[:, :2], b[:, :2])
    erb = torch.max(a[:, 2:], b[:, 2:])
    ewh = (erb - elt).clamp(min=0)
    earea = ewh[:, 0] * ewh[:, 1] + 1e-7
    return iou, iou - (earea - union) / earea


# level k accepts boxes whose max side (in input pixels, at input size 192) lies within [lo, hi]
# (overlapping ranges); scaled linearly for other input sizes.  Overridable with --scale-ranges.
LEVEL_RANGES = [[0.0, 64.0], [32.0, 128.0], [80.0, 1e9]]


def level_ranges(size: int):
    f = size / 192.0
    return torch.tensor(LEVEL_RANGES) * f


def assign(targets: list[torch.Tensor], gxy: torch.Tensor, st: torch.Tensor, size: int, radius: float = 1.5):
    """Center-sampling assignment.  Returns per-image (anchor_idx, gt_row) lists."""
    centers = (gxy + 0.5) * st[:, None]
    lvl = torch.log2(st / 8).long()
    rng_ = level_ranges(size)[lvl]  # [N, 2]
    out = []
    for t in targets:
        if t.numel() == 0:
            out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        boxes = t[:, :4]
        gc = (boxes[:, :2] + boxes[:, 2:]) / 2
        gwh = boxes[:, 2:] - boxes[:, :2]
        m = gwh.max(1).values
        d = (centers[:, None, :] - gc[None]).abs()  # [N, M, 2]
        rad = (radius * st)[:, None, None]
        # the radius is also limited by the box half-size (plus half a cell) so that cells stay on the object
        lim = torch.minimum(rad, gwh[None] / 2 + st[:, None, None] * 0.5)
        in_c = (d < lim).all(-1)
        ok_lvl = (m[None] >= rng_[:, :1]) & (m[None] <= rng_[:, 1:])
        pos = in_c & ok_lvl
        # guarantee at least the cell containing the center at the best-matching level
        best = torch.clamp(torch.log2(m / 8.0 / (size / 192.0) / 4.0).floor() + 1, 0, 2).long()  # <32:0 <64..:1
        for j in range(t.shape[0]):
            s = STRIDES[int(best[j])]
            n = size // s
            gx = int(torch.clamp(gc[j, 0] / s, 0, n - 1))
            gy = int(torch.clamp(gc[j, 1] / s, 0, n - 1))
            off = sum((size // STRIDES[k]) ** 2 for k in range(int(best[j])))
            pos[off + gy * n + gx, j] = True
        area = (gwh[:, 0] * gwh[:, 1])[None].expand_as(pos)
        area = torch.where(pos, area, torch.full_like(area, float("inf")))
        min_area, gt_idx = area.min(1)
        anchors = torch.nonzero(torch.isfinite(min_area)).squeeze(1)
        out.append((anchors, gt_idx[anchors]))
    return out


def compute_loss(raw_outs, targets, gxy, st, size, num_classes, radius=1.5):
    B = raw_outs[0][0].shape[0]
    reg = torch.cat([r.flatten(2) for r, _, _ in raw_outs], 2).permute(0, 2, 1)  # [B, N, 4]
    obj = torch.cat([o.flatten(2) for _, o, _ in raw_outs], 2).permute(0, 2, 1)[..., 0]
    cls = torch.cat([c.flatten(2) for _, _, c in raw_outs], 2).permute(0, 2, 1)
    assignment = assign(targets, gxy, st, size, radius)
    obj_t = torch.zeros_like(obj)
    l_box, l_l1, l_cls = [], [], []
    n_pos = 0
    for b, (a_idx, g_idx) in enumerate(assignment):
        if a_idx.numel() == 0:
            continue
        t = targets[b][g_idx]
        s = st[a_idx][:, None]
        p = reg[b, a_idx]
        pxy = (p[:, :2] + gxy[a_idx]) * s
        pwh = torch.exp(p[:, 2:].clamp(max=8.0)) * s
        pbox = torch.cat([pxy - pwh / 2, pxy + pwh / 2], 1)
        iou, g = giou(pbox, t[:, :4])
        l_box.append(1.0 - g)
        tc = (t[:, :2] + t[:, 2:4]) / 2
        twh = (t[:, 2:4] - t[:, :2]).clamp(min=1.0)
        t_raw = torch.cat([tc / s - gxy[a_idx], torch.log(twh / s)], 1)
        l_l1.append((p - t_raw).abs().sum(1))
        ct = torch.zeros(a_idx.numel(), num_classes)
        ct[torch.arange(a_idx.numel()), t[:, 4].long()] = iou.detach().clamp(min=0.0)
        l_cls.append(F.binary_cross_entropy_with_logits(cls[b, a_idx], ct, reduction="none").sum(1))
        obj_t[b, a_idx] = 1.0
        n_pos += a_idx.numel()
    n_pos = max(n_pos, 1)
    l_obj = F.binary_cross_entropy_with_logits(obj, obj_t, reduction="sum") / n_pos
    if l_box:
        l_box = torch.cat(l_box).sum() / n_pos
        l_l1 = torch.cat(l_l1).sum() / n_pos
        l_cls = torch.cat(l_cls).sum() / n_pos
    else:
        l_box = l_l1 = l_cls = obj.sum() * 0
    total = 5.0 * l_box + l_obj + l_cls + 1.0 * l_l1
    return total, {"box": l_box.item(), "obj": l_obj.item(), "cls": l_cls.item(), "l1": l_l1.item(),
                   "npos": n_pos / B}


# ------------------------------------------------------------------------------------------------ EMA
class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9995, tau: float = 1000.0):
        import copy
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


# ------------------------------------------------------------------------------------------------ export
def export_onnx(model: nn.Module, size: int, out: Path, decode: bool = True) -> None:
    import copy

    import onnx

    m = fuse_conv_bn(copy.deepcopy(model).eval())
    x = torch.zeros(1, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(opset_version=13, input_names=["images"], output_names=["output"], do_constant_folding=True)
    try:
        torch.onnx.export(m, x, str(out), dynamo=False, **kwargs)
    except TypeError:
        torch.onnx.export(m, x, str(out), **kwargs)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    # store everything in one file, drop doc strings
    for n in proto.graph.node:
        n.doc_string = ""
    if decode:
        sys.path.insert(0, str(Path(__file__).parent))
        from decode_in_graph import append_yolox_decode

        proto = append_yolox_decode(proto)
    onnx.save(proto, str(out))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=192, choices=(160, 192, 224, 256))
    ap.add_argument("--steps", type=int, default=0, help="number of optimizer steps (0 = use --minutes)")
    ap.add_argument("--minutes", type=float, default=39.0, help="wall-clock training budget if --steps is 0")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "autoq" / "demo" / "detector.onnx")
    ap.add_argument("--raw", action="store_true", help="export the raw head (no in-graph box decode)")
    ap.add_argument("--ckpt", type=Path, default=None, help="optional path to save the torch state dict")
    ap.add_argument("--export-only", action="store_true", help="load --ckpt and only export")
    ap.add_argument("--init", type=Path, default=None, help="start from this state dict (fine-tuning)")
    ap.add_argument("--center-radius", type=float, default=1.5, help="center-sampling radius in strides")
    ap.add_argument("--scale-ranges", type=float, nargs=6, default=None,
                    metavar=("LO8", "HI8", "LO16", "HI16", "LO32", "HI32"),
                    help="per-level accepted max box side (pixels at input 192)")
    ap.add_argument("--data-offset", type=int, default=0, help="first training sample index (use fresh samples "
                    "when fine-tuning)")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    model = TinyYOLOX(len(CLASSES))
    print(f"params: {count_params(model):,}", flush=True)
    if args.export_only:
        if args.ckpt is None:
            ap.error("--export-only needs --ckpt")
        model.load_state_dict(torch.load(args.ckpt))
        export_onnx(model, args.size, args.out, decode=not args.raw)
        print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
        return 0

    if args.scale_ranges is not None:
        r_ = args.scale_ranges
        LEVEL_RANGES[:] = [[r_[0], r_[1]], [r_[2], r_[3]], [r_[4], r_[5]]]
    if args.init is not None:
        model.load_state_dict(torch.load(args.init))
        print(f"initialised from {args.init}", flush=True)
    gxy, st = make_grids(args.size)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (decay if p.ndim == 4 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999))
    ema = EMA(model)
    budget_s = args.minutes * 60.0
    warmup = args.warmup
    t0 = time.time()
    step = 0
    est_total = args.steps if args.steps > 0 else None
    hist: list[float] = []
    model.train()
    while True:
        elapsed = time.time() - t0
        if args.steps > 0:
            if step >= args.steps:
                break
            frac = step / args.steps
        else:
            if elapsed >= budget_s:
                break
            frac = elapsed / budget_s
        lr = args.lr * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * 0.97 + 0.03)
        if step < warmup:
            lr *= (step + 1) / warmup
        for g in opt.param_groups:
            g["lr"] = lr
        x, targets = make_batch(args.seed, args.data_offset + step * args.batch, args.batch, args.size)
        raw = model.raw(x)
        loss, parts = compute_loss(raw, targets, gxy, st, args.size, len(CLASSES), args.center_radius)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        ema.update(model)
        hist.append(float(loss))
        step += 1
        if step % 25 == 0 or step == 1:
            el = time.time() - t0
            print(f"step {step:5d}  t={el:7.1f}s  lr={lr:.2e}  loss={np.mean(hist[-25:]):.3f}  "
                  + "  ".join(f"{k}={v:.3f}" for k, v in parts.items()), flush=True)
    train_s = time.time() - t0
    print(f"training done: {step} steps, {step * args.batch} images, {train_s / 60:.1f} min", flush=True)
    if args.ckpt is not None:
        args.ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ema.ema.state_dict(), args.ckpt)
    export_onnx(ema.ema, args.size, args.out, decode=not args.raw)
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.3f} MB), params {count_params(model):,}, "
          f"train time {train_s:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
