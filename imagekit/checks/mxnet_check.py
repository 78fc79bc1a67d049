"""imagekit framework check for MXNet (stdlib + mxnet); harness.py runs it and reports."""

import importlib.metadata
import re

import harness


def facts(mx):
    # MXNet tells only whether CUDA/cuDNN are built in; the harness reads the GPU
    # architectures off libmxnet.so (its fatbin) and the CUDA it was built for from the
    # wheel's name (mxnet-cu112: CUDA 11.2), else from the sonames it links.
    return {"cuda_build": mx.runtime.Features().is_enabled("CUDA"), "cuda": built_for()}


def built_for():
    for dist in importlib.metadata.distributions():
        m = re.fullmatch(r"mxnet-cu(\d+)(\d)", (dist.metadata["Name"] or "").lower())
        if m:
            return f"{m[1]}.{m[2]}"
    return None


def gpus(mx):
    try:
        count = mx.context.num_gpus() if mx.runtime.Features().is_enabled("CUDA") else 0
    except Exception:  # raises when the CUDA runtime or driver is missing
        count = 0
    return [f"gpu({i})" for i in range(count)]


def model(mx, use_gpu, x, y, init, lr):
    ctx = mx.gpu(0) if use_gpu else mx.cpu()
    x, y = mx.nd.array(x, ctx=ctx), mx.nd.array(y, ctx=ctx)
    params = [mx.nd.array(p, ctx=ctx) for p in init]
    for p in params:
        p.attach_grad()
    w1, b1, w2, b2 = params

    def step():
        with mx.autograd.record():
            hidden = mx.nd.tanh(mx.nd.dot(x, w1) + b1)
            loss = mx.nd.mean(mx.nd.square(mx.nd.dot(hidden, w2) + b2 - y))
        loss.backward()
        for p in params:
            mx.nd.sgd_update(p, p.grad, lr=lr, out=p)
        return loss

    return step, lambda loss: loss.asscalar()


if __name__ == "__main__":
    raise SystemExit(harness.main("mxnet", "mxnet", facts, gpus, model))
