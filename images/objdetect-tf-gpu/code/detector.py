"""Pieces shared by train.py and tools/make_pretrained.py: config parsing,
synthetic TFRecord data and a tiny single-box detector."""
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

IMAGE_SIZE = 64
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230),
          "yellow": (230, 220, 40), "cyan": (40, 220, 220), "magenta": (210, 50, 210),
          "white": (245, 245, 245), "orange": (240, 140, 30)}


def parse_config(path):
    """Read `key: value` lines; `name {` and `}` lines only group and are skipped."""
    cfg = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.endswith("{") or line == "}":
                continue
            key, _, value = line.partition(":")
            value = value.strip().strip("\"'")
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    pass
            cfg[key.strip()] = value
    return cfg


def read_label_map(path):
    with open(path) as f:
        return re.findall(r"name:\s*['\"]([^'\"]+)['\"]", f.read())


def write_label_map(path, names):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for i, name in enumerate(names, 1):
            f.write(f"item {{\n  id: {i}\n  name: '{name}'\n}}\n")


def synth_examples(n, num_classes, seed=0):
    """Yield (uint8 image, [ymin, xmin, ymax, xmax] normalized, 0-based class)."""
    rng = np.random.default_rng(seed)
    colors = list(COLORS.values())[:num_classes]
    for _ in range(n):
        img = rng.normal(rng.uniform(60, 160), 30, (IMAGE_SIZE, IMAGE_SIZE, 3))
        h, w = rng.integers(12, 40, size=2)
        y, x = rng.integers(0, IMAGE_SIZE - h), rng.integers(0, IMAGE_SIZE - w)
        cls = int(rng.integers(num_classes))
        img[y:y + h, x:x + w] = np.array(colors[cls]) + rng.normal(0, 10, (h, w, 3))
        box = np.array([y, x, y + h, x + w], np.float32) / IMAGE_SIZE
        yield np.clip(img, 0, 255).astype(np.uint8), box, cls


def write_tfrecord(path, names, n=1000):
    """Write synthetic examples with the Object Detection API's feature keys."""
    def floats(v): return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    def ints(v): return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    def byts(v): return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for i, (img, (y0, x0, y1, x1), cls) in enumerate(synth_examples(n, len(names))):
            feature = {
                "image/height": ints([IMAGE_SIZE]), "image/width": ints([IMAGE_SIZE]),
                "image/filename": byts([f"synth_{i:05d}.jpg".encode()]),
                "image/encoded": byts([tf.io.encode_jpeg(img, quality=90).numpy()]),
                "image/format": byts([b"jpeg"]),
                "image/object/bbox/ymin": floats([y0]), "image/object/bbox/xmin": floats([x0]),
                "image/object/bbox/ymax": floats([y1]), "image/object/bbox/xmax": floats([x1]),
                "image/object/class/text": byts([names[cls].encode()]),
                "image/object/class/label": ints([cls + 1]),  # label map ids start at 1
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def parse_example(record):
    """Decode one record to (image in [0,1], first object's box, 0-based class)."""
    var = tf.io.VarLenFeature
    keys = ["ymin", "xmin", "ymax", "xmax"]
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/object/class/label": var(tf.int64),
            **{f"image/object/bbox/{k}": var(tf.float32) for k in keys}}
    ex = tf.io.parse_single_example(record, spec)
    img = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
    img = tf.image.resize(tf.cast(img, tf.float32), [IMAGE_SIZE, IMAGE_SIZE]) / 255.0
    box = tf.stack([ex[f"image/object/bbox/{k}"].values[0] for k in keys])
    label = tf.cast(ex["image/object/class/label"].values[0] - 1, tf.int32)
    return img, box, label


def build_detector(num_classes):
    """Return (detector, backbone); the backbone is what pre-trained checkpoints hold."""
    L = tf.keras.layers
    backbone = tf.keras.Sequential([
        L.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
        L.Conv2D(16, 3, strides=2, padding="same", activation="relu"),   # 32x32
        L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),   # 16x16
        L.Conv2D(64, 3, strides=2, padding="same", activation="relu"),   # 8x8
    ], name="backbone")
    inp = L.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = L.Dense(128, activation="relu")(L.Flatten()(backbone(inp)))
    class_logits = L.Dense(num_classes, name="class_logits")(x)
    box = L.Dense(4, activation="sigmoid", name="box")(x)
    return tf.keras.Model(inp, [class_logits, box], name="detector"), backbone


def make_train_step(model, optimizer):
    @tf.function
    def train_step(images, boxes, labels):
        with tf.GradientTape() as tape:
            logits, pred_boxes = model(images, training=True)
            cls_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits))
            # Huber (smooth L1) on box corners measured in pixels / 8.
            box_loss = tf.reduce_mean(tf.keras.losses.huber(
                boxes * IMAGE_SIZE / 8, pred_boxes * IMAGE_SIZE / 8))
            loss = cls_loss + box_loss
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, cls_loss, box_loss
    return train_step
