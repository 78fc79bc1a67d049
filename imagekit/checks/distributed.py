"""imagekit multi-node check: every node of a job runs this; stdlib + the framework only.

Run in each node's container as `python distributed.py --framework pytorch|tensorflow
[--steps 50] [--timeout 90] [--seed 0]`. The nodes meet as the platform tells them to, from
the environment:
  pytorch     MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK (init_method env://, gloo backend)
  tensorflow  TF_CONFIG: {"cluster": {"worker": ["host:port", ...]}, "task": {"type":
              "worker", "index": i}} (a "chief" counts as rank 0), MultiWorkerMirroredStrategy
              with collective ops over gRPC
Everything runs on CPU. The check, in order:
  1. rendezvous: the peers' host names resolve, the framework's group forms;
  2. an all-reduce: each rank contributes rank + 1, every rank must get N(N+1)/2;
  3. a few training steps of a tiny MLP on this rank's own shard of one synthetic problem,
     the gradients averaged across ranks (DistributedDataParallel, the strategy); the
     weights must come out the same on every rank (their sum is reported to compare).
Bounded: a rendezvous (or a collective) that does not complete within --timeout seconds ends
the process with exit 5 and says so; it never hangs.

Exit 0 ok, 1 trained but the loss did not fall or diverged, 3 import failed, 4 other error,
5 the ranks did not meet (or stopped answering) within --timeout.

The last stdout line is `IMAGEKIT_REPORT {json}` with: framework, version, host, rank,
world_size, allreduce, expected, steps, loss_first, loss_last, weights, rendezvous_seconds,
seconds, ok, stage ("import", "rendezvous", "allreduce", "training", "done": how far it got),
reason (null when ok).
"""

import argparse
import json
import math
import os
import random
import socket
import sys
import threading
import time
import traceback

MARK = "IMAGEKIT_REPORT "
KEYS = (
    "framework version host rank world_size allreduce expected steps loss_first loss_last"
    " weights rendezvous_seconds seconds ok stage reason"
).split()
DEFAULT_PORTS = {"pytorch": "29500", "tensorflow": "2222"}
LINGER_SECONDS = 1.0    # a TensorFlow rank stays up this long after the last all-reduce


class Failed(Exception):
    """A failure with its exit code and one line for the report."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def describe(exc):
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class Reporter:
    """The report, printed exactly once: at the end, or by the watchdog."""

    def __init__(self, report, started):
        self.report, self.started = report, started
        self.lock = threading.Lock()
        self.done = False

    def emit(self, **update):
        with self.lock:
            if self.done:
                return False
            self.done = True
            self.report.update(update)
            self.report["seconds"] = round(time.monotonic() - self.started, 2)
            print(MARK + json.dumps(self.report, allow_nan=False, default=str), flush=True)
            return True


class Watchdog:
    """Ends the process (exit 5) when a phase runs past its time: a peer that never
    comes, or one that stops answering in the middle of a collective."""

    def __init__(self, reporter, seconds):
        self.reporter, self.seconds = reporter, seconds
        self.timer = None

    def phase(self, stage, reason):
        self.cancel()
        self.reporter.report["stage"] = stage
        self.timer = threading.Timer(self.seconds, self._fire, (reason,))
        self.timer.daemon = True
        self.timer.start()

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self, reason):
        if self.reporter.emit(ok=False, reason=reason):
            sys.stderr.flush()
            os._exit(5)


def wait_for_hosts(hosts, deadline):
    """Wait until every peer's host name resolves (a platform starts nodes one by one)."""
    for host in hosts:
        while True:
            try:
                socket.getaddrinfo(host, None)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise Failed(5, f"host {host} did not resolve") from None
                time.sleep(0.25)


