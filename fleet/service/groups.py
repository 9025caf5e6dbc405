"""Static thing groups: a hierarchy of named groups and the things in each.

Kept on the jobs store's own SQLite connection, so that a membership change and the job
executions it creates or removes (a ``CONTINUOUS`` job on the group) commit together; the
store calls these inside its transactions and owns everything about jobs. Pure data access:
no jobs, no network.

AWS rules kept (spec §9 and the IoT developer guide, "Static thing groups"): a group has at
most one parent and the hierarchy is at most 7 deep; a thing belongs to at most 10 groups;
a group with child groups cannot be deleted; deleting a group that does not exist, adding
a thing twice, removing a thing that is not a member are no-ops. Dynamic groups are refused
by the control plane by name.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from fleet.service import validation
from fleet.service.errors import (
    InvalidRequestException,
    LimitExceededException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
)

GROUP_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
MAX_DEPTH = 7
MAX_GROUPS_PER_THING = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thing_groups (
    name TEXT PRIMARY KEY, id TEXT NOT NULL, parent TEXT, properties TEXT NOT NULL,
    version INTEGER NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS thing_groups_by_parent ON thing_groups (parent);
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL, thing TEXT NOT NULL, PRIMARY KEY (grp, thing));
CREATE INDEX IF NOT EXISTS group_members_by_thing ON group_members (thing);
"""


@dataclass(frozen=True, slots=True)
class ThingGroup:
    name: str
    id: str
    parent: str | None
    #: ``thingGroupProperties`` as given (description, attributePayload)
    properties: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    created: float = 0.0


def check_group_name(name: str, member: str = "thingGroupName") -> str:
    if not GROUP_NAME.fullmatch(name):
        raise InvalidRequestException(f"{member}: must be 1-128 characters of [a-zA-Z0-9:_-]")
    return name


