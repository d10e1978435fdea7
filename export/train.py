"""Training the two towers on an interaction dataset."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from export.objectives import retrieval_loss
from export.synthetic import InteractionData
from export.towers import CandidateTower, UserTower
from index.progress import track


class DivergedError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 3e-3
    temperature: float = 0.05
    seed: int = 0
    threads: int = 2


@dataclass
class Trained:
    user_tower: UserTower
    candidate_tower: CandidateTower
    config: TrainConfig
    seconds_per_epoch: float
    final_loss: float

    def summary(self) -> dict[str, object]:
        return {
            **asdict(self.config),
            "seconds_per_epoch": self.seconds_per_epoch,
            "final_loss": self.final_loss,
        }


def history_matrix(data: InteractionData, field: str) -> np.ndarray:
    """Each user's train interactions, newest last, padded with -1 to the field's max length."""
    spec = data.feature_spec.field(field)
    assert spec is not None and spec.max_length is not None
    out = np.full((data.num_users, spec.max_length), -1, dtype=np.int64)
    order = np.argsort(data.train[:, 0], kind="stable")
    users, starts, counts = np.unique(data.train[order, 0], return_index=True, return_counts=True)
    items = data.train[order, 1]
    for user, start, count in zip(users, starts, counts, strict=True):
        row = items[start : start + count][-spec.max_length :]
        out[user, : len(row)] = row
    return out


def user_inputs(data: InteractionData, users: np.ndarray, histories: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """The tower's inputs for `users`, in spec order."""
    inputs: list[torch.Tensor] = []
    for field in data.feature_spec.fields:
        if field.kind == "sequence":
            inputs.append(torch.from_numpy(histories[field.name][users]))
        else:
            inputs.append(torch.from_numpy(data.user_features[field.name][users]))
    return inputs


def train(data: InteractionData, config: TrainConfig) -> Trained:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    history_fields = frozenset(f.name for f in data.feature_spec.fields if f.kind == "sequence")
    candidates = CandidateTower(data.num_candidates, config.dim)
    users = UserTower(data.feature_spec, candidates, config.dim, history_fields)
    optimizer = torch.optim.Adam(users.parameters(), lr=config.lr)
    histories = {name: history_matrix(data, name) for name in history_fields}

    popularity = np.bincount(data.train[:, 1], minlength=data.num_candidates) + 1.0
    log_q = torch.from_numpy(np.log(popularity / popularity.sum()).astype(np.float32))
    steps = math.ceil(len(data.train) / config.batch_size)
    loss_value = float("nan")
    started = time.monotonic()
    with track("train", total=steps * config.epochs) as progress:
        for epoch in range(config.epochs):
            order = rng.permutation(len(data.train))
            for step in range(steps):
                batch = data.train[order[step * config.batch_size : (step + 1) * config.batch_size]]
                user_ids, item_ids = batch[:, 0], torch.from_numpy(batch[:, 1])
                inputs = user_inputs(data, user_ids, histories)
                for field, value in zip(data.feature_spec.fields, inputs, strict=True):
                    if field.name in history_fields:
                        value[value == item_ids.unsqueeze(1)] = -1
                loss = retrieval_loss(
                    users(*inputs), candidates(item_ids), item_ids, log_q[item_ids], config.temperature
                )
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise DivergedError(f"loss became {loss_value} at epoch {epoch} step {step}")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                progress.advance(note=f"epoch {epoch + 1} loss {loss_value:.3f}")
    seconds = (time.monotonic() - started) / config.epochs
    return Trained(users.eval(), candidates.eval(), config, seconds, loss_value)


@torch.no_grad()
def candidate_embeddings(trained: Trained, num_candidates: int) -> np.ndarray:
    out = trained.candidate_tower(torch.arange(num_candidates))
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)
