"""Finding one data subject's images: the `$filter`, the scope, the search and its answer.

A data-subject request names a person, not a project. `bot.commands.Selectors` says which images
are that person's (metadata pairs, tag names); this module looks for them where they may be:

- `metadata_filter` (pure) writes the pairs as the one `$filter` string GetImages and
  GetImageCount take: `key eq 'value'` joined by ` and `, each value quoted as OData requires
  (single quotes, an embedded quote doubled: `'O''Brien'`).
- A scope is a list of `Place`s, (resource, project) pairs, over the configured resources
  (`bot.config`: CUSTOM_VISION_RESOURCES, or the single pair named `default`), or the
  `--resource` ones. `resolve_scope` lists every project of every resource, or the `--project`
  ones, and names the ids found nowhere.
- `find` counts, per place, the matching images in the workspace and in each trained iteration
  snapshot, with GetImageCount (`$filter`, `tagIds`, `iterationId`): counts, never listings,
  so a search costs a few calls per project whatever the project's size. Tag names are matched
  case-insensitively against the tags of each image set (a snapshot keeps tags the workspace
  no longer has); a set without such a tag needs no count call. Resources are searched in
  parallel (each has its own rate limit), and a few projects of one resource at once, so the
  limit, not each call's latency, sets the pace.
- `describe_find` (pure) is the answer people read: counts, project and iteration names and the
  tag names that matched, never an image id or link.

A project that cannot be searched (deleted meanwhile, the service failing after its retries) is
reported as such, never counted as "no match".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bot.commands import Selectors
from bot.errors import TrainingApiError
from bot.models import Tag
from bot.resources import narrowed
from bot.training import TrainingClient
from bot.wording import count, join_words, plural, short_id


def odata_string(value: str) -> str:
    """Return `value` as an OData string literal: in single quotes, each quote doubled."""
    return "'" + value.replace("'", "''") + "'"


def metadata_filter(pairs: Sequence[tuple[str, str]]) -> str | None:
    """Return the `$filter` ANDing every `key eq 'value'` pair (None when there is none)."""
    if not pairs:
        return None
    return " and ".join(f"{key} eq {odata_string(value)}" for key, value in pairs)


@dataclass(frozen=True)
class Place:
    """One (resource, project) pair of a scope."""

    resource: str
    project_id: str
    project_name: str


@dataclass(frozen=True)
class ImageSet:
    """What matched in one image set: the workspace (`iteration_id` None) or a snapshot."""

    iteration_id: str | None
    iteration_name: str | None
    publish_name: str | None  # the snapshot is published under this name
    images: int
    tag_names: tuple[str, ...]  # the tags (as named in this set) the selector matched


@dataclass(frozen=True)
class ProjectFind:
    """The matches of one place; `problem` says why it could not be searched (no sets then)."""

    place: Place
    sets: tuple[ImageSet, ...] = ()
    problem: str | None = None

    @property
    def matched(self) -> bool:
        """True when some set holds a matching image."""
        return any(s.images for s in self.sets)


@dataclass(frozen=True)
class FindResult:
    """A whole search: what was asked, each place's matches, the --project ids found nowhere."""

    selectors: Selectors
    projects: tuple[ProjectFind, ...]
    unknown_projects: tuple[str, ...] = ()
    unreadable_resources: tuple[tuple[str, str], ...] = ()  # (resource, why)


def resolve_scope(
    clients: Mapping[str, TrainingClient], project_ids: Sequence[str]
) -> tuple[list[Place], list[str], list[tuple[str, str]]]:
    """Return the places to search, the asked-for ids found nowhere, and the resources whose
    project list could not be read (with why)."""
    places: list[Place] = []
    unreadable: list[tuple[str, str]] = []
    found: set[str] = set()
    wanted = set(project_ids)
    for resource, client in clients.items():
        try:
            projects = client.get_projects()
        except TrainingApiError as error:
            unreadable.append((resource, error.user_message))
            continue
        for project in projects:
            if wanted and project.id not in wanted:
                continue
            found.add(project.id)
            places.append(Place(resource, project.id, project.name))
    unknown = [p for p in project_ids if p not in found] if not unreadable else []
    return places, unknown, unreadable


