"""imagekit framework check for PyTorch (stdlib + torch); harness.py runs it and reports."""

import harness


def facts(torch):
    # No "archs": torch.cuda.get_arch_list() is the build's TORCH_CUDA_ARCH_LIST, while
    # some of torch's own libraries carry cubins for more GPUs (2.13.0+cu130: also sm_89,
    # sm_103, sm_121), so the harness reads the fatbins of torch's native files instead.
    return {"cuda_build": torch.version.cuda is not None, "cuda": torch.version.cuda,
            "cudnn": harness.cudnn_string(torch.backends.cudnn.version())}


def gpus(torch):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [torch.cuda.get_device_name(i) for i in range(count)]


def model(torch, use_gpu, x, y, init, lr):
    dev = torch.device("cuda:0" if use_gpu else "cpu")
    x, y = (torch.tensor(v, dtype=torch.float32, device=dev) for v in (x, y))
    params = [torch.tensor(p, dtype=torch.float32, device=dev, requires_grad=True) for p in init]
    w1, b1, w2, b2 = params
    opt = torch.optim.SGD(params, lr=lr)

    def step():
        opt.zero_grad()
        loss = torch.mean((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2)
        loss.backward()
        opt.step()
        return loss

    return step, lambda loss: loss.item()


if __name__ == "__main__":
    raise SystemExit(harness.main("pytorch", "torch", facts, gpus, model))
