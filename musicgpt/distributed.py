"""The processes of a training run: rank and world size under torchrun, values every rank agrees
on, and the SIGINT/SIGTERM flag that stops every rank at the same step. One process (no torchrun)
is world size 1, and nothing here talks to a process group then.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints at the next step boundary and returns."""

    def __init__(self) -> None:
        self.raised = False
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def env_rank() -> int:
    """This process's rank under torchrun (0 without it): rank 0 alone writes the run folder."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def agree(value: float | None, dist: Dist) -> float | None:
    """One value for every rank (the largest): ranks must step with the same learning rate."""
    if value is None or dist.world == 1:
        return value
    tensor = torch.tensor([float(value)])
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank once any rank has it: ranks must stop at the same step."""
    if dist.world == 1:
        return flag
    value = torch.tensor([float(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