def check_properties(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """``thingGroupProperties``: a description and an attribute payload of strings."""
    if properties is None:
        return {}
    for member in properties:
        if member not in ("thingGroupDescription", "attributePayload"):
            raise InvalidRequestException(
                f"thingGroupProperties.{member:.100} is not a member of ThingGroupProperties")
    description = properties.get("thingGroupDescription")
    if description is not None and (not isinstance(description, str) or len(description) > 2028):
        raise InvalidRequestException(
            "thingGroupProperties.thingGroupDescription: a string of at most 2028 characters")
    payload = properties.get("attributePayload")
    if payload is not None:
        check_attribute_payload(payload, "thingGroupProperties.attributePayload")
    return dict(properties)


_ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{1,128}")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
MAX_ATTRIBUTES = 50


def check_attribute_payload(payload: Any, member: str = "attributePayload"
                            ) -> tuple[dict[str, str], bool]:
    """An ``AttributePayload``: (attributes, merge)."""
    if not isinstance(payload, dict) or set(payload) - {"attributes", "merge"}:
        raise InvalidRequestException(f"{member}: must be {{\"attributes\": {{...}}, "
                                      "\"merge\": true|false}")
    attributes = payload.get("attributes") or {}
    merge = payload.get("merge", False)
    if not isinstance(attributes, dict) or not isinstance(merge, bool):
        raise InvalidRequestException(f"{member}: attributes must be an object, merge a "
                                      "boolean")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidRequestException(f"{member}.attributes: at most {MAX_ATTRIBUTES}")
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidRequestException(
                f"{member}.attributes: name {name!r:.130} must be 1-128 characters of "
                "[a-zA-Z0-9_.,@/:#=[]-]")
        if not isinstance(value, str) or not _ATTRIBUTE_VALUE.fullmatch(value):
            raise InvalidRequestException(
                f"{member}.attributes.{name}: must be a string of at most 800 characters "
                "of [a-zA-Z0-9_.,@/:#=[]-]")
    return dict(attributes), merge


class ThingGroups:
    """The groups and their members, on a connection the caller owns (and commits)."""

    def __init__(self, db: sqlite3.Connection, *, now: Callable[[], float]) -> None:
        self._db = db
        self._now = now
        db.executescript(_SCHEMA)

    # -- groups ----------------------------------------------------------------------------

    def create(self, name: str, *, parent: str | None = None,
               properties: dict[str, Any] | None = None) -> ThingGroup:
        """Create it; the same group again is returned unchanged (as on AWS), another
        group by that name is a ResourceAlreadyExists."""
        check_group_name(name)
        props = check_properties(properties)
        existing = self.find(name)
        if existing is not None:
            if existing.parent == parent and existing.properties == props:
                return existing
            raise ResourceAlreadyExistsException(
                f"Thing Group {name} already exists with different tags or properties")
        if parent is not None:
            check_group_name(parent, "parentGroupName")
            if len(self.ancestors(self.describe(parent).name)) + 2 > MAX_DEPTH:
                raise InvalidRequestException(
                    f"parentGroupName: a thing group hierarchy is at most {MAX_DEPTH} deep")
        group = ThingGroup(name, str(uuid.uuid4()), parent, props, 1, self._now())
        self._db.execute("INSERT INTO thing_groups VALUES (?, ?, ?, ?, ?, ?)",
                         (name, group.id, parent, orjson.dumps(props).decode(), 1,
                          group.created))
        return group

    def find(self, name: str) -> ThingGroup | None:
        row = self._db.execute("SELECT name, id, parent, properties, version, created FROM "
                               "thing_groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return ThingGroup(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5])

    def named_by_id(self, group_id: str) -> str:
        row = self._db.execute("SELECT name FROM thing_groups WHERE id = ?",
                               (group_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Thing Group with id {group_id} does not exist")
        return str(row[0])

    def describe(self, name: str) -> ThingGroup:
        group = self.find(name)
        if group is None:
            raise ResourceNotFoundException(f"Thing Group {name} does not exist")
        return group

    def update(self, name: str, properties: dict[str, Any] | None,
               expected_version: int | None) -> int:
        group = self.describe(name)
        validation.check_version(expected_version, group.version)
        props = check_properties(properties)
        payload = props.get("attributePayload")
        if payload is not None and payload.get("merge"):
            old = (group.properties.get("attributePayload") or {}).get("attributes") or {}
            merged = {**old, **payload.get("attributes", {})}
            props["attributePayload"] = {"attributes": {k: v for k, v in merged.items() if v}}
        self._db.execute("UPDATE thing_groups SET properties = ?, version = ? WHERE name = ?",
                         (orjson.dumps(props).decode(), group.version + 1, name))
        return group.version + 1

    def delete(self, name: str, expected_version: int | None) -> list[str]:
        """Delete it (nothing to do if it does not exist); returns its former members."""
        group = self.find(name)
        if group is None:
            return []
        validation.check_version(expected_version, group.version)
        if self._db.execute("SELECT 1 FROM thing_groups WHERE parent = ? LIMIT 1",
                            (name,)).fetchone():
            raise InvalidRequestException(f"Cannot delete thing group {name}: it has child "
                                          "groups (delete them first)")
        members = self.members(name, recursive=False)
        self._db.execute("DELETE FROM group_members WHERE grp = ?", (name,))
        self._db.execute("DELETE FROM thing_groups WHERE name = ?", (name,))
        return members

    def list_groups(self, *, parent: str | None = None, prefix: str | None = None,
             recursive: bool = True, max_results: int | None = None,
             next_token: str | None = None) -> tuple[list[ThingGroup], str | None]:
        if parent is not None:
            self.describe(parent)
            names = self.descendants(parent) if recursive else self._children(parent)
        else:
            names = [r[0] for r in self._db.execute(
                "SELECT name FROM thing_groups" + ("" if recursive else
                                                   " WHERE parent IS NULL"))]
        names = sorted(n for n in names if prefix is None or n.startswith(prefix))
        offset, limit = validation.page(max_results, next_token)
        page = names[offset:offset + limit]
        return ([self.describe(n) for n in page],
                validation.next_token_for(offset, limit, len(names) - offset))

    def ancestors(self, name: str) -> list[str]:
        """The group's parent, its parent's parent ... up to the root (nearest first)."""
        chain: list[str] = []
        parent = self.describe(name).parent
        while parent is not None and parent not in chain:
            chain.append(parent)
            row = self._db.execute("SELECT parent FROM thing_groups WHERE name = ?",
                                   (parent,)).fetchone()
            parent = None if row is None else row[0]
        return chain

    def _children(self, name: str) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT name FROM thing_groups WHERE parent = ? ORDER BY name", (name,))]

    def descendants(self, name: str) -> list[str]:
        """Every group below ``name`` (not ``name`` itself)."""
        found: list[str] = []
        todo = self._children(name)
        while todo:
            child = todo.pop()
            if child not in found:
                found.append(child)
                todo.extend(self._children(child))
        return found

    # -- members ---------------------------------------------------------------------------

    def add(self, group: str, thing: str) -> bool:
        """Add ``thing``; False if it already was a member."""
        self.describe(group)
        if self._db.execute("SELECT 1 FROM group_members WHERE grp = ? AND thing = ?",
                            (group, thing)).fetchone():
            return False
        count = self._db.execute("SELECT count(*) FROM group_members WHERE thing = ?",
                                 (thing,)).fetchone()[0]
        if count >= MAX_GROUPS_PER_THING:
            raise LimitExceededException(f"Thing {thing} is already in {count} thing groups "
                                         f"(at most {MAX_GROUPS_PER_THING})")
        self._db.execute("INSERT INTO group_members VALUES (?, ?)", (group, thing))
        return True

    def remove(self, group: str, thing: str) -> bool:
        """Remove ``thing``; False if it was not a member."""
        self.describe(group)
        return self._db.execute("DELETE FROM group_members WHERE grp = ? AND thing = ?",
                                (group, thing)).rowcount > 0

    def forget_thing(self, thing: str) -> list[str]:
        """The thing was deleted: it leaves every group (returns them)."""
        groups = self.groups_of(thing)
        self._db.execute("DELETE FROM group_members WHERE thing = ?", (thing,))
        return groups

    def members(self, group: str, *, recursive: bool) -> list[str]:
        """Things in ``group`` (and, ``recursive``, in the groups below it), sorted."""
        self.describe(group)
        groups = [group, *(self.descendants(group) if recursive else ())]
        marks = ", ".join("?" * len(groups))
        return [r[0] for r in self._db.execute(
            f"SELECT DISTINCT thing FROM group_members WHERE grp IN ({marks}) ORDER BY thing",
            groups)]

    def groups_of(self, thing: str) -> list[str]:
        """The groups ``thing`` was added to (directly), sorted."""
        return [r[0] for r in self._db.execute(
            "SELECT grp FROM group_members WHERE thing = ? ORDER BY grp", (thing,))]

    def containing(self, thing: str) -> set[str]:
        """Every group ``thing`` is in, directly or through a group below it (what a job
        targeting a group reaches)."""
        found: set[str] = set()
        for group in self.groups_of(thing):
            found.add(group)
            found.update(self.ancestors(group))
        return found
