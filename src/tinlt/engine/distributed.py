"""torchrun/DDP plumbing: process-group set-up from the environment and small collectives.

Launch with ``torchrun --nproc_per_node N -m tinlt train ...``: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; we pick NCCL on CUDA and gloo on CPU. Without torchrun
every helper here is a no-op, so single-process code paths stay plain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        # gloo has no int64 sum on some builds; counts stay exact in float64 up to 2^53
        orig = t.dtype
        buf = t.to(torch.float64)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(orig)
    return t


def all_reduce_numpy(a: np.ndarray) -> np.ndarray:
    if not is_dist():
        return a
    return all_reduce_sum(torch.from_numpy(np.ascontiguousarray(a)).to(torch.float64)).numpy().astype(a.dtype)


def all_gather_arrays(a: np.ndarray) -> np.ndarray:
    """Concatenate per-rank arrays of different lengths along axis 0, in rank order."""
    if not is_dist():
        return a
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, a)
    return np.concatenate(out, axis=0)


def all_gather_optional(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """:func:`all_gather_arrays` for what a rank may not have kept: None where any rank has None.
    Every rank joins the gather whatever it kept; a gather that only some ranks enter ends the
    run ("Connection closed by peer"), as it did when only rank 0 kept scores for predictions.csv."""
    if not is_dist():
        return a
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, a)
    return None if any(o is None for o in out) else np.concatenate(out, axis=0)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
