"""Train a tiny detector on synthetic rectangles, with a Detectron2-style CLI.

    python tools/train_net.py --config-file configs/faster_rcnn_tiny.yaml \
        --num-gpus 1 SOLVER.MAX_ITER 20 OUTPUT_DIR /tmp/out [--resume]

This is a small model written for the example, not Detectron2 (see README.md).
"""
import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

STRIDE = 8      # backbone downsampling: one grid cell per 8x8 pixels
MAX_OBJECTS = 3


# ---------------------------------------------------------------- config
def load_config(path, overrides):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if len(overrides) % 2:
        raise SystemExit(f"overrides must be KEY VALUE pairs, got {overrides}")
    for key, value in zip(overrides[::2], overrides[1::2]):
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part)
            if not isinstance(node, dict):
                raise SystemExit(f"Non-existent config key: {key}")
        if leaf not in node or isinstance(node[leaf], dict):
            raise SystemExit(f"Non-existent config key: {key}")
        try:
            node[leaf] = coerce(value, node[leaf])
        except ValueError:
            raise SystemExit(f"{key}: cannot use {value!r}, expected {type(node[leaf]).__name__}") from None
    return cfg


def coerce(value, old):
    """Convert a command-line string to the type of the value it replaces."""
    if isinstance(old, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("true", "1")
    if isinstance(old, (int, float, str)):
        return type(old)(value)
    return yaml.safe_load(value)


# ---------------------------------------------------------------- data
def make_dataset(n, size, num_classes, seed):
    """n images with 1-3 solid rectangles; colour encodes the class."""
    g = torch.Generator().manual_seed(seed)
    hue = torch.arange(num_classes)[:, None] / num_classes
    palette = 0.5 + 0.5 * torch.cos(2 * math.pi * (hue + torch.tensor([0, 1 / 3, 2 / 3])))
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    boxes = torch.full((n, MAX_OBJECTS, 5), -1.0)  # class, x0, y0, x1, y1; class -1 = none
    for i in range(n):
        for j in range(int(torch.randint(1, MAX_OBJECTS + 1, (1,), generator=g))):
            c = int(torch.randint(num_classes, (1,), generator=g))
            w, h = torch.randint(size // 6, size // 2, (2,), generator=g).tolist()
            x0 = int(torch.randint(size - w + 1, (1,), generator=g))
            y0 = int(torch.randint(size - h + 1, (1,), generator=g))
            images[i, :, y0:y0 + h, x0:x0 + w] = palette[c, :, None, None]
            boxes[i, j] = torch.tensor([c, x0, y0, x0 + w, y0 + h], dtype=torch.float)
    return {"images": (images * 255).to(torch.uint8), "boxes": boxes}


def load_dataset(cfg):
    """Generate the synthetic set once; cache it under DATASETS.ROOT if writable."""
    d, size, ncls, seed = cfg["DATASETS"], cfg["INPUT"]["SIZE"], cfg["MODEL"]["NUM_CLASSES"], cfg["SEED"]
    path = os.path.join(d["ROOT"], f"synthetic_rects_{d['NUM_IMAGES']}_{size}_{ncls}_{seed}.pt")
    if os.path.exists(path):
        print(f"dataset: {path}")
        return torch.load(path)
    data = make_dataset(d["NUM_IMAGES"], size, ncls, seed)
    try:
        os.makedirs(d["ROOT"], exist_ok=True)
        torch.save(data, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"dataset: generated and cached at {path}")
    except OSError as e:
        print(f"dataset: generated in memory ({d['ROOT']} not writable: {e.strerror})")
    return data


def encode_targets(boxes, grid, anchor):
    """Assign each box to the grid cell holding its centre (class 0 = background)."""
    cls_t = torch.zeros(boxes.shape[0], grid, grid, dtype=torch.long)
    box_t = torch.zeros(boxes.shape[0], grid, grid, 4)
    b, j = (boxes[..., 0] >= 0).nonzero(as_tuple=True)
    c, x0, y0, x1, y1 = boxes[b, j].unbind(1)
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    gx, gy = (cx // STRIDE).long(), (cy // STRIDE).long()
    cls_t[b, gy, gx] = c.long() + 1
    box_t[b, gy, gx] = torch.stack([cx / STRIDE - gx - 0.5, cy / STRIDE - gy - 0.5,
                                    torch.log(w / anchor), torch.log(h / anchor)], 1)
    return cls_t, box_t


# ---------------------------------------------------------------- model
def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyDetector(nn.Module):
    """Stride-8 conv backbone + per-cell class logits and box offsets."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 64, 2), conv(64, 64))
        self.cls_head = nn.Conv2d(64, num_classes + 1, 1)
        self.box_head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        f = self.backbone(x)
        return self.cls_head(f), self.box_head(f).permute(0, 2, 3, 1)


def detection_loss(cls_logits, box_pred, cls_t, box_t):
    pos = cls_t > 0
    return F.cross_entropy(cls_logits, cls_t) + F.smooth_l1_loss(box_pred[pos], box_t[pos])


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir, name, model, optimizer, step, cfg):
    path = os.path.join(out_dir, name)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": step, "cfg": cfg}, path + ".tmp")
    os.replace(path + ".tmp", path)
    with open(os.path.join(out_dir, "last_checkpoint.tmp"), "w") as f:
        f.write(name)
    os.replace(os.path.join(out_dir, "last_checkpoint.tmp"), os.path.join(out_dir, "last_checkpoint"))
    print(f"saved checkpoint at step {step}", flush=True)


def try_resume(out_dir, model, optimizer, device):
    marker = os.path.join(out_dir, "last_checkpoint")
    if not os.path.exists(marker):
        print(f"no checkpoint in {out_dir}, starting from scratch")
        return 0
    with open(marker) as f:
        ckpt = torch.load(os.path.join(out_dir, f.read().strip()), map_location=device)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    print(f"resumed from step {ckpt['iteration']}", flush=True)
    return ckpt["iteration"]


# ---------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s --config-file FILE [--num-gpus N] [--resume] [KEY VALUE ...]")
    p.add_argument("--config-file", required=True)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    # everything argparse does not know is a KEY VALUE override; flags may come anywhere
    args, opts = p.parse_known_args()
    cfg = load_config(args.config_file, opts)
    s = cfg["SOLVER"]

    device = torch.device("cuda" if args.num_gpus > 0 and torch.cuda.is_available() else "cpu")
    print(f"device: {device.type}", flush=True)
    if args.num_gpus > 1:
        print(f"note: --num-gpus {args.num_gpus} requested; this example trains on one device")

    torch.manual_seed(cfg["SEED"])
    data = load_dataset(cfg)
    model = TinyDetector(cfg["MODEL"]["NUM_CLASSES"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=s["BASE_LR"], momentum=s["MOMENTUM"],
                                weight_decay=s["WEIGHT_DECAY"])
    os.makedirs(cfg["OUTPUT_DIR"], exist_ok=True)
    step = try_resume(cfg["OUTPUT_DIR"], model, optimizer, device) if args.resume else 0

    grid = cfg["INPUT"]["SIZE"] // STRIDE
    n = data["images"].shape[0]
    model.train()
    while step < s["MAX_ITER"]:
        # batch depends only on (SEED, step), so a resumed run sees the same data
        idx = torch.randint(n, (s["IMS_PER_BATCH"],),
                            generator=torch.Generator().manual_seed(cfg["SEED"] * 1_000_003 + step))
        images = data["images"][idx].to(device).float() / 255
        cls_t, box_t = (t.to(device) for t in encode_targets(data["boxes"][idx], grid, cfg["MODEL"]["ANCHOR_SIZE"]))
        loss = detection_loss(*model(images), cls_t, box_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step == 1 or step % s["LOG_PERIOD"] == 0 or step == s["MAX_ITER"]:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        if step % s["CHECKPOINT_PERIOD"] == 0:
            save_checkpoint(cfg["OUTPUT_DIR"], f"model_{step:07d}.pth", model, optimizer, step, cfg)
    save_checkpoint(cfg["OUTPUT_DIR"], "model_final.pth", model, optimizer, step, cfg)
    print(f"done step {step}", flush=True)


if __name__ == "__main__":
    main()
