"""The wording people read: one style for counts, plurals, lists, sizes and short ids."""

from __future__ import annotations

import pytest

from bot.wording import count, describe_counts, human_size, join_words, plural, short_id, short_ids

G1 = "6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
G2 = "7d2e3f40-5a6b-4c7d-9e8f-a0b1c2d3e4f5"


@pytest.mark.parametrize(
    ("n", "one", "many", "text"),
    [
        (0, "image", None, "0 images"),
        (1, "image", None, "1 image"),
        (2, "image", None, "2 images"),
        (1200, "image", None, "1,200 images"),
        (1, "stored prediction", "stored predictions", "1 stored prediction"),
        (3, "file no longer available", "files no longer available", "3 files no longer available"),
        (-1, "day", None, "-1 days"),
    ],
)
def test_wording_count_agrees_and_separates_thousands(
    n: int, one: str, many: str | None, text: str
) -> None:
    assert count(n, one, many) == text
    assert plural(n, one, many) == text.split(" ", 1)[1]


@pytest.mark.parametrize(
    ("words", "text"),
    [
        ([], ""),
        (["a"], "a"),
        (["a", "b"], "a and b"),
        (["a", "b", "c"], "a, b and c"),
        (
            ["1 image", "2 tags", "3 iterations", "4 projects"],
            "1 image, 2 tags, 3 iterations and 4 projects",
        ),
    ],
)
def test_wording_lists_read_a_b_and_c(words: list[str], text: str) -> None:
    assert join_words(words) == text
    assert join_words(iter(words)) == text


NOUNS = {"project": ("project", "projects"), "image": ("image", "images"), "tag": ("tag", "tags")}


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({}, "nothing"),
        ({"image": 0, "tag": 0}, "nothing"),
        ({"image": 1}, "1 image"),
        ({"tag": 4, "image": 240, "project": 1}, "1 project, 240 images and 4 tags"),
        ({"image": 2, "colour": 9}, "2 images"),
        ({"image": 12345, "tag": 1}, "12,345 images and 1 tag"),
    ],
)
def test_wording_describe_counts_in_the_nouns_order(counts: dict[str, int], text: str) -> None:
    assert describe_counts(counts, NOUNS) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1,023 bytes"),
        (1024, "1.0 KB"),
        (1536, "1.5 KB"),
        (5 << 20, "5.0 MB"),
        (3 << 30, "3.0 GB"),
        (5 << 40, "5120.0 GB"),
    ],
)
def test_wording_human_size_reads_as_people_write_it(size: int, text: str) -> None:
    assert human_size(size) == text


def test_wording_short_ids() -> None:
    assert short_id(G1) == "6c1f2a3b\u2026"
    assert short_id(None) == "?\u2026"
    assert short_ids([G1]) == "6c1f2a3b\u2026"
    assert short_ids([G1, G2]) == "6c1f2a3b\u2026 and 7d2e3f40\u2026"
    assert short_ids([G1, G2, G1]) == "6c1f2a3b\u2026, 7d2e3f40\u2026 and 6c1f2a3b\u2026"
    assert short_ids([G1] * 1005) == (
        "6c1f2a3b\u2026, 6c1f2a3b\u2026, 6c1f2a3b\u2026 and 1,002 more"
    )
    assert short_ids([G1, G2], shown=1) == "6c1f2a3b\u2026 and 1 more"
