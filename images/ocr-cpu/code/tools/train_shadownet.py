"""Train a tiny CRNN (conv -> BiLSTM -> CTC) on synthetic digit text lines.

Written for the imagekit ocr-cpu example; not the upstream CRNN project.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

HEIGHT, WIDTH = 32, 100
MAX_LEN = 8
NUM_CLASSES = 10  # digits 0-9; the CTC blank is index 10
DATA_FILE = "synth_digits_32x100.npz"

# 5x7 bitmap digits, one string of 7 rows per glyph.
FONT = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
}
# Each glyph is scaled 3x vertically and 2x horizontally: 21 x 10 pixels.
GLYPHS = [np.kron(np.array([[c == "#" for c in row] for row in FONT[str(d)].split()],
                           dtype=np.float32), np.ones((3, 2), np.float32))
          for d in range(10)]


def render(digits, rng):
    """Draw a digit sequence onto a noisy 32x100 grayscale canvas (uint8)."""
    gh, gw = GLYPHS[0].shape
    gaps = rng.integers(1, 3, size=len(digits))
    total = len(digits) * gw + int(gaps[:-1].sum())
    x, y = int(rng.integers(0, WIDTH - total + 1)), int(rng.integers(0, HEIGHT - gh + 1))
    bg, fg = rng.uniform(0, 90), rng.uniform(160, 255)
    img = np.full((HEIGHT, WIDTH), bg, np.float32)
    for d, gap in zip(digits, gaps, strict=True):
        region = img[y:y + gh, x:x + gw]
        img[y:y + gh, x:x + gw] = np.where(GLYPHS[d] > 0, fg, region)
        x += gw + int(gap)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(n, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, HEIGHT, WIDTH), np.uint8)
    labels = np.zeros((n, MAX_LEN), np.int32)
    lengths = rng.integers(3, MAX_LEN + 1, size=n).astype(np.int32)
    for i, length in enumerate(lengths):
        digits = rng.integers(0, 10, size=length)
        images[i] = render(digits, rng)
        labels[i, :length] = digits
    return images, labels, lengths


def load_or_create(data_dir, n=4000):
    path = os.path.join(data_dir, DATA_FILE)
    if os.path.exists(path):
        with np.load(path) as f:
            print(f"data: loaded {path}")
            return f["images"], f["labels"], f["lengths"]
    t0 = time.time()
    images, labels, lengths = make_dataset(n)
    try:
        os.makedirs(data_dir, exist_ok=True)
        np.savez(path, images=images, labels=labels, lengths=lengths)
        print(f"data: generated {n} samples in {time.time() - t0:.1f}s -> {path}")
    except OSError as e:
        print(f"data: generated {n} samples in memory (could not save: {e})")
    return images, labels, lengths


def build_crnn():
    L = tf.keras.layers

    def conv_bn(x, filters):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        return L.ReLU()(L.BatchNormalization(momentum=0.9)(x))

    inp = L.Input((HEIGHT, WIDTH, 1))
    x = L.Rescaling(1 / 255.0)(inp)
    x = L.MaxPool2D(2)(conv_bn(x, 16))             # 16 x 50
    x = L.MaxPool2D(2)(conv_bn(x, 32))             # 8 x 25
    x = L.MaxPool2D((2, 1))(conv_bn(x, 64))        # 4 x 25
    x = L.Permute((2, 1, 3))(x)                    # width becomes the time axis
    x = L.Reshape((WIDTH // 4, -1))(x)             # 25 steps x 256 features
    x = L.Bidirectional(L.LSTM(64, return_sequences=True))(x)
    out = L.Dense(NUM_CLASSES + 1)(x)              # per-step logits, blank last
    return tf.keras.Model(inp, out, name="crnn")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default="/data/data")
    p.add_argument("--output-dir", default="/data/output")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps to reach")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()

    print("device:", "gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    images, labels, lengths = load_or_create(args.data_dir)
    ds = (tf.data.Dataset.from_tensor_slices((images[..., None], labels, lengths))
          .shuffle(len(images)).repeat().batch(args.batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))

    model = build_crnn()
    optimizer = tf.keras.optimizers.Adam(args.lr, clipnorm=5.0)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    ckpt = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, args.output_dir, max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from step {int(step)}")

    @tf.function
    def train_step(x, y, y_len):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            t_len = tf.fill([tf.shape(logits)[0]], tf.shape(logits)[1])
            loss = tf.reduce_mean(tf.nn.ctc_loss(
                labels=y, logits=logits, label_length=y_len, logit_length=t_len,
                logits_time_major=False, blank_index=NUM_CLASSES))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    batches = iter(ds)
    while int(step) < args.steps:
        loss = float(train_step(*next(batches)))
        step.assign_add(1)
        k = int(step)
        if not np.isfinite(loss):
            sys.exit(f"error: loss became {loss} (NaN/inf) at step {k}")
        if k % args.log_every == 0 or k == args.steps:
            print(f"step {k} loss {loss:.4f}", flush=True)
        if k % args.save_every == 0 or k == args.steps:
            manager.save(checkpoint_number=k)
            print(f"saved checkpoint at step {k}", flush=True)
    print(f"done step {int(step)}")


if __name__ == "__main__":
    main()
