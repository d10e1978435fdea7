"""Minibatch inputs for training: sampled histories, id dropout, and the augmented views of SSMTL."""

from __future__ import annotations

import numpy as np
import torch

from export.interactions import USER_ID, InteractionData


class HistorySampler:
    """Each user's train interactions in CSR form, sampled GraphSAGE-style into fixed-width bags.

    A user with at most `length` interactions gets all of them; a busier one gets `length` drawn with
    replacement, whose mean is an unbiased estimate of the full bag's mean that serving computes.
    """

    def __init__(self, train: np.ndarray, num_users: int) -> None:
        order = np.argsort(train[:, 0], kind="stable")
        self.items = train[order, 1]
        self.counts = np.bincount(train[:, 0], minlength=num_users)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def sample(self, users: np.ndarray, length: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(batch, ≤ length) ids padded with -1; `exclude[i]` (the pair's own positive) is never in row i."""
        counts = self.counts[users][:, None]
        width = max(1, min(length, int(counts.max(initial=0))))
        positions = np.broadcast_to(np.arange(width), (len(users), width))
        drawn = (rng.random((len(users), width)) * counts).astype(np.int64)
        offsets = np.where(counts <= width, positions, drawn)
        valid = offsets < counts
        rows = self.starts[users][:, None] + np.minimum(offsets, np.maximum(counts - 1, 0))
        bags = np.where(valid, self.items[np.minimum(rows, len(self.items) - 1)], -1)
        bags[bags == exclude[:, None]] = -1
        return bags


def tower_inputs(
    data: InteractionData,
    users: np.ndarray,
    sampler: HistorySampler,
    exclude: np.ndarray,
    history_length: int,
    id_dropout: float,
    rng: np.random.Generator,
    history_dropout: float = 0.0,
) -> list[torch.Tensor]:
    """The user tower's inputs for `users` in spec order.

    The user id is replaced by the unknown bucket for an `id_dropout` share of rows, which trains that bucket
    and teaches the tower to embed users it has never seen from their features and history alone. A
    `history_dropout` share of each sampled history is dropped, so the tower cannot lean on any one item.
    """
    inputs = []
    for field in data.feature_spec.fields:
        if field.name in data.history_fields:
            value = sampler.sample(users, history_length, exclude, rng)
            if history_dropout:
                value[rng.random(value.shape) < history_dropout] = -1
        elif field.name == USER_ID:
            assert field.vocab_size is not None
            value = np.where(rng.random(len(users)) < id_dropout, field.vocab_size, users)
        else:
            value = data.user_features[field.name][users]
        inputs.append(torch.from_numpy(np.ascontiguousarray(value)))
    return inputs


def neighbour_keep(valid: dict[int, torch.Tensor], drop: float, generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Per history bag, a mask that drops each neighbour with probability `drop` (CCA-SSG's edge dropping)."""
    return {index: (torch.rand(v.shape, generator=generator) >= drop).to(torch.float32) for index, v in valid.items()}


def feature_mask(width: int, drop: float, generator: torch.Generator) -> torch.Tensor:
    """CCA-SSG's feature masking: the same random input dimensions are zeroed for every row of the view."""
    return (torch.rand(width, generator=generator) >= drop).to(torch.float32)
