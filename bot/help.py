"""The forms of `/cv` and the help people read: usage lines, summaries, options, examples. Pure.

`FORMS` is the table of every form ("export images", "status", ...): its positional arguments
and the options it takes, which `bot.parser` checks against, and its help text, which
`usage()` and `help_text()` render. Every example in it parses (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.commands import (
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    MAX_REASON,
    MAX_TICKET,
    DeleteKind,
    ExportKind,
)

_META_USAGE = ' [--ticket <ref>] [--reason "<text>"] [--received YYYY-MM-DD]'


@dataclass(frozen=True)
class Form:
    path: str  # "export images"
    args: tuple[str, ...]  # positional placeholders: project-id, iteration-id, tag-id, request-id
    usage_line: str  # without --ticket/--reason
    summary: str
    flags: tuple[str, ...] = ()  # options besides --ticket/--reason/--help
    options: tuple[tuple[str, str], ...] = ()  # (as shown in help, what it does)
    notes: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()  # what follows the command name
    optional_args: int = 0  # how many of the trailing args may be left out
    repeatable: tuple[str, ...] = ()

    @property
    def meta(self) -> bool:
        """True for the forms that take --ticket, --reason and --received (exports, deletes)."""
        return self.path.startswith(("export ", "delete "))

    @property
    def resource(self) -> bool:
        """True for the forms on one project, which take --resource <name>."""
        return self.meta and "project-id" in self.args

    @property
    def usage(self) -> str:
        return self.usage_line + (_META_USAGE if self.meta else "")


# Example ids for the help text (a test parses every example).
_P = "6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
_I = "7d2e3f40-5a6b-4c7d-9e8f-a0b1c2d3e4f5"
_T = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f506"
_T2 = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f507"
_M1 = "9f405162-7c8d-4e9f-b0a1-c2d3e4f50617"
_M2 = "a0516273-8d9e-4fa0-b1b2-d3e4f5061728"

_APPROVAL = "Nothing is deleted until a second person approves the request."
_ITERATION_OPTION = ("--iteration <iteration-id>", "as the tags were in that trained iteration")

_SELECTORS_USAGE = (
    "[--metadata KEY=VALUE]... [--tag-name NAME]... [--project <project-id>]..."
    " [--resource <name>]..."
)
_SELECTOR_FLAGS = ("--metadata", "--tag-name", "--project", "--resource")
_SELECTOR_OPTIONS = (
    (
        "--metadata KEY=VALUE",
        f"images whose metadata has KEY with exactly VALUE (key at most {MAX_METADATA_KEY}"
        f" characters, value at most {MAX_METADATA_VALUE}); repeated, every pair must match",
    ),
    (
        "--tag-name NAME",
        "images with a tag of that name (any case), in each project and snapshot; repeated,"
        " any of the names",
    ),
    ("--project <project-id>", "search only these projects (repeated); every project unless given"),
    (
        "--resource <name>",
        "search only these Custom Vision resources (repeated; the names of"
        " CUSTOM_VISION_RESOURCES); every configured resource unless given",
    ),
)
_SELECTOR_NOTES = (
    "Give at least one --metadata or --tag-name; when both are given, an image must match both.",
    "Stored predictions carry no metadata and no tag names, so this search cannot find them.",
)

_FORM_LIST: tuple[Form, ...] = (
    Form(
        "help",
        ("topic",),
        "help [<verb> [<kind>]]",
        "Show this help, or the help of one command.",
        examples=("help", "help export images"),
        optional_args=1,
    ),
    Form(
        "find",
        (),
        f"find {_SELECTORS_USAGE}",
        "Count one person's images, privately: per project, in the workspace and in each"
        " trained iteration, with the tag names that matched. Changes nothing.",
        flags=_SELECTOR_FLAGS,
        options=_SELECTOR_OPTIONS,
        notes=_SELECTOR_NOTES,
        examples=(
            "find --metadata customer=4711",
            'find --metadata customer=4711 --metadata "name=O\'Brien"',
            f'find --tag-name "Jane Doe" --project {_P}',
            "find --metadata customer=4711 --resource prod --resource prod_eu",
        ),
        repeatable=_SELECTOR_FLAGS,
    ),
    Form(
        "export account",
        (),
        "export account",
        "An overview of the whole account: its domains and every project's settings.",
        examples=("export account --ticket DSR-1042",),
    ),
    Form(
        "export projects",
        (),
        "export projects",
        "The list of projects with their settings.",
        examples=("export projects",),
    ),
    Form(
        "export project",
        ("project-id",),
        "export project <project-id> [--no-images]",
        "One project: settings, iterations, tags, images with their tags and regions, and the"
        " image files.",
        flags=("--no-images",),
        options=(("--no-images", "leave the image files out"),),
        examples=(
            f'export project {_P} --ticket DSR-1042 --reason "Access request by e-mail"',
            f"export project {_P} --no-images",
        ),
    ),
    Form(
        "export iterations",
        ("project-id",),
        "export iterations <project-id>",
        "Every trained iteration of a project.",
        examples=(f"export iterations {_P}",),
    ),
    Form(
        "export iteration",
        ("project-id", "iteration-id"),
        "export iteration <project-id> <iteration-id>",
        "One iteration: its details, its performance and its model exports.",
        examples=(f"export iteration {_P} {_I}",),
    ),
    Form(
        "export performance",
        ("project-id", "iteration-id"),
        "export performance <project-id> <iteration-id> [--threshold F] [--overlap F]",
        "The performance of one iteration, overall and per tag.",
        flags=("--threshold", "--overlap"),
        options=(
            ("--threshold F", "probability threshold, a number from 0 to 1"),
            ("--overlap F", "overlap threshold (object detection), a number from 0 to 1"),
        ),
        notes=(
            "Iteration performance has no delete of its own: it is deleted with its iteration.",
        ),
        examples=(f"export performance {_P} {_I} --threshold 0.5 --overlap 0.3",),
    ),
    Form(
        "export tags",
        ("project-id",),
        "export tags <project-id> [--iteration <iteration-id>]",
        "Every tag of a project.",
        flags=("--iteration",),
        options=(_ITERATION_OPTION,),
        examples=(f"export tags {_P}", f"export tags {_P} --iteration {_I}"),
    ),
    Form(
        "export tag",
        ("project-id", "tag-id"),
        "export tag <project-id> <tag-id> [--iteration <iteration-id>]",
        "One tag of a project.",
        flags=("--iteration",),
        options=(_ITERATION_OPTION,),
        examples=(f"export tag {_P} {_T}",),
    ),
    Form(
        "export images",
        ("project-id",),
        "export images <project-id> [--tagged | --untagged] [--tag <tag-id>]..."
        " [--ids <id,id,...>] [--metadata KEY=VALUE]... [--tag-name NAME]..."
        " [--iteration <iteration-id>] [--no-files]",
        "Images of a project with their tags and regions, and the image files.",
        flags=(
            "--tagged",
            "--untagged",
            "--tag",
            "--ids",
            "--metadata",
            "--tag-name",
            "--iteration",
            "--no-files",
        ),
        options=(
            ("--tagged / --untagged", "only tagged / only untagged images"),
            ("--tag <tag-id>", "only images with this tag; repeat it for more tags"),
            ("--ids <id,id,...>", "only these images (comma-separated image ids)"),
            *_SELECTOR_OPTIONS[:2],
            ("--iteration <iteration-id>", "the images of that trained iteration"),
            ("--no-files", "leave the image files out"),
        ),
        notes=(
            "--metadata and --tag-name pick one person's images, as find does; they go with"
            " neither --ids, --tag, --tagged nor --untagged.",
        ),
        examples=(
            f"export images {_P} --tagged --iteration {_I} --no-files",
            f"export images {_P} --tag {_T} --tag {_T2}",
            f"export images {_P} --ids {_M1},{_M2} --ticket DSR-1042",
            f"export images {_P} --metadata customer=4711 --ticket DSR-1042",
        ),
        repeatable=("--tag", "--metadata", "--tag-name"),
    ),
    Form(
        "export exports",
        ("project-id", "iteration-id"),
        "export exports <project-id> <iteration-id> [--download]",
        "The model exports of an iteration.",
        flags=("--download",),
        options=(("--download", "include the exported model files"),),
        examples=(f"export exports {_P} {_I} --download",),
    ),
    Form(
        "export predictions",
        ("project-id",),
        "export predictions <project-id> [--no-files]",
        "The stored prediction results of a project, with the predicted images.",
        flags=("--no-files",),
        options=(("--no-files", "leave the image files out"),),
        examples=(f"export predictions {_P} --no-files",),
    ),
    Form(
        "export subject",
        (),
        f"export subject {_SELECTORS_USAGE} [--no-files]",
        "One person's images across every project searched, in one package: per project the"
        " matching images' records (tags, regions, metadata, which trained iterations hold"
        " them) and their files, from a trained iteration where only it still holds one.",
        flags=(*_SELECTOR_FLAGS, "--no-files"),
        options=(*_SELECTOR_OPTIONS, ("--no-files", "leave the image files out")),
        notes=(
            *_SELECTOR_NOTES,
            "The manifest and README.txt record the selector and every resource, project and"
            " iteration searched.",
        ),
        examples=(
            "export subject --metadata customer=4711 --ticket DSR-1042",
            'export subject --tag-name "Jane Doe" --no-files --ticket DSR-1042',
        ),
        repeatable=_SELECTOR_FLAGS,
    ),
    Form(
        "delete project",
        ("project-id",),
        "delete project <project-id>",
        "Delete a project with everything in it.",
        notes=(_APPROVAL,),
        examples=(
            f'delete project {_P} --ticket DSR-1042 --reason "Erasure request"'
            " --received 2026-11-04",
        ),
    ),
    Form(
        "delete iteration",
        ("project-id", "iteration-id"),
        "delete iteration <project-id> <iteration-id>",
        "Delete one trained iteration.",
        notes=("The iteration's performance is deleted with it.", _APPROVAL),
        examples=(f"delete iteration {_P} {_I}",),
    ),
    Form(
        "delete iterations",
        ("project-id",),
        "delete iterations <project-id>",
        "Delete every trained iteration of a project.",
        notes=("Their performance is deleted with them.", _APPROVAL),
        examples=(f"delete iterations {_P}",),
    ),
    Form(
        "delete tag",
        ("project-id", "tag-id"),
        "delete tag <project-id> <tag-id>",
        "Delete a tag (the images stay, without that tag).",
        notes=(_APPROVAL,),
        examples=(f"delete tag {_P} {_T}",),
    ),
    Form(
        "delete images",
        ("project-id",),
        "delete images <project-id> (--ids <id,id,...> | --tag <tag-id> | --untagged | --all"
        " | [--metadata KEY=VALUE]... [--tag-name NAME]...)",
        "Delete images of a project; say which with exactly one option (or one person's"
        " selectors).",
        flags=("--ids", "--tag", "--untagged", "--all", "--metadata", "--tag-name"),
        options=(
            ("--ids <id,id,...>", "these images (comma-separated image ids)"),
            ("--tag <tag-id>", "every image with this tag"),
            ("--untagged", "every untagged image"),
            ("--all", "every image of the project"),
            *_SELECTOR_OPTIONS[:2],
        ),
        notes=(_APPROVAL, "With --metadata or --tag-name: one person's images, as find counts."),
        examples=(
            f'delete images {_P} --ids {_M1},{_M2} --reason "Erasure request of a customer"',
            f"delete images {_P} --untagged",
            f"delete images {_P} --metadata customer=4711 --ticket DSR-1042",
        ),
        repeatable=("--metadata", "--tag-name"),
    ),
    Form(
        "delete predictions",
        ("project-id",),
        "delete predictions <project-id> [--ids <id,id,...>]",
        "Delete stored prediction results of a project (all of them without --ids).",
        flags=("--ids",),
        options=(("--ids <id,id,...>", "only these predictions (comma-separated ids)"),),
        notes=(_APPROVAL,),
        examples=(f"delete predictions {_P} --ids {_M1}",),
    ),
    Form(
        "delete subject",
        (),
        f"delete subject {_SELECTORS_USAGE}",
        "Delete one person's images from every project searched, from the workspace and every"
        " trained iteration: one preview across projects, one approval, one receipt.",
        flags=_SELECTOR_FLAGS,
        options=_SELECTOR_OPTIONS,
        notes=(
            *_SELECTOR_NOTES,
            "The preview lists, per project, the images in the workspace and in each trained"
            " iteration (and which are published); the plan is frozen per project once it is"
            " shown, and anything new found before the first deletion means a new preview.",
            _APPROVAL,
        ),
        examples=(
            "delete subject --metadata customer=4711 --ticket DSR-1042 --reason 'Art. 17'",
            'delete subject --tag-name "Jane Doe" --resource prod --ticket DSR-1042',
        ),
        repeatable=_SELECTOR_FLAGS,
    ),
    Form(
        "delete account",
        (),
        "delete account",
        "Delete the Custom Vision account (the Azure resource).",
        notes=(
            "This cannot be done with the Training-Key: the bot answers with the steps to do it"
            " in the Azure portal.",
            _APPROVAL,
        ),
        examples=("delete account --ticket DSR-1042",),
    ),
    Form(
        "delete exports",
        ("project-id", "iteration-id"),
        "delete exports <project-id> <iteration-id>",
        "Delete the model exports of an iteration.",
        notes=(
            "This cannot be done with the Training-Key: the bot answers with the steps to do it.",
            _APPROVAL,
        ),
        examples=(f"delete exports {_P} {_I}",),
    ),
    Form(
        "status",
        ("request-id",),
        "status [<request-id>] [--all]",
        "The state of a request, or of your open requests (the newest 20).",
        flags=("--all",),
        options=(("--all", "every open request, posted as a file in this channel"),),
        notes=("--all posts its file only in a private channel or a direct message with me.",),
        examples=("status", "status R-1042", "status --all"),
        optional_args=1,
    ),
    Form(
        "cancel",
        ("request-id",),
        "cancel <request-id>",
        "Cancel a request that has not finished.",
        examples=("cancel R-1042",),
    ),
    Form(
        "retry",
        ("request-id",),
        "retry <request-id>",
        "Run a failed request again from where it stopped (a deletion past its approval window "
        "or with an approver no longer authorised gets a fresh preview to approve).",
        examples=("retry R-1042",),
    ),
    Form(
        "resend",
        ("request-id",),
        "resend <request-id>",
        "Post a request's held files and messages again, once their cause is fixed.",
        notes=(
            "Slack can refuse a delivery for good (the bot was removed from the channel, the"
            " channel was archived, uploads are disabled). The bot then holds it, keeps the"
            " files and tells you; fix the cause, then resend.",
        ),
        examples=("resend R-1042",),
    ),
    Form(
        "extend",
        ("request-id",),
        'extend <request-id> --months 1|2 --reason "<text>"',
        "Extend a request's statutory deadline by one or two further months (Art. 12(3) GDPR),"
        " for a complex request or many requests at once.",
        flags=("--months", "--reason"),
        options=(
            ("--months 1|2", "how many further months; at most three months from receipt in all"),
            ('--reason "<text>"', "why: recorded, and what the person must be told"),
        ),
        notes=(
            "Only an approver may extend a request, never its requester alone, and only before"
            " the first month's due date has passed.",
            "The person must be told of the extension within the first month, with the reasons.",
        ),
        examples=('extend R-1042 --months 2 --reason "Many requests at once; 14 projects"',),
    ),
    Form(
        "report",
        (),
        "report [--since YYYY-MM-DD] [--until YYYY-MM-DD]",
        "For the data-protection officer: a CSV of every request received in the period (kind,"
        " received, due, extended to, completed, met or late, counts; no free text) and a"
        " summary.",
        flags=("--since", "--until"),
        options=(
            ("--since YYYY-MM-DD", "only requests received from that day on"),
            ("--until YYYY-MM-DD", "only requests received up to that day"),
        ),
        notes=(
            "Approvers only. The file is posted only in a private channel or a direct message"
            " with me.",
        ),
        examples=("report", "report --since 2026-01-01 --until 2026-03-31"),
    ),
    Form(
        "audit",
        (),
        "audit [--request <request-id>] [--since YYYY-MM-DD] [--format csv|jsonl]",
        "Export the audit log.",
        flags=("--request", "--since", "--format"),
        options=(
            ("--request <request-id>", "only the events of this request"),
            ("--since YYYY-MM-DD", "only events from that day on"),
            ("--format csv|jsonl", "the file format (csv unless given)"),
        ),
        notes=("To check that nobody changed the log: audit verify",),
        examples=("audit --since 2026-01-31 --format jsonl", "audit --request R-1042"),
    ),
    Form(
        "audit verify",
        (),
        "audit verify",
        "Check that the audit log's hash chain is intact.",
        examples=("audit verify",),
    ),
)


FORMS: dict[str, Form] = {form.path: form for form in _FORM_LIST}
VERBS = (
    "help",
    "find",
    "export",
    "delete",
    "status",
    "cancel",
    "retry",
    "resend",
    "extend",
    "report",
    "audit",
)
KINDS: dict[str, tuple[str, ...]] = {
    "export": tuple(kind.value for kind in ExportKind),
    "delete": tuple(kind.value for kind in DeleteKind),
}


# --- help -----------------------------------------------------------------------------------


def usage(verb_path: str) -> str:
    """Return the usage of a form ("export images"), a verb's forms, or all ("")."""
    path = " ".join(verb_path.lower().split())
    if path in FORMS and (path not in KINDS):
        return FORMS[path].usage
    if path in KINDS:
        return "\n".join(FORMS[f"{path} {kind}"].usage_line for kind in KINDS[path])
    if path == "":
        return "\n".join(
            [
                FORMS["help"].usage_line,
                FORMS["find"].usage_line,
                f"export <kind> ... (kinds: {', '.join(KINDS['export'])})",
                f"delete <kind> ... (kinds: {', '.join(KINDS['delete'])})",
                *(
                    FORMS[verb].usage_line
                    for verb in ("status", "cancel", "retry", "resend", "extend", "report", "audit")
                ),
                FORMS["audit verify"].usage_line,
            ]
        )
    raise ValueError(f"no such command: {verb_path!r}")


