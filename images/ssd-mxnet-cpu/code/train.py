"""Train a tiny SSD-style detector (MXNet Gluon) on synthetic rectangles.

    python train.py --gpus 0,1 --batch-size 32 --steps 1000 --output-dir /data/output [--resume]

A small model written for this example, not GluonCV's SSD (see README.md).
"""
import argparse
import os

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn

SIZE = 64                  # input images are SIZE x SIZE
MAPS = ((8, 16), (16, 32))  # (stride, anchor size) of the two feature maps
RATIOS = (1.0, 2.0, 0.5)   # anchor aspect ratios (w / h) at every location
VARIANCES = (0.1, 0.2)     # SSD box-encoding variances (centre, size)


# ---------------------------------------------------------------- data
def make_anchors():
    """(N, 4) anchors as cx, cy, w, h in the order the heads flatten them."""
    out = []
    for stride, size in MAPS:
        n = SIZE // stride
        cy, cx = np.meshgrid((np.arange(n) + 0.5) * stride, (np.arange(n) + 0.5) * stride, indexing="ij")
        wh = [(size * np.sqrt(r), size / np.sqrt(r)) for r in RATIOS]
        out += [[x, y, w, h] for x, y in zip(cx.ravel(), cy.ravel()) for w, h in wh]
    return np.array(out, dtype=np.float32)


