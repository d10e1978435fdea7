from __future__ import annotations

from datetime import UTC, datetime

import pytest

from index.versions import check_version, is_newer, new_version, version_key


def test_a_numeric_suffix_compares_as_a_number() -> None:
    assert version_key("20250101T000000Z-10") > version_key("20250101T000000Z-9")
    assert is_newer("20250101T000000Z-2", "20250101T000000Z")
    assert is_newer("20250101T000001Z", "20250101T000000Z-7")
    assert not is_newer("20250101T000000Z", "20250101T000000Z")
    assert is_newer("anything", None)


def test_new_versions_are_timestamps_with_a_suffix_when_a_second_is_shared() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert new_version([], now) == "20250102T030405Z"
    assert new_version(["20250102T030405Z"], now) == "20250102T030405Z-2"
    assert new_version(["20250102T030405Z", "20250102T030405Z-2"], now) == "20250102T030405Z-3"


@pytest.mark.parametrize("bad", ["", ".hidden", "../up", "a/b", "x" * 200, "with space"])
def test_versions_that_could_escape_the_store_are_invalid(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid snapshot version"):
        check_version(bad)