_GENERAL_NOTES = (
    'Every export and delete also takes --ticket <ref> and --reason "<text>"; both are recorded'
    " with the request and in the audit log. --received YYYY-MM-DD says when the person's"
    " request reached you (today unless given); its statutory due date, one month later, is"
    " counted from it.",
    "Every deletion needs approval by a second person before anything is deleted.",
    "Iteration performance is deleted together with its iteration.",
    "delete account and delete exports cannot be done with the Training-Key: the bot answers"
    " with the steps to do them.",
    "Ids are GUIDs as shown in the Custom Vision portal; request ids look like R-1042.",
)


def help_text(topic: str | None = None, *, command: str = "/cv") -> str:
    """Return the help for a topic (None, a verb, or "verb kind"); raise ValueError if unknown."""
    path = " ".join((topic or "").lower().split())
    if path == "":
        lines = [
            f"{command}: data-subject requests (GDPR export and erasure) for Custom Vision",
            "",
        ]
        for title, verbs in (
            ("Find a person's images (counts only, shown to you):", ("find",)),
            ("Export (a zip package posted here):", ("export",)),
            ("Delete:", ("delete",)),
            ("Requests:", ("status", "cancel", "retry", "resend")),
            ("Deadlines:", ("extend", "report")),
            ("Audit log:", ("audit", "audit verify")),
        ):
            lines.append(title)
            paths = [p for verb in verbs for p in FORMS if p == verb or p.startswith(verb + " ")]
            if verbs == ("audit", "audit verify"):
                paths = ["audit", "audit verify"]
            lines += [f"  {command} {FORMS[p].usage_line}" for p in paths]
            lines.append("")
        lines += [f"- {note}" for note in _GENERAL_NOTES]
        lines += [
            "",
            f"More: {command} help <verb> [<kind>], for example {command} help export images",
        ]
        return "\n".join(lines)
    if path in KINDS:
        lines = [f"{command} {path} <kind> ...", ""]
        for kind in KINDS[path]:
            form = FORMS[f"{path} {kind}"]
            lines += [f"{command} {form.usage_line}", f"  {form.summary}"]
        lines += ["", f"- {_GENERAL_NOTES[0]}"]
        if path == "delete":
            lines += [f"- {note}" for note in _GENERAL_NOTES[1:4]]
        else:
            lines.append(f"- {_GENERAL_NOTES[2]}")
        lines.append("Examples:")
        lines += [
            f"  {command} {FORMS[f'{path} {kind}'].examples[0]}"
            for kind in KINDS[path]
            if kind in ("project", "images", "predictions")
        ]
        lines += ["", f"More: {command} help {path} <kind>"]
        return "\n".join(lines)
    if path not in FORMS:
        raise ValueError(f"no help on {topic!r}")
    form = FORMS[path]
    lines = [f"{command} {form.usage}", form.summary]
    if form.options or form.meta:
        lines.append("Options:")
        lines += [f"  {shown}: {what}" for shown, what in form.options]
        if form.resource:
            lines.append(
                "  --resource <name>: the Custom Vision resource holding the project (needed"
                " only when its id is on two)"
            )
        if form.meta:
            lines += [
                f"  --ticket <ref>: a ticket reference, recorded (at most {MAX_TICKET} characters)",
                f'  --reason "<text>": why, recorded (at most {MAX_REASON} characters)',
                "  --received YYYY-MM-DD: the day the person's request was received (today"
                " unless given; not in the future, at most 3 months ago); the due date is one"
                " month later",
            ]
    lines += list(form.notes)
    lines.append("Examples:")
    lines += [f"  {command} {example}" for example in form.examples]
    return "\n".join(lines)
