"""The sandbox: the whole bot on this machine, between emulated Slack and Custom Vision.

`run_sandbox` starts the stack (emulators.stack: both emulators and the real bot over
HTTP) on a temporary folder, then either plays a short scripted session (alice asks, bob
approves, mallory has no role) or lets the user type commands as any of the demo people. It
prints the channel as a person reads it and saves every file the bot posted under `output`.
Nothing touches ./data; no credential is needed.

Pure: the rendering of Slack messages as text (`slack_text`, `render_blocks`)
and the interactive line parser (`parse_line`). Everything else drives the stack and prints.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bot.clock import FakeClock
from bot.wording import human_size
from emulators.customvision import Seed
from emulators.slack.records import Ephemeral, Message, UploadedFile
from emulators.stack import (
    APPROVER,
    AUDIT_CHANNEL,
    CHANNEL,
    GROUP_APPROVER,
    OUTSIDE_CHANNEL,
    PRIVACY_GROUP,
    PUBLIC_CHANNEL,
    REQUESTER,
    STRANGER,
    Person,
    Stack,
    start_stack,
)

log = logging.getLogger(__name__)

# Two projects with a few hundred images in all: big enough to show paging and progress,
# small enough that the scripted run takes seconds.
SANDBOX_SEED = Seed(
    projects=2, iterations=2, tags=4, images=150, predictions=10, image_bytes=2048, seed=7
)
# A second Custom Vision resource (another region, say), holding one project: a request names
# a project id and the bot finds which resource holds it.
SANDBOX_MORE = {
    "eu": Seed(projects=1, iterations=1, tags=3, images=40, predictions=0, image_bytes=1024, seed=8)
}
# The data subject of the subject requests: customer 4711 has images in the first resource's
# second project (one of them since deleted from the workspace: only a trained snapshot still
# holds it) and in the second resource's project.
SUBJECT_KEY, SUBJECT_VALUE = "customer", "4711"
SUBJECT_SELECTOR = f"--metadata {SUBJECT_KEY}={SUBJECT_VALUE}"
# The hour (UTC) of the daily digest of deadlines in the sandbox (BOT_REMINDER_HOUR_UTC).
DIGEST_HOUR = 8
PEOPLE: dict[str, Person] = {p.name: p for p in (REQUESTER, APPROVER, GROUP_APPROVER, STRANGER)}
# Every channel but the audit mirror, which gets one line per audit event.
WATCHED = (CHANNEL, PUBLIC_CHANNEL, OUTSIDE_CHANNEL)
# alice is an approver too, so her attempt to approve her own request meets the four-eyes rule.
APPROVERS = f"{REQUESTER.user_id},{APPROVER.user_id},{PRIVACY_GROUP}"
ROLES = {
    REQUESTER.name: "privacy team: makes requests, approves other people's",
    APPROVER.name: "approver",
    GROUP_APPROVER.name: "approver through the @privacy-team user group",
    STRANGER.name: "no role in the bot",
}
SETTLE_TIMEOUT = 60.0  # longest wait for the bot to finish what a step started
QUIET = 0.15  # seconds without Slack traffic that count as "the bot is done for now"
EMOJI = {
    ":white_check_mark:": "✅",
    ":x:": "❌",
    ":no_entry_sign:": "🚫",
    ":no_entry:": "⛔",
    ":hourglass:": "⌛",
    ":hourglass_flowing_sand:": "⏳",
    ":raised_hand:": "✋",
    ":red_circle:": "🔴",
    ":large_orange_circle:": "🟠",
}


class SandboxError(Exception):
    """A step of the scripted session did not turn out as it should (message for the user)."""


# -- pure rendering ---------------------------------------------------------------------------

_MARKUP = re.compile(r"<([@#!])?([^<>|]*)(?:\|([^<>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def slack_text(text: str, names: Mapping[str, str]) -> str:
    """Return Slack message text as a person reads it: mentions by name, links by label."""

    def markup(match: re.Match[str]) -> str:
        sigil, target, label = match.group(1), match.group(2), match.group(3)
        if sigil == "@":
            return "@" + names.get(target, label or target)
        if sigil == "#":
            return "#" + (label or names.get(target, target))
        if sigil == "!":
            return "@" + (label or target.split("^")[0])
        return label or target

    shown = _MARKUP.sub(markup, text)
    shown = _BOLD.sub(r"\1", shown)
    for code, emoji in EMOJI.items():
        shown = shown.replace(code, emoji)
    return shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text_of(obj: Any, names: Mapping[str, str]) -> str:
    if not isinstance(obj, dict):
        return ""
    text = str(obj.get("text") or "")
    return slack_text(text, names) if obj.get("type") == "mrkdwn" else text


def render_blocks(
    blocks: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    button: Callable[[Mapping[str, Any]], str] = lambda b: f"[{b['text']['text']}]",
) -> list[str]:
    """Return the lines a person sees for Block Kit `blocks` (buttons through `button`)."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind in ("section", "header"):
            if block.get("text"):
                lines += _text_of(block["text"], names).splitlines()
            fields = [_text_of(f, names) for f in block.get("fields") or []]
            if fields:
                lines.append(" | ".join(fields))
            accessory = block.get("accessory")
            if isinstance(accessory, dict) and accessory.get("type") == "button":
                lines.append(button(accessory))
        elif kind == "context":
            lines.append(" · ".join(_text_of(e, names) for e in block.get("elements") or []))
        elif kind == "actions":
            shown = [
                button(e)
                for e in block.get("elements") or []
                if isinstance(e, dict) and e.get("type") == "button"
            ]
            lines.append(" ".join(shown))
        elif kind == "divider":
            lines.append("─" * 20)
    return [line for line in lines if line.strip()]


