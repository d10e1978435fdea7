"""The loaders on the real files in ../shared/data, and on broken copies of their formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.datasets import DatasetError, load
from export.interactions import InteractionData


def assert_well_formed(data: InteractionData) -> None:
    for pairs in (data.train, data.test):
        assert pairs.dtype == np.int64 and pairs.shape[1] == 2
        assert pairs[:, 0].min() >= 0 and pairs[:, 0].max() < data.num_users
        assert pairs[:, 1].min() >= 0 and pairs[:, 1].max() < data.num_candidates
    train_codes = set((data.train[:, 0] * data.num_candidates + data.train[:, 1]).tolist())
    test_codes = set((data.test[:, 0] * data.num_candidates + data.test[:, 1]).tolist())
    assert not train_codes & test_codes
    for field in data.feature_spec.fields:
        if field.name not in data.history_fields:
            assert len(data.user_features[field.name]) == data.num_users


@pytest.mark.data
def test_gowalla_keeps_the_lightgcn_split() -> None:
    data = load("gowalla")
    assert (data.num_users, data.num_candidates) == (29_858, 40_981)
    assert (len(data.train), len(data.test)) == (810_128, 217_242)
    assert_well_formed(data)


@pytest.mark.data
def test_movielens_has_user_and_movie_features_and_the_official_fold() -> None:
    data = load("ml-100k")
    assert (data.num_users, data.num_candidates, len(data.train), len(data.test)) == (943, 1682, 80_000, 20_000)
    assert_well_formed(data)
    assert data.candidate_spec is not None
    assert data.candidate_features["genres"].shape == (1682, 6)  # at most six genres per movie
    assert set(np.unique(data.user_features["gender"])) == {0, 1}
    assert data.user_features["occupation"].max() == 20


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "nodes", "edges"),
    [("twitch", 7_126, 35_324), ("ego-facebook", 4_039, 88_234), ("lastfm-friends", 1_892, 12_717)],
)
def test_friend_graphs_hold_out_whole_edges(name: str, nodes: int, edges: int) -> None:
    data = load(name)
    assert data.candidates_are_users and data.num_users == data.num_candidates == nodes
    assert len(data.train) + len(data.test) == 2 * edges  # both directions of every undirected edge
    assert_well_formed(data)
    for pairs in (data.train, data.test):  # a held-out edge is held out in both directions
        forward = set(map(tuple, pairs.tolist()))
        assert forward == {(v, u) for u, v in forward}
    assert data.train_counts().min() >= 1
    assert 0.1 < len(data.test) / (len(data.train) + len(data.test)) <= 0.2


@pytest.mark.data
def test_twitch_carries_sparse_numeric_and_categorical_user_features() -> None:
    data = load("twitch-ES")
    assert data.num_users == 4_648
    tags = data.user_features["tags"]
    assert tags.ndim == 2 and (tags >= 0).sum(axis=1).min() >= 1
    assert abs(float(data.user_features["views"].mean())) < 1e-4


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2\n")
    with pytest.raises(DatasetError, match=r"test\.txt: file is missing"):
        load(f"lightgcn:{tmp_path}")


def test_a_truncated_file_names_its_last_line(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2\n1 2 3\n")
    write(tmp_path / "test.txt", "0 3\n1 4")
    with pytest.raises(DatasetError, match=r"test\.txt:2: truncated"):
        load(f"lightgcn:{tmp_path}")


def test_a_malformed_line_names_the_line_and_the_token(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2\n1 2 x3\n")
    write(tmp_path / "test.txt", "0 3\n")
    with pytest.raises(DatasetError, match=r"train\.txt:2: expected an integer, got 'x3'"):
        load(f"lightgcn:{tmp_path}")


def test_a_malformed_edge_list_and_json_are_named(tmp_path: Path) -> None:
    write(tmp_path / "g" / "edges.txt", "0 1\n2\n")
    with pytest.raises(DatasetError, match=r"edges\.txt:2: expected two node ids"):
        load(f"edges:{tmp_path / 'g' / 'edges.txt'}")
    write(tmp_path / "t" / "XX_edges.csv", "from,to\n0,1\n1,2\n")
    write(tmp_path / "t" / "XX.json", '{"0": [1, 2], "1": [3')
    with pytest.raises(DatasetError, match=r"XX\.json:1: malformed JSON"):
        from export.datasets.friends import load_twitch

        load_twitch(tmp_path / "t", "XX")


def test_a_small_lightgcn_copy_loads_by_path(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2\n1 2 3\n2 0\n")
    write(tmp_path / "test.txt", "0 3\n1 0\n2 1\n")
    data = load(f"lightgcn:{tmp_path}")
    assert (data.num_users, data.num_candidates, len(data.train), len(data.test)) == (3, 4, 5, 3)