def synthetic(seed, rank, n=256, d=8, hidden=32):
    """This rank's shard of one problem (the same target function on every rank, its own
    samples) and the initial MLP weights (the same on every rank)."""
    common = random.Random(seed)
    w_true = [common.gauss(0.0, 1.0) for _ in range(d)]
    init = [[[common.gauss(0.0, d**-0.5) for _ in range(hidden)] for _ in range(d)], [0.0] * hidden,
            [[common.gauss(0.0, hidden**-0.5)] for _ in range(hidden)], [0.0]]
    own = random.Random(f"{seed}-{rank}")
    x = [[own.gauss(0.0, 1.0) for _ in range(d)] for _ in range(n)]
    y = [[sum(r[i] * w_true[i] for i in range(d)) + own.gauss(0.0, 0.1)] for r in x]
    return x, y, init


def train(step, steps, report):
    first = last = float("nan")
    for i in range(1, steps + 1):
        loss = float(step())
        if i == 1:
            first = loss
        last = loss
        if i == 1 or i % 10 == 0 or i == steps:
            print(f"rank {report['rank']} step {i} loss {loss:.4f}", flush=True)
    report.update(steps=steps, loss_first=first if math.isfinite(first) else None,
                  loss_last=last if math.isfinite(last) else None)
    if not (math.isfinite(first) and math.isfinite(last)):
        raise Failed(1, f"loss diverged to {first if not math.isfinite(first) else last}")
    if not last < 0.5 * first:
        raise Failed(1, f"loss did not fall: {first:.4g} -> {last:.4g}")


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise Failed(4, f"${name} is not set: the platform gives it to every node")
    return value


def pytorch(args, report, watch):
    try:
        import torch
        import torch.distributed as dist
    except Exception as exc:
        raise Failed(3, f"import torch failed: {describe(exc)}") from None
    import datetime
    report["version"] = torch.__version__
    if not dist.is_available():
        raise Failed(4, "this torch build has no torch.distributed")
    rank, world = int(env("RANK")), int(env("WORLD_SIZE"))
    addr, port = env("MASTER_ADDR"), env("MASTER_PORT", DEFAULT_PORTS["pytorch"])
    report.update(rank=rank, world_size=world, expected=world * (world + 1) / 2)
    torch.set_num_threads(1)
    timeout = f"the ranks did not meet within {args.timeout:g} s (at {addr}:{port})"
    watch.phase("rendezvous", timeout)
    t0 = time.monotonic()
    wait_for_hosts([addr], t0 + args.timeout)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world,
                            # longer than the watchdog's, which says what happened
                            timeout=datetime.timedelta(seconds=args.timeout + 30))
    try:
        watch.phase("allreduce", timeout)
        value = torch.tensor([rank + 1.0])
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        report["allreduce"] = float(value.item())
        report["rendezvous_seconds"] = round(time.monotonic() - t0, 2)
        print(f"rank {rank} of {world}: all-reduce {report['allreduce']:g}", flush=True)

        watch.phase("training", f"a peer stopped answering during training ({args.timeout:g} s)")
        x, y, init = synthetic(args.seed, rank)
        x, y = torch.tensor(x), torch.tensor(y)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(init[0]).T)
            model[0].bias.copy_(torch.tensor(init[1]))
            model[2].weight.copy_(torch.tensor(init[2]).T)
            model[2].bias.copy_(torch.tensor(init[3]))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)

        def step():
            opt.zero_grad()
            loss = torch.mean((ddp(x) - y) ** 2)
            loss.backward()
            opt.step()
            return loss.item()

        train(step, args.steps, report)
        with torch.no_grad():
            report["weights"] = float(sum(p.double().sum() for p in model.parameters()))
        dist.barrier()
    finally:
        watch.cancel()
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def tf_cluster():
    """(every task's "host:port" in rank order, this task's rank) from TF_CONFIG."""
    try:
        config = json.loads(env("TF_CONFIG"))
        cluster, task = config["cluster"], config["task"]
        order = [t for t in ("chief", "worker") if t in cluster] + \
            sorted(t for t in cluster if t not in ("chief", "worker", "evaluator", "ps"))
        tasks = [(t, i, addr) for t in order for i, addr in enumerate(cluster[t])]
        rank = next(n for n, (t, i, _) in enumerate(tasks)
                    if t == task["type"] and i == int(task.get("index", 0)))
    except Failed:
        raise
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise Failed(4, f"$TF_CONFIG is not a cluster with this task in it: {describe(exc)}") \
            from None
    return [a for _, _, a in tasks], rank


