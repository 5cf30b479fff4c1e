"""The /cv parser: every form, every error with its exact text, Slack's encoding, `quote`."""

from __future__ import annotations

from datetime import date

import pytest

from bot.commands import (
    AuditExport,
    AuditVerify,
    Cancel,
    Command,
    Delete,
    DeleteKind,
    Export,
    ExportKind,
    Extend,
    Help,
    Meta,
    Report,
    Resend,
    Retry,
    Status,
)
from bot.errors import BotError, ParseError
from bot.parser import parse, quote, slack_escape

P = "6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
I = "7d2e3f40-5a6b-4c7d-9e8f-a0b1c2d3e4f5"  # noqa: E741
T = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f506"
T2 = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f507"
M1 = "9f405162-7c8d-4e9f-b0a1-c2d3e4f50617"
M2 = "a0516273-8d9e-4fa0-b1b2-d3e4f5061728"
E = ExportKind
D = DeleteKind

RECEIVED = " [--received YYYY-MM-DD]"
U_EXPORT_PROJECT = (
    'export project <project-id> [--no-images] [--ticket <ref>] [--reason "<text>"]' + RECEIVED
)
U_EXPORT_ITERATION = (
    'export iteration <project-id> <iteration-id> [--ticket <ref>] [--reason "<text>"]' + RECEIVED
)
U_EXPORT_PERFORMANCE = (
    "export performance <project-id> <iteration-id> [--threshold F] [--overlap F]"
    ' [--ticket <ref>] [--reason "<text>"]' + RECEIVED
)
U_EXPORT_TAGS = (
    'export tags <project-id> [--iteration <iteration-id>] [--ticket <ref>] [--reason "<text>"]'
    + RECEIVED
)
U_EXPORT_IMAGES = (
    "export images <project-id> [--tagged | --untagged] [--tag <tag-id>]... [--ids <id,id,...>]"
    " [--metadata KEY=VALUE]... [--tag-name NAME]..."
    ' [--iteration <iteration-id>] [--no-files] [--ticket <ref>] [--reason "<text>"]' + RECEIVED
)
U_DELETE_IMAGES = (
    "delete images <project-id> (--ids <id,id,...> | --tag <tag-id> | --untagged | --all"
    " | [--metadata KEY=VALUE]... [--tag-name NAME]...)"
    ' [--ticket <ref>] [--reason "<text>"]' + RECEIVED
)
U_DELETE_PREDICTIONS = (
    'delete predictions <project-id> [--ids <id,id,...>] [--ticket <ref>] [--reason "<text>"]'
    + RECEIVED
)
U_DELETE_ACCOUNT = 'delete account [--ticket <ref>] [--reason "<text>"]' + RECEIVED
U_DELETE_PROJECT = 'delete project <project-id> [--ticket <ref>] [--reason "<text>"]' + RECEIVED
U_AUDIT = "audit [--request <request-id>] [--since YYYY-MM-DD] [--format csv|jsonl]"
U_HELP = "help [<verb> [<kind>]]"
U_EXTEND = 'extend <request-id> --months 1|2 --reason "<text>"'
U_REPORT = "report [--since YYYY-MM-DD] [--until YYYY-MM-DD]"
U_EXPORT_ALL = "\n".join(
    [
        "export account",
        "export projects",
        "export project <project-id> [--no-images]",
        "export iterations <project-id>",
        "export iteration <project-id> <iteration-id>",
        "export performance <project-id> <iteration-id> [--threshold F] [--overlap F]",
        "export tags <project-id> [--iteration <iteration-id>]",
        "export tag <project-id> <tag-id> [--iteration <iteration-id>]",
        "export images <project-id> [--tagged | --untagged] [--tag <tag-id>]..."
        " [--ids <id,id,...>] [--metadata KEY=VALUE]... [--tag-name NAME]..."
        " [--iteration <iteration-id>] [--no-files]",
        "export exports <project-id> <iteration-id> [--download]",
        "export predictions <project-id> [--no-files]",
        "export subject [--metadata KEY=VALUE]... [--tag-name NAME]... [--project <project-id>]..."
        " [--resource <name>]... [--no-files]",
    ]
)
U_ALL = "\n".join(
    [
        "help [<verb> [<kind>]]",
        "find [--metadata KEY=VALUE]... [--tag-name NAME]... [--project <project-id>]..."
        " [--resource <name>]...",
        "export <kind> ... (kinds: account, projects, project, iterations, iteration, performance,"
        " tags, tag, images, exports, predictions, subject)",
        "delete <kind> ... (kinds: project, iteration, iterations, tag, images, predictions,"
        " subject, account, exports)",
        "status [<request-id>] [--all]",
        "cancel <request-id>",
        "retry <request-id>",
        "resend <request-id>",
        U_EXTEND,
        U_REPORT,
        U_AUDIT,
        "audit verify",
    ]
)
KINDS_EXPORT = (
    "account, projects, project, iterations, iteration, performance, tags, tag, images, exports,"
    " predictions, subject"
)
GUID_HINT = "expected a GUID (8-4-4-4-12 hex digits)"


