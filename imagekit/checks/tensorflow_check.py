"""imagekit framework check for TensorFlow (stdlib + tensorflow); harness.py runs it and reports."""

import os

import harness

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quiet C++ logs; read at import


def facts(tf):
    info = tf.sysconfig.get_build_info()  # CPU builds have no cuda/cudnn entries
    cuda, cudnn = info.get("cuda_version") or None, info.get("cudnn_version") or None
    built = bool(info.get("is_cuda_build"))
    return {"cuda_build": built, "cuda": cuda, "cudnn": cudnn,
            "archs": info.get("cuda_compute_capabilities") or [],  # sm_XX: SASS, compute_XX: PTX
            "dlopen": harness.toolkit_sonames(cuda, cudnn) if built else []}  # opened at run time


def gpus(tf):
    found = tf.config.list_physical_devices("GPU")
    return [tf.config.experimental.get_device_details(g).get("device_name") or g.name for g in found]


def model(tf, use_gpu, x, y, init, lr):
    with tf.device("/GPU:0" if use_gpu else "/CPU:0"):
        x, y = tf.constant(x, tf.float32), tf.constant(y, tf.float32)
        params = [tf.Variable(p, dtype=tf.float32) for p in init]
    w1, b1, w2, b2 = params

    @tf.function
    def step():
        with tf.device("/GPU:0" if use_gpu else "/CPU:0"), tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.tanh(x @ w1 + b1) @ w2 + b2 - y))
        grads = tape.gradient(loss, params)
        for i, var in enumerate(params):
            var.assign_sub(lr * grads[i])
        return loss

    return step, lambda loss: loss.numpy()


if __name__ == "__main__":
    raise SystemExit(harness.main("tensorflow", "tensorflow", facts, gpus, model))
