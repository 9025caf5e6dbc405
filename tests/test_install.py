"""Installable like any Python tool: the wheel carries what devicesim needs at run time.

A copy of the checkout is built into a wheel (not editable), the wheel is installed into a
fresh venv, and ``fleet`` is run from a directory outside the checkout: ``--version``, the
built-in drill list, and a small drill on the embedded broker, which needs the packaged
``mosquitto.conf`` and built-in drills. The fresh venv takes its third-party dependencies
from the test venv's site-packages through a ``.pth`` line (no network, and a ``.pth`` line
does not run the test venv's own ``.pth`` files, so its editable install stays out).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = (".git", ".venv", "reports", ".state", "__pycache__", "*.egg-info", "build", "dist",
        ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache")

pytestmark = [pytest.mark.slow]


def _run(*cmd: str | Path, cwd: Path, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "devicesim"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    out = tmp_path_factory.mktemp("wheel")
    proc = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "-q", "-w", out, src, cwd=out)
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("devicesim-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    proc = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=venv).stdout.strip())
    deps = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
            *site.getsitepackages()]
    (purelib / "devicesim-test-deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    proc = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                "--no-index", "-q", wheel, cwd=venv)
    assert proc.returncode == 0, proc.stderr
    return venv


def test_the_wheel_carries_the_broker_config_and_the_builtin_drills(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "fleet/mosquitto.conf" in names
        # a copy of the one source of truth, not a dangling link
        assert z.read("fleet/mosquitto.conf").decode() == (ROOT / "mosquitto.conf").read_text()
    builtin = {p.name for p in (ROOT / "fleet" / "drill" / "builtin").glob("*.toml")}
    assert builtin
    assert {f"fleet/drill/builtin/{name}" for name in builtin} <= names


def _outside(fresh_venv: Path, tmp_path: Path, *args: str,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{fresh_venv / 'bin'}:{env.get('PATH', '')}"
    return _run(fresh_venv / "bin" / "fleet", *args, cwd=tmp_path, timeout=timeout, env=env)


def test_installed_fleet_runs_from_outside_the_checkout(fresh_venv: Path, tmp_path: Path
                                                       ) -> None:
    where = _run(fresh_venv / "bin" / "python", "-c", "import fleet; print(fleet.__file__)",
                 cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv), where.stdout + where.stderr
    version = _outside(fresh_venv, tmp_path, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("fleet ")
    assert version.stdout.split()[1][0].isdigit()
    listed = _outside(fresh_venv, tmp_path, "drill", "--list")
    assert listed.returncode == 0, listed.stderr
    assert "force-delete" in listed.stdout


@pytest.mark.broker
def test_installed_fleet_runs_a_drill_from_outside_the_checkout(fresh_venv: Path,
                                                                 tmp_path: Path) -> None:
    drill = _outside(fresh_venv, tmp_path, "drill", "--devices", "6", "--seed", "1",
                     timeout=110)
    assert drill.returncode == 0, drill.stdout[-3000:] + drill.stderr[-3000:]
    assert "verdict: PASS" in drill.stdout
    assert (tmp_path / "reports" / "force-delete" / "history.jsonl").is_file()
