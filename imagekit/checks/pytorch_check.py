"""imagekit smoke test: train a tiny PyTorch MLP on synthetic data; stdlib + torch only.

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

FRAMEWORK, MODULE = "pytorch", "torch"
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


def cudnn_string(v):  # 8902 -> 8.9.2 (cuDNN <= 8), 90100 -> 9.1.0 (cuDNN >= 9)
    m = 10000 if (v or 0) >= 90000 else 1000
    return f"{v // m}.{v % m // 100}.{v % 100}" if v else None


def run(args, report):
    try:
        import torch
    except Exception as exc:  # ImportError/OSError, or e.g. a broken binary dependency
        plain = isinstance(exc, (ImportError, OSError))
        report["reason"] = f"import {MODULE} failed: {describe(exc, with_type=not plain)}"
        return 3
    report["version"] = torch.__version__
    report["cuda"] = torch.version.cuda
    report["cudnn"] = cudnn_string(torch.backends.cudnn.version())
    has_gpu = torch.cuda.is_available()
    report["gpu_count"] = torch.cuda.device_count() if has_gpu else 0
    if args.device == "gpu" and not has_gpu:
        report["reason"] = f"a GPU was required but {FRAMEWORK} sees none"
        return 2
    use_gpu = args.device == "gpu" or (args.device == "auto" and has_gpu)
    report["device"] = "gpu" if use_gpu else "cpu"
    report["device_name"] = torch.cuda.get_device_name(0) if use_gpu else "cpu"
    dev = torch.device("cuda:0" if use_gpu else "cpu")

    lr = float(os.environ.get("IMAGEKIT_CHECK_LR", "0.1"))
    x, y, init = synthetic(args.seed)
    x = torch.tensor(x, dtype=torch.float32, device=dev)
    y = torch.tensor(y, dtype=torch.float32, device=dev)
    params = [torch.tensor(p, dtype=torch.float32, device=dev, requires_grad=True) for p in init]
    w1, b1, w2, b2 = params
    opt = torch.optim.SGD(params, lr=lr)

    def step_fn():
        opt.zero_grad()
        loss = torch.mean((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)
        loss.backward()
        opt.step()
        return loss

    return train(step_fn, lambda loss: loss.item(), args.steps, report)


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
