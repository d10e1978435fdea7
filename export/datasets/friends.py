"""Friendship graphs as friend recommendation: candidates are users, a user's request carries its friends.

Split: each undirected edge is held out whole with the per-node quota of 20% of a node's edges (seeded,
independent of the training seed), every node keeping at least one train edge (`split_edges`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from export.datasets.parsing import DatasetError, ints, lines, load_json
from export.interactions import USER_ID, InteractionData, bag_field, padded_bags, split_edges
from index.manifest import FeatureField, FeatureSpec

TEST_SHARE = 0.2
SPLIT_SEED = 0


def read_edge_list(path: Path, separator: str | None = None, header: bool = False) -> np.ndarray:
    """`u v` per line (whitespace by default); extra columns are ignored."""
    pairs = []
    for number, row in lines(path, header=header):
        tokens = row.split(separator)
        if len(tokens) < 2:
            raise DatasetError(f"{path}:{number}: expected two node ids, got {row!r}")
        pairs.append(ints(path, number, tokens[:2]))
    if not pairs:
        raise DatasetError(f"{path}: no edges")
    return np.asarray(pairs, dtype=np.int64)


def _undirected(edges: np.ndarray) -> np.ndarray:
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(np.sort(edges, axis=1), axis=0)


def friend_data(
    name: str,
    edges: np.ndarray,
    num_nodes: int,
    features: dict[str, np.ndarray],
    feature_fields: Iterable[FeatureField],
    max_friends: int = 256,
) -> InteractionData:
    train, test = split_edges(_undirected(edges), num_nodes, TEST_SHARE, np.random.default_rng(SPLIT_SEED))
    spec = FeatureSpec(
        fields=(
            FeatureField(name=USER_ID, kind="categorical", dtype="int64", vocab_size=num_nodes, optional=True),
            *feature_fields,
            bag_field("friends", num_nodes, max_friends),
        )
    )
    return InteractionData(
        name=name,
        num_users=num_nodes,
        num_candidates=num_nodes,
        user_features={USER_ID: np.arange(num_nodes, dtype=np.int64), **features},
        train=train,
        test=test,
        feature_spec=spec,
        history_fields=("friends",),
        candidates_are_users=True,
        split=f"{TEST_SHARE:.0%} of each user's undirected edges held out whole (seed {SPLIT_SEED})",
    )


def load_edges(path: Path, name: str | None = None) -> InteractionData:
    """A plain edge list (SNAP style, e.g. ego-Facebook's `facebook_combined.txt`), node ids remapped densely."""
    edges = read_edge_list(path)
    nodes, dense = np.unique(edges, return_inverse=True)
    return friend_data(name or path.parent.name, dense.reshape(-1, 2), len(nodes), {}, ())


def load_twitch(root: Path, language: str = "ENGB") -> InteractionData:
    """MUSAE Twitch: `<C>_edges.csv`, sparse binary features in `<C>.json`, attributes in `<C>_target.csv`."""
    edges = read_edge_list(root / f"{language}_edges.csv", separator=",", header=True)
    path = root / f"{language}.json"
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}:1: expected an object of node id → feature ids")
    num_nodes = max(int(edges.max()) + 1, len(raw))
    bags: list[list[int]] = [[] for _ in range(num_nodes)]
    for key, values in raw.items():
        if not key.isdigit() or int(key) >= num_nodes or not isinstance(values, list):
            raise DatasetError(f"{path}:1: bad entry for node {key!r}")
        if not all(isinstance(v, int) and v >= 0 for v in values):
            raise DatasetError(f"{path}:1: node {key} has a feature id that is not a non-negative integer")
        bags[int(key)] = values
    tags = padded_bags(bags)
    vocab = int(tags.max()) + 1
    days, views = np.zeros(num_nodes, np.float32), np.zeros(num_nodes, np.float32)
    mature, partner = np.full(num_nodes, 2, np.int64), np.full(num_nodes, 2, np.int64)
    target = root / f"{language}_target.csv"
    for number, row in lines(target, header=True):
        tokens = row.split(",")
        if len(tokens) != 6 or tokens[2] not in ("True", "False") or tokens[4] not in ("True", "False"):
            raise DatasetError(f"{target}:{number}: expected id,days,mature,views,partner,new_id, got {row!r}")
        _, day_count, view_count, node = ints(target, number, [tokens[0], tokens[1], tokens[3], tokens[5]])
        if node < num_nodes:
            days[node], views[node] = np.log1p(day_count), np.log1p(view_count)
            mature[node], partner[node] = int(tokens[2] == "True"), int(tokens[4] == "True")
    features = {
        "tags": tags,
        "days": _standardised(days),
        "views": _standardised(views),
        "mature": mature,
        "partner": partner,
    }
    fields = (
        FeatureField(name="tags", kind="sequence", dtype="int64", vocab_size=vocab, max_length=tags.shape[1]),
        FeatureField(name="days", kind="numeric", dtype="float32", optional=True),
        FeatureField(name="views", kind="numeric", dtype="float32", optional=True),
        FeatureField(name="mature", kind="categorical", dtype="int64", vocab_size=2, optional=True),
        FeatureField(name="partner", kind="categorical", dtype="int64", vocab_size=2, optional=True),
    )
    return friend_data(f"twitch-{language}", edges, num_nodes, features, fields)


def load_lastfm(root: Path, top_artists: int = 50) -> InteractionData:
    """HetRec Last.fm: `user_friends.dat` friendships; each user's most played artists are a sparse feature."""
    friends = read_edge_list(root / "user_friends.dat", separator="\t", header=True)
    path = root / "user_artists.dat"
    plays = np.asarray([ints(path, n, row.split("\t"), count=3) for n, row in lines(path, header=True)])
    users, dense = np.unique(np.concatenate([friends.ravel(), plays[:, 0]]), return_inverse=True)
    edges = dense[: friends.size].reshape(-1, 2)
    listener = dense[friends.size :]
    artists, artist = np.unique(plays[:, 1], return_inverse=True)
    order = np.lexsort((-plays[:, 2], listener))
    bags: list[list[int]] = [[] for _ in range(len(users))]
    for row in order:
        bag = bags[listener[row]]
        if len(bag) < top_artists:
            bag.append(int(artist[row]))
    fields = (bag_field("artists", len(artists), top_artists),)
    return friend_data(root.name, edges, len(users), {"artists": padded_bags(bags)}, fields)


def _standardised(values: np.ndarray) -> np.ndarray:
    return ((values - values.mean()) / max(float(values.std()), 1e-6)).astype(np.float32)
