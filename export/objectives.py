"""Training objectives: the retrieval loss and the two non-contrastive self-supervised tasks of SSMTL."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def retrieval_loss(
    users: torch.Tensor,
    positives: torch.Tensor,
    positive_ids: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    negative_log_q: torch.Tensor | None = None,
    own_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax with log-q correction, accidental hits masked, optional extra negatives.

    Row i's positive is column i; the other rows' positives are its in-batch negatives, drawn in proportion
    to popularity, and `negatives` are extra ones (e.g. uniform). Every logit is corrected by the log of the
    column's expected count under its sampler (`log_q`, `negative_log_q`), so popular candidates are not
    pushed down merely for being sampled often. A column holding row i's own candidate (the same id twice)
    is not a negative and is masked, and so is, with `own_ids`, a column holding the user itself.
    """
    columns, ids, corrections = positives, positive_ids, log_q
    if negatives is not None:
        assert negative_ids is not None and negative_log_q is not None
        columns = torch.cat([positives, negatives])
        ids = torch.cat([positive_ids, negative_ids])
        corrections = torch.cat([log_q, negative_log_q])
    logits = users @ columns.T / temperature - corrections.unsqueeze(0)
    masked = ids.unsqueeze(0) == positive_ids.unsqueeze(1)
    if own_ids is not None:
        masked |= ids.unsqueeze(0) == own_ids.unsqueeze(1)
    rows = torch.arange(len(users), device=users.device)
    masked[rows, rows] = False
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    return nn.functional.cross_entropy(logits, rows)


def standardised(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(0)) / z.std(0, unbiased=False).clamp(min=1e-6)


def cca_ssg_loss(z1: torch.Tensor, z2: torch.Tensor, decorrelation: float = 1e-3) -> torch.Tensor:
    """CCA-SSG (Zhang et al. 2021) on two views of the same rows: with each dimension standardised over the
    batch, ||z1 - z2||²/N + λ(||z1ᵀz1/N - I||² + ||z2ᵀz2/N - I||²). The invariance term pulls the views
    together; the decorrelation term keeps the dimensions apart, which prevents collapse without negatives."""
    n, dim = z1.shape
    a, b = standardised(z1), standardised(z2)
    invariance = (a - b).pow(2).sum() / n
    eye = torch.eye(dim, device=z1.device)
    decorrelated = (a.T @ a / n - eye).pow(2).sum() + (b.T @ b / n - eye).pow(2).sum()
    return invariance + decorrelation * decorrelated


def scaled_cosine_error(reconstructed: torch.Tensor, target: torch.Tensor, alpha: float = 3.0) -> torch.Tensor:
    """GraphMAE's (1 - cos)^alpha, averaged over rows: alpha > 1 down-weights the rows that are already easy."""
    cosine = nn.functional.cosine_similarity(reconstructed, target, dim=-1)
    return (1.0 - cosine).pow(alpha).mean()


class Masked(NamedTuple):
    """A masked copy of the per-field parts: the tower's input, which parts were masked, and the targets."""

    inputs: torch.Tensor  # (batch, fields * dim)
    masked: torch.Tensor  # (batch, fields) bool
    targets: torch.Tensor  # (batch, fields, dim), detached


class MaskedReconstruction(nn.Module):
    """Masked feature reconstruction (GraphMAE-style) over the user tower's per-field parts.

    A random share of (row, field) parts is replaced by that field's learnable mask token, the tower embeds
    the result, and a linear decoder reconstructs every part from the embedding; the scaled cosine error on
    the masked parts is the loss. Masking and scoring are two calls so that the caller can embed the masked
    rows in the same tower pass as its other rows. Targets are detached: they are the tower's own input
    representations, and letting the loss move them would let it shrink them towards whatever is easiest to
    predict.
    """

    def __init__(self, num_parts: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_parts, dim))
        self.decoder = nn.Linear(dim, num_parts * dim)

    def mask(self, parts: list[torch.Tensor], rate: float, generator: torch.Generator) -> Masked:
        stacked = torch.stack(parts, dim=1)
        batch, fields, dim = stacked.shape
        masked = torch.rand(batch, fields, generator=generator) < rate
        masked[:, 0] |= ~masked.any(dim=1)  # every row masks something, so every row is a task
        inputs = torch.where(masked.unsqueeze(-1), self.tokens.unsqueeze(0), stacked)
        return Masked(inputs.reshape(batch, fields * dim), masked, stacked.detach())

    def loss(self, hidden: torch.Tensor, masked: Masked, alpha: float) -> torch.Tensor:
        """The scaled cosine error of the parts reconstructed from `hidden`, the tower's embedding of the inputs."""
        reconstructed = self.decoder(hidden).view(masked.targets.shape)
        return scaled_cosine_error(reconstructed[masked.masked], masked.targets[masked.masked], alpha)