def _edited_at(message: Message, updates_shown: int) -> float:
    """Return when `message` was first changed after the version with `updates_shown` edits."""
    later = message.history[updates_shown:]
    return later[0].time if later else float(message.ts)


def clock(ts: str) -> str:
    """Return a Slack ts as local wall-clock time, HH:MM:SS."""
    return datetime.fromtimestamp(float(ts)).strftime("%H:%M:%S")


# -- interactive commands (pure parser) -------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One parsed line of the interactive prompt."""

    action: str  # command | press | user | channel | home | ids | wait | help | quit | nothing
    # | unknown
    user: str | None = None  # "as bob: ..." acts as bob once
    text: str = ""  # the command text after /cv, or the user/channel name
    number: int = 0  # press N


def parse_line(line: str, command: str = "/cv") -> Line:
    """Return what a line typed at the sandbox prompt asks for."""
    text = line.strip()
    user = None
    match = re.match(r"^as\s+@?(\w+)\s*:\s*(.*)$", text, re.IGNORECASE)
    if match:
        user, text = match.group(1).lower(), match.group(2).strip()
    lowered = text.lower()
    if not text:
        return Line("nothing", user)
    if lowered in ("quit", "exit", "q"):
        return Line("quit", user)
    if lowered in ("help", "?"):
        return Line("help", user)
    if lowered in ("ids", "wait", "home"):
        return Line(lowered, user)
    press = re.match(r"^(?:press|click)\s+#?(\d+)$", lowered)
    if press:
        return Line("press", user, number=int(press.group(1)))
    switch = re.match(r"^(user|as|channel|in)\s+[@#]?([\w-]+)$", lowered)
    if switch and user is None:
        kind = "user" if switch.group(1) in ("user", "as") else "channel"
        return Line(kind, None, switch.group(2))
    if lowered == command or lowered.startswith(command + " "):
        return Line("command", user, text[len(command) :].strip())
    return Line("unknown", user, text)


PROMPT_HELP = """\
Type a slash command as the current person, e.g. `/cv help` or `/cv status`.
  as bob: /cv status      one command as someone else (alice, bob, carol, mallory)
  user bob                switch the current person
  press 2                 press the button numbered 2 (as the current person)
  home                    open the bot's Home tab: your dashboard of open requests
  channel general         switch channel (privacy-requests, general, random)
  ids                     show the projects, tags and image ids to type
  wait                    wait for the bot to finish and show what it posted
  quit                    stop the sandbox"""


# -- the transcript ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Button:
    number: int
    channel: str
    message_ts: str
    action_id: str
    value: str
    label: str
    confirm: str | None


