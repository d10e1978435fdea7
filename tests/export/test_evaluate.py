"""Offline evaluation on hand-made rankings, and the benchmark table built from runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.bench import Benchmark, Run, format_table
from export.evaluate import exact_scorer, rank
from export.interactions import InteractionData
from index.manifest import FeatureSpec


def tiny(candidates_are_users: bool = False) -> InteractionData:
    # User 0 trained on candidate 0, tests on 1 and 3; user 1 trained on 2, tests on 0.
    return InteractionData(
        name="tiny",
        num_users=2,
        num_candidates=4,
        user_features={},
        train=np.array([[0, 0], [1, 2]]),
        test=np.array([[0, 1], [0, 3], [1, 0]]),
        feature_spec=FeatureSpec(fields=()),
        candidates_are_users=candidates_are_users,
    )


def test_train_candidates_are_skipped_and_ranks_discounted() -> None:
    # Both users rank candidates in the order 0, 1, 2, 3 (scores fall with the id).
    candidates = np.array([[4.0], [3.0], [2.0], [1.0]])
    users = np.ones((2, 1))
    ranking = rank(tiny(), users, exact_scorer(candidates), k=2)
    # User 0: 0 is a train item, so the top 2 are 1 (hit) and 2: recall 1/2, NDCG 1 / (1 + 1/log2(3)).
    # User 1: top 2 are 0 (hit) and 1: recall 1, NDCG 1.
    assert ranking.recall.tolist() == pytest.approx([0.5, 1.0])
    assert ranking.ndcg.tolist() == pytest.approx([1 / (1 + 1 / math.log2(3)), 1.0])
    assert ranking.cold.tolist() == [True, False]  # the fifth (rounded up) with the fewest train interactions


def test_in_a_friend_graph_the_user_itself_is_never_recommended() -> None:
    candidates = np.array([[1.0], [4.0], [3.0], [2.0]])  # user 1 would rank itself first
    ranking = rank(tiny(candidates_are_users=True), np.ones((2, 1)), exact_scorer(candidates), k=1)
    # User 0's top is 1 (0 is itself and its train friend): 1 of its 2 test friends; user 1's top is 3, a miss.
    assert ranking.recall.tolist() == pytest.approx([0.5, 0.0])


def run(objective: str, seed: int, recall: float, cold: float, seconds: float) -> Run:
    metrics = {
        "recall@20": recall,
        "ndcg@20": recall / 2,
        "cold_recall@20": cold,
        "ivfpq_recall@20": recall * 0.99,
        "ivfpq_cold_recall@20": cold * 0.99,
        "seconds_per_epoch": seconds,
    }
    return Run("gowalla", objective, seed, metrics)


def test_the_table_shows_the_paired_gain_and_says_when_ssmtl_is_below() -> None:
    runs = [
        run("retrieval", 0, 0.10, 0.05, 10.0),
        run("retrieval", 1, 0.20, 0.05, 10.0),
        run("ssmtl", 0, 0.11, 0.04, 12.0),
        run("ssmtl", 1, 0.22, 0.04, 14.0),
    ]
    table = format_table(Benchmark(runs, {"gowalla": 1.25}))
    published = next(line for line in table.splitlines() if "LightGCN (published)" in line)
    assert "0.1830" in published
    assert "Recall@20 +10.00% ± 0.00% (n=2)" in table
    assert "cold-start Recall@20 -20.00%" in table
    assert "epoch cost x1.30, x1.25 per step timed side by side" in table
    assert "SSMTL BELOW retrieval" in table
