"""The layering rules of STYLE.md, checked by walking the imports of every module:

- ``devicesim`` (device side) never imports ``fleet`` (cloud side);
- the checker imports nothing from ``fleet`` outside itself, and nothing from
  ``devicesim`` but the wire contract (it must not check the emulator against itself), so
  in particular never the service;
- the service never imports the drill or the checker (it must not know how it is judged);
- the pure cores (wire contract, jobs store and lifecycle, agent, checker) import neither
  asyncio nor an MQTT client.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = ["devicesim/wire", "devicesim/agent.py", "devicesim/nvm.py", "devicesim/documents.py",
        "devicesim/behaviours.py", "fleet/service/store.py",
        "fleet/service/lifecycle.py", "fleet/service/records.py", "fleet/service/settings.py",
        "fleet/service/validation.py", "fleet/service/errors.py", "fleet/checker",
        "fleet/service/dataplane.py",
        "fleet/drill/spec.py", "fleet/drill/progress.py"]
NETWORK = ("asyncio", "paho", "aiomqtt", "awscrt", "awsiot", "aiohttp", "socket", "boto3",
           "botocore")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(*paths: str) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        target = ROOT / p
        out.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    assert out, paths
    return out


@pytest.mark.parametrize("path", modules("devicesim"), ids=lambda p: str(p.relative_to(ROOT)))
def test_devicesim_never_imports_fleet(path: Path) -> None:
    assert not {m for m in imports(path) if m == "fleet" or m.startswith("fleet.")}


@pytest.mark.parametrize("path", modules("fleet/checker"), ids=lambda p: str(p.relative_to(ROOT)))
def test_checker_shares_only_the_contract(path: Path) -> None:
    for module in imports(path):
        if module.startswith("fleet."):
            assert module.startswith("fleet.checker"), module
        if module.startswith("devicesim."):
            assert module.startswith("devicesim.wire"), module


@pytest.mark.parametrize("path", modules("fleet/service"), ids=lambda p: str(p.relative_to(ROOT)))
def test_service_never_imports_the_drill_or_the_checker(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[:2] in (["fleet", "drill"],
                                                            ["fleet", "checker"])}
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", modules(*PURE), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_cores_do_no_network_io(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[0] in NETWORK}
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
