"""my_firmware's device behaviour, tested through devicesim's pytest plugin (docs/pytest.md):
the fixtures ``run_drill``, ``jobs_service`` and ``device_fleet`` come with the package.

    .venv/bin/pytest examples/                      # quick: drills with at most 24 devices
    .venv/bin/pytest examples/ --drill-size full    # each drill at its own size (100)
"""

import json

from my_firmware.behaviour import CautiousDevice

from devicesim.behaviours import LostAccessNotice, Reaction


class ForgetfulDevice(CautiousDevice):
    """A regression of CautiousDevice: once it loses access mid-update it boots the
    half-written image instead of rolling it back."""

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        super().on_lost_access(notice)
        return Reaction.NO_ROLLBACK


def test_cautious_device_recovers_from_a_force_delete(run_drill):
    outcome = run_drill("force-delete", behaviour=CautiousDevice)
    assert outcome.passed


def test_the_checker_catches_a_device_that_boots_a_half_written_image(run_drill):
    outcome = run_drill("force-delete", behaviour=ForgetfulDevice)
    # it recovers into an invalid state, and ends there
    assert outcome.failed == ["recover", "valid-end"], outcome.explain()
    assert all("invalid state" in v.message for v in outcome.invariants["recover"].violations)


def test_cautious_devices_finish_an_update(jobs_service, device_fleet):
    devices = device_fleet(5, behaviour=CautiousDevice)
    document = {"operation": "firmware-update", "version": "2.0.0"}
    jobs_service.iot.create_job(jobId="update-1", targets=devices.arns,
                                document=json.dumps(document))
    finished = devices.wait_for("job_finished", job_id="update-1", timeout=30)
    assert {event.status for event in finished} == {"SUCCEEDED"}
    assert jobs_service.iot.describe_job(jobId="update-1")["job"]["status"] == "COMPLETED"
