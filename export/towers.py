"""The two towers. The user tower is inductive: it embeds a user from request features alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from export.interactions import USER_ID, InteractionData
from index.manifest import FeatureSpec


class Bag(NamedTuple):
    """A sequence field looked up but not yet pooled, so augmentations can drop elements cheaply."""

    rows: torch.Tensor  # (batch, length, dim)
    valid: torch.Tensor  # (batch, length) float, 0 for padding


def id_table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim)
    nn.init.normal_(table.weight, std=0.1)
    return table


class FeatureEncoder(nn.Module):
    """One dim-sized part per field of a spec, in spec order; all numeric fields together make one last part.

    Categorical fields get a table with one extra row, the unknown bucket. Sequence fields are bags pooled by
    their masked mean. Fields in `shared` look up the candidate id table instead of their own: a bag of
    interacted candidates is then aggregated GraphSAGE-style from the candidates' own embeddings, so a new
    user with a few interactions lands near what they touched.
    """

    def __init__(self, spec: FeatureSpec, dim: int, candidate_ids: nn.Embedding, shared: frozenset[str]) -> None:
        super().__init__()
        self.spec = spec
        self.candidate_ids = candidate_ids
        self.shared = shared
        self.tables = nn.ModuleDict()
        for field in spec.fields:
            if field.kind != "numeric" and field.name not in shared:
                assert field.vocab_size is not None
                self.tables[field.name] = id_table(field.vocab_size + 1, dim)
        numeric = sum(f.kind == "numeric" for f in spec.fields)
        self.numeric = nn.Linear(numeric, dim) if numeric else None
        self.num_parts = sum(f.kind != "numeric" for f in spec.fields) + (1 if numeric else 0)

    def table(self, name: str) -> nn.Embedding:
        return self.candidate_ids if name in self.shared else self.tables[name]  # type: ignore[return-value]

    def lookup(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor | Bag]:
        parts: list[torch.Tensor | Bag] = []
        numeric: list[torch.Tensor] = []
        for field, value in zip(self.spec.fields, inputs, strict=True):
            if field.kind == "numeric":
                numeric.append(value.unsqueeze(-1))
            elif field.kind == "categorical":
                parts.append(self.table(field.name)(value))
            else:
                valid = (value >= 0).to(torch.float32)
                parts.append(Bag(self.table(field.name)(value.clamp(min=0)), valid))
        if self.numeric is not None:
            parts.append(self.numeric(torch.cat(numeric, dim=-1)))
        return parts

    @staticmethod
    def pool(looked: list[torch.Tensor | Bag], keep: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-field (batch, dim) parts; `keep` maps a bag's part index to a (batch, length) mask of kept ids."""
        parts = []
        for index, part in enumerate(looked):
            if isinstance(part, Bag):
                weight = part.valid if keep is None or index not in keep else part.valid * keep[index]
                total = (part.rows * weight.unsqueeze(-1)).sum(1)
                part = total / weight.sum(1, keepdim=True).clamp(min=1.0)
            parts.append(part)
        return parts


class UserTower(nn.Module):
    """Embeds the spec's fields into one L2-normalised vector: a linear map of the concatenated parts plus an
    MLP of them (the linear path keeps the id and history parts' geometry; the MLP mixes fields)."""

    def __init__(self, spec: FeatureSpec, candidate_ids: nn.Embedding, dim: int, shared: frozenset[str]) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = FeatureEncoder(spec, dim, candidate_ids, shared)
        width = dim * self.encoder.num_parts
        self.linear = nn.Linear(width, dim)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def hidden(self, concatenated: torch.Tensor) -> torch.Tensor:
        """The embedding before normalisation, where the self-supervised losses look."""
        return self.linear(concatenated) + self.mlp(concatenated)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = self.encoder.pool(self.encoder.lookup(inputs))
        return nn.functional.normalize(self.hidden(torch.cat(parts, dim=-1)), dim=-1)


class CandidateTower(nn.Module):
    """The candidate's id row plus its feature parts, with a residual MLP, L2-normalised.

    The MLP's weights are shared by all candidates and move on every step, while an id row moves only when
    its candidate is in the batch; without it a short run leaves the rare candidates near their random start.
    """

    def __init__(self, candidate_ids: nn.Embedding, spec: FeatureSpec | None, dim: int) -> None:
        super().__init__()
        self.candidate_ids = candidate_ids
        self.features = FeatureEncoder(spec, dim, candidate_ids, frozenset()) if spec else None
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, candidate: torch.Tensor, features: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        out = self.candidate_ids(candidate)
        if self.features is not None:
            out = out + torch.stack(self.features.pool(self.features.lookup(features))).sum(0)
        return nn.functional.normalize(out + self.mlp(out), dim=-1)


class TwoTower(nn.Module):
    """Both towers over one candidate id table. For friend graphs the candidate side is the user tower itself
    (candidates are users) and the user id field shares the candidate table too."""

    def __init__(self, data: InteractionData, dim: int) -> None:
        super().__init__()
        self.candidate_ids = id_table(data.num_candidates + 1, dim)
        shared = set(data.history_fields) | ({USER_ID} if data.candidates_are_users else set())
        self.user = UserTower(data.feature_spec, self.candidate_ids, dim, frozenset(shared))
        self.candidate = (
            None if data.candidates_are_users else CandidateTower(self.candidate_ids, data.candidate_spec, dim)
        )
