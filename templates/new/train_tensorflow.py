"""Starter training script: replace the model and data with your own.

Keeps the contract `imagekit smoke` checks: --steps is the total step count to
reach, checkpoints go to --output-dir, and a second run resumes from them."""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

p = argparse.ArgumentParser()
# the folders: from the command line (imagekit fills {data_dir} / {output_dir} with the
# smoke folders or a platform's), else from the platform's own variables
p.add_argument("--data-dir", default=os.environ.get("SM_CHANNEL_TRAINING")
               or os.environ.get("AIP_TRAINING_DATA_URI") or "/data/data")
p.add_argument("--output-dir", default=os.environ.get("SM_MODEL_DIR")
               or os.environ.get("AIP_MODEL_DIR") or "/data/output")
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--lr", type=float, default=0.05)
args = p.parse_args()

print("device:", "gpu" if tf.config.list_physical_devices("GPU") else "cpu")
tf.random.set_seed(0)
x = tf.random.normal([512, 8])
y = tf.matmul(x, tf.reshape(tf.range(1.0, 9.0), [8, 1])) + 0.5
model = tf.keras.Sequential([tf.keras.Input([8]), tf.keras.layers.Dense(1)])
opt = tf.keras.optimizers.SGD(args.lr)
step = tf.Variable(0, dtype=tf.int64)
ckpt = tf.train.Checkpoint(model=model, opt=opt, step=step)
manager = tf.train.CheckpointManager(ckpt, args.output_dir, max_to_keep=2)
if manager.latest_checkpoint:
    ckpt.restore(manager.latest_checkpoint)
    print(f"resumed from step {int(step)}")
while int(step) < args.steps:
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables))
    step.assign_add(1)
    if int(step) % 10 == 0 or int(step) == args.steps:
        print(f"step {int(step)} loss {float(loss):.4f}")
manager.save()
print(f"saved checkpoint at step {int(step)}")
