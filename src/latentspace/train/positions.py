"""Where each data stream of a training job stands, so that a resumed run reads on exactly where
the interrupted one stopped.

A streamed run reads the shards through one stream per *role*: each DataLoader worker of each
process is a role (a process without workers is one itself), and roles take turns making batches.
Every streamed batch says which role made it and where that role's stream stood afterwards; a
checkpoint keeps every role's position and which role makes the next batch on each rank. (Batches
from the feature table in memory carry no role: their order is a function of the step alone.)
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from rich.console import Console

from latentspace.data.shards import StreamPosition
from latentspace.train.distributed import DistEnv


class DataPositions:
    """This rank's roles' stream positions, and the role that makes its next batch."""

    def __init__(self, env: DistEnv, workers: int):
        self.env = env
        self.roles_per_rank = max(1, workers)
        self.positions: dict[int, StreamPosition] = {}
        self.next_role = 0

    @property
    def n_roles(self) -> int:
        """Data streams in the whole job: one per DataLoader worker (or the process) per rank."""
        return self.env.world_size * self.roles_per_rank

    @property
    def skipped(self) -> int:
        """Samples the streams skipped (corrupt or without a caption), all epochs."""
        return sum(p.skipped for p in self.positions.values())

    @property
    def shard_errors(self) -> int:
        return sum(p.shard_errors for p in self.positions.values())

    def advance(self, batch: dict) -> None:
        """After a step on `batch`: a streamed batch moves its role's position on."""
        if "role" not in batch:
            return
        role = int(batch["role"])
        self.positions[role] = StreamPosition(**batch["position"])
        self.next_role = (role - self.env.rank * self.roles_per_rank + 1) % self.roles_per_rank

    def gathered(self) -> dict:
        """Every rank's positions, as a checkpoint keeps them (each rank advances only its own
        roles). A collective under torchrun: every rank calls it."""
        mine = ({r: asdict(p) for r, p in self.positions.items()}, {self.env.rank: self.next_role})
        if not self.env.is_distributed:
            positions, next_roles = mine
        else:
            everyone: list = [None] * self.env.world_size
            torch.distributed.all_gather_object(everyone, mine)
            positions, next_roles = {}, {}
            for rank, (theirs, their_next) in enumerate(everyone):
                roles = range(rank * self.roles_per_rank, (rank + 1) * self.roles_per_rank)
                positions.update({r: p for r, p in theirs.items() if r in roles})
                next_roles.update(their_next)
        return {"positions": positions, "next_role": next_roles, "roles": self.n_roles}

    def restore(self, data: dict, console: Console) -> None:
        """Pick up where a checkpoint's streams (`gathered`) stood."""
        positions = {int(k): StreamPosition(**v) for k, v in data["positions"].items()}
        next_role = {int(k): v for k, v in data["next_role"].items()}
        if data["roles"] == self.n_roles:  # same split: exact resume
            self.positions, self.next_role = positions, int(next_role.get(self.env.rank, 0))
            return
        # Another number of processes or workers splits the shards differently, so no stream can
        # pick up where an old one stopped: every stream starts the next epoch instead.
        epoch = 1 + max((p.epoch for p in positions.values()), default=0)
        self.positions = {role: StreamPosition(epoch=epoch) for role in range(self.n_roles)}
        self.next_role = 0
        console.print(
            f"[yellow]the checkpoint was written by {data['roles']} data stream(s), this run has "
            f"{self.n_roles}: weights and optimizer resume exactly; data restarts at epoch {epoch}[/]"
        )
