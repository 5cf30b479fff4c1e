"""The self-check's Slack part: can the bot's token do what the bot needs in this workspace?

Read-only Web API calls (auth.test, conversations.info, usergroups.users.list, users.info)
through the bot's own client (`handlers.webapi.SlackCalls`), with the same `SLACK_API_URL` and
token the bot uses. Each failure becomes a `bot.checks.Check` whose `fix` says what to do;
`bot.checks.run_checks` runs these with the others and scrubs secrets from every text.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bot.checks import Check
from bot.config import Config
from bot.wording import count, join_words
from handlers.webapi import SlackAnswer, SlackCalls, SlackUnreachable

# The bot scopes of manifest.yaml / manifest-http.yaml (tests hold the three together, and the
# manifests to the Web API methods the code calls).
REQUIRED_SCOPES = frozenset(
    {
        "commands",
        "chat:write",
        "files:write",
        "files:read",
        "users:read",
        "usergroups:read",
        "channels:read",
        "groups:read",
        "mpim:read",
    }
)
REINSTALL = (
    "reinstall the app from manifest.yaml (api.slack.com/apps > your app > Install App), then "
    "copy the Bot User OAuth Token (xoxb-...) into SLACK_BOT_TOKEN"
)


def _slack_failure(name: str, error: str, fix: str) -> Check:
    if error == "missing_scope":
        return Check(name, False, "Slack answered missing_scope", f"add the scope and {REINSTALL}")
    if error == "ratelimited":
        return Check(name, False, "Slack rate-limited the check", "run the check again in a minute")
    if error in {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}:
        return Check(name, False, f"Slack refused the token ({error})", REINSTALL)
    return Check(name, False, f"Slack answered {error}", fix)


def _unreachable(name: str, exc: SlackUnreachable) -> Check:
    return Check(name, False, f"could not reach Slack ({exc})", "check the network")


def check_slack_auth(slack: SlackCalls, config: Config) -> tuple[Check, SlackAnswer | None]:
    """Return the auth.test check and, when it passed, Slack's answer (team, bot user, scopes)."""
    name = "Slack auth.test"
    host = urlsplit(config.slack_api_url).netloc
    try:
        answer = slack.call("auth.test")
    except SlackUnreachable as exc:
        return Check(
            name,
            False,
            f"could not reach the Slack Web API at {host} ({exc})",
            "check SLACK_API_URL (normally https://slack.com/api/) and that this machine can "
            "reach it (proxy, firewall)",
        ), None
    if not answer.ok:
        return _slack_failure(name, answer.error, REINSTALL), None
    data = answer.data
    detail = (
        f"token valid for team {data.get('team')} ({data.get('team_id')}), "
        f"bot user @{data.get('user')} ({data.get('user_id')})"
    )
    return Check(name, True, detail), answer


def check_slack_scopes(answer: SlackAnswer) -> Check:
    """Return whether the token holds every scope the manifest declares (from X-OAuth-Scopes)."""
    name = "Slack scopes"
    raw = answer.headers.get("x-oauth-scopes")
    if raw is None:
        return Check(name, True, "Slack did not list the token's scopes; not checked")
    granted = {s.strip() for s in raw.split(",") if s.strip()}
    missing = sorted(REQUIRED_SCOPES - granted)
    if missing:
        return Check(
            name,
            False,
            f"the token lacks {', '.join(missing)}",
            f"add the missing scopes (manifest.yaml lists them) and {REINSTALL}",
        )
    return Check(name, True, f"all {len(REQUIRED_SCOPES)} scopes of manifest.yaml granted")


