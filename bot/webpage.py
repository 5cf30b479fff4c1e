"""HTML pages a person opens in a browser: the export package's index and the deletion receipt.

Pure: every function takes plain values (frozen dataclasses below) and yields the page as
strings, so a caller streams a page of any size to a file without holding it.

Rules every page follows (the tests open them in a real browser to prove them):
- Offline and script-free: a Content-Security-Policy meta tag (`CSP`) lets the page load
  nothing but images from its own folder tree, and no script at all; nothing needs JavaScript.
  Links and images are only package-relative paths (`rel`); no address from the service (a
  SAS link) is ever rendered.
- Every value from the service or from Slack is hostile: `text()` escapes it, and shows bidi
  controls (RTL overrides) and other invisible controls as visible `<U+202E>` marks, so a name
  cannot reorder or hide the text around it. Numbers in styles are formatted here, never
  copied from input.
- Regions are drawn as positioned boxes over the image from the normalised left/top/width/
  height (CSS percentages of the image's own box), each labelled with its tag.
- Long listings are paged by the caller (`PageLink`); a receipt is one file whose pages are
  shown one at a time with CSS `:target`, so it also works as a single Slack upload.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

# 'self' and file: both, because browsers disagree on whether a file:// page is its own origin.
CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)
RECEIPT_ROWS_PER_PAGE = 1000

_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def text(value: object) -> str:
    """Return `value` as HTML text: escaped, with invisible and bidi controls made visible."""
    shown = "" if value is None else str(value)
    shown = _INVISIBLE.sub(lambda m: f"<U+{ord(m.group(0)):04X}>", shown)
    return html.escape(shown, quote=True)


def rel(path: str, depth: int = 0) -> str:
    """Return a package-relative path as an href/src from a page `depth` folders down."""
    return "../" * depth + quote(path, safe="/._-")


def percent(value: float | None, digits: int = 1) -> str:
    """Return a fraction as a percentage for people, "-" when unknown."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:.{digits}f}%"


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """Who asked and what the package or receipt covers."""

    title: str
    rows: tuple[tuple[str, str], ...]  # (label, value); a value "" is left out


@dataclass(frozen=True)
class FileRef:
    """An image's file in the package, or why there is none."""

    name: str | None  # package path
    part: int | None = None  # shown when the package came in several parts
    rejoin: str | None = None  # the command joining a file cut into pieces
    note: str = ""  # why there is no file


@dataclass(frozen=True)
class Box:
    """A region in fractions of the image's width and height, with its label."""

    left: float
    top: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Card:
    """One image (training image or stored prediction) on a page."""

    title: str
    subtitle: str
    file: FileRef
    width: int | None
    height: int | None
    tags: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    facts: tuple[tuple[str, str], ...] = ()  # (key, value): metadata, predictions


@dataclass(frozen=True)
class PageLink:
    """A page of a long listing: its file (relative to the package) and what it holds."""

    name: str
    label: str


@dataclass(frozen=True)
class TagScore:
    name: str
    precision: float | None
    recall: float | None
    average_precision: float | None


@dataclass(frozen=True)
class IterationView:
    name: str
    id: str
    status: str
    trained_at: str
    published_as: str
    overall: TagScore | None  # name "overall"; None when there is no performance
    per_tag: tuple[TagScore, ...] = ()
    exports: tuple[tuple[str, str, str], ...] = ()  # (platform and flavor, status, file or "")


