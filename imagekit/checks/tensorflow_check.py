"""imagekit smoke test: train a tiny TensorFlow MLP on synthetic data; stdlib + tf only.

Last stdout line: IMAGEKIT_REPORT {json}. Exit 0 ok, 1 loss did not fall or diverged,
2 GPU required but none seen, 3 import failed, 4 other error. IMAGEKIT_CHECK_LR sets the lr.
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import time
import traceback

FRAMEWORK, MODULE = "tensorflow", "tensorflow"
KEYS = (
    "framework version python device device_name cuda cudnn gpu_count steps"
    " loss_first loss_last steps_per_sec ok reason"
).split()


def describe(exc, with_type=True):
    """First line of the exception's message, led by its type name if asked or if empty."""
    line = (str(exc).strip().splitlines() or [""])[0]
    if line and not with_type:
        return line
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def synthetic(seed, n=512, d=8, hidden=32):
    """Inputs, targets and initial MLP weights as lists, from one seeded stdlib RNG."""
    rng = random.Random(seed)

    def normal(rows, cols, scale=1.0):
        return [[rng.gauss(0.0, scale) for _ in range(cols)] for _ in range(rows)]

    x = normal(n, d)
    w_true = [rng.gauss(0.0, 1.0) for _ in range(d)]
    y = [[sum(row[i] * w_true[i] for i in range(d)) + rng.gauss(0.0, 0.1)] for row in x]
    init = [normal(d, hidden, d**-0.5), [0.0] * hidden, normal(hidden, 1, hidden**-0.5), [0.0]]
    return x, y, init


def run(args, report):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet C++ logs; read at import
    try:
        import tensorflow as tf
    except Exception as exc:  # ImportError/OSError, or e.g. a broken binary dependency
        plain = isinstance(exc, (ImportError, OSError))
        report["reason"] = f"import {MODULE} failed: {describe(exc, with_type=not plain)}"
        return 3
    report["version"] = tf.__version__
    build = tf.sysconfig.get_build_info()  # CPU builds have no cuda/cudnn entries
    report["cuda"] = build.get("cuda_version") or None
    report["cudnn"] = build.get("cudnn_version") or None
    gpus = tf.config.list_physical_devices("GPU")
    report["gpu_count"] = len(gpus)
    if args.device == "gpu" and not gpus:
        report["reason"] = f"a GPU was required but {FRAMEWORK} sees none"
        return 2
    use_gpu = args.device == "gpu" or (args.device == "auto" and bool(gpus))
    report["device"] = "gpu" if use_gpu else "cpu"
    if use_gpu:
        details = tf.config.experimental.get_device_details(gpus[0])
        report["device_name"] = details.get("device_name") or gpus[0].name
    else:
        report["device_name"] = "cpu"

    lr = float(os.environ.get("IMAGEKIT_CHECK_LR", "0.1"))
    x, y, init = synthetic(args.seed)
    with tf.device("/GPU:0" if use_gpu else "/CPU:0"):
        x = tf.constant(x, tf.float32)
        y = tf.constant(y, tf.float32)
        params = [tf.Variable(p, dtype=tf.float32) for p in init]
        w1, b1, w2, b2 = params

        @tf.function
        def step_fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(tf.tanh(x @ w1 + b1) @ w2 + b2 - y))
            grads = tape.gradient(loss, params)
            for i, var in enumerate(params):
                var.assign_sub(lr * grads[i])
            return loss

        return train(step_fn, lambda loss: loss.numpy(), args.steps, report)


def train(step_fn, read, steps, report):
    """Call step_fn `steps` times; record first/last loss, steps per second and the verdict."""
    first = last = float("nan")
    start = warm = time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_fn()
        if step == 1 or step % 10 == 0 or step == steps:
            last = float(read(loss))  # reading the value also waits for the device
            print(f"step {step} loss {last:.4f}", flush=True)
        if step == 1:
            first, warm = last, time.perf_counter()
    end = time.perf_counter()
    # The rate covers steps 2..N so one-off warm-up work (tracing, allocation) is left out.
    timed, elapsed = (steps - 1, end - warm) if steps > 1 else (1, end - start)
    rate = round(timed / max(elapsed, 1e-9), 1)
    clean = [v if math.isfinite(v) else None for v in (first, last)]  # JSON has no NaN/inf
    report.update(steps=steps, loss_first=clean[0], loss_last=clean[1], steps_per_sec=rate)
    if not (math.isfinite(first) and math.isfinite(last)):
        report["reason"] = f"loss diverged to {first if not math.isfinite(first) else last}"
        return 1
    if not last < 0.5 * first:
        report["reason"] = f"loss did not fall: {first:.4g} -> {last:.4g}"
        return 1
    report["ok"] = True
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=f"imagekit {FRAMEWORK} smoke test")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    report = dict.fromkeys(KEYS)  # the report's keys, in order, all null until known
    report.update(framework=FRAMEWORK, python=platform.python_version(), gpu_count=0, steps=0)
    report.update(device="gpu" if args.device == "gpu" else "cpu", ok=False)
    try:
        code = run(args, report)
    except Exception as exc:
        traceback.print_exc()
        report.update(ok=False, reason=describe(exc))
        code = 4
    print("IMAGEKIT_REPORT " + json.dumps(report, allow_nan=False), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
