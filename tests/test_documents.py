"""Job documents: parsing, the errors a device rejects with, and the canonical digest."""

from __future__ import annotations

import contextlib
import copy
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicesim.documents import (
    DocumentError,
    FirmwareUpdate,
    Sleep,
    Step,
    document_digest,
    parse,
    stretched,
)


def test_firmware_update_defaults() -> None:
    plan = parse({"operation": "firmware-update", "version": "2.0.0"})
    assert plan == FirmwareUpdate(version="2.0.0", steps=(
        Step("download", 0.2), Step("install", 0.2), Step("reboot", 0.1), Step("verify", 0.1)))
    assert plan.image_version == "2.0.0"
    assert plan.fail_at_step is None


def test_firmware_update_in_full() -> None:
    plan = parse({"operation": "firmware-update", "version": "2.0.0-rc.1+b7",
                  "steps": [{"name": "download", "seconds": 3}, {"name": "install"},
                            {"name": "reboot", "seconds": 0}, {"name": "verify", "seconds": 1.5}],
                  "failAtStep": "install", "extra": "ignored"})
    assert isinstance(plan, FirmwareUpdate)
    assert [(s.name, s.seconds) for s in plan.steps] == [
        ("download", 3.0), ("install", 0.2), ("reboot", 0.0), ("verify", 1.5)]
    assert plan.fail_at_step == "install"


def test_sleep() -> None:
    assert parse({"operation": "sleep", "seconds": 2}) == Sleep(seconds=2.0)
    plan = parse({"operation": "sleep"})
    assert plan.steps == (Step("sleep", 1.0),)
    assert plan.image_version is None
    assert plan.fail_at_step is None


@pytest.mark.parametrize(("doc", "reason"), [
    ([], "job document must be a JSON object"),
    (None, "job document must be a JSON object"),
    ({}, "operation is required"),
    ({"operation": 3}, "operation must be a string"),
    ({"operation": "reformat"}, "unknown operation 'reformat'"),
    ({"operation": "x" * 500}, "unknown operation 'xxx"),
    ({"operation": "firmware-update"}, "version must be"),
    ({"operation": "firmware-update", "version": ""}, "version must be"),
    ({"operation": "firmware-update", "version": "1\n2"}, "version must be"),
    ({"operation": "firmware-update", "version": "2", "steps": {}}, "steps must be a list"),
    ({"operation": "firmware-update", "version": "2", "steps": [1]}, r"steps\[0\] must be"),
    ({"operation": "firmware-update", "version": "2", "steps": [{"name": "fly"}]},
     r"steps\[0\]\.name must be one of"),
    ({"operation": "firmware-update", "version": "2", "steps": [{"name": "download"}]},
     "in this order"),
    ({"operation": "firmware-update", "version": "2", "steps": [
        {"name": n} for n in ("install", "download", "reboot", "verify")]}, "in this order"),
    ({"operation": "firmware-update", "version": "2", "steps": [
        {"name": "download", "seconds": -1}]}, r"steps\[0\]\.seconds must be"),
    ({"operation": "firmware-update", "version": "2", "steps": [
        {"name": "download", "seconds": True}]}, r"steps\[0\]\.seconds must be"),
    ({"operation": "firmware-update", "version": "2", "failAtStep": "explode"},
     "failAtStep must be one of"),
    ({"operation": "sleep", "seconds": "1"}, "seconds must be a number"),
    ({"operation": "sleep", "seconds": float("inf")}, "seconds must be a number"),
    ({"operation": "sleep", "seconds": 10**9}, "seconds must be a number"),
])
def test_unusable_documents_say_why(doc: Any, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason) as info:
        parse(doc)
    assert info.value.reason == str(info.value)
    assert "\n" not in info.value.reason
    assert len(info.value.reason) <= 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_parse_raises_only_document_error(doc: Any) -> None:
    with contextlib.suppress(DocumentError):
        parse(doc)


def test_digest_is_the_shared_canonical_rule() -> None:
    doc = {"version": "2.0.0", "operation": "firmware-update"}
    canonical = b'{"operation":"firmware-update","version":"2.0.0"}'
    assert document_digest(doc) == "sha256:" + hashlib.sha256(canonical).hexdigest()


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_digest_ignores_key_order(doc: dict[str, Any]) -> None:
    reordered = dict(reversed(list(doc.items())))
    assert document_digest(reordered) == document_digest(doc)
    assert document_digest(doc).startswith("sha256:")
    assert len(document_digest(doc)) == len("sha256:") + 64


@pytest.mark.parametrize(("doc", "expected"), [
    ({"operation": "firmware-update", "version": "2.0.0", "jitter": 0.5,
      "steps": [{"name": "download", "seconds": 1.0}, {"name": "install", "seconds": 2.0},
                {"name": "reboot", "seconds": 0.5}, {"name": "verify"}]},
     FirmwareUpdate(version="2.0.0", jitter=0.5, steps=(
         Step("download", 10.0), Step("install", 20.0), Step("reboot", 5.0),
         Step("verify", 1.0)))),
    ({"operation": "firmware-update", "version": "2.0.0"},  # the default steps, written out
     FirmwareUpdate(version="2.0.0", steps=(
         Step("download", 2.0), Step("install", 2.0), Step("reboot", 1.0), Step("verify", 1.0)))),
    ({"operation": "sleep", "seconds": 0.2}, Sleep(seconds=2.0)),
    ({"operation": "sleep"}, Sleep(seconds=10.0)),
])
def test_stretched_multiplies_every_duration(doc: dict[str, Any], expected: Any) -> None:
    before = copy.deepcopy(doc)
    assert parse(stretched(doc, 10)) == expected
    assert parse(stretched(doc, 1)) == parse(doc)
    assert doc == before  # the drill's own document is not modified


@pytest.mark.parametrize("doc", [
    {"operation": "firmware-update"}, {"operation": "reboot-now"}, "not a document", None,
])
def test_stretched_leaves_an_unusable_document_as_it_is(doc: Any) -> None:
    # the devices must reject it as the drill wrote it
    assert stretched(doc, 10) is doc


def test_stretched_keeps_durations_within_the_documents_limit() -> None:
    doc = stretched({"operation": "sleep", "seconds": 80000}, 10)
    assert parse(doc) == Sleep(seconds=86400.0)


def test_a_fail_fraction_fails_the_same_share_of_the_fleet_every_time() -> None:
    plan = parse({"operation": "firmware-update", "version": "2.0", "failAtStep": "install",
                  "failFraction": 0.3})
    assert isinstance(plan, FirmwareUpdate)
    things = [f"dev-{i:04d}" for i in range(1000)]
    failing = [t for t in things if plan.fails(t, "install")]
    assert 250 <= len(failing) <= 350
    assert not any(plan.fails(t, "download") for t in things)
    assert failing == [t for t in things if plan.fails(t, "install")]  # deterministic
    everyone = parse({"operation": "firmware-update", "version": "2.0",
                      "failAtStep": "verify"})
    assert isinstance(everyone, FirmwareUpdate)
    assert all(everyone.fails(t, "verify") for t in things)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(DocumentError, match="failFraction must be a number from 0 to 1"):
            parse({"operation": "firmware-update", "version": "2.0", "failFraction": bad})