@dataclass(frozen=True)
class ProjectView:
    name: str
    id: str
    kind: str  # "Object detection", "Classification (Multilabel)"
    description: str
    iterations: tuple[IterationView, ...] = ()
    tags: tuple[tuple[str, str, str], ...] = ()  # (name, type, image count)
    image_pages: tuple[PageLink, ...] = ()
    prediction_pages: tuple[PageLink, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (package path, what it is): COCO, labels.csv


@dataclass(frozen=True)
class Section:
    """A free section of the index (notes, parts), one paragraph per line."""

    title: str
    anchor: str
    lines: tuple[str, ...] = field(default=())


# --- the page frame -------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light;--ink:#1b1f24;--muted:#57606a;--line:#d0d7de;--accent:#0b5cad}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:#fff}
header,main,nav.pager{max-width:1200px;margin:0 auto;padding:16px 24px}
header{border-bottom:1px solid var(--line)}
h1{font-size:1.6em;margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid var(--line)}
h3{margin-top:1.2em}
.v{unicode-bidi:isolate;overflow-wrap:anywhere}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:var(--muted)}.note{background:#fff8c5;padding:2px 6px;border-radius:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:16px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;overflow:hidden}
.frame{position:relative;width:100%;background:#eaeef2;border-radius:4px;overflow:hidden}
.frame img{display:block;width:100%;height:100%;object-fit:fill}
.box{position:absolute;border:2px solid #e3116c;box-shadow:0 0 0 1px #fff}
.box span{position:absolute;left:-2px;top:-2px;max-width:100%;background:#e3116c;color:#fff;
font-size:11px;line-height:1.3;padding:0 3px;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis;unicode-bidi:isolate}
.nofile{display:flex;align-items:center;justify-content:center;min-height:120px;
padding:8px;text-align:center}
.tags{margin:6px 0}.tag{display:inline-block;border:1px solid var(--line);border-radius:10px;
padding:0 8px;margin:2px 4px 2px 0;font-size:13px;unicode-bidi:isolate}
.card h3{font-size:13px;margin:6px 0 2px;font-family:ui-monospace,monospace;
overflow-wrap:anywhere}
nav.pager a,nav.toc a{margin-right:12px}
svg.bars text{font-size:11px;fill:var(--ink)}
.receipt-page{display:none}.receipt-page:target{display:block}
.pages:not(:has(.receipt-page:target)) .receipt-page:first-child{display:block}
@media print{.receipt-page{display:block!important}nav.pager{display:none}}
"""


def _frame_start(title: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en" dir="ltr"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
    )


_FRAME_END = "</body></html>\n"


def _header(head: Header) -> str:
    rows = "".join(
        f'<dt>{text(label)}</dt><dd class="v">{text(value)}</dd>'
        for label, value in head.rows
        if value
    )
    return f'<header><h1 class="v">{text(head.title)}</h1><dl class="facts">{rows}</dl></header>\n'


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f'<dt class="v">{text(k)}</dt><dd class="v">{text(v)}</dd>' for k, v in pairs)
    return f'<dl class="facts">{rows}</dl>' if rows else ""


def _table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    head = "".join(f"<th>{text(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{text(v)}</td>' if i in numeric else f'<td class="v">{text(v)}</td>'
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- the package index ----------------------------------------------------------------------


def _bars(scores: Sequence[TagScore]) -> str:
    """An inline SVG bar chart: precision, recall and AP per tag, as fractions of the width."""
    if not scores:
        return ""
    label_w, bar_w, row_h = 180, 300, 16
    colours = (("precision", "#0b5cad"), ("recall", "#1a7f37"), ("AP", "#bf8700"))
    height = len(scores) * (row_h * 3 + 10) + 24
    out = [
        f'<svg class="bars" role="img" width="{label_w + bar_w + 70}" height="{height}" '
        f'viewBox="0 0 {label_w + bar_w + 70} {height}" xmlns="http://www.w3.org/2000/svg">',
        "<title>Precision, recall and average precision per tag</title>",
    ]
    for i, (name, colour) in enumerate(colours):
        out.append(
            f'<rect x="{label_w + i * 100}" y="2" width="10" height="10" fill="{colour}"/>'
            f'<text x="{label_w + i * 100 + 14}" y="11">{name}</text>'
        )
    y = 24
    for score in scores:
        name = score.name if len(score.name) <= 28 else score.name[:27] + "\u2026"
        out.append(f'<text x="0" y="{y + row_h * 1.5 + 4:.0f}">{text(name)}</text>')
        values = (score.precision, score.recall, score.average_precision)
        for value, (_, colour) in zip(values, colours, strict=True):
            width = _fraction(value or 0.0) * bar_w
            out.append(
                f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{row_h - 3}" '
                f'fill="{colour}"/><text x="{label_w + width + 4:.1f}" y="{y + row_h - 5}">'
                f"{percent(value)}</text>"
            )
            y += row_h
        y += 10
    out.append("</svg>")
    return "".join(out)


def _iteration(it: IterationView) -> str:
    parts = [
        f'<h4 class="v">{text(it.name)} <span class="muted">{text(it.id)}</span></h4>',
        _facts(
            (k, v)
            for k, v in (
                ("Status", it.status),
                ("Trained", it.trained_at),
                ("Published as", it.published_as),
            )
            if v
        ),
    ]
    if it.overall is None:
        parts.append('<p class="muted">This package holds no performance report for it.</p>')
    else:
        rows = [
            (s.name, percent(s.precision), percent(s.recall), percent(s.average_precision))
            for s in (it.overall, *it.per_tag)
        ]
        parts.append(_table(("Tag", "Precision", "Recall", "AP"), rows, numeric=(1, 2, 3)))
        parts.append(_bars(it.per_tag))
    if it.exports:
        parts.append(_table(("Exported model", "Status", "File in this package"), it.exports))
    return "".join(parts)


def _links(pages: Sequence[PageLink]) -> str:
    items = "".join(f'<li><a href="{rel(p.name)}">{text(p.label)}</a></li>' for p in pages)
    return f"<ul>{items}</ul>"


def _project(n: int, p: ProjectView) -> str:
    out = [
        f'<section id="project-{n}"><h2 class="v">Project {text(p.name)}</h2>',
        _facts(
            (k, v) for k, v in (("Id", p.id), ("Type", p.kind), ("Description", p.description)) if v
        ),
    ]
    if p.iterations:
        out.append(f'<h3 id="project-{n}-iterations">Iterations and their performance</h3>')
        out.extend(_iteration(it) for it in p.iterations)
    if p.tags:
        out.append(f'<h3 id="project-{n}-tags">Tags</h3>')
        out.append(_table(("Tag", "Type", "Images"), p.tags, numeric=(2,)))
    if p.image_pages:
        out.append(f'<h3 id="project-{n}-images">Images</h3>')
        out.append(_links(p.image_pages))
    if p.prediction_pages:
        out.append(f'<h3 id="project-{n}-predictions">Stored predictions</h3>')
        out.append(_links(p.prediction_pages))
    if p.files:
        out.append(f'<h3 id="project-{n}-files">Annotations for other tools</h3>')
        items = "".join(
            f'<li><a href="{rel(name)}">{text(name)}</a>: {text(what)}</li>'
            for name, what in p.files
        )
        out.append(f"<ul>{items}</ul>")
    out.append("</section>\n")
    return "".join(out)


def index_page(
    head: Header, projects: Sequence[ProjectView], sections: Sequence[Section] = ()
) -> Iterator[str]:
    """Yield index.html: the request, a table of contents, then each project and section."""
    yield _frame_start(head.title)
    yield _header(head)
    toc = ['<main>\n<nav class="toc"><h2>Contents</h2><ul>']
    for n, p in enumerate(projects, 1):
        toc.append(f'<li><a href="#project-{n}" class="v">Project {text(p.name)}</a><ul>')
        for anchor, label, present in (
            ("iterations", "Iterations and performance", p.iterations),
            ("tags", "Tags", p.tags),
            ("images", "Images", p.image_pages),
            ("predictions", "Stored predictions", p.prediction_pages),
            ("files", "Annotations for other tools", p.files),
        ):
            if present:
                toc.append(f'<li><a href="#project-{n}-{anchor}">{label}</a></li>')
        toc.append("</ul></li>")
    for s in sections:
        toc.append(f'<li><a href="#{text(s.anchor)}">{text(s.title)}</a></li>')
    toc.append("</ul></nav>\n")
    yield "".join(toc)
    for n, p in enumerate(projects, 1):
        yield _project(n, p)
    for s in sections:
        body = "".join(f'<p class="v">{text(line)}</p>' for line in s.lines)
        yield f'<section id="{text(s.anchor)}"><h2>{text(s.title)}</h2>{body}</section>\n'
    yield "</main>\n" + _FRAME_END


def _pager(prev: str | None, nxt: str | None, index: str, where: str) -> str:
    links = [f'<a href="{index}">Index</a>']
    if prev:
        links.append(f'<a href="{prev}" rel="prev">Previous page</a>')
    if nxt:
        links.append(f'<a href="{nxt}" rel="next">Next page</a>')
    return f'<nav class="pager">{"".join(links)}<span class="muted">{text(where)}</span></nav>\n'


def card_html(card: Card, depth: int = 1) -> str:
    """Return one card as HTML, for a page `depth` folders down (`card_page`, `cards_page`)."""
    f = card.file
    ratio = ""
    if card.width and card.height and card.width > 0 and card.height > 0:
        ratio = f' style="aspect-ratio:{int(card.width)} / {int(card.height)}"'
    if f.name is not None and f.rejoin is None:
        boxes = "".join(
            f'<div class="box" style="left:{_fraction(b.left) * 100:.3f}%;'
            f"top:{_fraction(b.top) * 100:.3f}%;"
            f"width:{_fraction(b.width) * 100:.3f}%;"
            f'height:{_fraction(b.height) * 100:.3f}%" title="{text(b.label)}">'
            f"<span>{text(b.label)}</span></div>"
            for b in card.boxes
        )
        alt = f"Image {card.title}" + (f" (in part {f.part})" if f.part else "")
        picture = (
            f'<div class="frame"{ratio}><img src="{rel(f.name, depth)}" alt="{text(alt)}" '
            f'loading="lazy" decoding="async">{boxes}</div>'
        )
    else:
        picture = f'<div class="frame nofile"><span class="note">{text(f.note)}</span></div>'
    where = ""
    if f.name is not None:
        where = f'<a href="{rel(f.name, depth)}">{text(f.name)}</a>'
        if f.part:
            where += f" (part {f.part})"
        if f.rejoin:
            where += f'<br><span class="note">Cut into pieces: {text(f.rejoin)}</span>'
        where = f'<div class="muted v">{where}</div>'
    tags = "".join(f'<span class="tag">{text(t)}</span>' for t in card.tags)
    size = f"{card.width}\u00d7{card.height} px" if card.width and card.height else ""
    return (
        f'<article class="card"><h3>{text(card.title)}</h3>'
        f'<div class="muted v">{text(card.subtitle)}{" · " + text(size) if size else ""}</div>'
        f'{picture}<div class="tags">{tags}</div>{_facts(card.facts)}{where}</article>\n'
    )


def card_page(
    title: str,
    where: str,
    cards: Iterable[Card],
    *,
    prev: str | None,
    nxt: str | None,
    depth: int = 1,
) -> Iterator[str]:
    """Yield one page of image cards; `prev`/`nxt` are sibling page names, `depth` folders."""
    rendered = (card_html(card, depth) for card in cards)
    return cards_page(title, where, rendered, prev=prev, nxt=nxt, depth=depth)


def cards_page(
    title: str,
    where: str,
    cards: Iterable[str],
    *,
    prev: str | None,
    nxt: str | None,
    depth: int = 1,
) -> Iterator[str]:
    """Yield one page around cards already rendered by `card_html` (for the same `depth`)."""
    index = rel("index.html", depth)
    yield _frame_start(title)
    yield f'<header><h1 class="v">{text(title)}</h1></header>\n'
    yield _pager(prev, nxt, index, where)
    yield '<main><div class="grid">\n'
    yield from cards
    yield "</div></main>\n"
    yield _pager(prev, nxt, index, where)
    yield _FRAME_END


# --- the deletion receipt -------------------------------------------------------------------


def receipt_page(
    head: Header,
    summaries: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    per_page: int = RECEIPT_ROWS_PER_PAGE,
) -> Iterator[str]:
    """Yield receipt.html: the header, summary tables (title, columns, rows), every item paged.

    The pages live in one file: page 1 shows by default, the pager's links show the others
    (CSS :target, no script), and printing shows every page.
    """
    yield _frame_start(head.title)
    yield _header(head)
    yield "<main>\n"
    for title, cols, body in summaries:
        yield f"<h2>{text(title)}</h2>" + _table(cols, body) + "\n"
    pages = max(1, math.ceil(len(rows) / per_page))
    yield f"<h2>Every item ({len(rows):,})</h2>\n"
    if pages > 1:
        links = "".join(f'<a href="#page-{n}">{n}</a> ' for n in range(1, pages + 1))
        yield f'<nav class="pager">Pages of {per_page:,} items: {links}</nav>\n'
    yield '<div class="pages">'
    for n in range(pages):
        chunk = rows[n * per_page : (n + 1) * per_page]
        first = n * per_page + 1
        yield (
            f'<section class="receipt-page" id="page-{n + 1}"><h3>Page {n + 1} of {pages}: '
            f"items {first:,} to {first + len(chunk) - 1:,}</h3>"
        )
        yield _table(columns, chunk)
        yield "</section>\n"
    yield "</div></main>\n" + _FRAME_END
