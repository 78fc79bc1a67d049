"""Starter training script: replace the model and data with your own.

Keeps the contract `imagekit smoke` checks: --steps is the total step count to
reach, checkpoints go to --output-dir, and a second run resumes from them.
On several nodes (a platform that sets WORLD_SIZE, RANK, MASTER_ADDR and
MASTER_PORT, as a PyTorchJob does) it trains as one job: gradients averaged
over gloo, rank 0 writing the checkpoint."""

import argparse
import os
import sys

import torch

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

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:     # MASTER_ADDR and MASTER_PORT come from the environment too
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    print(f"rank {rank} of {world}")
device = "cuda" if torch.cuda.is_available() and world == 1 else "cpu"
print(f"device: {device}")
torch.manual_seed(0)
x = torch.randn(512, 8, device=device)
y = x @ torch.arange(1.0, 9.0, device=device).unsqueeze(1) + 0.5
model = torch.nn.Linear(8, 1).to(device)
if world > 1:
    model = torch.nn.parallel.DistributedDataParallel(model)   # rank 0's weights to every rank
opt = torch.optim.SGD(model.parameters(), lr=args.lr)
ckpt = os.path.join(args.output_dir, "checkpoint.pt")
step = 0
net = model.module if world > 1 else model
if os.path.exists(ckpt):
    state = torch.load(ckpt, map_location=device)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
    print(f"resumed from step {step}")
if world > 1:     # every rank starts where rank 0 does, with its weights
    start = torch.tensor([step])
    torch.distributed.broadcast(start, 0)
    step = int(start.item())
    for p_ in net.parameters():
        torch.distributed.broadcast(p_.data, 0)
while step < args.steps:
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step % 10 == 0 or step == args.steps:
        print(f"step {step} loss {loss.item():.4f}")
if rank == 0:
    os.makedirs(args.output_dir, exist_ok=True)
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    print(f"saved checkpoint at step {step}")
if world > 1:
    torch.distributed.barrier()     # rank 0 has saved: the ranks leave together
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)   # gloo's threads can abort the interpreter's teardown (SIGABRT, exit 134)