def frozen_scope(clients: Mapping[str, TrainingClient], selectors: Selectors) -> dict[str, Any]:
    """Return the scope of a subject export or deletion as stored with its job (JSON-ready):
    the selector, its `$filter`, and every resource, project and trained iteration searched.

    A resource that cannot be read raises its TrainingApiError (the job fails and resumes),
    so no scope is ever recorded with a resource silently left out.
    """
    resources: list[dict[str, Any]] = []
    found: set[str] = set()
    wanted = set(selectors.project_ids)
    for resource, client in narrowed(clients, selectors.resources).items():
        projects: list[dict[str, Any]] = []
        for project in client.get_projects():
            if wanted and project.id not in wanted:
                continue
            found.add(project.id)
            iterations = [
                {"id": it.id, "name": it.name, "publishName": it.publish_name or None}
                for it in client.get_iterations(project.id)
                if it.is_trained
            ]
            projects.append({"id": project.id, "name": project.name, "iterations": iterations})
        resources.append({"name": resource, "projects": projects})
    return {
        "selector": selectors.to_dict(),
        "description": selectors.describe(),
        "filter": metadata_filter(selectors.metadata),
        "resources": resources,
        "unknown_projects": [p for p in selectors.project_ids if p not in found],
    }


def matching_tag_ids(
    client: TrainingClient, project_id: str, iteration_id: str | None, names: Sequence[str]
) -> tuple[list[Tag], bool]:
    """Return the tags named like `names` in one image set, and whether the set can match at
    all (False: tag names were asked for and none is there, so nothing needs listing)."""
    if not names:
        return [], True
    tags = _matching_tags(client.get_tags(project_id, iteration_id), names)
    return tags, bool(tags)


def _matching_tags(tags: Sequence[Tag], names: Sequence[str]) -> list[Tag]:
    wanted = {name.casefold() for name in names}
    return [tag for tag in tags if tag.name.casefold() in wanted]


def search_project(client: TrainingClient, place: Place, selectors: Selectors) -> ProjectFind:
    """Return the matches in the workspace and every trained snapshot of one project."""
    where = metadata_filter(selectors.metadata)
    p = place.project_id
    try:
        snapshots = [it for it in client.get_iterations(p) if it.is_trained]
        sets: list[ImageSet] = []
        for iteration in (None, *snapshots):
            iteration_id = None if iteration is None else iteration.id
            tags, possible = matching_tag_ids(client, p, iteration_id, selectors.tag_names)
            names = tuple(tag.name for tag in tags)
            images = 0
            if possible:  # else no such tag here: nothing to count
                images = client.count_images(
                    p, iteration_id=iteration_id, tag_ids=[t.id for t in tags], where=where
                )
            sets.append(
                ImageSet(
                    iteration_id,
                    None if iteration is None else iteration.name,
                    None if iteration is None else iteration.publish_name,
                    images,
                    names if images else (),
                )
            )
    except TrainingApiError as error:
        return ProjectFind(place, problem=error.user_message)
    return ProjectFind(place, tuple(sets))


# Projects searched at once on one resource. Its limit (10 calls/s) is the resource's client's
# rate limiter, which keeps the window whatever the threads; but a call to the service
# takes longer than a tenth of a second (bench 8: 200 ms each made one project after another
# 2.1x slower than the limit), so 4 in flight keep the limit busy up to 400 ms a call.
SEARCHES_PER_RESOURCE = 4


def find(clients: Mapping[str, TrainingClient], selectors: Selectors) -> FindResult:
    """Return the matches of `selectors` in every place of the scope (resources in parallel);
    raise ResourceError, before any call, when it names a resource not configured."""
    clients = narrowed(clients, selectors.resources)
    places, unknown, unreadable = resolve_scope(clients, selectors.project_ids)
    by_resource: dict[str, list[Place]] = {}
    for place in places:
        by_resource.setdefault(place.resource, []).append(place)

    def search(resource: str) -> list[ProjectFind]:
        client, mine = clients[resource], by_resource[resource]
        workers = min(len(mine), SEARCHES_PER_RESOURCE)
        with ThreadPoolExecutor(workers, thread_name_prefix=f"find-{resource}") as projects:
            return list(projects.map(lambda place: search_project(client, place, selectors), mine))

    with ThreadPoolExecutor(max_workers=max(1, len(by_resource))) as pool:
        found = list(pool.map(search, by_resource))
    return FindResult(
        selectors,
        tuple(project for projects in found for project in projects),
        tuple(unknown),
        tuple(unreadable),
    )


