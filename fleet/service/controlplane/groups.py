"""Control-plane handlers of static thing groups, shaped as the botocore ``iot`` model says.

Same contract as :mod:`fleet.service.controlplane.handlers`. Membership changes go through
the jobs store, which queues or removes the executions of ``CONTINUOUS`` jobs on the group
in the same transaction; a thing must be in the registry to join a group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.service import validation
from fleet.service.controlplane.inputs import Input, unsupported
from fleet.service.controlplane.shapes import Json
from fleet.service.errors import InvalidRequestException
from fleet.service.groups import ThingGroup, check_group_name

if TYPE_CHECKING:
    from fleet.service.controlplane.handlers import Context

MAX_RESULTS = (1, 250)


def _group_arn(ctx: Context, name: str) -> str:
    return ctx.store.arn("thinggroup", name)


def _reference(ctx: Context, name: str) -> Json:
    """GroupNameAndArn."""
    return {"groupName": name, "groupArn": _group_arn(ctx, name)}


def _member(inp: Input, name_member: str, arn_member: str, kind: str) -> str:
    """A group or thing given by name or by ARN (one of the two)."""
    name, given_arn = inp.body_string(name_member), inp.body_string(arn_member)
    if given_arn is not None:
        named = validation.name_in_arn(given_arn, kind)
        if named is None:
            raise InvalidRequestException(f"{arn_member}: {given_arn!r:.200} is not a {kind} "
                                          "ARN")
        if name is not None and name != named:
            raise InvalidRequestException(f"{name_member} and {arn_member} name different "
                                          "resources")
        name = named
    if name is None:
        raise InvalidRequestException(f"{name_member} or {arn_member}: required")
    return name


def _membership(ctx: Context, inp: Input) -> tuple[str, str]:
    """(group, thing) of Add/RemoveThingToThingGroup; the thing must be registered."""
    group = check_group_name(_member(inp, "thingGroupName", "thingGroupArn", "thinggroup"))
    thing = _member(inp, "thingName", "thingArn", "thing")
    _require_thing(ctx, thing)
    return group, thing


def _require_thing(ctx: Context, thing: str) -> None:
    if ctx.registry is None:
        raise InvalidRequestException("this emulator runs without a thing registry")
    ctx.registry.describe_thing(thing)


def create_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("parentGroupName", "thingGroupProperties"), unsupported_body=("tags",))
    group = ctx.store.groups.create(
        check_group_name(inp.labels["thingGroupName"]),
        parent=inp.body_string("parentGroupName"),
        properties=inp.body_object("thingGroupProperties"))
    return {"thingGroupName": group.name, "thingGroupArn": _group_arn(ctx, group.name),
            "thingGroupId": group.id}


def describe_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow()
    groups = ctx.store.groups
    group = groups.describe(check_group_name(inp.labels["thingGroupName"]))
    metadata: Json = {"creationDate": group.created,
                      "rootToParentThingGroups": [_reference(ctx, g) for g in
                                                  reversed(groups.ancestors(group.name))]}
    if group.parent is not None:
        metadata["parentGroupName"] = group.parent
    return {"thingGroupName": group.name, "thingGroupId": group.id,
            "thingGroupArn": _group_arn(ctx, group.name), "version": group.version,
            "thingGroupProperties": group.properties, "thingGroupMetadata": metadata,
            "status": "ACTIVE"}


def update_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("thingGroupProperties", "expectedVersion"))
    properties = inp.body_object("thingGroupProperties")
    if properties is None:
        raise InvalidRequestException("thingGroupProperties: required")
    version = ctx.store.groups.update(check_group_name(inp.labels["thingGroupName"]),
                                      properties, inp.body_integer("expectedVersion"))
    return {"version": version}


def delete_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("expectedVersion",))
    ctx.store.delete_thing_group(check_group_name(inp.labels["thingGroupName"]),
                                 inp.query_integer("expectedVersion"))
    return {}


def list_thing_groups(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("parentGroup", "namePrefixFilter", "recursive", "maxResults",
                     "nextToken"))
    parent = inp.query_string("parentGroup")
    recursive = inp.query_boolean("recursive")
    groups, token = ctx.store.groups.list_groups(
        parent=None if parent is None else check_group_name(parent, "parentGroup"),
        prefix=inp.query_string("namePrefixFilter"),
        recursive=True if recursive is None else recursive,
        max_results=inp.query_integer("maxResults", *MAX_RESULTS),
        next_token=inp.query_string("nextToken"))
    return _page(ctx, "thingGroups", groups, token)


def _page(ctx: Context, key: str, groups: list[ThingGroup], token: str | None) -> Json:
    out: Json = {key: [_reference(ctx, g.name) for g in groups]}
    if token is not None:
        out["nextToken"] = token
    return out


def add_thing_to_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("thingGroupName", "thingGroupArn", "thingName", "thingArn",
                    "overrideDynamicGroups"))
    ctx.store.add_thing_to_group(*_membership(ctx, inp))
    return {}


def remove_thing_from_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("thingGroupName", "thingGroupArn", "thingName", "thingArn"))
    ctx.store.remove_thing_from_group(*_membership(ctx, inp))
    return {}


def update_thing_groups_for_thing(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("thingName", "thingGroupsToAdd", "thingGroupsToRemove",
                    "overrideDynamicGroups"))
    thing = inp.body_string("thingName")
    if thing is None:
        raise InvalidRequestException("thingName: required")
    _require_thing(ctx, thing)
    add = [check_group_name(g, "thingGroupsToAdd")
           for g in inp.body_string_list("thingGroupsToAdd") or []]
    remove = [check_group_name(g, "thingGroupsToRemove")
              for g in inp.body_string_list("thingGroupsToRemove") or []]
    ctx.store.update_groups_of(thing, add, remove)
    return {}


def list_things_in_thing_group(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("recursive", "maxResults", "nextToken"))
    things = ctx.store.groups.members(check_group_name(inp.labels["thingGroupName"]),
                                      recursive=bool(inp.query_boolean("recursive")))
    offset, limit = validation.page(inp.query_integer("maxResults", *MAX_RESULTS),
                                    inp.query_string("nextToken"))
    out: Json = {"things": things[offset:offset + limit]}
    token = validation.next_token_for(offset, limit, len(things) - offset)
    if token is not None:
        out["nextToken"] = token
    return out


def list_thing_groups_for_thing(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("maxResults", "nextToken"))
    thing = inp.thing_name()
    _require_thing(ctx, thing)
    names = ctx.store.groups.groups_of(thing)
    offset, limit = validation.page(inp.query_integer("maxResults", *MAX_RESULTS),
                                    inp.query_string("nextToken"))
    out: Json = {"thingGroups": [_reference(ctx, n) for n in names[offset:offset + limit]]}
    token = validation.next_token_for(offset, limit, len(names) - offset)
    if token is not None:
        out["nextToken"] = token
    return out


def create_dynamic_thing_group(ctx: Context, inp: Input) -> Json:
    raise unsupported("dynamic thing groups (CreateDynamicThingGroup); create a static "
                      "group and add things to it")


GROUP_HANDLERS: dict[str, Callable[[Context, Input], Json | None]] = {
    "CreateThingGroup": create_thing_group,
    "DescribeThingGroup": describe_thing_group,
    "UpdateThingGroup": update_thing_group,
    "DeleteThingGroup": delete_thing_group,
    "ListThingGroups": list_thing_groups,
    "AddThingToThingGroup": add_thing_to_thing_group,
    "RemoveThingFromThingGroup": remove_thing_from_thing_group,
    "UpdateThingGroupsForThing": update_thing_groups_for_thing,
    "ListThingsInThingGroup": list_things_in_thing_group,
    "ListThingGroupsForThing": list_thing_groups_for_thing,
    "CreateDynamicThingGroup": create_dynamic_thing_group,
}
