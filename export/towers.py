"""The two towers. The user tower is inductive: it embeds a user from request features alone."""

from __future__ import annotations

import torch
from torch import nn

from index.manifest import FeatureSpec


class CandidateTower(nn.Module):
    def __init__(self, num_candidates: int, dim: int) -> None:
        super().__init__()
        self.ids = nn.Embedding(num_candidates, dim)
        nn.init.normal_(self.ids.weight, std=0.1)
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, candidate: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.project(self.ids(candidate)), dim=-1)


class UserTower(nn.Module):
    """Embeds the spec's fields, in spec order, into one L2-normalised vector.

    Categorical fields get a table with one extra row, the unknown bucket. Sequence fields over the candidate
    vocabulary (`history_fields`) are aggregated GraphSAGE-style: the masked mean of the candidate tower's
    id embeddings, so a new user with a few interactions still lands near what they touched.
    """

    def __init__(self, spec: FeatureSpec, candidates: CandidateTower, dim: int, history_fields: frozenset[str]) -> None:
        super().__init__()
        self.spec = spec
        self.candidates = candidates
        self.history_fields = history_fields
        self.tables = nn.ModuleDict()
        numeric = 0
        parts = 0
        for field in spec.fields:
            if field.kind == "numeric":
                numeric += 1
                continue
            parts += 1
            if field.kind == "categorical" or field.name not in history_fields:
                assert field.vocab_size is not None
                self.tables[field.name] = nn.Embedding(field.vocab_size + 1, dim)
        self.numeric = nn.Linear(numeric, dim) if numeric else None
        width = dim * (parts + (1 if numeric else 0))
        self.mlp = nn.Sequential(nn.Linear(width, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def encode(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Per-field representations before the MLP, so objectives can mask or drop them."""
        parts: list[torch.Tensor] = []
        numeric: list[torch.Tensor] = []
        for field, value in zip(self.spec.fields, inputs, strict=True):
            if field.kind == "numeric":
                numeric.append(value.unsqueeze(-1))
            elif field.kind == "categorical":
                parts.append(self.tables[field.name](value))
            else:
                mask = (value >= 0).unsqueeze(-1).to(torch.float32)
                ids = value.clamp(min=0)
                rows = self.candidates.ids(ids) if field.name in self.history_fields else self.tables[field.name](ids)
                parts.append((rows * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if self.numeric is not None:
            parts.append(self.numeric(torch.cat(numeric, dim=-1)))
        return parts

    def head(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(*inputs))
