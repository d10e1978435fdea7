"""A seeded synthetic interaction dataset with planted structure, for unit tests and the demo.

Candidates fall into clusters; each user prefers one or two clusters and interacts mostly inside them. A user's
categorical `region` and numeric `activity` are noisy functions of those clusters, so a tower can learn the
structure from features and history alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.interactions import USER_ID, InteractionData, bag_field, split_per_user
from index.manifest import FeatureField, FeatureSpec

__all__ = ["InteractionData", "SyntheticConfig", "feature_spec", "generate"]


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 4000
    num_candidates: int = 20000
    num_clusters: int = 200
    num_regions: int = 8
    interactions_per_user: int = 24
    in_cluster_share: float = 0.9
    max_history: int = 50
    seed: int = 0


def feature_spec(config: SyntheticConfig) -> FeatureSpec:
    return FeatureSpec(
        fields=(
            FeatureField(name=USER_ID, kind="categorical", dtype="int64", vocab_size=config.num_users, optional=True),
            FeatureField(name="region", kind="categorical", dtype="int64", vocab_size=config.num_regions),
            FeatureField(name="activity", kind="numeric", dtype="float32", optional=True, default=0.0),
            bag_field("history", config.num_candidates, config.max_history),
        )
    )


def generate(config: SyntheticConfig) -> InteractionData:
    rng = np.random.default_rng(config.seed)
    candidate_cluster = rng.integers(0, config.num_clusters, size=config.num_candidates)
    members = [np.flatnonzero(candidate_cluster == c) for c in range(config.num_clusters)]
    # Inside a cluster, popularity falls off like Zipf's law, as it does in real catalogues.
    weights = [1.0 / np.arange(1, len(m) + 1) for m in members]
    weights = [w / w.sum() for w in weights]

    user_clusters = np.stack([rng.choice(config.num_clusters, size=2, replace=False) for _ in range(config.num_users)])
    clusters_per_region = max(1, config.num_clusters // config.num_regions)
    region = np.minimum(user_clusters[:, 0] // clusters_per_region, config.num_regions - 1)
    noisy = rng.random(config.num_users) < 0.2
    region[noisy] = rng.integers(0, config.num_regions, size=int(noisy.sum()))
    activity = (user_clusters[:, 1] / config.num_clusters + rng.normal(0, 0.1, config.num_users)).astype(np.float32)

    pairs: list[np.ndarray] = []
    for user in range(config.num_users):
        n = config.interactions_per_user
        n_in = rng.binomial(n, config.in_cluster_share)
        primary = rng.random(n_in) < 0.7
        picks = [
            _pick(rng, members, weights, user_clusters[user, 0], int(primary.sum())),
            _pick(rng, members, weights, user_clusters[user, 1], int((~primary).sum())),
            rng.integers(0, config.num_candidates, size=n - n_in),
        ]
        items = np.unique(np.concatenate(picks))
        pairs.append(np.stack([np.full(len(items), user), items], axis=1))
    train, test = split_per_user(np.concatenate(pairs), test_share=0.2, rng=rng)
    return InteractionData(
        name="synthetic",
        num_users=config.num_users,
        num_candidates=config.num_candidates,
        user_features={
            USER_ID: np.arange(config.num_users, dtype=np.int64),
            "region": region.astype(np.int64),
            "activity": activity,
        },
        train=train,
        test=test,
        feature_spec=feature_spec(config),
        candidate_cluster=candidate_cluster,
        user_clusters=user_clusters,
        split="20% of each user's interactions held out at random",
    )


def _pick(
    rng: np.random.Generator, members: list[np.ndarray], weights: list[np.ndarray], cluster: int, size: int
) -> np.ndarray:
    return rng.choice(members[cluster], size=size, p=weights[cluster])
