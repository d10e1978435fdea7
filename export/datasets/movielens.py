"""MovieLens 100K: every rating is an interaction; users carry demographics, movies carry genres and decade.

Split: the official fold `u<fold>.base` / `u<fold>.test` (GroupLens' random 80/20 split of the ratings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.datasets.parsing import DatasetError, ints, lines
from export.interactions import USER_ID, InteractionData, bag_field, padded_bags
from index.manifest import FeatureField, FeatureSpec

AGE_EDGES = (18, 25, 35, 45, 50, 56)
FIRST_DECADE, DECADES = 1920, 8
GENRES = 19


def _ratings(path: Path, num_users: int, num_items: int) -> np.ndarray:
    pairs = []
    for number, row in lines(path):
        user, item, _rating, _time = ints(path, number, row.split("\t"), count=4, minimum=1)
        if user > num_users or item > num_items:
            raise DatasetError(f"{path}:{number}: user {user} or movie {item} is not in u.user / u.item")
        pairs.append((user - 1, item - 1))
    return np.asarray(pairs, dtype=np.int64)


def _users(path: Path, occupations: dict[str, int]) -> dict[str, np.ndarray]:
    ages: list[int] = []
    genders: list[int] = []
    jobs: list[int] = []
    regions: list[int] = []
    for number, row in lines(path):
        tokens = row.split("|")
        if len(tokens) != 5:
            raise DatasetError(f"{path}:{number}: expected 5 fields, got {len(tokens)}")
        (user, age) = ints(path, number, tokens[:2], minimum=1)
        if user != len(ages) + 1:
            raise DatasetError(f"{path}:{number}: expected user {len(ages) + 1}, got {user}")
        if tokens[2] not in ("M", "F") or tokens[3] not in occupations:
            raise DatasetError(f"{path}:{number}: unknown gender {tokens[2]!r} or occupation {tokens[3]!r}")
        ages.append(age)
        genders.append(int(tokens[2] == "F"))
        jobs.append(occupations[tokens[3]])
        regions.append(int(tokens[4][0]) if tokens[4][:1].isdigit() else 10)
    years = np.asarray(ages, dtype=np.float32)
    return {
        "age": ((years - years.mean()) / years.std()).astype(np.float32),
        "age_group": np.asarray(np.searchsorted(AGE_EDGES, years, side="right"), dtype=np.int64),
        "gender": np.asarray(genders, dtype=np.int64),
        "occupation": np.asarray(jobs, dtype=np.int64),
        "zip_region": np.asarray(regions, dtype=np.int64),
    }


def _movies(path: Path) -> dict[str, np.ndarray]:
    genres: list[list[int]] = []
    decades = []
    for number, row in lines(path, encoding="latin-1"):
        tokens = row.split("|")
        if len(tokens) != 5 + GENRES:
            raise DatasetError(f"{path}:{number}: expected {5 + GENRES} fields, got {len(tokens)}")
        (item,) = ints(path, number, tokens[:1], minimum=1)
        if item != len(genres) + 1:
            raise DatasetError(f"{path}:{number}: expected movie {len(genres) + 1}, got {item}")
        flags = ints(path, number, tokens[5:])
        genres.append([g for g, flag in enumerate(flags) if flag])
        year = tokens[2][-4:]
        decade = (int(year) - FIRST_DECADE) // 10 if year.isdigit() else DECADES
        decades.append(min(max(decade, 0), DECADES))
    return {"genres": padded_bags(genres), "decade": np.asarray(decades, dtype=np.int64)}


def load_movielens(root: Path, fold: str = "1", max_history: int = 256) -> InteractionData:
    occupations = {row: i for i, (_, row) in enumerate(lines(root / "u.occupation"))}
    users = _users(root / "u.user", occupations)
    movies = _movies(root / "u.item")
    num_users, num_items = len(users["age"]), len(movies["decade"])
    train = _ratings(root / f"u{fold}.base", num_users, num_items)
    test = _ratings(root / f"u{fold}.test", num_users, num_items)
    users[USER_ID] = np.arange(num_users, dtype=np.int64)
    spec = FeatureSpec(
        fields=(
            FeatureField(name=USER_ID, kind="categorical", dtype="int64", vocab_size=num_users, optional=True),
            FeatureField(name="age", kind="numeric", dtype="float32", optional=True),
            FeatureField(name="age_group", kind="categorical", dtype="int64", vocab_size=len(AGE_EDGES) + 1),
            FeatureField(name="gender", kind="categorical", dtype="int64", vocab_size=2),
            FeatureField(name="occupation", kind="categorical", dtype="int64", vocab_size=len(occupations)),
            FeatureField(name="zip_region", kind="categorical", dtype="int64", vocab_size=11, optional=True),
            bag_field("history", num_items, max_history),
        )
    )
    candidate_spec = FeatureSpec(
        fields=(
            FeatureField(name="genres", kind="sequence", dtype="int64", vocab_size=GENRES, max_length=GENRES),
            FeatureField(name="decade", kind="categorical", dtype="int64", vocab_size=DECADES),
        )
    )
    return InteractionData(
        name=root.name,
        num_users=num_users,
        num_candidates=num_items,
        user_features=users,
        train=train,
        test=test,
        feature_spec=spec,
        candidate_features=movies,
        candidate_spec=candidate_spec,
        split=f"the official fold u{fold}.base / u{fold}.test (random 80/20 of the ratings)",
    )
