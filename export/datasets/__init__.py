"""Every dataset behind one interface: `load("gowalla")`, or `load("lightgcn:/some/dir")` for any copy in a format."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from export.datasets.friends import load_edges, load_lastfm, load_twitch
from export.datasets.lightgcn import load_lightgcn
from export.datasets.movielens import load_movielens
from export.datasets.parsing import DatasetError
from export.interactions import InteractionData
from export.synthetic import SyntheticConfig, generate

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loaders for a format, given the folder (or, for an edge list, the file) that holds the dataset.
FORMATS: dict[str, Callable[[Path], InteractionData]] = {
    "lightgcn": load_lightgcn,
    "movielens": load_movielens,
    "edges": load_edges,
    "twitch": load_twitch,
    "lastfm": load_lastfm,
}

# The named datasets in the shared data folder: (format, path inside it).
NAMED: dict[str, tuple[str, str]] = {
    "gowalla": ("lightgcn", "gowalla"),
    "ml-100k": ("movielens", "ml-100k"),
    "twitch": ("twitch", "twitch"),
    "ego-facebook": ("edges", "ego-facebook/facebook_combined.txt"),
    "lastfm-friends": ("lastfm", "hetrec2011-lastfm-2k"),
}
TWITCH_LANGUAGES = ("ENGB", "ES", "FR", "PTBR", "RU", "ZHTW")


def data_dir() -> Path:
    configured = os.environ.get("EBR_DATA_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def load(name: str) -> InteractionData:
    """A named dataset (`gowalla`, `ml-100k`, `twitch[-LANG]`, `ego-facebook`, `lastfm-friends`, `synthetic`)
    or `<format>:<path>` with a format from FORMATS."""
    if name == "synthetic":
        return generate(SyntheticConfig())
    if ":" in name:
        kind, path = name.split(":", 1)
        if kind not in FORMATS:
            raise DatasetError(f"unknown format {kind!r}; known: {', '.join(FORMATS)}")
        return FORMATS[kind](Path(path))
    if name.startswith("twitch-"):
        language = name.removeprefix("twitch-").upper()
        if language not in TWITCH_LANGUAGES:
            raise DatasetError(f"unknown Twitch graph {language!r}; known: {', '.join(TWITCH_LANGUAGES)}")
        return load_twitch(data_dir() / "twitch", language)
    if name not in NAMED:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join([*NAMED, 'synthetic'])}")
    kind, path = NAMED[name]
    return FORMATS[kind](data_dir() / path)