@dataclass
class Transcript:
    """Prints what appeared in Slack since the last flush, the way a person sees it."""

    stack: Stack
    out: IO[str]
    output: Path
    numbered: bool = False
    shown: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, ts) -> updates
    saved: dict[str, Path] = field(default_factory=dict)  # file id -> path
    buttons: dict[int, Button] = field(default_factory=dict)
    _numbers: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _last_channel: str | None = None

    def __post_init__(self) -> None:
        slack = self.stack.slack
        self.names = {p.user_id: p.name for p in PEOPLE.values()}
        self.names[slack.bot_user_id] = slack.bot_name

    # -- people and channels -------------------------------------------------------------------

    def name(self, user_id: str) -> str:
        return self.names.get(user_id, user_id)

    def channel_name(self, channel_id: str) -> str:
        channel = self.stack.slack.channel(channel_id)
        return f"#{channel.name}" if channel is not None else channel_id

    # -- what people do ------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, number: int, title: str) -> None:
        self.say()
        self.say(f"━━ {number}. {title} ━━")

    def typed(self, person: Person, channel: str, text: str) -> None:
        self._channel_header(channel)
        now = datetime.now().strftime("%H:%M:%S")
        self.say(f"[{now}] {person.name} typed: {self.stack.config.bot_command} {text}")

    def clicked(self, person: Person, button: Button, request: str) -> None:
        self._channel_header(button.channel)
        now = datetime.now().strftime("%H:%M:%S")
        confirm = f' and confirmed "{button.confirm}"' if button.confirm else ""
        self.say(f"[{now}] {person.name} pressed [{button.label}] on {request}{confirm}")

    def home(self, person: Person) -> bool:
        """Open the bot's Home tab as `person` and print the view the bot published; return
        False when none came."""
        driver = self.stack.driver
        assert driver is not None
        before = len(self.stack.slack.published(person.user_id))
        now = datetime.now().strftime("%H:%M:%S")
        self._last_channel = None
        self.say(f"[{now}] {person.name} opened the Home tab of the bot:")
        driver.home_opened(person.user_id)
        slack = self.stack.slack
        if not slack.wait_for(lambda: len(slack.published(person.user_id)) > before, 10.0):
            self.say("    (nothing was published: the tab shows what it showed before)")
            return False
        view = slack.published(person.user_id)[-1]
        channels = {c: self.channel_name(c).lstrip("#") for c in (*WATCHED, AUDIT_CHANNEL)}
        for line in render_blocks(view.blocks, {**self.names, **channels}):
            self.say(f"    {line}")
        return True

    def _channel_header(self, channel: str) -> None:
        if channel != self._last_channel:
            self.say(f"── {self.channel_name(channel)} ──")
            self._last_channel = channel

    # -- buttons -------------------------------------------------------------------------------

    def _button(self, channel: str, ts: str, element: Mapping[str, Any]) -> Button:
        key = (channel, ts, str(element.get("action_id")))
        if key not in self._numbers:
            self._numbers[key] = len(self._numbers) + 1
        confirm = element.get("confirm") or {}
        button = Button(
            number=self._numbers[key],
            channel=channel,
            message_ts=ts,
            action_id=key[2],
            value=str(element.get("value") or ""),
            label=str((element.get("text") or {}).get("text") or ""),
            confirm=str((confirm.get("title") or {}).get("text") or "") or None,
        )
        self.buttons[button.number] = button
        return button

    def find_button(self, channel: str, ts: str, action_id: str) -> Button:
        """Return the button with `action_id` on a message (raise SandboxError if it has none)."""
        message = self.stack.slack.message(channel, ts)
        for block in message.blocks if message is not None else []:
            for element in block.get("elements") or []:
                if isinstance(element, dict) and element.get("action_id") == action_id:
                    return self._button(channel, ts, element)
        raise SandboxError("that button is gone: its message changed")

    def current_button(self, number: int) -> Button:
        """Return button `number` if its message still shows it; raise SandboxError if not."""
        button = self.buttons.get(number)
        if button is None:
            raise SandboxError(f"there is no button {number}; buttons are numbered [n Label]")
        return self.find_button(button.channel, button.message_ts, button.action_id)

    # -- printing ------------------------------------------------------------------------------

    def _message_lines(self, message: Message, files: Mapping[str, UploadedFile]) -> list[str]:
        def button(element: Mapping[str, Any]) -> str:
            shown = self._button(message.channel, message.ts, element)
            return f"[{shown.number} {shown.label}]" if self.numbered else f"[{shown.label}]"

        lines = (
            render_blocks(message.blocks, self.names, button)
            if message.blocks
            else slack_text(message.text, self.names).splitlines()
        )
        for file_id in message.files:
            found = files.get(file_id)
            if found is not None:
                lines.append(f"📎 {found.name} ({human_size(len(found.data))})")
        return lines or [""]

    def _print(self, head: str, lines: list[str], indent: str = "") -> None:
        self.say(f"{indent}{head}: {lines[0]}")
        pad = " " * (len(indent) + len(head) + 2)
        for line in lines[1:]:
            self.say(pad + line)

    def _head(self, ts: str, author: str, note: str = "") -> str:
        return f"[{clock(ts)}] {author}{note}"

    def flush(self, *, replies_only: bool = False) -> None:
        """Print every message, thread reply and ephemeral that is new or changed; save files.

        With `replies_only`, only the ephemeral answers (a command's acknowledgement reads best
        right under the command, before what the bot then posts).
        """
        slack = self.stack.slack
        files = {f.id: f for f in slack.files()}
        self._save(files)
        for channel in WATCHED:
            groups: list[tuple[float, Callable[[], None]]] = []
            for message in [] if replies_only else slack.messages(channel):
                entry = self._thread_group(channel, message, files)
                if entry is not None:
                    groups.append(entry)
            for ephemeral in slack.ephemerals(channel):
                entry = self._ephemeral_entry(ephemeral)
                if entry is not None:
                    groups.append(entry)
            if groups:
                self._channel_header(channel)
            for _, show in sorted(groups, key=lambda g: g[0]):
                show()

    def _thread_group(
        self, channel: str, parent: Message, files: Mapping[str, UploadedFile]
    ) -> tuple[float, Callable[[], None]] | None:
        key = (channel, parent.ts)
        parent_new = key not in self.shown
        parent_edited = not parent_new and self.shown[key] != parent.updates
        replies = [
            r
            for r in self.stack.slack.messages(channel, thread_ts=parent.ts)
            if self.shown.get((channel, r.ts)) != r.updates
        ]
        if not (parent_new or parent_edited or replies):
            return None
        # Order by when the activity happened: a post, or the edit of an older message.
        moments = [
            float(r.ts)
            if (channel, r.ts) not in self.shown
            else _edited_at(r, self.shown[(channel, r.ts)])
            for r in replies
        ]
        if parent_new:
            moments.append(float(parent.ts))
        elif parent_edited:
            moments.append(_edited_at(parent, self.shown[key]))
        first = min(moments)

        def show() -> None:
            author = self.name(parent.user)
            if parent_new or parent_edited:
                note = " (edited)" if parent_edited else ""
                self._print(self._head(parent.ts, author, note), self._message_lines(parent, files))
            else:
                summary = self._message_lines(parent, files)[0][:70]
                self.say(f"  in the thread of [{clock(parent.ts)}] {summary}")
            self.shown[key] = parent.updates
            for reply in replies:
                edited = " (edited)" if (channel, reply.ts) in self.shown else ""
                self._print(
                    self._head(reply.ts, self.name(reply.user), edited),
                    self._message_lines(reply, files),
                    indent="    ↳ ",
                )
                self.shown[(channel, reply.ts)] = reply.updates

        return first, show

    def _ephemeral_entry(self, ephemeral: Ephemeral) -> tuple[float, Callable[[], None]] | None:
        key = ("ephemeral", ephemeral.ts)
        if self.shown.get(key) == ephemeral.updates:
            return None

        def show() -> None:
            note = f" (only visible to {self.name(ephemeral.user)})"
            lines = (
                render_blocks(ephemeral.blocks, self.names)
                if ephemeral.blocks
                else slack_text(ephemeral.text, self.names).splitlines()
            )
            self._print(self._head(ephemeral.ts, "cv-dsr-bot", note), lines or [""])
            self.shown[key] = ephemeral.updates

        return float(ephemeral.ts), show

    def _save(self, files: Mapping[str, UploadedFile]) -> None:
        for found in files.values():
            if found.id in self.saved or not found.completed:
                continue
            self.output.mkdir(parents=True, exist_ok=True)
            path = self.output / Path(found.name).name
            taken = set(self.saved.values())
            n = 2
            while path in taken:
                path = self.output / f"{Path(found.name).stem} ({n}){Path(found.name).suffix}"
                n += 1
            path.write_bytes(found.data)
            self.saved[found.id] = path


