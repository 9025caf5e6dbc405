"""The pytest plugin (fleet/pytest_plugin.py), through pytester: test files of a user's
project, run by a pytest session of their own in which the plugin was loaded from its
``pytest11`` entry point, as it is wherever the package is installed."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

# the report page's matplotlib (and numpy), imported before any pytester fixture: an
# in-process pytester run forgets the modules imported meanwhile, and numpy cannot be
# imported twice in one process
import fleet.checker.html  # noqa: F401

pytestmark = pytest.mark.broker

#: the user's project: pytest-asyncio (installed here) wants its loop scope said; warnings
#: are errors, but for pytest's own about devicesim: already imported by this (outer)
#: session, it cannot be rewritten for the inner one (a user's session imports it once)
INI = ("[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings =\n"
       "    error\n    ignore::pytest.PytestAssertRewriteWarning\n")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def children() -> set[int]:
    """The processes whose parent is this one (from /proc)."""
    mine = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == mine:
                found.add(int(entry.name))
    return found


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_plugin_is_installed_with_the_package(project: pytest.Pytester) -> None:
    result = project.runpytest("--help")
    result.stdout.fnmatch_lines(["*devicesim*", "*--drill-size=*", "*--devicesim-broker=*",
                                 "*--devicesim-reports=*"])
    project.makepyfile("def test_nothing(): pass")
    listed = project.runpytest("--fixtures")
    for fixture in ("devicesim_broker", "jobs_service", "device_fleet", "run_drill"):
        listed.stdout.fnmatch_lines([f"{fixture}*"])


def test_fixtures_start_and_leave_no_process_port_or_thread_behind(
        project: pytest.Pytester, tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    project.makepyfile(f"""
        import json, os, threading
        from pathlib import Path

        SEEN = Path({str(seen)!r})

        def note(**values):
            old = json.loads(SEEN.read_text()) if SEEN.exists() else {{}}
            SEEN.write_text(json.dumps({{**old, **values}}))

        def test_a_job_through_a_fleet(jobs_service, device_fleet, devicesim_broker):
            devices = device_fleet(3)
            jobs_service.iot.create_job(
                jobId="j1", targets=devices.arns,
                document=json.dumps({{"operation": "sleep", "seconds": 0.1}}))
            done = devices.wait_for("job_finished", job_id="j1", timeout=30)
            assert [e.status for e in done] == ["SUCCEEDED"] * 3
            assert jobs_service.iot.describe_job(jobId="j1")["job"]["status"] == "COMPLETED"
            ports = [devicesim_broker.port] + [
                int(url.rsplit(":", 1)[1])
                for url in (jobs_service.endpoint, jobs_service.jobs_data_endpoint)]
            note(first=devices.things, ports=ports,
                 threads=[t.name for t in threading.enumerate()])

        def test_another(device_fleet):
            note(second=device_fleet(2).things + device_fleet(1).things)
    """)
    before = children()
    result = project.runpytest_inprocess()
    result.assert_outcomes(passed=2)
    data = json.loads(seen.read_text())
    # the fleet's devices and the service ran on background loops while the test ran
    assert any(name.startswith("devicesim-service") for name in data["threads"]), data
    assert data["first"] == [f"test_a_job_through_a_fleet-000{i}" for i in range(3)]
    assert data["second"] == ["test_another-0000", "test_another-0001", "test_another-2-0000"]
    # and after the session: the broker process, its port, the control plane's and the data
    # plane's ports and the background threads are gone
    assert children() - before == set()
    assert all(refused(port) for port in data["ports"]), data["ports"]
    assert [t.name for t in threading.enumerate() if t.name.startswith("devicesim-")] == []


def test_a_failing_drill_names_its_invariants_devices_and_report(
        project: pytest.Pytester) -> None:
    project.makepyfile("""
        def test_recovery(run_drill):
            outcome = run_drill("force-delete", behaviour="no-rollback")
            assert outcome.passed
    """)
    before = children()
    result = project.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    print(out)
    # the assertion names the verdict, the failing invariants and devices, and the report
    assert re.search(r"where False = <DrillOutcome force-delete FAIL \(recover, valid-end\) "
                     r"devices dev-\d{4},", out), out
    # the section after it: each failing invariant, its devices, its first violations
    result.stdout.fnmatch_lines([
        "*devicesim drill force-delete: FAIL*",
        "drill force-delete (24 devices, seed 1): FAIL (recover, valid-end) in *",
        "  recover: FAIL, * violation(s) in * cases; devices dev-*",
        "    dev-* rollout-1: * in an invalid state*",
        "  valid-end: FAIL, *",
        "  report: */reports/devicesim/test_a_failing_drill_names_its_invariants_devices_and_"
        "report_py__test_recovery-*/force-delete/report.html *",
    ])
    report = Path(re.search(r"  report: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert report.is_file()
    # the test's folder: its name, and a hash of its node id (tests alike in name differ)
    assert re.fullmatch(r"test_a_failing_drill_names_its_invariants_devices_and_report_py__"
                        r"test_recovery-[0-9a-f]{8}", report.parent.parent.name)
    assert (report.parent / "history.jsonl").is_file()
    assert json.loads((report.parent / "report.json").read_text())["status"] == "FAIL"
    assert children() - before == set()


def test_drill_size_by_option_ini_and_marker(project: pytest.Pytester) -> None:
    project.makepyfile("""
        import pytest

        def test_default(run_drill, request):
            expected = request.config.getoption("expected")
            assert run_drill.size == expected
            plan = run_drill.plan("force-delete")
            assert plan.devices == (24 if expected == "quick" else 100)
            assert run_drill.plan("force-delete", devices=7).devices == 7  # devices= wins
            soak = run_drill.plan("soak")
            assert soak.duration == (15 if expected == "quick" else 120)

        @pytest.mark.drill_size("full")
        def test_pinned_full(run_drill):
            assert run_drill.size == "full"
            assert run_drill.plan("force-delete").devices == 100
    """)
    project.makeconftest("""
        def pytest_addoption(parser):
            parser.addoption("--expected")
    """)
    project.runpytest_inprocess("--expected", "quick").assert_outcomes(passed=2)
    project.runpytest_inprocess("--expected", "full", "--drill-size", "full"
                                ).assert_outcomes(passed=2)
    project.makeini(INI + "devicesim_drill_size = full\n")
    project.runpytest_inprocess("--expected", "full").assert_outcomes(passed=2)
    project.runpytest_inprocess("--expected", "quick", "--drill-size", "quick"
                                ).assert_outcomes(passed=2)


def test_a_bad_drill_size_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makeini(INI + "devicesim_drill_size = huge\n")
    project.makepyfile("def test_nothing(): pass")
    result = project.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*devicesim_drill_size: 'huge': expected quick or full*"])


def test_jobs_service_on_a_broker_you_run(project: pytest.Pytester) -> None:
    from fleet.broker import EmbeddedBroker

    with EmbeddedBroker(plugin=False) as plain:  # a plain Mosquitto, as someone else runs
        project.makepyfile(f"""
            def test_on_it(jobs_service, devicesim_broker):
                assert jobs_service.broker_url == {plain.address.url!r}
                assert devicesim_broker.port == {plain.address.port}
                jobs_service.iot.create_job(jobId="j1", targets=[jobs_service.thing_arn("t")],
                                            document="{{}}")
                assert jobs_service.iot.list_jobs()["jobs"][0]["jobId"] == "j1"
        """)
        project.runpytest_inprocess("--devicesim-broker", plain.address.url
                                    ).assert_outcomes(passed=1)
        assert plain.running  # not ours to stop


def test_a_docker_broker_without_docker_says_what_is_missing(project: pytest.Pytester) -> None:
    from fleet.broker import BrokerError, container_broker

    try:
        with container_broker():
            pytest.skip("a Docker engine is reachable here")
    except BrokerError:
        pass
    project.makepyfile("def test_on_it(jobs_service): pass")
    result = project.runpytest_inprocess("--devicesim-broker", "docker")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*BrokerError: *"])
    assert ("testcontainers is not installed" in result.stdout.str()
            or "no Docker engine reachable" in result.stdout.str())


def test_an_unknown_broker_choice_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile("def test_on_it(jobs_service): pass")
    result = project.runpytest_inprocess("--devicesim-broker", "rabbitmq")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--devicesim-broker 'rabbitmq': expected embedded, docker "
                                 "or mqtt://HOST:PORT*"])


def test_a_behaviour_of_the_project_runs_in_drill_workers(project: pytest.Pytester) -> None:
    """The project's own package is on pytest's ``pythonpath``, not on PYTHONPATH: the
    drill's device worker processes import it all the same."""
    project.mkdir("src")
    package = project.mkpydir("src/team_firmware")
    (package / "device.py").write_text(
        "from devicesim.behaviours import Behaviour\n\n\n"
        "class TeamDevice(Behaviour):\n    poll_interval = 0.5\n")
    project.makeini(INI + "pythonpath = src\n")
    project.makepyfile("""
        from team_firmware.device import TeamDevice

        def test_in_workers(run_drill):
            outcome = run_drill("force-delete", devices=8, workers=2, behaviour=TeamDevice,
                                html=False)
            assert outcome.passed, outcome.explain()
            assert set(outcome.invariants["notice"].cases_by_behaviour) == {
                "team_firmware.device:TeamDevice"}
    """)
    project.runpytest_inprocess().assert_outcomes(passed=1)