# --- every form ------------------------------------------------------------------------------

FORMS: list[tuple[str, Command]] = [
    ("help", Help()),
    ("", Help()),
    ("   \u00a0 ", Help()),
    ("help export", Help("export")),
    ("help export images", Help("export images")),
    ("help DELETE Account", Help("delete account")),
    ("help audit verify", Help("audit verify")),
    ("help extend", Help("extend")),
    ("report --help", Help("report")),
    ("help status", Help("status")),
    ("export account", Export(E.ACCOUNT)),
    ("export projects", Export(E.PROJECTS)),
    (f"export project {P}", Export(E.PROJECT, project_id=P)),
    (f"export project {P} --no-images", Export(E.PROJECT, project_id=P, images=False)),
    (f"export iterations {P}", Export(E.ITERATIONS, project_id=P)),
    (f"export iteration {P} {I}", Export(E.ITERATION, project_id=P, iteration_id=I)),
    (f"export performance {P} {I}", Export(E.PERFORMANCE, project_id=P, iteration_id=I)),
    (
        f"export performance {P} {I} --threshold 0.5 --overlap=.25",
        Export(E.PERFORMANCE, project_id=P, iteration_id=I, threshold=0.5, overlap=0.25),
    ),
    (
        f"export performance {P} {I} --threshold 0 --overlap 1",
        Export(E.PERFORMANCE, project_id=P, iteration_id=I, threshold=0.0, overlap=1.0),
    ),
    (f"export tags {P}", Export(E.TAGS, project_id=P)),
    (f"export tags {P} --iteration {I}", Export(E.TAGS, project_id=P, iteration_id=I)),
    (f"export tag {P} {T}", Export(E.TAG, project_id=P, tag_id=T)),
    (
        f"export tag {P} {T} --iteration {I}",
        Export(E.TAG, project_id=P, tag_id=T, iteration_id=I),
    ),
    (f"export images {P}", Export(E.IMAGES, project_id=P)),
    (f"export images {P} --tagged", Export(E.IMAGES, project_id=P, tagging="tagged")),
    (f"export images {P} --untagged", Export(E.IMAGES, project_id=P, tagging="untagged")),
    (
        f"export images {P} --tag {T} --tag {T2} --tag {T}",
        Export(E.IMAGES, project_id=P, tag_ids=(T, T2), tagging="tagged"),
    ),
    (
        f"export images {P} --tagged --tag {T}",
        Export(E.IMAGES, project_id=P, tag_ids=(T,), tagging="tagged"),
    ),
    (
        f"export images {P} --ids {M2},{M1},{M2.upper()}",
        Export(E.IMAGES, project_id=P, image_ids=(M2, M1)),
    ),
    (
        f"export images {P} --ids {M1} --iteration {I} --no-files",
        Export(E.IMAGES, project_id=P, image_ids=(M1,), iteration_id=I, files=False),
    ),
    (
        f'export images {P} --ids "{M1}, {M2}"',
        Export(E.IMAGES, project_id=P, image_ids=(M1, M2)),
    ),
    (f"export exports {P} {I}", Export(E.EXPORTS, project_id=P, iteration_id=I)),
    (
        f"export exports {P} {I} --download",
        Export(E.EXPORTS, project_id=P, iteration_id=I, download=True),
    ),
    (f"export predictions {P}", Export(E.PREDICTIONS, project_id=P)),
    (f"export predictions {P} --no-files", Export(E.PREDICTIONS, project_id=P, files=False)),
    (f"delete project {P}", Delete(D.PROJECT, project_id=P)),
    (f"delete iteration {P} {I}", Delete(D.ITERATION, project_id=P, iteration_id=I)),
    (f"delete iterations {P}", Delete(D.ITERATIONS, project_id=P)),
    (f"delete tag {P} {T}", Delete(D.TAG, project_id=P, tag_id=T)),
    (
        f"delete images {P} --ids {M1},{M2},{M1}",
        Delete(D.IMAGES, project_id=P, selector="ids", image_ids=(M1, M2)),
    ),
    (f"delete images {P} --tag {T}", Delete(D.IMAGES, project_id=P, selector="tag", tag_id=T)),
    (f"delete images {P} --untagged", Delete(D.IMAGES, project_id=P, selector="untagged")),
    (f"delete images {P} --all", Delete(D.IMAGES, project_id=P, selector="all")),
    (f"delete predictions {P}", Delete(D.PREDICTIONS, project_id=P, selector="all")),
    (
        f"delete predictions {P} --ids {M1}",
        Delete(D.PREDICTIONS, project_id=P, selector="ids", prediction_ids=(M1,)),
    ),
    ("delete account", Delete(D.ACCOUNT)),
    (f"delete exports {P} {I}", Delete(D.EXPORTS, project_id=P, iteration_id=I)),
    ("status", Status()),
    ("status R-1042", Status("R-1042")),
    ("status r-007", Status("R-7")),
    ("status --all", Status(all=True)),
    ("cancel R-12", Cancel("R-12")),
    ("retry r-3", Retry("R-3")),
    ("resend r-3", Resend("R-3")),
    ("RESEND R-1042", Resend("R-1042")),
    ("audit", AuditExport()),
    (
        "audit --request r-5 --since 2026-01-02 --format JSONL",
        AuditExport(request_id="R-5", since=date(2026, 1, 2), format="jsonl"),
    ),
    ("audit --format=csv", AuditExport(format="csv")),
    ("audit verify", AuditVerify()),
    ("AUDIT Verify", AuditVerify()),
    ('extend r-7 --months 2 --reason "14 projects"', Extend("R-7", 2, "14 projects")),
    ("EXTEND R-7 --reason=complex --months=1", Extend("R-7", 1, "complex")),
    ("report", Report()),
    (
        "report --since 2026-01-01 --until 2026-03-31",
        Report(date(2026, 1, 1), date(2026, 3, 31)),
    ),
    ("report --until 2026-03-31", Report(until=date(2026, 3, 31))),
    ("report --since 2026-03-31 --until 2026-03-31", Report(date(2026, 3, 31), date(2026, 3, 31))),
    (
        f"delete project {P} --received 2026-11-04",
        Delete(D.PROJECT, project_id=P, meta=Meta(received=date(2026, 11, 4))),
    ),
    (
        "export account --received=2028-02-29 --ticket T-1",
        Export(E.ACCOUNT, meta=Meta(ticket="T-1", received=date(2028, 2, 29))),
    ),
]


