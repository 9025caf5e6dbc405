"""``fleet`` commands mirroring ``aws iot`` (fleet/awscli/), checked against the real AWS CLI
v1 shipped in the venv: its skeletons, the parameters it would send, and its output and
errors against the same control plane.

The AWS CLI runs in subprocesses only: importing ``awscli`` in this process would re-point
``import botocore`` to the copy it vendors. Most of its runs are batched, many commands per
Python process (:data:`AWS_BATCH`, the CLI's own ``clidriver.main`` with a fresh driver per
command), as starting one ``aws`` takes a second or two here; a few go through the ``aws``
executable itself, and :func:`test_batched_aws_is_the_aws_executable` checks the batch
against it. ``fleet`` runs in-process (its parser built as ``fleet.cli`` builds it), in a
worker thread whenever a control plane serves on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet import awscli
from fleet.awscli import commands, model, shorthand
from fleet.awscli.values import ParamError

AWS_CLI = Path(sys.executable).with_name("aws")
ACCOUNT = "123456789012"
T0 = 1_700_000_000.25
DOC = json.dumps({"operation": "update", "version": "1.2.3"})

#: One command line per operation with its required options (for ``skeleton output``).
REQUIRED: dict[str, tuple[str, ...]] = {
    "CreateJob": ("--job-id", "j", "--targets", "t"),
    "DescribeJob": ("--job-id", "j"),
    "ListJobs": (),
    "GetJobDocument": ("--job-id", "j"),
    "CancelJob": ("--job-id", "j"),
    "DeleteJob": ("--job-id", "j"),
    "DescribeJobExecution": ("--job-id", "j", "--thing-name", "t"),
    "ListJobExecutionsForJob": ("--job-id", "j"),
    "ListJobExecutionsForThing": ("--thing-name", "t"),
    "CancelJobExecution": ("--job-id", "j", "--thing-name", "t"),
    "DeleteJobExecution": ("--job-id", "j", "--thing-name", "t", "--execution-number", "1"),
    "AssociateTargetsWithJob": ("--job-id", "j", "--targets", "t"),
    "UpdateJob": ("--job-id", "j"),
    "CreateJobTemplate": ("--job-template-id", "t", "--description", "d"),
    "DescribeJobTemplate": ("--job-template-id", "t"),
    "ListJobTemplates": (),
    "DeleteJobTemplate": ("--job-template-id", "t"),
    "CreateThing": ("--thing-name", "t"),
    "DescribeThing": ("--thing-name", "t"),
    "UpdateThing": ("--thing-name", "t"),
    "ListThings": (),
    "DeleteThing": ("--thing-name", "t"),
    "CreateThingGroup": ("--thing-group-name", "g"),
    "DescribeThingGroup": ("--thing-group-name", "g"),
    "UpdateThingGroup": ("--thing-group-name", "g", "--thing-group-properties", "{}"),
    "DeleteThingGroup": ("--thing-group-name", "g"),
    "ListThingGroups": (),
    "AddThingToThingGroup": (),
    "RemoveThingFromThingGroup": (),
    "UpdateThingGroupsForThing": (),
    "ListThingsInThingGroup": ("--thing-group-name", "g"),
    "ListThingGroupsForThing": ("--thing-name", "t"),
}


def thing_arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:{ACCOUNT}:thing/{thing}"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


# -- running both CLIs ---------------------------------------------------------------------

def aws_environment(home: Path) -> dict[str, str]:
    """A clean AWS configuration: dummy keys, no config files, one attempt per call."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_PAGER": "",
        "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true",
    }