def python_example(page: Path, heading: str) -> str:
    """The first ``python`` block after ``heading``."""
    text = page.read_text(encoding="utf-8")
    found = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_example_runs_as_written(project: pytest.Pytester) -> None:
    """The README's pytest example (docs/pytest.md starts from the same one), with
    examples/ on the path for its behaviour."""
    root = Path(__file__).resolve().parent.parent
    example = python_example(root / "README.md", "## In your own tests (pytest)")
    assert example == python_example(root / "docs" / "pytest.md",
                                     "## A test file to start from")
    assert len(example.strip().splitlines()) <= 15
    project.syspathinsert(root / "examples")
    project.makepyfile(test_readme=example)
    project.runpytest_inprocess().assert_outcomes(passed=2)


def test_a_failure_a_device_survived_errors_the_test(project: pytest.Pytester) -> None:
    """A behaviour that raises does not crash its device (it goes on with its next event)
    but the test does not pass quietly: its teardown errors, naming the failure."""
    project.makepyfile("""
        import json

        from devicesim.behaviours import Behaviour

        class Raising(Behaviour):
            def on_lost_access(self, notice):
                raise RuntimeError("boom: a firmware bug")

        def test_it(jobs_service, device_fleet):
            devices = device_fleet(1, behaviour=Raising)
            jobs_service.iot.create_job(jobId="j1", targets=devices.arns, document=json.dumps(
                {"operation": "sleep", "seconds": 30}))
            devices.wait_for("job_started", job_id="j1")
            jobs_service.iot.delete_job(jobId="j1", force=True)
            devices.wait_for("error")
            assert devices.failures
    """)
    result = project.runpytest_inprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_it*",
        "the devices survived 1 failure(s) during the test:",
        "  device test_it-0000: RuntimeError: boom: a firmware bug",
    ])
