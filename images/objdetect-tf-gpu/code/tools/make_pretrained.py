"""Write a "pre-trained" backbone checkpoint for the example detector.

The backbone is randomly initialised, trained a few steps on synthetic data and
saved alone, so train.py can exercise its `initialized from pre_trained` path.
Usage: python tools/make_pretrained.py --out /data/data/ckpt/pre_trained
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import detector  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--num_classes", type=int, default=3)
    args = p.parse_args()

    images, boxes, labels = map(np.stack, zip(*detector.synth_examples(
        256, args.num_classes, seed=1), strict=True))
    ds = tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32) / 255.0, boxes, labels.astype(np.int32))).repeat().batch(16)
    model, backbone = detector.build_detector(args.num_classes)
    train_step = detector.make_train_step(model, tf.keras.optimizers.Adam(1e-3))
    for batch in ds.take(args.steps):
        loss = float(train_step(*batch)[0])
    print(f"trained {args.steps} steps, loss {loss:.4f}")
    path = tf.train.Checkpoint(backbone=backbone).save(os.path.join(args.out, "ckpt"))
    print(f"wrote pre-trained backbone checkpoint {path}")


if __name__ == "__main__":
    main()