def aws_sync(home: Path, *args: str) -> Result:
    done = subprocess.run([str(AWS_CLI), "iot", *args], env=aws_environment(home),
                          capture_output=True, text=True, timeout=60, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


async def aws(home: Path, *args: str) -> Result:
    process = await asyncio.create_subprocess_exec(
        str(AWS_CLI), "iot", *args, env=aws_environment(home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def fleet_parser() -> argparse.ArgumentParser:
    """``fleet``'s parser with only these commands, built as ``fleet.cli`` builds its own."""
    parser = argparse.ArgumentParser(prog="fleet")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    awscli.register(sub)
    return parser


def fleet(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = fleet_parser().parse_args(argv)
            rc = int(args.run(args))
        except SystemExit as e:
            rc = int(e.code or 0)
    return Result(rc, out.getvalue(), err.getvalue())


def fleet_args(*argv: str) -> dict[str, Any]:
    """The parameters ``fleet`` would send for ``argv`` (given as options only)."""
    args = fleet_parser().parse_args(argv)
    return commands.parameters(args.awscli_operation, args)


@pytest.fixture(autouse=True)
def aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The in-process ``fleet`` sees the same clean configuration as the ``aws`` subprocess,
    and no running ``fleet up``."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("DEVICESIM_"):
            monkeypatch.delenv(name)
    for name, value in aws_environment(home).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEVICESIM_READY_FILE", str(tmp_path / "no-fleet-up.json"))
    return home


# -- the AWS CLI, batched: outputs, skeletons, the parameters it sends --------------------------

#: Runs in a subprocess with awscli imported. Each case is ``{"run": argv}`` (run
#: ``aws <argv>``: exit status, stdout, stderr), ``{"params": argv}`` (the parameters
#: ``aws <argv>`` hands to botocore; the call is stopped there) or ``{"shorthand": value}``
#: (the value parsed by awscli's shorthand parser).
AWS_BATCH = r'''
import contextlib, io, json, sys
from awscli.clidriver import create_clidriver
from awscli.shorthand import ShorthandParser, ShorthandParseError

sys.argv[0] = "aws"

class Captured(Exception):
    pass

def run(argv, capture=None):
    driver = create_clidriver()
    if capture is not None:
        driver.session.register("before-parameter-build.iot", capture)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = driver.main(argv)
        except SystemExit as e:
            rc = e.code
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}

def params_of(argv):
    seen = {}
    def capture(params, **kwargs):
        seen["params"] = params
        raise Captured()
    result = run(argv, capture)
    return seen if seen else result

def shorthand_of(value):
    try:
        return {"parsed": ShorthandParser().parse(value)}
    except ShorthandParseError as e:
        return {"error": str(e)}

results = []
for case in json.load(sys.stdin):
    if "run" in case:
        results.append(run(case["run"]))
    elif "params" in case:
        results.append(params_of(case["params"]))
    else:
        results.append(shorthand_of(case["shorthand"]))
json.dump(results, sys.stdout, default=str)
'''


def aws_batch_sync(home: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-c", AWS_BATCH], input=json.dumps(cases),
                          env=aws_environment(home), capture_output=True, text=True,
                          timeout=300, check=True)
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


async def aws_batch(home: Path, *commands: tuple[str, ...]) -> list[Result]:
    """``aws iot <command>`` for each command, in order, in one subprocess."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AWS_BATCH, env=aws_environment(home),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    cases = json.dumps([{"run": ["iot", *command]} for command in commands]).encode()
    async with asyncio.timeout(300):
        out, _ = await process.communicate(cases)
    assert process.returncode == 0
    return [Result(r["rc"], r["out"], r["err"]) for r in json.loads(out)]


@pytest.fixture(scope="module")
def aws_skeletons(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Result]:
    """``aws iot <command> --generate-cli-skeleton [input|output]`` for every operation,
    keyed by (operation, "" | "input" | "output")."""
    home = tmp_path_factory.mktemp("aws-home")
    runs = {(op, mode): ["iot", model.command_name(op),
                         *(REQUIRED[op] if mode == "output" else ()),
                         "--generate-cli-skeleton", *([mode] if mode else ())]
            for op in model.OPERATIONS for mode in ("", "input", "output")}
    keys = list(runs)
    halves = [keys[::2], keys[1::2]]  # one batch per CPU of a small machine
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = list(pool.map(
            lambda half: aws_batch_sync(home, [{"run": runs[k]} for k in half]), halves))
    return {key: Result(r["rc"], r["out"], r["err"])
            for half, batch in zip(halves, batches, strict=True)
            for key, r in zip(half, batch, strict=True)}


def enum_values(shape: Any, seen: set[str] | None = None) -> set[str]:
    """Every enum value under ``shape`` (the AWS CLI picks one at random per skeleton)."""
    seen = set() if seen is None else seen
    if shape.name in seen:
        return set()
    seen.add(shape.name)
    found = set(getattr(shape, "enum", None) or ())
    for child in (list(getattr(shape, "members", {}).values())
                  + [getattr(shape, a) for a in ("member", "value") if hasattr(shape, a)]):
        found |= enum_values(child, seen)
    seen.discard(shape.name)
    return found


def without_enum_values(text: str, operation: str) -> str:
    shape = model.operation_model(operation).input_shape
    values = sorted(enum_values(shape), key=len, reverse=True)
    if not values:
        return text
    return re.sub('"(' + "|".join(map(re.escape, values)) + ')"', '"<enum>"', text)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["", "input"])
@pytest.mark.parametrize("operation", model.OPERATIONS)
def test_input_skeleton_is_the_aws_clis(operation: str, mode: str,
                                        aws_skeletons: dict[tuple[str, str], Result]) -> None:
    theirs = aws_skeletons[(operation, mode)]
    assert theirs.rc == 0, theirs.err
    ours = fleet(model.command_name(operation), "--generate-cli-skeleton", *([mode] if mode
                                                                               else []))
    assert (ours.rc, ours.err) == (0, "")
    # Enum members hold a random value of the enum in the AWS CLI's skeleton, the first in
    # fleet's; everything else is the same, byte for byte.
    assert without_enum_values(ours.out, operation) == without_enum_values(theirs.out,
                                                                           operation)
    assert json.loads(without_enum_values(ours.out, operation)) == json.loads(
        without_enum_values(theirs.out, operation))
    assert ours.out == fleet(model.command_name(operation), "--generate-cli-skeleton").out
    if not enum_values(model.operation_model(operation).input_shape):
        assert ours.out == theirs.out


def test_delete_job_skeleton_is_the_reference_pages(aws_config: Path) -> None:
    expected = '{\n    "jobId": "",\n    "force": true,\n    "namespaceId": ""\n}\n'
    assert aws_sync(aws_config, "delete-job", "--generate-cli-skeleton") == Result(
        0, expected, "")
    assert fleet("delete-job", "--generate-cli-skeleton") == Result(0, expected, "")
    assert fleet("delete-job", "--generate-cli-skeleton", "input") == Result(0, expected, "")
    # Other options do not matter to the input skeleton; required ones are not required.
    assert fleet("delete-job", "--force", "--generate-cli-skeleton").out == expected


def test_create_job_skeleton_uses_the_first_enum_value() -> None:
    skeleton = fleet("create-job", "--generate-cli-skeleton").json
    service = model.service_model()
    assert skeleton["targetSelection"] == service.shape_for("TargetSelection").enum[0]
    assert skeleton["abortConfig"]["criteriaList"][0]["failureType"] == service.shape_for(
        "JobExecutionFailureType").enum[0]
    assert skeleton["targets"] == [""]


@pytest.mark.slow
@pytest.mark.parametrize("operation", model.OPERATIONS)
def test_output_skeleton_is_the_aws_clis(operation: str,
                                         aws_skeletons: dict[tuple[str, str], Result]) -> None:
    theirs = aws_skeletons[(operation, "output")]
    ours = fleet(model.command_name(operation), *REQUIRED[operation],
                 "--generate-cli-skeleton", "output")
    assert (ours.rc, ours.err) == (0, "")
    if theirs.rc == 0:
        assert ours.out == theirs.out
    else:
        # The AWS CLI's stub validates its own sample and rejects it (min lengths) for
        # describe-job, describe-job-execution and describe-job-template; fleet prints
        # the sample.
        assert theirs.rc == 255
        assert "Parameter validation failed" in theirs.err
        assert operation in ("DescribeJob", "DescribeJobExecution", "DescribeJobTemplate")
        output_members = model.operation_model(operation).output_shape.members
        assert list(ours.json) == list(output_members)
    if model.operation_model(operation).output_shape is None:
        assert ours.out == ""


def test_output_skeleton_validates_the_input() -> None:
    missing = fleet("delete-job", "--generate-cli-skeleton", "output")
    assert (missing.rc, missing.out) == (2, "")
    assert missing.err.splitlines()[-1] == (
        "fleet delete-job: error: the following arguments are required: --job-id")
    assert fleet("delete-job", "--job-id", "j", "--generate-cli-skeleton", "output") == Result(
        0, "", "")
    # Validated as botocore validates a real call (here: an unknown member from the JSON).
    bad = fleet("delete-job", "--cli-input-json", '{"jobId": "j", "bogus": 1}',
                "--generate-cli-skeleton", "output")
    assert (bad.rc, bad.out) == (255, "")
    assert bad.err == ('\nParameter validation failed:\nUnknown parameter in input: "bogus", '
                       "must be one of: jobId, force, namespaceId\n")
    created = fleet("create-job", "--job-id", "j", "--targets", "t",
                    "--generate-cli-skeleton", "output")
    assert created == Result(0, json.dumps({"jobArn": "jobArn", "jobId": "jobId",
                                            "description": "description"}, indent=4) + "\n",
                             "")


def test_bad_skeleton_value_is_a_usage_error() -> None:
    result = fleet("delete-job", "--generate-cli-skeleton", "yaml-input")
    assert result.rc == 2
    assert "argument --generate-cli-skeleton: invalid choice: 'yaml-input'" in result.err


# -- options: the parameters the AWS CLI would send ----------------------------------------

PARAMETER_CASES: list[tuple[str, ...]] = [
    ("delete-job", "--job-id", "j"),
    ("delete-job", "--job-id", "j", "--force"),
    ("delete-job", "--job-id", "j", "--no-force", "--namespace-id", "ns"),
    ("create-job", "--job-id", "j", "--targets", thing_arn("a"), thing_arn("b"),
     "--document", DOC, "--description", "d", "--target-selection", "CONTINUOUS"),
    ("create-job", "--job-id", "j", "--targets", json.dumps([thing_arn("a")])),
    ("create-job", "--job-id", "j", "--targets", "a", "--timeout-config",
     "inProgressTimeoutInMinutes=30"),
    ("create-job", "--job-id", "j", "--targets", "a", "--timeout-config",
     '{"inProgressTimeoutInMinutes": 30}'),
    ("create-job", "--job-id", "j", "--targets", "a", "--tags", "Key=k1,Value=v1",
     "Key=k2,Value=v2"),
    ("create-job", "--job-id", "j", "--targets", "a", "--document-parameters", "a=b,c=d"),
    ("create-job", "--job-id", "j", "--targets", "a", "--abort-config",
     "criteriaList=[{failureType=FAILED,action=CANCEL,thresholdPercentage=50.5,"
     "minNumberOfExecutedThings=3}]"),
    ("create-job", "--job-id", "j", "--targets", "a", "--job-executions-rollout-config",
     "maximumPerMinute=10,exponentialRate={baseRatePerMinute=2,incrementFactor=1.5,"
     "rateIncreaseCriteria={numberOfNotifiedThings=4}}"),
    ("create-job", "--job-id", "j", "--targets", "a", "--presigned-url-config",
     'roleArn="arn:aws:iam::1:role/r",expiresInSec=60'),
    ("create-job", "--job-id", "j", "--targets", "a", "--destination-package-versions",
     "v1", "v2"),
    ("create-job", "--job-id", "j", "--targets", "a", "--scheduling-config",
     "startTime=2030-01-01T00:00,endBehavior=CANCEL,maintenanceWindows=[{startTime=x,"
     "durationInMinutes=30}]"),
    ("list-jobs", "--status", "IN_PROGRESS", "--thing-group-name", "g"),
    ("describe-job", "--job-id", "j", "--before-substitution"),
    ("describe-job-execution", "--job-id", "j", "--thing-name", "t", "--execution-number", "7"),
    ("cancel-job", "--job-id", "j", "--reason-code", "R", "--comment", "c", "--force"),
    ("cancel-job-execution", "--job-id", "j", "--thing-name", "t", "--no-force",
     "--expected-version", "3", "--status-details", "k=v,k2=v2"),
    ("delete-job-execution", "--job-id", "j", "--thing-name", "t", "--execution-number", "2",
     "--force"),
    ("list-job-executions-for-thing", "--thing-name", "t", "--job-id", "j", "--status",
     "QUEUED"),
]

SHORTHAND_CASES = [
    "a=b", "a=b,c=d", "a=b,c", "a=b,c,d=e", "foo=a,b,c=d,e=f", "a=[1,2],b={c=d,e=[f]}",
    "a='x,y',b=\"q\\\"r\"", "a=b\\,c", "a= b ,c=d", "a=", "a=,b=c", "a=x y", "k:1=v",
    "a=[ 1 , 2 ]", "a={ b = c }", "a = b", "a=[{b=c},{d=e}]", "a=[]", "a={}",
    "a=b,a=c", "a==b", "a", "a=[", "a={b=c", "a=[1,2", "=b", "a='unterminated",
]


@pytest.mark.slow
def test_parameters_are_the_aws_clis(aws_config: Path, tmp_path: Path) -> None:
    document = tmp_path / "doc.json"
    document.write_text(DOC)
    cases = [*PARAMETER_CASES,
             ("create-job", "--job-id", "j", "--targets", "a", "--document",
              f"file://{document}", "--document-source", f"file://{document}")]
    expected = aws_batch_sync(aws_config, [{"params": ["iot", *case]} for case in cases])
    for case, theirs in zip(cases, expected, strict=True):
        assert "params" in theirs, (case, theirs)
        assert fleet_args(*case) == theirs["params"], case


@pytest.mark.slow
def test_shorthand_parses_as_the_aws_clis(aws_config: Path) -> None:
    expected = aws_batch_sync(aws_config, [{"shorthand": case} for case in SHORTHAND_CASES])
    for case, theirs in zip(SHORTHAND_CASES, expected, strict=True):
        try:
            ours: dict[str, Any] = {"parsed": shorthand.parse(case)}
        except shorthand.ShorthandError as e:
            ours = {"error": str(e)}
        assert ours == theirs, case


def test_boolean_pair() -> None:
    assert fleet_args("delete-job", "--job-id", "j") == {"jobId": "j"}  # force not sent
    assert fleet_args("delete-job", "--job-id", "j", "--force") == {"jobId": "j", "force": True}
    assert fleet_args("delete-job", "--job-id", "j", "--no-force") == {"jobId": "j",
                                                                      "force": False}


@pytest.mark.parametrize(("argv", "message"), [
    (("create-job", "--job-id", "j", "--targets", "[bad"),
     "argument --targets: Invalid JSON: Expecting value: line 1 column 2 (char 1)\n"
     "JSON received: [bad"),
    (("create-job", "--job-id", "j", "--targets", "a", "--timeout-config", "{bad"),
     "argument --timeout-config: Invalid JSON: Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1)\nJSON received: {bad"),
    (("create-job", "--job-id", "j", "--targets", "a", "--timeout-config",
      "inProgressTimeoutInMinutes=soon"),
     "argument --timeout-config: invalid literal for int() with base 10: 'soon'"),
    (("create-job", "--job-id", "j", "--targets", "a", "--timeout-config", "a==b"),
     "argument --timeout-config: Expected: ',', received: '=' for input:\na==b\n  ^"),
    (("create-job", "--job-id", "j", "--targets", "a", "--document", "file:///nonexistent"),
     "argument --document: Unable to load paramfile file:///nonexistent: [Errno 2] No such "
     "file or directory: '/nonexistent'"),
])
def test_bad_value_is_a_usage_error_naming_the_option(argv: tuple[str, ...],
                                                      message: str) -> None:
    with pytest.raises(ParamError) as info:
        fleet_args(*argv)
    assert str(info.value) == message
    result = fleet(*argv)
    assert (result.rc, result.out) == (2, "")
    assert result.err.startswith(f"usage: fleet {argv[0]} ")
    assert result.err.endswith(f"fleet {argv[0]}: error: {message}\n")


@pytest.mark.parametrize(("argv", "message"), [
    (("delete-job",), "the following arguments are required: --job-id"),
    (("delete-job-execution", "--job-id", "j"),
     "the following arguments are required: --thing-name, --execution-number"),
    (("delete-job", "--cli-input-json", '{"force": true}'),
     "the following arguments are required: --job-id"),
    (("delete-job", "--job-id", "j", "--cli-input-json", "{"),
     "argument --cli-input-json: Invalid JSON: Expecting property name enclosed in double "
     "quotes: line 1 column 2 (char 1)\nJSON received: {"),
    (("delete-job", "--job-id", "j", "--cli-input-json", "[]"),
     "argument --cli-input-json: Invalid JSON: not an object of parameters"),
    (("list-jobs", "--no-paginate", "--max-items", "1"),
     "argument --max-items: not allowed with --no-paginate (no automatic pagination)"),
    (("list-jobs", "--max-results", "2", "--starting-token", "t"),
     "argument --starting-token: not allowed with --max-results (no automatic pagination)"),
    (("describe-job-execution", "--job-id", "j", "--thing-name", "t", "--execution-number",
      "one"), "argument --execution-number: invalid int value: 'one'"),
])
def test_usage_errors_name_the_option(argv: tuple[str, ...], message: str) -> None:
    result = fleet(*argv)
    assert (result.rc, result.out) == (2, "")
    assert result.err.splitlines()[-1] == f"fleet {argv[0]}: error: {message}".splitlines()[-1]
    assert f"fleet {argv[0]}: error: {message}" in result.err


def test_unknown_option_is_a_usage_error() -> None:
    result = fleet("delete-job", "--job-id", "j", "--bogus")
    assert (result.rc, result.out) == (2, "")
    assert result.err.splitlines()[-1] == "fleet: error: unrecognized arguments: --bogus"


def test_no_endpoint_is_an_error_naming_the_fix() -> None:
    result = fleet("describe-job", "--job-id", "j")
    assert (result.rc, result.out) == (2, "")
    assert result.err.startswith("fleet describe-job: no running `fleet up` found")
    assert "--endpoint-url" in result.err


def test_every_mirrored_command_is_registered() -> None:
    parser = fleet_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [
        "create-job", "describe-job", "list-jobs", "get-job-document", "cancel-job",
        "delete-job", "describe-job-execution", "list-job-executions-for-job",
        "list-job-executions-for-thing", "cancel-job-execution", "delete-job-execution",
        "associate-targets-with-job", "update-job", "create-job-template",
        "describe-job-template", "list-job-templates", "delete-job-template", "create-thing",
        "describe-thing", "update-thing", "list-things", "delete-thing", "create-thing-group",
        "describe-thing-group",
        "update-thing-group", "delete-thing-group", "list-thing-groups",
        "add-thing-to-thing-group", "remove-thing-from-thing-group",
        "update-thing-groups-for-thing", "list-things-in-thing-group",
        "list-thing-groups-for-thing"]
    delete_job = sub.choices["delete-job"]
    options = {s for a in delete_job._actions for s in a.option_strings}
    assert {"--job-id", "--force", "--no-force", "--namespace-id", "--cli-input-json",
            "--generate-cli-skeleton", "--endpoint-url", "--region", "--output"} <= options
    list_jobs = sub.choices["list-jobs"]
    options = {s for a in list_jobs._actions for s in a.option_strings}
    assert {"--max-items", "--page-size", "--starting-token", "--next-token",
            "--max-results", "--no-paginate"} <= options
    usage = list_jobs.format_usage()  # undocumented, as in the AWS CLI
    assert "--next-token" not in usage
    assert "--max-results" not in usage


def test_fleet_cli_wires_the_commands() -> None:
    from fleet import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "delete-job" not in sub.choices:
        pytest.skip("fleet/cli.py does not register fleet.awscli (its `register(sub)` hook)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["delete-job", "--generate-cli-skeleton"]) == 0
    assert json.loads(out.getvalue()) == {"jobId": "", "force": True, "namespaceId": ""}


# -- against a running control plane -------------------------------------------------------

@dataclass
class Plane:
    store: Any
    url: str
    home: Path

    async def aws(self, *args: str) -> Result:
        return await aws(self.home, *args, "--endpoint-url", self.url)

    async def aws_batch(self, *commands: tuple[str, ...]) -> list[Result]:
        return await aws_batch(self.home, *((*c, "--endpoint-url", self.url) for c in commands))

    async def fleet(self, *args: str) -> Result:
        return await asyncio.to_thread(fleet, *args, "--endpoint-url", self.url)

    async def both(self, *args: str) -> tuple[Result, Result]:
        """(aws, fleet) for the same command; run the AWS CLI first."""
        theirs = await self.aws(*args)
        return theirs, await self.fleet(*args)

    def status(self, job_id: str) -> str:
        return str(self.store.describe_job(job_id).status.value)

    async def create(self, job_id: str, *things: str) -> None:
        result = await self.fleet("create-job", "--job-id", job_id, "--document", DOC,
                                  "--targets", *(thing_arn(t) for t in things))
        assert result.rc == 0, result.err


@pytest.fixture
async def plane(tmp_path: Path, aws_config: Path) -> AsyncIterator[Plane]:
    server = pytest.importorskip(
        "fleet.service.controlplane.server",
        reason="the control plane (fleet/service/controlplane/server.py) is not there yet")
    from fleet.service.settings import ServiceSettings
    from fleet.service.store import JobsStore

    store = JobsStore(tmp_path / "jobs.sqlite", ServiceSettings(), now=lambda: T0)
    control = server.ControlPlane(store, store.drain)
    url = await control.start()
    try:
        yield Plane(store, url, aws_config)
    finally:
        await control.stop()
        store.close()


async def test_create_and_describe_job(plane: Plane) -> None:
    created = await plane.fleet("create-job", "--job-id", "job-1", "--targets",
                                thing_arn("a"), thing_arn("b"), "--document", DOC,
                                "--description", "firmware 1.2.3")
    assert created == Result(0, json.dumps({
        "jobArn": f"arn:aws:iot:us-east-1:{ACCOUNT}:job/job-1", "jobId": "job-1",
        "description": "firmware 1.2.3"}, indent=4) + "\n", "")
    described = await plane.fleet("describe-job", "--job-id", "job-1")
    assert (described.rc, described.err) == (0, "")
    job = described.json["job"]
    assert (job["jobId"], job["status"], job["targets"]) == (
        "job-1", "IN_PROGRESS", [thing_arn("a"), thing_arn("b")])
    assert job["createdAt"] == T0  # as it came over the wire, as the AWS CLI v1 prints it
    assert described.out.startswith('{\n    "job": {\n        "jobArn": ')
    document = await plane.fleet("get-job-document", "--job-id", "job-1")
    assert document == Result(0, json.dumps({"document": DOC}, indent=4) + "\n", "")


async def test_delete_job_force_prints_nothing(plane: Plane) -> None:
    await plane.create("job-1", "a")
    assert await plane.fleet("delete-job", "--job-id", "job-1", "--force") == Result(0, "", "")
    assert plane.status("job-1") == "DELETION_IN_PROGRESS"


async def test_cli_input_json_is_the_same_as_options(plane: Plane) -> None:
    await plane.create("by-flags", "a")
    await plane.create("by-json", "a")
    assert await plane.fleet("delete-job", "--job-id", "by-flags", "--force") == Result(
        0, "", "")
    assert await plane.fleet("delete-job", "--cli-input-json",
                             '{"jobId":"by-json","force":true}') == Result(0, "", "")
    assert plane.status("by-flags") == plane.status("by-json") == "DELETION_IN_PROGRESS"


async def test_cli_input_json_from_a_file(plane: Plane, tmp_path: Path) -> None:
    await plane.create("job-1", "a")
    (tmp_path / "input.json").write_text('{"jobId": "job-1", "force": true}')
    assert await plane.fleet("delete-job", "--cli-input-json",
                             f"file://{tmp_path / 'input.json'}") == Result(0, "", "")
    assert plane.status("job-1") == "DELETION_IN_PROGRESS"


async def test_options_override_cli_input_json(plane: Plane) -> None:
    await plane.create("A", "a")
    await plane.create("B", "a")
    assert await plane.fleet("delete-job", "--cli-input-json", '{"jobId":"A","force":true}',
                             "--job-id", "B") == Result(0, "", "")
    assert (plane.status("A"), plane.status("B")) == ("IN_PROGRESS", "DELETION_IN_PROGRESS")
    # --no-force overrides the JSON's force=true: the service refuses.
    refused = await plane.fleet("delete-job", "--cli-input-json", '{"jobId":"A","force":true}',
                                "--no-force")
    assert refused.rc == 255
    assert "(InvalidStateTransitionException)" in refused.err
    assert plane.status("A") == "IN_PROGRESS"


async def test_output_skeleton_does_not_call_the_service(plane: Plane) -> None:
    await plane.create("job-1", "a")
    assert await plane.fleet("delete-job", "--job-id", "job-1", "--force",
                             "--generate-cli-skeleton", "output") == Result(0, "", "")
    missing = await plane.fleet("delete-job", "--generate-cli-skeleton", "output")
    assert missing.rc == 2
    assert "the following arguments are required: --job-id" in missing.err
    assert plane.status("job-1") == "IN_PROGRESS"


async def test_service_error(plane: Plane) -> None:
    theirs, ours = await plane.both("delete-job", "--job-id", "nope")
    assert (ours.rc, ours.out) == (255, "")
    assert re.fullmatch(r"\nAn error occurred \(ResourceNotFoundException\) when calling the "
                        r"DeleteJob operation: .+\n", ours.err), ours.err
    assert ours == theirs


async def test_no_force_sends_force_false(plane: Plane) -> None:
    await plane.create("job-1", "a")
    theirs, ours = await plane.both("delete-job", "--job-id", "job-1", "--no-force")
    assert (ours.rc, ours.out) == (255, "")
    assert ours.err.startswith("\nAn error occurred (InvalidStateTransitionException) when "
                               "calling the DeleteJob operation: ")
    assert ours == theirs
    assert plane.status("job-1") == "IN_PROGRESS"


async def test_pagination(plane: Plane) -> None:
    for n in range(3):
        await plane.create(f"job-{n}", "a")

    def job_ids(result: Result) -> list[str]:
        assert result.rc == 0, result.err
        return [job["jobId"] for job in result.json["jobs"]]

    every = job_ids(await plane.fleet("list-jobs"))
    assert sorted(every) == ["job-0", "job-1", "job-2"]
    assert job_ids(await plane.fleet("list-jobs", "--page-size", "1")) == every
    first = await plane.fleet("list-jobs", "--max-items", "2")
    assert job_ids(first) == every[:2]
    rest = await plane.fleet("list-jobs", "--starting-token", first.json["NextToken"])
    assert job_ids(rest) == every[2:]
    one_call = await plane.fleet("list-jobs", "--max-results", "1")
    assert job_ids(one_call) == every[:1]
    assert "nextToken" in one_call.json
    assert job_ids(await plane.fleet("list-jobs", "--no-paginate")) == every


@pytest.mark.slow
async def test_output_and_errors_are_the_aws_clis(plane: Plane, tmp_path: Path) -> None:
    """The same commands through both CLIs: the same exit status, stdout and stderr."""
    await plane.create("job-1", "a", "b")
    await plane.create("job-2", "a")
    await plane.create("job-3", "c")
    plane.store.start_next("a")
    document = tmp_path / "doc.json"
    document.write_text(DOC)
    token = (await plane.fleet("list-jobs", "--max-items", "1")).json["NextToken"]
    commands_ = [
        ("describe-job", "--job-id", "job-1"),
        ("describe-job", "--job-id", "job-1", "--before-substitution"),
        ("describe-job", "--job-id", "nope"),
        ("get-job-document", "--job-id", "job-2"),
        ("list-jobs",),
        ("list-jobs", "--status", "IN_PROGRESS"),
        ("list-jobs", "--max-items", "1"),
        ("list-jobs", "--starting-token", token),
        ("list-jobs", "--page-size", "2"),
        ("list-jobs", "--max-results", "2"),
        ("list-jobs", "--no-paginate"),
        ("list-jobs", "--query", "jobs[].[jobId, status]"),
        ("list-jobs", "--starting-token", "garbage"),
        ("describe-job-execution", "--job-id", "job-1", "--thing-name", "a"),
        ("describe-job-execution", "--job-id", "job-1", "--thing-name", "b",
         "--execution-number", "1"),
        ("describe-job-execution", "--job-id", "job-1", "--thing-name", "zz"),
        ("list-job-executions-for-job", "--job-id", "job-1"),
        ("list-job-executions-for-job", "--job-id", "job-1", "--status", "IN_PROGRESS"),
        ("list-job-executions-for-thing", "--thing-name", "a"),
        ("list-job-executions-for-thing", "--thing-name", "a", "--max-items", "1"),
        ("cancel-job-execution", "--job-id", "job-1", "--thing-name", "zz"),
        ("delete-job-execution", "--job-id", "job-1", "--thing-name", "a",
         "--execution-number", "1"),
        ("delete-job", "--job-id", "job-1"),
        ("delete-job", "--cli-input-json", '{"jobId": "job-1", "bogus": 1}'),
        ("create-job", "--job-id", "job-1", "--targets", thing_arn("a"), "--document", DOC),
        ("create-job", "--job-id", "bad.id", "--targets", thing_arn("a"), "--document", DOC),
        ("create-job", "--job-id", "j", "--targets", thing_arn("a")),
    ]
    theirs = await plane.aws_batch(*commands_)
    for command, expected in zip(commands_, theirs, strict=True):
        assert await plane.fleet(*command) == expected, command

    # Mutations: the same command on twin jobs, outputs alike but for the job id.
    def twin(result: Result) -> Result:
        return Result(result.rc, result.out.replace("twin-aws", "twin-fleet"),
                      result.err.replace("twin-aws", "twin-fleet"))

    mutations = [
        ("create-job", "--job-id", "{id}", "--targets", thing_arn("d"), thing_arn("e"),
         "--document", f"file://{document}", "--description", "d", "--timeout-config",
         "inProgressTimeoutInMinutes=30", "--namespace-id", "ns"),
        ("describe-job", "--job-id", "{id}"),
        ("cancel-job", "--job-id", "{id}", "--reason-code", "R", "--comment", "why"),
        ("describe-job", "--job-id", "{id}"),
        ("cancel-job-execution", "--job-id", "{id}", "--thing-name", "d", "--status-details",
         "why=tests,who=me"),
        ("describe-job-execution", "--job-id", "{id}", "--thing-name", "d"),
        ("delete-job-execution", "--job-id", "{id}", "--thing-name", "d",
         "--execution-number", "1"),
        ("list-job-executions-for-job", "--job-id", "{id}"),
        ("delete-job", "--job-id", "{id}", "--force"),
    ]
    theirs = await plane.aws_batch(*(tuple(a.replace("{id}", "twin-aws") for a in command)
                                     for command in mutations))
    for command, expected in zip(mutations, theirs, strict=True):
        ours = await plane.fleet(*(a.replace("{id}", "twin-fleet") for a in command))
        assert ours == twin(expected), command
    assert plane.status("twin-fleet") == plane.status("twin-aws") == "DELETION_IN_PROGRESS"


async def test_batched_aws_is_the_aws_executable(plane: Plane) -> None:
    await plane.create("job-1", "a")
    commands_ = [("describe-job", "--job-id", "job-1"), ("delete-job", "--job-id", "nope"),
                 ("delete-job",), ("delete-job", "--generate-cli-skeleton")]
    batched = await plane.aws_batch(*commands_)
    executable = await asyncio.gather(*(plane.aws(*command) for command in commands_))
    assert batched == executable


async def test_iso8601_timestamps_when_configured(plane: Plane) -> None:
    await plane.create("job-1", "a")
    (plane.home / "config").write_text("[default]\ncli_timestamp_format = iso8601\n")
    theirs, ours = await plane.both("describe-job", "--job-id", "job-1")
    assert ours.json["job"]["createdAt"] == "2023-11-14T22:13:20.250000+00:00"
    assert ours == theirs


def test_client_configuration(aws_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.awscli.client import make_client

    client = make_client(endpoint_url="http://127.0.0.1:9", region=None, profile=None)
    assert client.meta.region_name == "us-east-1"
    assert client.meta.config.retries["mode"] == "legacy"
    (aws_config / "config").write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    client = make_client(endpoint_url="http://127.0.0.1:9", region=None, profile=None)
    assert client.meta.region_name == "eu-west-1"


def test_dummy_credentials_only_when_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.awscli.client import DUMMY_CREDENTIALS, make_client

    client = make_client(endpoint_url="http://127.0.0.1:9", region=None, profile=None)
    assert client._request_signer._credentials.access_key == "x"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    client = make_client(endpoint_url="http://127.0.0.1:9", region=None, profile=None)
    assert (client._request_signer._credentials.access_key
            == DUMMY_CREDENTIALS["aws_access_key_id"])