def tensorflow(args, report, watch):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    addrs, rank = tf_cluster()
    world = len(addrs)
    report.update(rank=rank, world_size=world, expected=world * (world + 1) / 2)
    try:
        import tensorflow as tf
    except Exception as exc:
        raise Failed(3, f"import tensorflow failed: {describe(exc)}") from None
    report["version"] = tf.__version__
    try:
        tf.config.set_visible_devices([], "GPU")    # the check runs on CPU
    except Exception:
        pass
    timeout = f"the ranks did not meet within {args.timeout:g} s (at {', '.join(addrs)})"
    watch.phase("rendezvous", timeout)
    t0 = time.monotonic()
    wait_for_hosts([a.rsplit(":", 1)[0] for a in addrs], t0 + args.timeout)
    exp = tf.distribute.experimental
    options = exp.CommunicationOptions(implementation=exp.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    sum_ = tf.distribute.ReduceOp.SUM

    watch.phase("allreduce", timeout)

    @tf.function
    def contribute():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(sum_, tf.constant(rank + 1.0))

    value = strategy.experimental_local_results(strategy.run(contribute))[0]
    report["allreduce"] = float(value.numpy())
    report["rendezvous_seconds"] = round(time.monotonic() - t0, 2)
    print(f"rank {rank} of {world}: all-reduce {report['allreduce']:g}", flush=True)

    watch.phase("training", f"a peer stopped answering during training ({args.timeout:g} s)")
    x, y, init = synthetic(args.seed, rank)
    x, y = tf.constant(x, tf.float32), tf.constant(y, tf.float32)
    with strategy.scope():
        # the update is computed from gradients already averaged over every rank
        params = [tf.Variable(p, dtype=tf.float32,
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                  for p in init]
    w1, b1, w2, b2 = params
    lr = args.lr

    @tf.function
    def step():
        def replica():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(tf.tanh(x @ w1 + b1) @ w2 + b2 - y))
            grads = tape.gradient(loss, params)
            grads = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, grads)
            for i, var in enumerate(params):
                var.assign_sub(lr * grads[i])
            return loss
        return strategy.run(replica)

    train(lambda: strategy.experimental_local_results(step())[0].numpy(), args.steps, report)
    report["weights"] = float(sum(float(tf.reduce_sum(tf.cast(p, tf.float64))) for p in params))

    @tf.function
    def last():      # every rank is past its last step before any leaves
        return tf.distribute.get_replica_context().all_reduce(sum_, tf.constant(1.0))

    strategy.run(last)
    # TensorFlow's ring all-reduce pulls each share from the rank that holds it: a rank
    # whose own result is complete may still be asked for its share, so none leaves at once
    time.sleep(LINGER_SECONDS)
    watch.cancel()


def main(argv=None):
    parser = argparse.ArgumentParser(description="imagekit multi-node check")
    parser.add_argument("--framework", choices=("pytorch", "tensorflow"), required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=float(os.environ.get("IMAGEKIT_CHECK_LR", "0.1")))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    report = dict.fromkeys(KEYS)
    report.update(framework=args.framework, host=socket.gethostname(), ok=False, stage="import")
    reporter = Reporter(report, time.monotonic())
    watch = Watchdog(reporter, args.timeout)
    try:
        (pytorch if args.framework == "pytorch" else tensorflow)(args, report, watch)
    except Failed as exc:
        watch.cancel()
        reporter.emit(ok=False, reason=exc.reason)
        return exc.code
    except Exception as exc:
        watch.cancel()
        traceback.print_exc()
        reporter.emit(ok=False, reason=describe(exc))
        return 4
    reporter.emit(ok=True, stage="done", reason=None)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # no interpreter teardown: a framework's threads can hold it up