@pytest.mark.parametrize(("text", "expected"), FORMS)
def test_parser_parses_every_form(text: str, expected: Command) -> None:
    assert parse(text) == expected


META_CASES = [
    (f"export project {P} --ticket DSR-1042", Meta(ticket="DSR-1042")),
    (f'export project {P} --reason "Access request"', Meta(reason="Access request")),
    (f"export project {P} --reason=Short", Meta(reason="Short")),
    (f'export project {P} --reason="a b" --ticket=T-1', Meta(ticket="T-1", reason="a b")),
    (
        "delete account --ticket 'DSR 7' --reason 'It\u2019s the customer\u2019s wish'",
        Meta(ticket="DSR 7", reason="It\u2019s the customer\u2019s wish"),
    ),
    (
        f"export project {P} --reason \u201cuser asked\u201d",
        Meta(reason="user asked"),
    ),
    (
        f"export project {P} --reason \u2018user asked\u2019",
        Meta(reason="user asked"),
    ),
    (
        f'export project {P} --reason "she said \\"now\\" \\\\ C:\\Users"',
        Meta(reason='she said "now" \\ C:\\Users'),
    ),
    (
        f"export project {P} --reason 'single \"double\" inside'",
        Meta(reason='single "double" inside'),
    ),
    (
        f'export project {P} --reason "&lt;!channel&gt; &amp;amp; caf\u00e9 \U0001f600'
        ' \u05e9\u05dc\u05d5\u05dd"',
        Meta(reason="<!channel> &amp; caf\u00e9 \U0001f600 \u05e9\u05dc\u05d5\u05dd"),
    ),
    (
        f'export project {P} --reason "<!channel> and <@U123|bob>"',
        Meta(reason="<!channel> and <@U123|bob>"),
    ),
    (
        f"export project {P} --ticket <https://jira.example.com/browse/DSR-1>",
        Meta(ticket="https://jira.example.com/browse/DSR-1"),
    ),
    (
        f"export project {P} --ticket <https://jira.example.com/browse/DSR-1|DSR-1>",
        Meta(ticket="DSR-1"),
    ),
    (
        f'export project {P} --reason "mail from <mailto:ann@example.com|ann@example.com>"',
        Meta(reason="mail from ann@example.com"),
    ),
    (
        f"export project {P} --reason <mailto:ann@example.com>",
        Meta(reason="ann@example.com"),
    ),
    (
        f'export project {P} --reason "  line one\nline\ttwo\x07  "',
        Meta(reason="line one line two"),
    ),
    (f'export project {P} --reason "--all of it"', Meta(reason="--all of it")),
    (f"export project {P} --reason ''", None),  # empty reason: an error, below
]