def synthetic_batch(rng, n, num_classes):
    """n images with 1-3 solid rectangles; colour encodes the class."""
    palette = 0.5 + 0.5 * np.cos(2 * np.pi * (np.arange(num_classes)[:, None] / num_classes + [0, 1 / 3, 2 / 3]))
    images = rng.random((n, 3, SIZE, SIZE), dtype=np.float32) * 0.3
    boxes = []
    for img in images:
        objs = []
        for _ in range(rng.integers(1, 4)):
            c = rng.integers(num_classes)
            w, h = rng.integers(SIZE // 6, SIZE // 2, size=2)
            x0, y0 = rng.integers(0, SIZE - w + 1), rng.integers(0, SIZE - h + 1)
            img[:, y0:y0 + h, x0:x0 + w] = palette[c, :, None, None]
            objs.append((c, x0, y0, x0 + w, y0 + h))
        boxes.append(np.array(objs, dtype=np.float32))
    return images, boxes


def iou(boxes, anchors):
    """IoU between (G, 4) corner boxes and (N, 4) centre-size anchors -> (G, N)."""
    a = np.concatenate([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    lt = np.maximum(boxes[:, None, :2], a[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], a[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_b[:, None] + np.prod(anchors[:, 2:], axis=1)[None, :] - inter)


def assign_targets(boxes, anchors, threshold=0.5):
    """Per anchor: class target (0 = background) and encoded box offsets."""
    cls_t = np.zeros((len(boxes), len(anchors)), dtype=np.float32)
    box_t = np.zeros((len(boxes), len(anchors), 4), dtype=np.float32)
    for i, objs in enumerate(boxes):
        overlap = iou(objs[:, 1:], anchors)
        best = overlap.argmax(0)
        pos = overlap.max(0) >= threshold
        best[overlap.argmax(1)] = np.arange(len(objs))  # every box keeps its best anchor
        pos[overlap.argmax(1)] = True
        g = objs[best]
        gc, gwh = (g[:, 1:3] + g[:, 3:5]) / 2, g[:, 3:5] - g[:, 1:3]
        enc = np.concatenate([(gc - anchors[:, :2]) / anchors[:, 2:] / VARIANCES[0],
                              np.log(gwh / anchors[:, 2:]) / VARIANCES[1]], 1)
        cls_t[i, pos] = g[pos, 0] + 1
        box_t[i, pos] = enc[pos]
    return cls_t, box_t


# ---------------------------------------------------------------- model
def conv(channels, stride=1):
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, 3, stride, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"))
    return block


class TinySSD(gluon.HybridBlock):
    """Backbone with two feature maps (strides 8, 16), each with class and box heads."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        k = len(RATIOS)
        with self.name_scope():
            self.stage1 = nn.HybridSequential()
            self.stage1.add(conv(16, 2), conv(32, 2), conv(64, 2))
            self.stage2 = conv(64, 2)
            self.cls_heads = nn.HybridSequential()
            self.box_heads = nn.HybridSequential()
            for _ in MAPS:
                self.cls_heads.add(nn.Conv2D(k * (num_classes + 1), 3, padding=1))
                self.box_heads.add(nn.Conv2D(k * 4, 3, padding=1))

    def hybrid_forward(self, F, x):
        f1 = self.stage1(x)
        feats = [f1, self.stage2(f1)]
        cls, box = ([F.flatten(F.transpose(h(f), (0, 2, 3, 1))) for h, f in zip(heads, feats)]
                    for heads in (self.cls_heads, self.box_heads))
        return (F.concat(*cls, dim=1).reshape((0, -1, self.num_classes + 1)),
                F.concat(*box, dim=1).reshape((0, -1, 4)))


def ssd_loss(cls_pred, box_pred, cls_t, box_t, neg_ratio=3):
    """Softmax CE with hard negative mining + smooth L1 on positives, per positive."""
    ce = -nd.pick(nd.log_softmax(cls_pred), cls_t, axis=-1)
    pos = cls_t > 0
    npos = pos.sum(axis=1, keepdims=True)
    rank = nd.where(pos, nd.zeros_like(ce) - 1, ce.detach()).argsort(axis=1, is_ascend=False).argsort(axis=1)
    keep = nd.maximum(pos, rank < neg_ratio * npos)
    box = nd.smooth_l1(box_pred - box_t, scalar=1.0).sum(axis=-1) * pos
    return ((ce * keep).sum() + box.sum()) / nd.maximum(npos.sum(), 1)


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir, net, trainer, step):
    prefix = os.path.join(out_dir, f"ssd-{step:04d}")
    net.save_parameters(prefix + ".params.tmp")
    trainer.save_states(prefix + ".states.tmp")
    for ext in (".params", ".states"):
        os.replace(prefix + ext + ".tmp", prefix + ext)
    with open(os.path.join(out_dir, "latest.tmp"), "w") as f:
        f.write(os.path.basename(prefix))
    os.replace(os.path.join(out_dir, "latest.tmp"), os.path.join(out_dir, "latest"))
    print(f"saved checkpoint at step {step}", flush=True)


def try_resume(out_dir, net, trainer, ctx):
    marker = os.path.join(out_dir, "latest")
    if not os.path.exists(marker):
        print(f"no checkpoint in {out_dir}, starting from scratch")
        return 0
    with open(marker) as f:
        name = f.read().strip()
    net.load_parameters(os.path.join(out_dir, name + ".params"), ctx=ctx)
    trainer.load_states(os.path.join(out_dir, name + ".states"))
    step = int(name.split("-")[-1])
    print(f"resumed from step {step}", flush=True)
    return step


# ---------------------------------------------------------------- main
def get_context(gpus):
    ids = [int(g) for g in gpus.split(",") if g.strip()]
    if ids and mx.context.num_gpus() == 0:
        print(f"warning: --gpus {gpus} given but no GPU is visible; training on CPU", flush=True)
        ids = []
    print(f"device: {'gpu' if ids else 'cpu'}", flush=True)
    return [mx.gpu(i) for i in ids] or [mx.cpu()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="", help="comma-separated GPU ids; empty = CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-dir", default="/data/data", help="optional train.npz (see README)")
    p.add_argument("--output-dir", default="/data/output")
    p.add_argument("--steps", type=int, default=200, help="train until this step")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/latest")
    args = p.parse_args()

    ctx = get_context(args.gpus)
    mx.random.seed(args.seed)
    npz = os.path.join(args.data_dir, "train.npz")
    data = np.load(npz) if os.path.exists(npz) else None
    print(f"data: {npz if data is not None else 'synthetic rectangles'}", flush=True)

    anchors = make_anchors()
    net = TinySSD(args.num_classes)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd",
                            {"learning_rate": args.lr, "momentum": 0.9, "wd": 1e-4})
    os.makedirs(args.output_dir, exist_ok=True)
    step = try_resume(args.output_dir, net, trainer, ctx) if args.resume else 0

    while step < args.steps:
        # the batch depends only on (seed, step), so a resumed run sees the same data
        rng = np.random.default_rng([args.seed, step])
        if data is None:
            images, boxes = synthetic_batch(rng, args.batch_size, args.num_classes)
        else:
            idx = rng.integers(len(data["images"]), size=args.batch_size)
            images = data["images"][idx].astype(np.float32) / 255
            boxes = [b[b[:, 0] >= 0] for b in data["boxes"][idx]]
        cls_t, box_t = assign_targets(boxes, anchors)
        parts = [gluon.utils.split_and_load(a, ctx, even_split=False) for a in (images, cls_t, box_t)]
        with autograd.record():
            losses = [ssd_loss(*net(x), c, b) for x, c, b in zip(*parts)]
        autograd.backward(losses)
        trainer.step(len(losses))  # each loss is already a per-batch mean
        step += 1
        loss = sum(x.asscalar() for x in losses) / len(losses)
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step} loss {loss:.4f}", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(args.output_dir, net, trainer, step)
    print(f"done step {step}", flush=True)


if __name__ == "__main__":
    main()
