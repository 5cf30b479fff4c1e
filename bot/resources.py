"""The configured Custom Vision resources, and which of them holds a project.

I/O module. `Resources` maps each resource's name (as configured, first one first) to its own
TrainingClient, so each has its own rate limiter: Azure's 10 calls/s is per resource, and work
on several resources runs in parallel. `locate` answers which resource holds a project id:
with one resource it asks nothing; with several it lists the projects of each (GetProjects, in
parallel) and caches what it found, since a project never moves between resources.

A project id found on two resources is refused with the candidates listed (a GUID clash is
unlikely, but an estate copied from dev to prod with the same ids is not), and so is one found
nowhere, and a `--resource` name that is not configured (before any call). `narrowed` keeps
the resources a data-subject search names (`--resource`, repeatable), refusing the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from bot.errors import BotError, TrainingApiError
from bot.training import TrainingClient
from bot.wording import join_words


class ResourceError(BotError):
    """A project or resource the bot cannot pin to one configured resource; says why."""


def unknown_resource(name: str, configured: Sequence[str]) -> ResourceError:
    """Return the refusal of resource `name`, which is none of the `configured` ones."""
    return ResourceError(
        f"There is no Custom Vision resource named {name!r}: the configured ones are "
        f"{join_words(list(configured))} (CUSTOM_VISION_RESOURCES)."
    )


def narrowed(
    clients: Mapping[str, TrainingClient], names: Sequence[str]
) -> dict[str, TrainingClient]:
    """Return the clients of the resources `names` (any case; none: every one), in the
    configured order; raise ResourceError for a name not configured (no call is made)."""
    if not names:
        return dict(clients)
    configured = {name.lower() for name in clients}
    for name in names:
        if name.lower() not in configured:
            raise unknown_resource(name, list(clients))
    wanted = {name.lower() for name in names}
    return {name: client for name, client in clients.items() if name.lower() in wanted}


class Resources(Mapping[str, TrainingClient]):
    """Every configured resource's client, by name; `locate` finds a project's resource."""

    def __init__(self, clients: Mapping[str, TrainingClient]) -> None:
        if not clients:
            raise ValueError("at least one resource")
        self._clients = dict(clients)
        self._located: dict[str, str] = {}  # project id -> resource name
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> TrainingClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def first(self) -> str:
        """Return the first configured resource's name (what a request without one uses)."""
        return next(iter(self._clients))

    def name_of(self, name: str | None) -> str:
        """Return the configured spelling of resource `name` (None: the first); raise
        ResourceError when no resource has that name (no call is made)."""
        if name is None:
            return self.first
        for configured in self._clients:
            if configured.lower() == name.lower():
                return configured
        raise unknown_resource(name, list(self._clients))

    def client(self, name: str | None) -> TrainingClient:
        """Return the client of resource `name` (None: the first); raise ResourceError."""
        return self._clients[self.name_of(name)]

    def locate(self, project_id: str, name: str | None = None) -> str:
        """Return the name of the resource holding `project_id`: `name` when given (checked,
        no call), the only one, or the one whose GetProjects lists it; raise ResourceError when
        it is on several, on none, or a resource could not be asked."""
        if name is not None:
            return self.name_of(name)
        if len(self._clients) == 1:
            return self.first
        key = project_id.lower()
        with self._lock:
            if key in self._located:
                return self._located[key]
        holders, failures = self._search(key)
        if len(holders) == 1 and not failures:
            with self._lock:
                self._located[key] = holders[0][0]
            return holders[0][0]
        if len(holders) > 1:
            candidates = "; ".join(f"{r} (project {p!r})" for r, p in holders)
            raise ResourceError(
                f"Project {project_id} exists on {len(holders)} Custom Vision resources: "
                f"{candidates}. Say which with --resource <name>; nothing was done."
            )
        if failures:
            found = f"; it is on {holders[0][0]}, but" if holders else ";"
            reasons = "; ".join(f"{r}: {why}" for r, why in failures)
            raise ResourceError(
                f"Could not tell which Custom Vision resource holds project {project_id}"
                f"{found} these resources could not be asked: {reasons}. Try again later, or"
                " say which with --resource <name>; nothing was done."
            )
        raise ResourceError(
            f"Project {project_id} is on none of the Custom Vision resources "
            f"({join_words(list(self._clients))}); check the id. Nothing was done."
        )

    def _search(self, key: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Return (resource, project name) of each resource listing `key`, and (resource,
        why) of each that could not be listed; every project seen is cached on the way."""

        def projects(name: str) -> tuple[str, list[tuple[str, str]] | str]:
            try:
                listed = self._clients[name].get_projects()
            except TrainingApiError as error:
                return name, error.user_message
            return name, [(p.id.lower(), p.name) for p in listed]

        with ThreadPoolExecutor(max_workers=len(self._clients)) as pool:
            answers = list(pool.map(projects, self._clients))
        holders: list[tuple[str, str]] = []
        failures: list[tuple[str, str]] = []
        seen: dict[str, list[str]] = {}
        for name, answer in answers:
            if isinstance(answer, str):
                failures.append((name, answer))
                continue
            for project_id, project_name in answer:
                seen.setdefault(project_id, []).append(name)
                if project_id == key:
                    holders.append((name, project_name))
        with self._lock:  # cache only ids on exactly one resource, once every resource answered
            if not failures:
                self._located.update({p: names[0] for p, names in seen.items() if len(names) == 1})
        return holders, failures
