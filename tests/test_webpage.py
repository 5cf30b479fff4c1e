"""The pages' pure renderer: escaping, bidi marks, relative links, layout of boxes."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from bot import webpage
from bot.webpage import Box, Card, FileRef, Header, ProjectView

HOSTILE = "<script>alert(1)</script>\"><img src=x onerror=alert(1)>'\u202eevil\u2066"


class Elements(HTMLParser):
    """Every element a browser's parser would build, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("<b>&", "&lt;b&gt;&amp;"),
        ("\"quoted\" 'single'", "&quot;quoted&quot; &#x27;single&#x27;"),
        ("a\u202eb", "a&lt;U+202E&gt;b"),
        ("\u2067x\u2069", "&lt;U+2067&gt;x&lt;U+2069&gt;"),
        ("zero\u200bwidth", "zero&lt;U+200B&gt;width"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        (None, ""),
        (3.5, "3.5"),
    ],
)
def test_webpage_text_escapes_and_shows_invisible_controls(value: object, shown: str) -> None:
    assert webpage.text(value) == shown


def test_webpage_rel_keeps_package_paths_relative() -> None:
    assert webpage.rel("images/workspace/a b.png", 1) == "../images/workspace/a%20b.png"
    assert webpage.rel("index.html") == "index.html"
    assert webpage.rel("x?y#z:w") == "x%3Fy%23z%3Aw"  # never a query, fragment or scheme


def test_webpage_hostile_values_never_become_markup() -> None:
    card = Card(
        title=HOSTILE,
        subtitle=HOSTILE,
        file=FileRef("images/workspace/a.png", part=2),
        width=100,
        height=50,
        tags=(HOSTILE,),
        boxes=(Box(0.1, 0.2, 0.3, 0.4, HOSTILE), Box(float("nan"), -1.0, 5.0, 0.5, "x")),
        facts=((HOSTILE, HOSTILE),),
    )
    page = "".join(webpage.card_page(HOSTILE, HOSTILE, [card], prev=None, nxt="p2.html"))
    head = Header(HOSTILE, ((HOSTILE, HOSTILE),))
    index = "".join(webpage.index_page(head, [ProjectView(HOSTILE, "id", HOSTILE, HOSTILE)]))
    receipt = "".join(webpage.receipt_page(head, [(HOSTILE, [HOSTILE], [[HOSTILE]])], ["c"], []))
    for html in (page, index, receipt):
        elements = Elements(html).found
        assert not [t for t, _ in elements if t in ("script", "iframe", "object", "embed")]
        assert not [a for _, attrs in elements for a in attrs if a.startswith("on")]
        assert [attrs["src"] for t, attrs in elements if t == "img"] in (
            [],
            ["../images/workspace/a.png"],
        )
        assert "\u202e" not in html and "\u2066" not in html
        assert (
            'http-equiv="Content-Security-Policy"' in html
            and "default-src &#x27;none&#x27;" in html
        )
    # The boxes' geometry is formatted numbers, clamped to the image.
    styles = re.findall(r'class="box" style="([^"]*)"', page)
    assert styles[0] == "left:10.000%;top:20.000%;width:30.000%;height:40.000%"
    assert styles[1] == "left:0.000%;top:0.000%;width:100.000%;height:50.000%"
    assert "(part 2)" in page and 'src="../images/workspace/a.png"' in page


def test_webpage_receipt_pages_rows() -> None:
    head = Header("R", ())
    rows = [[str(n)] for n in range(2_001)]
    html = "".join(webpage.receipt_page(head, [], ["n"], rows, per_page=1_000))
    assert html.count('class="receipt-page"') == 3
    assert "Page 3 of 3: items 2,001 to 2,001" in html
    assert html.count("<tr><td") == 2_001