def check_slack_channel(slack: SlackCalls, channel_id: str, role: str, bot_name: str) -> Check:
    """Return whether the bot can see `channel_id` and is a member of it."""
    name = f"Slack {role} channel {channel_id}"
    invite = f"/invite @{bot_name}"
    try:
        answer = slack.call("conversations.info", channel=channel_id)
    except SlackUnreachable as exc:
        return _unreachable(name, exc)
    if not answer.ok:
        if answer.error == "channel_not_found":
            return Check(
                name,
                False,
                "the bot cannot see this channel",
                f"check the id (channel details, at the bottom); for a private channel, run "
                f"`{invite}` in it first",
            )
        return _slack_failure(name, answer.error, "check the channel id")
    channel = answer.data.get("channel") or {}
    label = f"#{channel.get('name', channel_id)}"
    kind = "private" if channel.get("is_private") or channel.get("is_group") else "public"
    if channel.get("is_archived"):
        return Check(
            name, False, f"{label} is archived", "unarchive it or choose another channel id"
        )
    if not channel.get("is_member"):
        return Check(
            name,
            False,
            f"{label} ({kind}) exists but the bot is not a member",
            f"run `{invite}` in {label}",
        )
    return Check(name, True, f"{label} ({kind}), the bot is a member")


def check_slack_usergroup(slack: SlackCalls, group_id: str, setting: str) -> Check:
    """Return whether a user group listed in `setting` resolves to its members."""
    name = f"Slack user group {group_id}"
    try:
        answer = slack.call("usergroups.users.list", usergroup=group_id)
    except SlackUnreachable as exc:
        return _unreachable(name, exc)
    if not answer.ok:
        if answer.error == "plan_upgrade_required":
            return Check(
                name,
                False,
                "this Slack plan has no user groups (plan_upgrade_required)",
                f"list people by user id (U...) in {setting} instead of {group_id}, or upgrade "
                "the Slack plan",
            )
        if answer.error == "no_such_subteam":
            return Check(
                name,
                False,
                "no user group has this id",
                f"check the id in {setting} (the group's profile > ⋯ > Copy group ID)",
            )
        return _slack_failure(name, answer.error, f"check the id in {setting}")
    members = [str(u) for u in answer.data.get("users") or []]
    if not members:
        return Check(name, True, f"{setting}: the group has no members yet (nobody in it can act)")
    return Check(name, True, f"{setting}: {count(len(members), 'member')}")


def check_slack_users(slack: SlackCalls, user_ids: tuple[str, ...], setting: str) -> Check:
    """Return whether every user id listed in `setting` is an active member of the workspace."""
    name = f"Slack users in {setting}"
    names: list[str] = []
    problems: list[str] = []
    for user_id in user_ids:
        try:
            answer = slack.call("users.info", user=user_id)
        except SlackUnreachable as exc:
            return _unreachable(name, exc)
        if not answer.ok:
            if answer.error == "user_not_found":
                problems.append(f"{user_id} is not a member of this workspace")
                continue
            return _slack_failure(name, answer.error, f"check the ids in {setting}")
        user = answer.data.get("user") or {}
        if user.get("deleted"):
            problems.append(f"{user_id} (@{user.get('name')}) is deactivated")
        else:
            names.append(f"@{user.get('name')}")
    if problems:
        return Check(
            name,
            False,
            "; ".join(problems),
            f"correct {setting} (profile > ⋯ > Copy member ID)",
        )
    return Check(name, True, join_words(names))


def slack_checks(config: Config) -> list[Check]:
    """Return the Slack checks, in order: auth, scopes, channels, approvers and requesters."""
    slack = SlackCalls.for_config(config)
    auth, answer = check_slack_auth(slack, config)
    if answer is None:
        return [auth]  # every other Slack check would fail the same way
    checks = [auth, check_slack_scopes(answer)]
    bot_name = str(answer.data.get("user") or "cv-dsr-bot")
    for channel in config.allowed_channels:
        checks.append(check_slack_channel(slack, channel, "request", bot_name))
    if config.audit_channel:
        checks.append(check_slack_channel(slack, config.audit_channel, "audit", bot_name))
    for setting, ids in (
        ("BOT_APPROVERS", config.approvers),
        ("BOT_REQUESTERS", config.requesters),
    ):
        users = tuple(i for i in ids if i[0] in "UW")
        if users:
            checks.append(check_slack_users(slack, users, setting))
        checks += [check_slack_usergroup(slack, g, setting) for g in ids if g[0] == "S"]
    return checks