@pytest.mark.parametrize(("text", "meta"), [c for c in META_CASES if c[1] is not None])
def test_parser_keeps_free_text_verbatim(text: str, meta: Meta) -> None:
    command = parse(text)
    assert isinstance(command, Export | Delete)
    assert command.meta == meta


TOKEN_CASES = [
    # case-insensitive verbs, kinds, flags; ids lowercased
    (
        f"EXPORT Images {P.upper()} --TAGGED --No-Files",
        Export(E.IMAGES, project_id=P, tagging="tagged", files=False),
    ),
    # any whitespace separates, runs collapse
    (
        f"export\u00a0images\t{P}\n\n--untagged\u2003\u200b",
        Export(E.IMAGES, project_id=P, tagging="untagged"),
    ),
    # smart punctuation: em and en dashes for --
    (
        f"export images {P} \u2014tagged \u2013no-files",
        Export(E.IMAGES, project_id=P, tagging="tagged", files=False),
    ),
    # underscores in flag names
    (f"export images {P} --no_files", Export(E.IMAGES, project_id=P, files=False)),
    # options anywhere after the verb, even before the kind
    (
        f"export --ticket T-1 images --no-files {P}",
        Export(E.IMAGES, project_id=P, files=False, meta=Meta(ticket="T-1")),
    ),
    # a pasted command name is skipped
    (f"/cv export project {P}", Export(E.PROJECT, project_id=P)),
    ("/cv", Help()),
    # quoted ids and quoted kinds are still words
    (f'export "project" "{P}"', Export(E.PROJECT, project_id=P)),
    # --help anywhere asks for the help of the form
    (f"export images {P} --help", Help("export images")),
    ("delete images --help", Help("delete images")),
    ("export account -h", Help("export account")),
    ("export --help", Help("export")),
    ("export imgs --help", Help("export")),
    ("--help", Help()),
    ("--help export", Help("export")),
    ("audit verify --help", Help("audit verify")),
]


@pytest.mark.parametrize(("text", "expected"), TOKEN_CASES)
def test_parser_tokenizes_like_slack_users_type(text: str, expected: Command) -> None:
    assert parse(text) == expected


# --- every error -----------------------------------------------------------------------------

