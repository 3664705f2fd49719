"""Where and how the engine computes: device choice, autocast, memory format, compiled forwards."""

from __future__ import annotations

import contextlib

import torch

from ..errors import TinltError


def resolve_device(name: str) -> torch.device:
    """``train.device``: auto (CUDA when visible, else CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TinltError(f"config key 'train.device' = {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TinltError(f"config key 'train.device' = {name!r} but no CUDA device is available")
    return dev


def training_devices(name: str):
    """(device, DistInfo) for a training process: under torchrun each rank takes its local GPU."""
    from .distributed import init_distributed

    device = resolve_device(name)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device, dist_info


def cuda_speed_settings(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> None:
    """On CUDA: TF32 matmuls and convolutions (fp32 work on tensor cores, 10-bit mantissa inputs;
    off by default in PyTorch for matmuls) and cuDNN's algorithm search for fixed input shapes.
    Nothing changes on other devices."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA by default, nothing on CPU (fp32 there is both exact and fastest)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def is_convolutional(tower: torch.nn.Module) -> bool:
    """A CNN tower (channels-last helps its convolutions); a ViT's one patch-embedding conv does not count."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in tower.modules()) > 1


def compiled_forward(model, images):
    """The compiled forward, with a compiler failure as one line instead of dynamo's traceback."""
    try:
        return model(images)
    except torch._dynamo.exc.TorchDynamoException as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TinltError(f"train.compile: torch.compile failed ({type(e).__name__}: {first}); "
                         "set train.compile=false to train without it") from None


def wrap_for_training(model: torch.nn.Module, cfg, dist_info, device: torch.device) -> torch.nn.Module:
    """The module the training forward runs: DDP across processes, then torch.compile
    (``train.compile``; evaluation keeps the eager model)."""
    out = model
    if dist_info.enabled:
        out = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(out) if cfg.train.compile else out


def no_sync_unless(step_now: bool, train_model: torch.nn.Module):
    """DDP's ``no_sync()`` for an accumulation micro-batch that does not step: its gradients stay
    local and the all-reduce runs once, with the micro-batch that steps (one all-reduce per step,
    not one per micro-batch). A null context otherwise, and outside DDP."""
    import contextlib

    ddp = getattr(train_model, "_orig_mod", train_model)  # under torch.compile
    if step_now or not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()
