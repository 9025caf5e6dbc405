"""The live view of ``fleet drill`` and ``devicesim run``: redrawn in place on a terminal,
one plain line every few seconds elsewhere, nothing but the steps when quiet."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from devicesim.live import LiveView

FIELDS = {"devices": "98/100 connected", "lost access": "60 noticed, 58 recovered"}


def test_a_terminal_gets_a_panel_redrawn_in_place() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with LiveView("drill force-delete", console=console) as view:
        assert view.interactive
        view.update(FIELDS)
        view.say("  3.4s  step 2/4: force-delete-job rollout-1")
    text = out.getvalue()
    assert "drill force-delete" in text
    assert "98/100 connected" in text
    assert "step 2/4" in text


def test_elsewhere_one_plain_line_every_few_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with LiveView("drill", console=console, every=3600) as view:
        assert not view.interactive
        view.update(FIELDS)
        view.update({"devices": "99/100 connected"})  # within the hour: not printed
        view.update({"devices": "100/100 connected"}, force=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  devices 98/100 connected | lost access 60 noticed, 58 recovered",
                     "  devices 100/100 connected"]


def test_quiet_prints_the_steps_only(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveView("drill", quiet=True, console=Console(force_terminal=True)) as view:
        view.update(FIELDS, force=True)
        view.say("step 1/4: create-job rollout-1")
    assert capsys.readouterr().out == "step 1/4: create-job rollout-1\n"