def complete(result: FindResult) -> bool:
    """True when every place of the scope could be searched."""
    return not result.unreadable_resources and all(p.problem is None for p in result.projects)


def workspace_images(result: FindResult) -> int:
    """Return how many matching images the workspaces hold, over every place."""
    return sum(s.images for p in result.projects for s in p.sets if s.iteration_id is None)


# --- the answer -------------------------------------------------------------------------------


def _place_name(place: Place, resources: int) -> str:
    where = f" on {place.resource}" if resources > 1 else ""
    return f"*{place.project_name}* ({short_id(place.project_id)}{where})"


def _set_line(image_set: ImageSet) -> str:
    if image_set.iteration_id is None:
        where = "workspace"
    else:
        where = f'iteration "{image_set.iteration_name}"'
        if image_set.publish_name:
            where += f' (published as "{image_set.publish_name}")'
    text = f"{where}: {count(image_set.images, 'image')}"
    if image_set.tag_names:
        names = join_words(f'"{name}"' for name in image_set.tag_names)
        text += f" (tag {names})"
    return text


def problems(result: FindResult) -> list[str]:
    """Return one line per place or resource that could not be searched, saying why."""
    resources = {p.place.resource for p in result.projects}
    lines = [
        f"Could not search {_place_name(project.place, len(resources))}: {project.problem}"
        for project in result.projects
        if project.problem is not None
    ]
    for resource, why in result.unreadable_resources:
        lines.append(f"Could not list the projects of resource {resource}: {why}")
    return lines


def describe_no_match(result: FindResult, searched: Sequence[str]) -> str:
    """Return the answer to a deletion whose selector matched nothing in the whole scope (the
    resources `searched`, none when there is only one): nothing is stored for it."""
    snapshots = sum(len(p.sets) - 1 for p in result.projects)
    scope = (
        f"{count(len(result.projects), 'project')} and {count(snapshots, 'trained iteration')}"
        " searched"
    )
    if searched:
        scope += f" on {join_words(list(searched))}"
    text = f"No images match {result.selectors.describe()}: {scope}."
    if result.unknown_projects:
        ids = join_words(f"`{p}`" for p in result.unknown_projects)
        text += f" No {plural(len(result.unknown_projects), 'project')} {ids} found."
    return text + " Nothing was stored."


def describe_find(result: FindResult) -> str:
    """Return the answer to `find`: counts per project and image set, nothing personal."""
    selectors = result.selectors
    resources = {p.place.resource for p in result.projects}
    searched = [p for p in result.projects if p.problem is None]
    snapshots = sum(len(p.sets) - 1 for p in searched)
    scope = (
        f"{count(len(searched), 'project')} and {count(snapshots, 'trained iteration')}"
        f" searched for {selectors.describe()}"
    )
    lines: list[str] = []
    matched = [p for p in searched if p.matched]
    if matched:
        total = workspace_images(result)
        lines.append(
            f"Found images in {count(len(matched), 'project')} ({count(total, 'image')} in"
            f" the workspaces); {scope}:"
        )
        for project in matched:
            sets = [s for s in project.sets if s.images]
            lines.append(
                f"- {_place_name(project.place, len(resources))}: "
                + "; ".join(_set_line(s) for s in sets)
            )
            if project.sets[0].images == 0:
                lines.append("  (only trained iterations still hold them)")
        rest = len(searched) - len(matched)
        if rest:
            others = "the other project" if rest == 1 else f"the other {count(rest, 'project')}"
            lines.append(f"No match in {others}.")
    else:
        lines.append(f"No images match: {scope}.")
    lines += problems(result)
    if result.unknown_projects:
        ids = join_words(f"`{p}`" for p in result.unknown_projects)
        lines.append(f"No {plural(len(result.unknown_projects), 'project')} {ids} found.")
    if not complete(result):
        lines.append("These counts are incomplete: run the same find again to retry.")
    lines.append("Nothing was changed.")
    return "\n".join(lines)
