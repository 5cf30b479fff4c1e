"""The help people read: every example parses, each form shows its usage, the rules are stated."""

from __future__ import annotations

import re

import pytest

from bot.commands import DeleteKind, ExportKind, Help
from bot.help import VERBS, help_text, usage
from bot.parser import parse, slack_escape
from tests.test_parser import U_ALL, U_EXPORT_ALL, U_EXPORT_IMAGES

TOPICS = [
    None,
    *VERBS,
    "audit verify",
    *(f"export {kind.value}" for kind in ExportKind),
    *(f"delete {kind.value}" for kind in DeleteKind),
]


@pytest.mark.parametrize("topic", TOPICS)
def test_help_help_examples_all_parse(topic: str | None) -> None:
    text = help_text(topic, command="/dsr")
    examples = re.findall(r"^  /dsr (.+)$", text, flags=re.MULTILINE)
    assert examples
    for example in examples:
        if "<" in example or "[" in example:  # a usage line, not an example
            continue
        command = parse(slack_escape(example))
        if topic is not None and " " in topic:
            assert not isinstance(command, Help)
            assert example.split()[:2] == topic.split()


@pytest.mark.parametrize("topic", [t for t in TOPICS if t is None or " " in t])
def test_help_help_of_a_form_shows_its_usage(topic: str | None) -> None:
    text = help_text(topic)
    if topic is None:
        assert all(f"/cv {line}" in text for line in usage("export").splitlines())
    else:
        assert text.startswith(f"/cv {usage(topic)}\n")


def test_help_help_states_the_rules_users_must_know() -> None:
    overview = help_text(None)
    assert "Iteration performance is deleted together with its iteration." in overview
    assert (
        "delete account and delete exports cannot be done with the Training-Key: the bot"
        " answers with the steps to do them." in overview
    )
    assert "Every deletion needs approval by a second person" in overview
    assert '--ticket <ref> and --reason "<text>"' in overview
    assert "deleted with it" in help_text("delete iteration")
    assert "deleted with its iteration" in help_text("export performance")
    assert "cannot be done with the Training-Key" in help_text("delete account")
    assert "cannot be done with the Training-Key" in help_text("delete exports")
    for kind in DeleteKind:
        assert "second person" in help_text(f"delete {kind.value}")


def test_help_help_and_usage_reject_unknown_topics() -> None:
    with pytest.raises(ValueError):
        help_text("export everything")
    with pytest.raises(ValueError):
        usage("frobnicate")


def test_help_usage_lists_forms() -> None:
    assert usage("export") == U_EXPORT_ALL
    assert usage("") == U_ALL
    assert usage("Export  Images") == U_EXPORT_IMAGES
    assert usage("status") == "status [<request-id>] [--all]"
