"""Starter training script: replace the model and data with your own.

Keeps the contract `imagekit smoke` checks: --steps is the total step count to
reach, checkpoints go to --output-dir, and a second run resumes from them."""

import argparse
import os

import mxnet as mx
from mxnet import autograd, gluon, nd

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

ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
print(f"device: {'gpu' if ctx.device_type == 'gpu' else 'cpu'}")
mx.random.seed(0)
x = nd.random.normal(shape=(512, 8), ctx=ctx)
y = nd.dot(x, nd.arange(1, 9, ctx=ctx).reshape((8, 1))) + 0.5
net = gluon.nn.Dense(1)
net.initialize(ctx=ctx)
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": args.lr})
loss_fn = gluon.loss.L2Loss()
params = os.path.join(args.output_dir, "model.params")
step_file = os.path.join(args.output_dir, "step.txt")
step = 0
net(x)  # shapes known before loading
if os.path.exists(params):
    net.load_parameters(params, ctx=ctx)
    step = int(open(step_file).read())
    print(f"resumed from step {step}")
while step < args.steps:
    with autograd.record():
        loss = loss_fn(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])
    step += 1
    if step % 10 == 0 or step == args.steps:
        print(f"step {step} loss {loss.mean().asscalar():.4f}")
os.makedirs(args.output_dir, exist_ok=True)
net.save_parameters(params)
with open(step_file, "w") as f:
    f.write(str(step))
print(f"saved checkpoint at step {step}")
