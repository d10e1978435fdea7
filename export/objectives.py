"""Training objectives."""

from __future__ import annotations

import torch


def retrieval_loss(
    users: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """In-batch sampled softmax with log-q correction and accidental hits masked.

    Row i's positive is column i. Other columns are negatives sampled in proportion to popularity, so their
    logits are corrected by their log sampling probability; a column that holds row i's own candidate
    (the same id twice in a batch) is not a negative and is masked.
    """
    logits = users @ candidates.T / temperature - log_q.unsqueeze(0)
    same = candidate_ids.unsqueeze(0) == candidate_ids.unsqueeze(1)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    target = torch.arange(len(users), device=users.device)
    return torch.nn.functional.cross_entropy(logits, target)
