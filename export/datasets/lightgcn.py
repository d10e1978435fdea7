"""The LightGCN/NGCF benchmark format: `train.txt` and `test.txt`, one line `user item item ...` per user.

Split: the files' own (the authors' 80/20 per-user split of a 10-core dataset); nothing is re-split here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.datasets.parsing import DatasetError, ints, lines
from export.interactions import USER_ID, InteractionData, bag_field
from index.manifest import FeatureField, FeatureSpec


def read_user_lines(path: Path) -> np.ndarray:
    pairs: list[np.ndarray] = []
    for number, row in lines(path):
        values = ints(path, number, row.split())
        if len(values) > 1:
            pairs.append(np.stack([np.full(len(values) - 1, values[0]), values[1:]], axis=1))
    if not pairs:
        raise DatasetError(f"{path}: no interactions")
    return np.concatenate(pairs).astype(np.int64)


def load_lightgcn(root: Path, name: str | None = None, max_history: int = 256) -> InteractionData:
    train = read_user_lines(root / "train.txt")
    test = read_user_lines(root / "test.txt")
    num_users = int(max(train[:, 0].max(), test[:, 0].max())) + 1
    num_items = int(max(train[:, 1].max(), test[:, 1].max())) + 1
    spec = FeatureSpec(
        fields=(
            FeatureField(name=USER_ID, kind="categorical", dtype="int64", vocab_size=num_users, optional=True),
            bag_field("history", num_items, max_history),
        )
    )
    return InteractionData(
        name=name or root.name,
        num_users=num_users,
        num_candidates=num_items,
        user_features={USER_ID: np.arange(num_users, dtype=np.int64)},
        train=train,
        test=test,
        feature_spec=spec,
        split="the files' own train/test split (LightGCN protocol)",
    )