ERRORS: list[tuple[str, str, str]] = [
    # quotes
    (
        f'export project {P} --reason "user asked',
        "unbalanced quote: the \" before 'user asked' is never closed",
        U_EXPORT_PROJECT,
    ),
    (
        f"export project {P} --reason \u201cuser asked",
        "unbalanced quote: the \u201c before 'user asked' is never closed",
        U_EXPORT_PROJECT,
    ),
    (
        f"export project {P} --reason 'it",
        "unbalanced quote: the ' before 'it' is never closed",
        U_EXPORT_PROJECT,
    ),
    ('exprot "', 'unbalanced quote: the " at the end is never closed', U_ALL),
    # verbs
    (
        f"exprot images {P}",
        "unknown command 'exprot'; did you mean 'export'?",
        U_EXPORT_IMAGES,
    ),
    ("exprot", "unknown command 'exprot'; did you mean 'export'?", U_EXPORT_ALL),
    (f"erase project {P}", "unknown command 'erase'; did you mean 'delete'?", U_DELETE_PROJECT),
    ("frobnicate", "unknown command 'frobnicate'", U_ALL),
    ("statsu", "unknown command 'statsu'; did you mean 'status'?", "status [<request-id>] [--all]"),
    ("verify", "unknown command 'verify'; did you mean 'audit verify'?", "audit verify"),
    # kinds
    ("export", f"export needs a kind: {KINDS_EXPORT}", U_EXPORT_ALL),
    (f"export imgs {P}", "unknown kind 'imgs' for export; did you mean 'images'?", U_EXPORT_IMAGES),
    (
        f"export image {P}",
        "unknown kind 'image' for export; did you mean 'images'?",
        U_EXPORT_IMAGES,
    ),
    (
        "export everything",
        f"unknown kind 'everything' for export; use one of: {KINDS_EXPORT}",
        U_EXPORT_ALL,
    ),
    (f"export {P}", f"export needs a kind before the id: {KINDS_EXPORT}", U_EXPORT_ALL),
    (
        "delete acount",
        "unknown kind 'acount' for delete; did you mean 'account'?",
        U_DELETE_ACCOUNT,
    ),
    # help topics
    ("help exprot", "no help on 'exprot'; did you mean 'export'?", U_HELP),
    (
        "help xyzzy",
        "no help on 'xyzzy'; topics: help, find, export, delete, status, cancel, retry, resend,"
        " extend, report, audit",
        U_HELP,
    ),
    ("help export imgs", "unknown kind 'imgs' for export; did you mean 'images'?", U_HELP),
    ("help status now", "unexpected argument 'now' after 'help status'", U_HELP),
    ("help export images now", "unexpected argument 'now' after 'help export images'", U_HELP),
    ("help --all", "help does not take --all", U_HELP),
    # missing ids
    (f"export iteration {P}", "export iteration needs <iteration-id>", U_EXPORT_ITERATION),
    (
        "export iteration",
        "export iteration needs <project-id> and <iteration-id>",
        U_EXPORT_ITERATION,
    ),
    ("delete project", "delete project needs <project-id>", U_DELETE_PROJECT),
    ("cancel", "cancel needs <request-id>", "cancel <request-id>"),
    ("retry", "retry needs <request-id>", "retry <request-id>"),
    ("resend", "resend needs <request-id>", "resend <request-id>"),
    (
        "resend R-x",
        "'R-x' is not a request id: expected R-<number>, like R-1042",
        "resend <request-id>",
    ),
    # malformed ids
    (
        f"export project {P[:-1]}",
        f"'{P[:-1]}' is not a valid project id: {GUID_HINT}",
        U_EXPORT_PROJECT,
    ),
    (
        f"export iteration {P} {I}x",
        f"'{I}x' is not a valid iteration id: {GUID_HINT}",
        U_EXPORT_ITERATION,
    ),
    (
        f"export project {'f' * 60}",
        f"'{'f' * 39}\u2026' is not a valid project id: {GUID_HINT}",
        U_EXPORT_PROJECT,
    ),
    (
        'export project "a\x07b\u202ec"',
        f"'a\\x07b\\u202ec' is not a valid project id: {GUID_HINT}",
        U_EXPORT_PROJECT,
    ),
    (
        f"export images tagged {P}",
        f"'tagged' is not a valid project id: {GUID_HINT}; did you mean '--tagged'?",
        U_EXPORT_IMAGES,
    ),
    (
        f"export tags {P} --iteration nope",
        f"'nope' is not a valid iteration id: {GUID_HINT}",
        U_EXPORT_TAGS,
    ),
    (
        f"export images {P} --ids {M1},nope",
        f"'nope' in --ids is not a valid image id: {GUID_HINT}",
        U_EXPORT_IMAGES,
    ),
    (
        f"delete predictions {P} --ids x",
        f"'x' in --ids is not a valid prediction id: {GUID_HINT}",
        U_DELETE_PREDICTIONS,
    ),
    (
        "status 1042",
        "'1042' is not a request id: expected R-<number>, like R-1042",
        "status [<request-id>] [--all]",
    ),
    (
        "status R-1042 --all",
        "status takes either <request-id> or --all, not both",
        "status [<request-id>] [--all]",
    ),
    (
        "audit --request x",
        "'x' is not a request id: expected R-<number>, like R-1042",
        U_AUDIT,
    ),
    # options
    (
        f"export images {P} --tgged",
        "unknown option '--tgged'; did you mean '--tagged'?",
        U_EXPORT_IMAGES,
    ),
    (
        f"export images {P} -tagged",
        "unknown option '-tagged'; did you mean '--tagged'?",
        U_EXPORT_IMAGES,
    ),
    (
        f"export images {P} --iter {I}",
        "unknown option '--iter'; did you mean '--iteration'?",
        U_EXPORT_IMAGES,
    ),
    (f"export images {P} --frobnicate", "unknown option '--frobnicate'", U_EXPORT_IMAGES),
    (f"export tags {P} --no-files", "export tags does not take --no-files", U_EXPORT_TAGS),
    (f"delete images {P} --tagged", "delete images does not take --tagged", U_DELETE_IMAGES),
    ("audit --ticket T", "audit does not take --ticket", U_AUDIT),
    (f"export project {P} --ticket", "--ticket needs a ticket reference", U_EXPORT_PROJECT),
    (f"export project {P} --ticket=", "--ticket needs a ticket reference", U_EXPORT_PROJECT),
    (
        f"export project {P} --reason --no-images",
        '--reason needs a reason (in quotes when it has spaces: --reason "...")',
        U_EXPORT_PROJECT,
    ),
    (f"export tags {P} --iteration", "--iteration needs <iteration-id>", U_EXPORT_TAGS),
    ("audit --since", "--since needs a date like 2026-01-31", U_AUDIT),
    ("audit --format", "--format needs csv or jsonl", U_AUDIT),
    (f"export project {P} --no-images=yes", "--no-images takes no value", U_EXPORT_PROJECT),
    (
        f"export project {P} --ticket A --ticket B",
        "--ticket is given more than once",
        U_EXPORT_PROJECT,
    ),
    (
        f"export tags {P} --iteration {I} --iteration {I}",
        "--iteration is given more than once",
        U_EXPORT_TAGS,
    ),
    (f"delete images {P} --tag {T} --tag {T2}", "--tag is given more than once", U_DELETE_IMAGES),
    (
        f"export images {P} --ids {M1} --ids {M2}",
        "--ids is given more than once",
        U_EXPORT_IMAGES,
    ),
    # conflicts
    (
        f"export images {P} --tagged --untagged",
        "--tagged and --untagged cannot be used together",
        U_EXPORT_IMAGES,
    ),
    (
        f"export images {P} --untagged --tag {T}",
        "--tag and --untagged cannot be used together",
        U_EXPORT_IMAGES,
    ),
    (
        f"export images {P} --ids {M1} --tagged",
        "--ids and --tagged cannot be used together",
        U_EXPORT_IMAGES,
    ),
    (
        f"export images {P} --tag {T} --ids {M1}",
        "--ids and --tag cannot be used together",
        U_EXPORT_IMAGES,
    ),
    (
        f"delete images {P}",
        "delete images needs one of --ids, --tag, --untagged, --all or --metadata/--tag-name",
        U_DELETE_IMAGES,
    ),
    (
        f"delete images {P} --all --untagged",
        "delete images takes only one of --ids, --tag, --untagged, --all or --metadata/--tag-name"
        " (got --untagged and --all)",
        U_DELETE_IMAGES,
    ),
    # --ids lists
    (f"export images {P} --ids ,", "--ids needs at least one image id", U_EXPORT_IMAGES),
    (f'export images {P} --ids ""', "--ids needs at least one image id", U_EXPORT_IMAGES),
    # extra arguments
    (
        f"export project {P} {I}",
        f"unexpected argument '{I}' (export project takes <project-id>)",
        U_EXPORT_PROJECT,
    ),
    (
        f"delete images {P} --ids {M1}, {M2}",
        f"unexpected argument '{M2}' (delete images takes <project-id>);"
        " write --ids without spaces after the commas",
        U_DELETE_IMAGES,
    ),
    (
        "delete account now",
        "unexpected argument 'now' (delete account takes no arguments)",
        U_DELETE_ACCOUNT,
    ),
    (
        f"export project {P} --reason user asked",
        "unexpected argument 'asked' (export project takes <project-id>);"
        ' to give --reason with spaces, quote it: --reason "..."',
        U_EXPORT_PROJECT,
    ),
    (
        f"export images {P} untagged",
        "unexpected argument 'untagged' (export images takes <project-id>);"
        " did you mean '--untagged'?",
        U_EXPORT_IMAGES,
    ),
    (
        "audit verfy",
        "unexpected argument 'verfy' (audit takes no arguments); did you mean 'audit verify'?",
        U_AUDIT,
    ),
    ("audit verify --since 2026-01-01", "audit verify does not take --since", "audit verify"),
    (
        "status R-1 R-2",
        "unexpected argument 'R-2' (status takes <request-id>)",
        "status [<request-id>] [--all]",
    ),
    # numbers
    (
        f"export performance {P} {I} --threshold 1.5",
        "--threshold must be between 0 and 1 (got 1.5)",
        U_EXPORT_PERFORMANCE,
    ),
    (
        f"export performance {P} {I} --overlap -0.1",
        "--overlap must be between 0 and 1 (got -0.1)",
        U_EXPORT_PERFORMANCE,
    ),
    (
        f"export performance {P} {I} --threshold high",
        "--threshold must be a number between 0 and 1 (got 'high')",
        U_EXPORT_PERFORMANCE,
    ),
    (
        f"export performance {P} {I} --threshold nan",
        "--threshold must be a number between 0 and 1 (got 'nan')",
        U_EXPORT_PERFORMANCE,
    ),
    (
        f"export performance {P} {I} --threshold 0,5",
        "--threshold must be a number between 0 and 1 (got '0,5')",
        U_EXPORT_PERFORMANCE,
    ),
    # dates and formats
    (
        "audit --since yesterday",
        "--since must be a date like 2026-01-31 (got 'yesterday')",
        U_AUDIT,
    ),
    ("audit --since 2026-1-5", "--since must be a date like 2026-01-31 (got '2026-1-5')", U_AUDIT),
    ("audit --since 2026-02-30", "--since: 2026-02-30 is not a real date", U_AUDIT),
    ("audit --format xml", "--format must be csv or jsonl (got 'xml')", U_AUDIT),
    # free text
    (
        f"export project {P} --ticket {'T' * 101}",
        "--ticket is too long: 101 characters (at most 100)",
        U_EXPORT_PROJECT,
    ),
    (
        f'export project {P} --reason "{"r" * 1001}"',
        "--reason is too long: 1001 characters (at most 1000)",
        U_EXPORT_PROJECT,
    ),
    (
        f'export project {P} --ticket "DSR\x07-1"',
        "--ticket must not contain control characters (found U+0007)",
        U_EXPORT_PROJECT,
    ),
    (
        f'export project {P} --ticket "DSR\u202e-1"',
        "--ticket must not contain control characters (found U+202E)",
        U_EXPORT_PROJECT,
    ),
    (f"export project {P} --ticket '  '", "--ticket needs a ticket reference", U_EXPORT_PROJECT),
    (
        f"export project {P} --reason ''",
        '--reason needs a reason (in quotes when it has spaces: --reason "...")',
        U_EXPORT_PROJECT,
    ),
    (
        f'export project {P} --reason "\x07\x08"',
        '--reason needs a reason (in quotes when it has spaces: --reason "...")',
        U_EXPORT_PROJECT,
    ),
    # the statutory clock
    (
        f"export project {P} --received 04/11/2026",
        "--received must be a date like 2026-01-31 (got '04/11/2026')",
        U_EXPORT_PROJECT,
    ),
    (
        f"delete project {P} --received 2026-02-30",
        "--received: 2026-02-30 is not a real date",
        U_DELETE_PROJECT,
    ),
    (
        f"delete project {P} --received",
        "--received needs the date the request was received, like 2026-01-31",
        U_DELETE_PROJECT,
    ),
    (
        f"delete project {P} --received 2026-11-01 --received 2026-11-02",
        "--received is given more than once",
        U_DELETE_PROJECT,
    ),
    ("audit --received 2026-11-01", "audit does not take --received", U_AUDIT),
    ('extend R-7 --reason "complex"', "extend needs --months 1 or --months 2", U_EXTEND),
    (
        'extend R-7 --months 3 --reason "complex"',
        "--months must be 1 or 2 (got '3'): a deadline is extended by at most two further months",
        U_EXTEND,
    ),
    (
        'extend R-7 --months two --reason "complex"',
        "--months must be 1 or 2 (got 'two'): a deadline is extended by at most two further months",
        U_EXTEND,
    ),
    (
        "extend R-7 --months 1",
        'extend needs --reason "...": the person must be told why, within the first month',
        U_EXTEND,
    ),
    (
        'extend R-7 --months 1 --reason ""',
        '--reason needs a reason (in quotes when it has spaces: --reason "...")',
        U_EXTEND,
    ),
    ("extend --months 1 --reason x", "extend needs <request-id>", U_EXTEND),
    (
        "extend 1042 --months 1 --reason x",
        "'1042' is not a request id: expected R-<number>, like R-1042",
        U_EXTEND,
    ),
    ("extend R-7 --months 1 --reason x --ticket T", "extend does not take --ticket", U_EXTEND),
    (
        "report --since 2026-03-01 --until 2026-02-01",
        "--until 2026-02-01 is before --since 2026-03-01",
        U_REPORT,
    ),
    (
        "report --until yesterday",
        "--until must be a date like 2026-01-31 (got 'yesterday')",
        U_REPORT,
    ),
    ("report R-7", "unexpected argument 'R-7' (report takes no arguments)", U_REPORT),
    ("prolong R-7", "unknown command 'prolong'; did you mean 'extend'?", U_EXTEND),
]


