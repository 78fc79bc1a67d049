"""Train the tiny example detector from a pipeline config.

Usage: python train.py --logtostderr --pipeline_config_path=configs/pipeline.config \
           --train_dir=/data/output [--num_train_steps=N]
"""
import argparse
import os
import sys

import detector
import numpy as np
import tensorflow as tf


def ensure_data(cfg):
    """Create a label map and a synthetic TFRecord where they are missing."""
    names = list(detector.COLORS)[:cfg["num_classes"]]
    if len(names) < cfg["num_classes"]:
        sys.exit(f"error: synthetic data supports at most {len(detector.COLORS)} classes")
    if not os.path.exists(cfg["label_map_path"]):
        detector.write_label_map(cfg["label_map_path"], names)
        print(f"data: wrote label map {cfg['label_map_path']}")
    if not os.path.exists(cfg["input_path"]):
        detector.write_tfrecord(cfg["input_path"], names)
        print(f"data: wrote synthetic TFRecord {cfg['input_path']}")
    found = len(detector.read_label_map(cfg["label_map_path"]))
    if found != cfg["num_classes"]:
        sys.exit(f"error: label map has {found} classes but num_classes is {cfg['num_classes']}")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pipeline_config_path", required=True)
    p.add_argument("--train_dir", required=True, help="checkpoints are written here")
    p.add_argument("--num_train_steps", type=int, help="overrides num_steps in the config")
    p.add_argument("--logtostderr", action="store_true", help="accepted for compatibility")
    args = p.parse_args()

    cfg = detector.parse_config(args.pipeline_config_path)
    num_steps = args.num_train_steps if args.num_train_steps is not None else cfg["num_steps"]
    print("device:", "gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    ensure_data(cfg)
    ds = (tf.data.TFRecordDataset(cfg["input_path"])
          .map(detector.parse_example, num_parallel_calls=tf.data.AUTOTUNE).cache()
          .shuffle(1000).repeat().batch(cfg["batch_size"], drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))

    model, backbone = detector.build_detector(cfg["num_classes"])
    optimizer = tf.keras.optimizers.Adam(cfg.get("learning_rate", 1e-3))
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    ckpt = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, args.train_dir, max_to_keep=3)

    # Resume rule: train_dir, then fine_tuning_dir, then pre_trained backbone, else scratch.
    resume = manager.latest_checkpoint or tf.train.latest_checkpoint(cfg["fine_tuning_dir"])
    pretrained = tf.train.latest_checkpoint(cfg["pre_trained_dir"])
    if resume:
        ckpt.restore(resume).assert_existing_objects_matched()
        print(f"restored {resume}")
        print(f"resumed from step {int(step)}")
    elif pretrained:
        tf.train.Checkpoint(backbone=backbone).restore(pretrained).assert_existing_objects_matched()
        print(f"restored backbone {pretrained}")
        print("initialized from pre_trained")
    else:
        print("starting from scratch")

    train_step = detector.make_train_step(model, optimizer)
    batches = iter(ds)
    while int(step) < num_steps:
        loss, cls_loss, box_loss = (float(v) for v in train_step(*next(batches)))
        step.assign_add(1)
        k = int(step)
        if not np.isfinite(loss):
            sys.exit(f"error: loss became {loss} (NaN/inf) at step {k}")
        if k % cfg.get("log_every", 10) == 0 or k == num_steps:
            print(f"step {k} loss {loss:.4f} (cls {cls_loss:.4f} box {box_loss:.4f})", flush=True)
        if k % cfg["save_every"] == 0 or k == num_steps:
            manager.save(checkpoint_number=k)
            print(f"saved checkpoint at step {k}", flush=True)
    print(f"done step {int(step)}")


if __name__ == "__main__":
    main()
