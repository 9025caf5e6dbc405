"""devicesim's pytest plugin (the ``pytest11`` entry point ``devicesim``, installed with the
package; docs/pytest.md): fixtures for an AWS IoT Jobs service, device fleets and drills,
built on :mod:`fleet.api`.

Fixtures:

* ``devicesim_broker`` (session): the broker every ``jobs_service`` runs on, a
  :class:`~fleet.broker.BrokerAddress`. ``--devicesim-broker``: ``embedded`` (default: a
  Mosquitto child process on a free loopback port), ``docker`` (a testcontainers Mosquitto;
  it needs Docker and ``devicesim[docker]``) or ``mqtt://HOST:PORT`` (one you run).
* ``jobs_service``: a fresh jobs service (empty state) on that broker for each test, a
  :class:`fleet.api.Service`: ``.broker_url``, ``.endpoint``, ``.iot`` (boto3), ...
* ``device_fleet``: a factory, ``device_fleet(count, behaviour=..., ...)`` ->
  :class:`fleet.api.DeviceFleet`, connected to ``jobs_service``; stopped after the test.
  Each fleet's things are named after the test (``<test>-0000``, ...) unless ``prefix=``.
* A failure the service or a device survived during the test (a handler or a behaviour
  that raised) is an error in the test's teardown, naming it.
* ``run_drill``: ``run_drill(name_or_spec, devices=..., behaviour=..., ...)`` ->
  :class:`fleet.api.DrillOutcome` (``.passed``, ``.failed``, ``.explain()``, ...). Its
  reports go to ``<--devicesim-reports>/<test>-<hash>/<drill>/`` and stay there.

Drill size: ``--drill-size quick`` (default) runs drills with at most
:data:`QUICK_DEVICES` devices (and a soak for at most :data:`QUICK_SOAK_SECONDS`);
``--drill-size full`` at the drill's own size; ``@pytest.mark.drill_size("full")`` pins one
test's size. ``devices=`` (``duration=``) given to ``run_drill`` always wins.

When a test that ran drills fails, its report gains a section per drill it ran: the
verdict and the report's path, and for a drill that did not pass its failing invariants,
their devices and first violations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: import devicesim only when used
    from fleet.api import DeviceFleet, Drill, DrillOutcome, Service
    from fleet.broker import BrokerAddress

SIZES = ("quick", "full")
#: a quick drill's fleet (every built-in drill passes at this size)
QUICK_DEVICES = 24
#: a quick soak's duration
QUICK_SOAK_SECONDS = 15.0
DEFAULT_REPORTS = "reports/devicesim"

_OUTCOMES = pytest.StashKey[list["DrillOutcome"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("devicesim", "devicesim (AWS IoT Jobs service, fleets, drills)")
    group.addoption("--drill-size", choices=SIZES, default=None,
                    help="quick (default): drills with at most "
                         f"{QUICK_DEVICES} devices; full: at each drill's own size")
    group.addoption("--devicesim-broker", default=None, metavar="BROKER",
                    help="the jobs_service fixture's broker: embedded (default), docker "
                         "(testcontainers) or mqtt://HOST:PORT")
    group.addoption("--devicesim-reports", default=None, metavar="DIR",
                    help=f"where run_drill's reports go, one folder per test (default: "
                         f"{DEFAULT_REPORTS} under the rootdir)")
    parser.addini("devicesim_drill_size", "quick or full (default quick)", default="quick")
    parser.addini("devicesim_broker", "embedded, docker or mqtt://HOST:PORT",
                  default="embedded")
    parser.addini("devicesim_reports", "run_drill's report folder", default=DEFAULT_REPORTS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "drill_size(size): run this test's drills at this size, 'quick' or "
                   "'full', whatever --drill-size says (devicesim)")
    size = _option(config, "drill_size")
    if size not in SIZES:
        raise pytest.UsageError(f"devicesim_drill_size: {size!r}: expected quick or full")


#: each option's ini name
_INI = {"drill_size": "devicesim_drill_size", "devicesim_broker": "devicesim_broker",
        "devicesim_reports": "devicesim_reports"}


def _option(config: pytest.Config, dest: str) -> str:
    """The command line's value, else the ini file's."""
    value = config.getoption(dest)
    return str(value if value is not None else config.getini(_INI[dest]))


def _slug(text: str, limit: int = 60) -> str:
    """A test's name as a thing-name prefix or a folder name (A-Z a-z 0-9 _ -)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit] or "test"


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def devicesim_broker(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[BrokerAddress]:
    """The broker of every ``jobs_service`` in the session (``--devicesim-broker``)."""
    from fleet.broker import BrokerAddress, EmbeddedBroker, container_broker

    choice = _option(pytestconfig, "devicesim_broker")
    if choice == "embedded":
        with EmbeddedBroker(work_dir=tmp_path_factory.mktemp("devicesim-broker")) as broker:
            yield broker.address
    elif choice == "docker":
        with container_broker() as address:
            yield address
    elif choice.startswith("mqtt://"):
        yield BrokerAddress.parse(choice)
    else:
        raise pytest.UsageError(f"--devicesim-broker {choice!r}: expected embedded, docker "
                                "or mqtt://HOST:PORT")


@pytest.fixture
def jobs_service(devicesim_broker: BrokerAddress, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Service]:
    """A jobs service with an empty state, for this test, on ``devicesim_broker``."""
    from fleet.api import jobs_service as start

    state = tmp_path_factory.mktemp("devicesim-service") / "jobs.db"
    with start(broker=devicesim_broker, state=state) as service:
        yield service
    _survived("the jobs service", service.failures)


@pytest.fixture
def device_fleet(jobs_service: Service, request: pytest.FixtureRequest
                 ) -> Iterator[Callable[..., DeviceFleet]]:
    """``device_fleet(count, behaviour=..., mix=..., prefix=..., seed=...)``: a running
    fleet on ``jobs_service``, stopped after the test."""
    import contextlib

    from fleet.api import device_fleet as start

    fleets: list[DeviceFleet] = []
    with contextlib.ExitStack() as stack:

        def factory(count: int = 1, **options: Any) -> DeviceFleet:
            made = len(fleets) + 1
            options.setdefault("prefix", f"{_slug(request.node.name, 40)}"
                                         f"{'' if made == 1 else f'-{made}'}-")
            fleets.append(stack.enter_context(start(jobs_service, count, **options)))
            return fleets[-1]

        yield factory
    _survived("the devices", [line for fleet in fleets for line in fleet.failures])


def _survived(who: str, failures: list[str]) -> None:
    """A test after which the service or a device had survived failures errors in its
    teardown, naming them: the test passed, but something broke on the way (a behaviour
    that raised, a service handler that did)."""
    if failures:
        shown = "\n  ".join(failures[:10])
        pytest.fail(f"{who} survived {len(failures)} failure(s) during the test:\n  {shown}"
                    + ("\n  ..." if len(failures) > 10 else ""), pytrace=False)


class DrillRunner:
    """The ``run_drill`` fixture: call it like :func:`fleet.api.run_drill`; ``size`` is
    this test's drill size, ``report_root`` its report folder."""

    def __init__(self, size: str, report_root: Path,
                 outcomes: list[DrillOutcome]) -> None:
        self.size = size
        self.report_root = report_root
        self._outcomes = outcomes

    def plan(self, drill: Any, *, devices: int | None = None, **changes: Any) -> Drill:
        """The drill :meth:`__call__` runs: ``drill`` with ``changes``
        (:func:`fleet.api.drill_spec`) at this test's size, unless ``devices`` says."""
        from fleet.api import drill_spec

        base = drill_spec(drill)
        if self.size == "quick":
            if devices is None and base.devices > QUICK_DEVICES:
                devices = QUICK_DEVICES
            if base.duration is not None and "duration" not in changes:
                changes["duration"] = min(base.duration, QUICK_SOAK_SECONDS)
        return drill_spec(base, devices=devices, **changes)

    def __call__(self, drill: Any, *, devices: int | None = None, workers: int = 1,
                 broker: str | None = None, html: bool = True,
                 status: Callable[[str], None] | None = None, **changes: Any
                 ) -> DrillOutcome:
        """Run the drill (:meth:`plan`), its reports in a folder of :attr:`report_root`
        named after it (``force-delete``, ``force-delete-2``, ...)."""
        from fleet.api import run_drill

        plan = self.plan(drill, devices=devices, **changes)
        name = _slug(plan.name)
        taken = sum(1 for o in self._outcomes if _slug(o.name) == name)
        report_dir = self.report_root / (name if not taken else f"{name}-{taken + 1}")
        outcome = run_drill(plan, report_dir=report_dir, workers=workers, broker=broker,
                            html=html, status=status)
        self._outcomes.append(outcome)
        return outcome


@pytest.fixture
def run_drill(request: pytest.FixtureRequest) -> DrillRunner:
    """Run a drill (a built-in name, a drill file, a mapping or a ``Drill``) and get its
    :class:`fleet.api.DrillOutcome`; ``assert outcome.passed``."""
    import shutil

    config = request.config
    marker = request.node.get_closest_marker("drill_size")
    size = marker.args[0] if marker is not None and marker.args else \
        _option(config, "drill_size")
    if size not in SIZES:
        raise pytest.UsageError(f"drill_size({size!r}): expected quick or full")
    root = Path(_option(config, "devicesim_reports"))
    if not root.is_absolute():
        root = config.rootpath / root
    nodeid = request.node.nodeid
    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]  # tests whose slugs are alike
    folder = root / f"{_slug(nodeid.replace('::', '__'), 100)}-{digest}"
    shutil.rmtree(folder, ignore_errors=True)  # this run's reports only
    outcomes: list[DrillOutcome] = []
    request.node.stash[_OUTCOMES] = outcomes
    return DrillRunner(size, folder, outcomes)


# ---------------------------------------------------------------------------------------------
# failure reports
# ---------------------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report shows each drill it ran: the verdict, and for one that did
    not pass its failing invariants, devices and first violations; the report's path."""
    report = yield
    drills = item.stash.get(_OUTCOMES, [])
    if report.when == "call" and report.failed:
        for drill in drills:
            report.sections.append((f"devicesim drill {drill.name}: {drill.status}",
                                    drill.explain()))
    return report