# -- driving the stack -------------------------------------------------------------------------


def settle(stack: Stack, timeout: float = SETTLE_TIMEOUT) -> bool:
    """Wait until the bot has no job running, nothing left to post, and Slack is quiet.

    Return False when it is still busy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    calls, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        store = stack.bot.store
        busy = store.unfinished_jobs() or store.outbox_pending_count()
        now_calls = len(stack.slack.calls)
        if busy or now_calls != calls:
            calls, quiet_since = now_calls, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET:
            return True
        time.sleep(0.03)
    return False


@dataclass(frozen=True)
class Demo:
    """The seeded resource, as the script and the `ids` command name it."""

    projects: list[tuple[str, str, int]]  # id, name, images
    tags: dict[str, list[tuple[str, str, int]]]  # project id -> (tag id, name, images)
    images: dict[str, list[str]]  # project id -> a few image ids
    published: dict[str, list[str]]  # project id -> publish names
    resource: dict[str, str]  # project id -> the resource holding it


def read_demo(stack: Stack) -> Demo:
    """Return what the emulated resources hold (the first one's projects first), read through
    the bot's Training API clients."""
    projects, tags, images, published, resource = [], {}, {}, {}, {}
    for name, client in stack.bot.clients.items():
        for project in client.get_projects():
            resource[project.id] = name
            count = client.count_images(project.id)
            projects.append((project.id, project.name, count))
            tags[project.id] = [
                (t.id, t.name, t.image_count or 0) for t in client.get_tags(project.id)
            ]
            images[project.id] = [i.id for i in client.get_images_page(project.id, take=3)]
            published[project.id] = [
                str(i.publish_name) for i in client.get_iterations(project.id) if i.publish_name
            ]
    return Demo(projects, tags, images, published, resource)


@dataclass(frozen=True)
class Subject:
    """Where the seeded data subject's images are (ids as the emulators hold them)."""

    project: str  # on the first resource: `images` in its workspace and its new snapshot
    iteration: str  # trained (and published) after the images were added
    gone: str  # the image deleted from the workspace that only `iteration` still holds
    images: tuple[str, ...]  # the subject's images in `project`, `gone` first
    other_resource: str  # the second resource's name
    other_project: str  # its project: `other_images` in the workspace only
    other_images: tuple[str, ...]


def seed_subject(stack: Stack) -> Subject:
    """Spread customer 4711 over two projects on two resources, as an operator's uploads and a
    later training would (seeded into the emulators directly: the sandbox is the test rig)."""
    main = stack.cv.data
    project = main.project_ids()[1]
    tag = main.tag_ids(project)[0]
    pairs = {SUBJECT_KEY: SUBJECT_VALUE}
    images = main.add_images(project, 3, tag_ids=[tag], metadata=pairs)
    iteration = main.add_iteration(project, publish_name="people-prod")
    main.api_delete_images(
        project, images[:1], all_images=False, all_iterations=False, delay=lambda *_: 0.0
    )
    other_resource, emulator = list(stack.cvs.items())[1]
    other_project = emulator.data.project_ids()[0]
    other_images = emulator.data.add_images(other_project, 2, metadata=pairs)
    return Subject(
        project,
        iteration,
        images[0],
        tuple(images),
        other_resource,
        other_project,
        tuple(other_images),
    )


def describe_subject(subject: Subject, demo: Demo) -> list[str]:
    """Return the lines introducing the data subject and where their images are."""
    names = {project_id: name for project_id, name, _ in demo.projects}
    first, second = names[subject.project], names[subject.other_project]
    resource = demo.resource[subject.project]
    return [
        f"A data subject (image metadata {SUBJECT_KEY}={SUBJECT_VALUE}) has images in two "
        "projects:",
        f'  {resource}: "{first}": {len(subject.images)} images, one of them deleted from the '
        "workspace and still held by the snapshot of its newest trained iteration",
        f'  {subject.other_resource}: "{second}": {len(subject.other_images)} images, in the '
        "workspace only",
    ]


def describe_demo(demo: Demo, *, ids: bool) -> list[str]:
    """Return the lines introducing the resource (with every id when `ids`)."""
    lines = []
    for project_id, name, count in demo.projects:
        tags = demo.tags[project_id]
        published = ", ".join(demo.published[project_id]) or "nothing"
        lines.append(
            # What the workspace holds: an export also holds the images and tags that only
            # trained iterations still have, and the bot's messages count those too.
            f'  {demo.resource[project_id]}: project "{name}" {project_id}: {count:,} images in '
            f"the workspace, {len(tags)} tags, published as {published}"
        )
        if ids:
            for tag_id, tag_name, tag_images in tags:
                lines.append(f'      tag "{tag_name}" {tag_id} ({tag_images} images)')
            lines.append(f"      images, e.g. {', '.join(demo.images[project_id])}")
    return lines


def run_sandbox(
    *,
    output: Path,
    interactive: bool = False,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Run the sandbox; return 0 when everything worked, 1 when a step failed, 2 at start-up."""
    out = stdout or sys.stdout
    started = time.monotonic()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"The sandbox cannot save files in {output}: {exc.strerror or exc}", file=out)
        return 2
    with tempfile.TemporaryDirectory(prefix="cv-dsr-sandbox-") as data:
        # The scripted session runs on a fake clock set an hour before the digest's hour, so it
        # can show the morning's digest; the interactive one on the real clock.
        clock = None if interactive else FakeClock(_morning(datetime.now(UTC)))
        env = {"BOT_APPROVERS": APPROVERS, "BOT_REMINDER_HOUR_UTC": str(DIGEST_HOUR)}
        try:
            stack = start_stack(
                Path(data), seed=SANDBOX_SEED, env=env, clock=clock, more_resources=SANDBOX_MORE
            )
        except Exception as exc:  # whatever stops the start-up, say what it was
            print(f"The sandbox could not start: {type(exc).__name__}: {exc}", file=out)
            return 2
        transcript = Transcript(stack, out, output.resolve(), numbered=interactive)
        try:
            subject = seed_subject(stack)
            demo = read_demo(stack)
            _introduce(transcript, demo, subject, interactive=interactive)
            if interactive:
                code = _interactive(transcript, demo, stdin or sys.stdin)
            else:
                assert clock is not None
                code = _scripted(transcript, demo, clock)
        except SandboxError as exc:
            transcript.flush()  # what the bot did up to here explains the problem best
            transcript.say(f"\nThe sandbox stopped: {exc}")
            code = 1
        except KeyboardInterrupt:
            transcript.say("\nInterrupted.")
            code = 130
        except Exception as exc:  # a bug: still stop the stack and say what happened
            log.error("the sandbox failed", exc_info=True)
            transcript.say(f"\nThe sandbox failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            stack.close()
    _conclude(transcript, time.monotonic() - started, code)
    return code


def _introduce(transcript: Transcript, demo: Demo, subject: Subject, *, interactive: bool) -> None:
    say = transcript.say
    say("cv-dsr-bot sandbox: the real bot between emulated Slack and Custom Vision, all local.")
    names = list(dict.fromkeys(demo.resource.values()))
    say(f"Custom Vision resources (emulated, each its own endpoint and key): {', '.join(names)}")
    for line in [*describe_demo(demo, ids=interactive), *describe_subject(subject, demo)]:
        say(line)
    say(
        f"Slack workspace (emulated): requests are made in {transcript.channel_name(CHANNEL)} "
        f"(private); {transcript.channel_name(AUDIT_CHANNEL)} mirrors the audit log."
    )
    say("People:")
    for name, role in ROLES.items():
        say(f"  {name}: {role}")
    say("The database and work files live in a temporary folder, removed at the end.")
    if interactive:
        say()
        say(PROMPT_HELP)


def _conclude(transcript: Transcript, seconds: float, code: int) -> None:
    say = transcript.say
    say()
    if transcript.saved:
        say(f"Files the bot posted, saved in {transcript.output}/:")
        for path in sorted(transcript.saved.values()):
            say(f"  {path.name}  ({human_size(path.stat().st_size)})")
    else:
        say("The bot posted no files.")
    for index in unpack_exports(transcript.saved.values(), transcript.output):
        say(f"Export unzipped: open {index} in a web browser to see it.")
    for path in sorted(transcript.saved.values()):
        if path.suffix == ".html":
            say(f"Receipt: open {path} in a web browser.")
    verdict = "finished" if code == 0 else "ended with errors"
    say(f"Sandbox {verdict} in {seconds:.1f} s.")


_EXPORT_PART = re.compile(r"(R-\d+-export)(?:-part\d+-of-\d+)?\.zip")


def unpack_exports(saved: Iterable[Path], output: Path) -> list[Path]:
    """Unzip every saved export (all its parts into one folder); return each index.html."""
    groups: dict[str, list[Path]] = {}
    for path in saved:
        match = _EXPORT_PART.fullmatch(path.name)
        if match:
            groups.setdefault(match.group(1), []).append(path)
    found = []
    for name, parts in sorted(groups.items()):
        folder = output / name
        for part in sorted(parts):
            with zipfile.ZipFile(part) as archive:
                archive.extractall(folder)
        if (folder / "index.html").is_file():
            found.append(folder / "index.html")
    return found


# -- the scripted session -----------------------------------------------------------------------


def _request_id(text: str) -> str:
    match = re.search(r"\bR-\d+\b", text)
    if match is None:
        raise SandboxError(f"the bot did not accept the request: {text}")
    return match.group(0)


def _command(t: Transcript, person: Person, text: str) -> str:
    """Type a command as `person` in the request channel; return the bot's ack text."""
    t.typed(person, CHANNEL, text)
    response = t.stack.command(person, text)
    if response.status_code != 200:
        raise SandboxError(f"the bot answered HTTP {response.status_code} to `{text}`")
    t.flush(replies_only=True)
    return str(response.json().get("text") or "")


def _wait(t: Transcript, request_id: str, *statuses: str) -> str:
    try:
        status = t.stack.wait_status(request_id, *statuses, "failed", timeout=SETTLE_TIMEOUT)
    except AssertionError as exc:
        raise SandboxError(str(exc)) from None
    if not settle(t.stack):
        raise SandboxError("the bot was still busy after a minute")
    t.flush()
    if status == "failed" and "failed" not in statuses:
        error = t.stack.bot.store.get(request_id).error
        raise SandboxError(f"{request_id} failed: {error}")
    return status


def _press(t: Transcript, person: Person, request_id: str, action: str) -> None:
    record = t.stack.bot.store.get(request_id)
    if record.message_ts is None:
        raise SandboxError(f"{request_id} has no announcement to click on")
    try:
        button = t.find_button(record.channel, record.message_ts, f"request.{action}")
    except SandboxError:
        raise SandboxError(
            f"the announcement of {request_id} ({record.status}) shows no {action} button"
        ) from None
    t.clicked(person, button, request_id)
    response = t.stack.click(person, request_id, action, channel=record.channel)
    if response.status_code != 200:
        raise SandboxError(f"the click on [{button.label}] was not accepted")
    settle(t.stack)
    t.flush()


def _digest_posted(t: Transcript) -> bool:
    return any("Statutory deadlines" in m.text for m in t.stack.slack.messages(CHANNEL))


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise SandboxError(problem)


def _morning(now: datetime) -> datetime:
    """Return an hour before the digest's hour, today (UTC)."""
    return now.replace(hour=DIGEST_HOUR - 1, minute=0, second=0, microsecond=0)


def _scripted(t: Transcript, demo: Demo, clock: FakeClock) -> int:
    project_id, project_name, _ = demo.projects[0]
    tag_id, tag_name, _ = next(
        (tag for tag in demo.tags[project_id] if tag[2] > 0), demo.tags[project_id][0]
    )

    t.step(1, f'alice asks for an export of project "{project_name}"')
    ack = _command(
        t,
        REQUESTER,
        f'export project {project_id} --ticket DSR-2041 --reason "Access request (Art. 15)"',
    )
    export_id = _request_id(ack)
    _wait(t, export_id, "done")

    # No count here: the bot's preview says how many images the deletion removes, everywhere.
    # Received 27 days ago (by e-mail, say): the reply and the announcement show its due date.
    received = (clock.now() - timedelta(days=27)).date().isoformat()
    t.step(2, f'alice asks to erase the images tagged "{tag_name}", received {received}')
    ack = _command(
        t,
        REQUESTER,
        f"delete images {project_id} --tag {tag_id} --ticket DSR-2042 "
        f'--reason "Erasure request (Art. 17)" --received {received}',
    )
    delete_id = _request_id(ack)
    _wait(t, delete_id, "pending")

    t.step(3, "alice tries to approve her own request; mallory tries too")
    _press(t, REQUESTER, delete_id, "approve")
    _press(t, STRANGER, delete_id, "approve")
    _expect(t.stack.status(delete_id) == "pending", f"{delete_id} was approved by the wrong person")

    t.step(4, f"{DIGEST_HOUR:02d}:00 UTC: the daily digest lists what is due within 7 days")
    clock.advance(hours=1)
    _expect(
        t.stack.slack.wait_for(lambda: _digest_posted(t), timeout=SETTLE_TIMEOUT),
        "the daily digest was not posted",
    )
    settle(t.stack)
    t.flush()

    t.step(5, "bob opens the bot's Home tab: what waits for him and what is due")
    _expect(t.home(APPROVER), "bob's Home tab was not published")

    t.step(6, "bob approves: the deletion runs, is verified, and the receipt is posted")
    _press(t, APPROVER, delete_id, "approve")
    _wait(t, delete_id, "done")

    t.step(7, f"alice looks for a person ({SUBJECT_SELECTOR}) in every project of every resource")
    _command(t, REQUESTER, f"find {SUBJECT_SELECTOR}")
    _expect(settle(t.stack), "the bot was still busy after a minute")
    t.flush()
    answers = t.stack.slack.ephemerals(CHANNEL, user_id=REQUESTER.user_id)
    _expect(
        any(answer.text.startswith("Found images in 2 projects") for answer in answers),
        "find did not find the person's images in both projects",
    )

    t.step(8, "alice asks for a copy of every image of that person: one package")
    ack = _command(
        t,
        REQUESTER,
        f"export subject {SUBJECT_SELECTOR} --ticket DSR-2043 "
        '--reason "Access request (Art. 15) of customer 4711"',
    )
    subject_export = _request_id(ack)
    _wait(t, subject_export, "done")

    t.step(9, "alice asks to erase that person's images everywhere; bob approves once")
    ack = _command(
        t,
        REQUESTER,
        f"delete subject {SUBJECT_SELECTOR} --ticket DSR-2044 "
        '--reason "Erasure request (Art. 17) of customer 4711"',
    )
    subject_delete = _request_id(ack)
    _wait(t, subject_delete, "pending")
    _press(t, APPROVER, subject_delete, "approve")
    _wait(t, subject_delete, "done")

    t.step(10, "bob verifies the audit log")
    _command(t, APPROVER, "audit verify")
    settle(t.stack)
    t.flush()

    verification = t.stack.bot.store.verify_audit()
    _expect(verification.ok, verification.summary())
    _expect(t.stack.status(export_id) == "done", f"{export_id} did not finish")
    _expect(t.stack.status(subject_export) == "done", f"{subject_export} did not finish")
    _expect(t.stack.status(subject_delete) == "done", f"{subject_delete} did not finish")
    mirror = t.stack.slack.messages(AUDIT_CHANNEL)
    t.say()
    t.say(
        f"{t.channel_name(AUDIT_CHANNEL)} received {len(mirror)} audit lines, an independent "
        "copy of the chain's hashes."
    )
    return 0


# -- the interactive prompt ---------------------------------------------------------------------


def _interactive(t: Transcript, demo: Demo, stdin: IO[str]) -> int:
    person, channel = REQUESTER, CHANNEL
    channels = {t.channel_name(c).lstrip("#"): c for c in WATCHED}
    while True:
        print(f"{person.name} in {t.channel_name(channel)}> ", end="", file=t.out, flush=True)
        raw = _read(t, stdin)
        if raw is None:
            return 0
        line = parse_line(raw, t.stack.config.bot_command)
        actor = person
        if line.user is not None:
            if line.user not in PEOPLE:
                t.say(f"No such person: {line.user}. People: {', '.join(PEOPLE)}.")
                continue
            actor = PEOPLE[line.user]
        if line.action == "quit":
            return 0
        if line.action == "nothing":
            continue
        if line.action == "help":
            t.say(PROMPT_HELP)
        elif line.action == "ids":
            for text in describe_demo(demo, ids=True):
                t.say(text)
        elif line.action == "user":
            if line.text not in PEOPLE:
                t.say(f"No such person: {line.text}. People: {', '.join(PEOPLE)}.")
            else:
                person = PEOPLE[line.text]
        elif line.action == "channel":
            if line.text not in channels:
                t.say(f"No such channel: {line.text}. Channels: {', '.join(channels)}.")
            else:
                channel = channels[line.text]
        elif line.action == "home":
            t.home(actor)
        elif line.action == "wait":
            if not settle(t.stack):
                t.say("(the bot is still working; type `wait` again)")
            t.flush()
        elif line.action == "command":
            t.typed(actor, channel, line.text)
            response = t.stack.command(actor, line.text, channel=channel)
            if response.status_code != 200:
                t.say(f"(the bot answered HTTP {response.status_code})")
            t.flush(replies_only=True)
            _after(t)
        elif line.action == "press":
            try:
                button = t.current_button(line.number)
            except SandboxError as exc:
                t.say(f"({exc})")
                continue
            _interactive_press(t, actor, button, stdin)
        else:
            t.say(f"Not understood: {line.text!r}. Type help for what you can do.")


def _read(t: Transcript, stdin: IO[str]) -> str | None:
    """Return the next line typed (None at the end of input), echoed when not from a terminal."""
    raw = stdin.readline()
    if not raw:
        t.say()
        return None
    if not stdin.isatty():
        t.say(raw.rstrip("\n"))  # a script's lines read as if typed
    return raw


def _after(t: Transcript) -> None:
    if not settle(t.stack, timeout=10.0):
        t.say("(the bot is still working; type `wait` to see more)")
    t.flush()


def _interactive_press(t: Transcript, person: Person, button: Button, stdin: IO[str]) -> None:
    driver = t.stack.driver
    assert driver is not None
    views_before = len(t.stack.slack.views(person.user_id))
    t.clicked(person, button, button.value)
    response = driver.click(
        person.user_id, button.channel, button.message_ts, button.action_id, button.value
    )
    if response.status_code != 200:
        t.say(f"(the bot answered HTTP {response.status_code})")
    settle(t.stack, timeout=10.0)
    views = t.stack.slack.views(person.user_id)
    for opened in views[views_before:]:
        _fill_modal(t, person, opened.view, stdin)
    t.flush()


def _fill_modal(t: Transcript, person: Person, view: Mapping[str, Any], stdin: IO[str]) -> None:
    """Show a dialog the bot opened and submit what the person types (empty: close it)."""
    driver = t.stack.driver
    assert driver is not None
    title = str((view.get("title") or {}).get("text") or "Dialog")
    t.say(f'{person.name} sees a dialog "{title}"')
    values: dict[str, dict[str, str]] = {}
    for block in view.get("blocks") or []:
        if block.get("type") != "input":
            continue
        label = str((block.get("label") or {}).get("text") or "")
        print(f"  {label} (empty closes the dialog)> ", end="", file=t.out, flush=True)
        answer = (_read(t, stdin) or "").strip()
        if not answer:
            t.say("  (closed)")
            return
        element = block.get("element") or {}
        values[str(block.get("block_id"))] = {str(element.get("action_id")): answer}
    response = driver.submit_view(
        person.user_id,
        str(view.get("callback_id") or ""),
        str(view.get("private_metadata") or ""),
        values,
    )
    if response.content.strip():
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            t.say("  the dialog says: " + "; ".join(str(e) for e in errors.values()))
    settle(t.stack, timeout=10.0)
