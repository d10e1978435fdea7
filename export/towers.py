"""The two towers. The user tower is inductive: it embeds a user from request features alone."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
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


class SparseProduct(torch.autograd.Function):
    """`matrix @ x` for a sparse CSR matrix whose transpose, for the gradient, is built once: torch would
    transpose the matrix on every backward pass, which costs about five times the product itself."""

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transposed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, ctx.transposed @ grad


def normalised_matrix(
    rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int], symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse matrix pairing rows with columns and its transpose. Each pair weighs 1/deg(row), so a row
    averages its columns; or, `symmetric`, 1/sqrt(deg(row)·deg(column)) as in LightGCN, which lets a column
    with many partners count for less and a row with many partners sum to more."""
    row_degree = np.bincount(rows, minlength=shape[0])[rows].astype(np.float64)
    if symmetric:
        column_degree = np.bincount(columns, minlength=shape[1])[columns]
        weights = 1.0 / np.sqrt(row_degree * column_degree)
    else:
        weights = 1.0 / row_degree
    values = torch.from_numpy(weights.astype(np.float32))
    with warnings.catch_warnings():  # torch calls its CSR support beta; the products used here are long stable
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, columns])), values, shape).coalesce()
        return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


class Propagation:
    """LightGCN-style propagation of the candidate id table over the whole train graph: one layer takes each
    user's mean of its candidates' rows, then each candidate's mean over its users (or LightGCN's symmetric
    weights). The propagated table is the id rows plus `weight`^k times layer k for k = 1..`layers`, so a
    candidate is also embedded by what its users touched, which a sampled minibatch alone would only reach
    through many steps."""

    def __init__(
        self, train: np.ndarray, num_users: int, rows: int, layers: int, weight: float, symmetric: bool = False
    ) -> None:
        users, candidates = train[:, 0], train[:, 1]
        self.to_users = normalised_matrix(users, candidates, (num_users, rows), symmetric)
        self.to_candidates = normalised_matrix(candidates, users, (rows, num_users), symmetric)
        self.layers, self.weight = layers, weight

    def __call__(self, table: torch.Tensor) -> torch.Tensor:
        total, layer = table, table
        for k in range(1, self.layers + 1):
            layer = SparseProduct.apply(*self.to_candidates, SparseProduct.apply(*self.to_users, layer))
            total = total + self.weight**k * layer
        return total


class CandidateTable(nn.Module):
    """The candidate id rows that every lookup of a candidate id reads: the candidate tower's and the history
    or friend bags'. With a propagation a lookup reads the propagated table, which spans every row, so it is
    computed once per training step by `refresh()` and once more, detached, when training ends; evaluation
    and the ONNX export then read that final table as a constant."""

    def __init__(self, rows: int, dim: int, propagation: Propagation | None = None) -> None:
        super().__init__()
        self.ids = id_table(rows, dim)
        self.propagation = propagation
        self.propagated: torch.Tensor | None = None

    def refresh(self) -> None:
        if self.propagation is not None:
            self.propagated = self.propagation(self.ids.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.propagation is None:
            return self.ids(ids)
        if self.propagated is None:
            self.refresh()
        assert self.propagated is not None
        return nn.functional.embedding(ids, self.propagated)


class FeatureEncoder(nn.Module):
    """One dim-sized part per field of a spec, in spec order; all numeric fields together make one last part.

    Categorical fields get a table with one extra row, the unknown bucket. Sequence fields are bags pooled by
    their masked mean. Fields in `shared` look up the candidate id table instead of their own: a bag of
    interacted candidates is then aggregated GraphSAGE-style from the candidates' own embeddings, so a new
    user with a few interactions lands near what they touched.
    """

    def __init__(self, spec: FeatureSpec, dim: int, candidate_ids: CandidateTable, shared: frozenset[str]) -> None:
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

    def table(self, name: str) -> nn.Module:
        return self.candidate_ids if name in self.shared else self.tables[name]

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

    def __init__(self, spec: FeatureSpec, candidate_ids: CandidateTable, dim: int, shared: frozenset[str]) -> None:
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

    def __init__(self, candidate_ids: CandidateTable, spec: FeatureSpec | None, dim: int) -> None:
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

    def __init__(
        self,
        data: InteractionData,
        dim: int,
        propagation_layers: int = 0,
        propagation_weight: float = 1.0,
        symmetric_propagation: bool = False,
    ) -> None:
        super().__init__()
        rows = data.num_candidates + 1
        propagation = (
            Propagation(data.train, data.num_users, rows, propagation_layers, propagation_weight, symmetric_propagation)
            if propagation_layers
            else None
        )
        self.candidate_ids = CandidateTable(rows, dim, propagation)
        shared = set(data.history_fields) | ({USER_ID} if data.candidates_are_users else set())
        self.user = UserTower(data.feature_spec, self.candidate_ids, dim, frozenset(shared))
        self.candidate = (
            None if data.candidates_are_users else CandidateTower(self.candidate_ids, data.candidate_spec, dim)
        )