@pytest.mark.parametrize(("text", "problem", "form_usage"), ERRORS)
def test_parser_rejects_with_a_specific_problem_and_usage(
    text: str, problem: str, form_usage: str
) -> None:
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert caught.value.problem == problem
    assert caught.value.usage == form_usage


def test_parser_parse_error_is_a_bot_error_with_the_usage_in_its_message() -> None:
    with pytest.raises(ParseError) as caught:
        parse(f"export iteration {P}")
    error = caught.value
    assert isinstance(error, BotError)
    assert isinstance(error, ValueError)
    assert (
        error.user_message == f"export iteration needs <iteration-id>\nUsage: {U_EXPORT_ITERATION}"
    )


def test_parser_limits_are_inclusive() -> None:
    command = parse(f'export project {P} --ticket {"T" * 100} --reason "{"r" * 1000}"')
    assert isinstance(command, Export)
    assert command.meta == Meta(ticket="T" * 100, reason="r" * 1000)


def test_parser_handles_very_long_input() -> None:
    with pytest.raises(ParseError) as caught:
        parse(f'export project {P} --reason "{"x" * 19_000}"')
    assert caught.value.problem == "--reason is too long: 19000 characters (at most 1000)"
    soup = ("export <http://x|y> &amp; \u201c '" * 800)[:20_000]
    with pytest.raises(ParseError):
        parse(soup)


def test_parser_quote_round_trips_any_text() -> None:
    text = 'a "b" \u201cc\u201d \\ & <!channel> &amp; \u2019s'
    command = parse(f"export project {P} --reason {quote(text)}")
    assert isinstance(command, Export)
    assert command.meta.reason == text
    assert slack_escape("<a & b>") == "&lt;a &amp; b&gt;"
