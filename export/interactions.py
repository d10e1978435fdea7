"""The one dataset interface training and evaluation read: users, candidates, features and a train/test split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from index.manifest import FeatureField, FeatureSpec

USER_ID = "user_id"


@dataclass(frozen=True)
class InteractionData:
    """Users' features and interactions, split into train and held-out test interactions.

    `train` and `test` are (user, candidate) pairs. `feature_spec` is the user tower's request spec: the
    `history_fields` in it are sequences over the candidate vocabulary filled from the user's train
    interactions; every other field has an array in `user_features` (sequences as rows padded with -1).
    When `candidates_are_users` (friend recommendation) candidate c is user c, both sides share the user
    tower, and a user is never recommended to itself. `split` says how train and test were made.
    """

    name: str
    num_users: int
    num_candidates: int
    user_features: dict[str, np.ndarray]
    train: np.ndarray
    test: np.ndarray
    feature_spec: FeatureSpec
    history_fields: tuple[str, ...] = ("history",)
    candidate_features: dict[str, np.ndarray] = field(default_factory=dict)
    candidate_spec: FeatureSpec | None = None
    candidates_are_users: bool = False
    split: str = ""
    candidate_cluster: np.ndarray | None = None
    user_clusters: np.ndarray | None = None

    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train[:, 0], minlength=self.num_users)


def split_per_user(pairs: np.ndarray, test_share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `test_share` of each user's interactions, keeping at least one in train."""
    order = rng.permutation(len(pairs))
    pairs = pairs[order]
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    _, starts, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    rank = np.arange(len(pairs)) - np.repeat(starts, counts)
    n_test = np.floor(counts * test_share).astype(np.int64)
    n_test = np.minimum(n_test, counts - 1)
    is_test = rank < np.repeat(n_test, counts)
    return pairs[~is_test], pairs[is_test]


def split_edges(
    edges: np.ndarray, num_nodes: int, test_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about `test_share` of each node's undirected edges; returns both directions of each side.

    An edge is held out as a whole, never one direction only: otherwise the friend on the other end would
    still list the user in its train friends and the shared tower would see the answer. Every node keeps at
    least one train edge, so no user becomes an empty request.
    """
    edges = edges[rng.permutation(len(edges))]
    degree = np.bincount(edges.ravel(), minlength=num_nodes)
    quota = np.floor(degree * test_share).astype(np.int64)
    left = degree.copy()
    held = np.zeros(len(edges), dtype=bool)
    for i, (u, v) in enumerate(edges):
        if quota[u] > 0 and quota[v] > 0 and left[u] > 1 and left[v] > 1:
            held[i] = True
            quota[u] -= 1
            quota[v] -= 1
            left[u] -= 1
            left[v] -= 1
    return _both_ways(edges[~held]), _both_ways(edges[held])


def _both_ways(edges: np.ndarray) -> np.ndarray:
    pairs = np.concatenate([edges, edges[:, ::-1]])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def padded_bags(bags: list[list[int]] | list[np.ndarray], max_length: int | None = None) -> np.ndarray:
    """Ragged id lists as one int64 matrix padded with -1 (at least one column)."""
    width = max(1, max((len(b) for b in bags), default=0))
    if max_length is not None:
        width = min(width, max_length)
    out = np.full((len(bags), width), -1, dtype=np.int64)
    for row, bag in enumerate(bags):
        values = np.asarray(bag, dtype=np.int64)[:width]
        out[row, : len(values)] = values
    return out


def history_matrix(data: InteractionData, field_name: str) -> np.ndarray:
    """Each user's train interactions in train order, the last max_length of them, padded with -1."""
    spec = data.feature_spec.field(field_name)
    assert spec is not None and spec.max_length is not None
    order = np.argsort(data.train[:, 0], kind="stable")
    users, starts, counts = np.unique(data.train[order, 0], return_index=True, return_counts=True)
    width = max(1, min(spec.max_length, int(counts.max(initial=0))))
    out = np.full((data.num_users, width), -1, dtype=np.int64)
    items = data.train[order, 1]
    for user, start, count in zip(users, starts, counts, strict=True):
        row = items[start : start + count][-width:]
        out[user, : len(row)] = row
    return out


def request_inputs(data: InteractionData, users: np.ndarray) -> dict[str, np.ndarray]:
    """Tower inputs for `users` as a request would carry them: features plus train history."""
    out: dict[str, np.ndarray] = {}
    for spec_field in data.feature_spec.fields:
        if spec_field.name in data.history_fields:
            out[spec_field.name] = history_matrix(data, spec_field.name)[users]
        else:
            out[spec_field.name] = data.user_features[spec_field.name][users]
    return out


def bag_field(name: str, vocab_size: int, max_length: int) -> FeatureField:
    """An optional bag of ids: a user's history or friends, or a sparse multi-hot feature such as artists."""
    return FeatureField(
        name=name, kind="sequence", dtype="int64", vocab_size=vocab_size, max_length=max_length, optional=True
    )
