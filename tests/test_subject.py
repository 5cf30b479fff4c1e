"""The data-subject selectors: the `$filter` they become, and the answer to `find`. Pure."""

from __future__ import annotations

import pytest

from bot.commands import Export, Find, Selectors
from bot.parser import load_export, parse
from bot.subject import FindResult, ImageSet, Place, ProjectFind, describe_find, metadata_filter

P = "6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
IT = "7d2e3f40-5a6b-4c7d-9e8f-a0b1c2d3e4f5"


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], None),
        ([("customer", "4711")], "customer eq '4711'"),
        ([("name", "O'Brien")], "name eq 'O''Brien'"),
        ([("name", "''")], "name eq ''''''"),
        ([("a", "1"), ("b", "x and y eq 'z'")], "a eq '1' and b eq 'x and y eq ''z'''"),
    ],
)
def test_subject_metadata_filter_quotes_as_odata(
    pairs: list[tuple[str, str]], expected: str | None
) -> None:
    assert metadata_filter(pairs) == expected


@pytest.mark.parametrize(
    ("text", "selectors"),
    [
        ("find --metadata customer=4711", Selectors((("customer", "4711"),))),
        ("find --metadata=k=a=b", Selectors((("k", "a=b"),))),
        ("find --metadata k=1 --metadata k=1", Selectors((("k", "1"),))),
        (
            'find --tag-name "Jane Doe" --tag-name "jane doe" --tag-name J',
            Selectors((), ("Jane Doe", "J")),
        ),
        (
            f"find --tag-name x --project {P.upper()} --project {P}",
            Selectors((), ("x",), (P,)),
        ),
        ('find --metadata "name=O\'Brien"', Selectors((("name", "O'Brien"),))),
        (
            "find --tag-name x --resource DEV --resource main --resource dev",
            Selectors((), ("x",), resources=("dev", "main")),
        ),
    ],
)
def test_subject_parse_selectors(text: str, selectors: Selectors) -> None:
    assert parse(text) == Find(selectors)


@pytest.mark.parametrize(
    "text",
    [
        "find --tag-name x --resource dev",
        f"export subject --metadata k=v --resource dev --resource eu_2 --project {P} --ticket T",
        "export subject --metadata k=v --no-files",
    ],
)
def test_subject_resources_are_stored_and_read_back(text: str) -> None:
    command = parse(text)
    if isinstance(command, Find):
        assert command.selectors.resources == ("dev",)
        assert command.selectors.describe() == 'tag named "x" on resource dev'
        return
    assert isinstance(command, Export)
    assert command.resource is None, "a subject's --resource narrows the search, not a project"
    assert load_export(command.to_dict()) == command


def test_subject_parse_refuses_a_malformed_resource_name() -> None:
    with pytest.raises(ValueError, match="'no way' is not a resource name"):
        parse("find --tag-name x --resource 'no way'")


def test_subject_parse_refuses_more_pairs_than_an_image_can_hold() -> None:
    text = "find " + " ".join(f"--metadata k{n}=v" for n in range(11))
    with pytest.raises(ValueError, match="11 --metadata pairs: an image has at most 10"):
        parse(text)


def test_subject_describe_find_counts_only_and_reports_failures() -> None:
    result = FindResult(
        Selectors((("customer", "4711"),)),
        (
            ProjectFind(
                Place("default", P, "Faces"),
                (ImageSet(None, None, None, 0, ()), ImageSet(IT, "Iteration 1", None, 1, ())),
            ),
            ProjectFind(Place("default", IT, "Gone"), problem="project not found"),
        ),
    )
    assert describe_find(result) == "\n".join(
        [
            "Found images in 1 project (0 images in the workspaces); 1 project and 1 trained"
            " iteration searched for metadata customer=4711:",
            '- *Faces* (6c1f2a3b…): iteration "Iteration 1": 1 image',
            "  (only trained iterations still hold them)",
            "Could not search *Gone* (7d2e3f40…): project not found",
            "These counts are incomplete: run the same find again to retry.",
            "Nothing was changed.",
        ]
    )
