"""Past one machine: device workers join a drill through the broker alone.

* The messages (pure): a history part survives chunking, reordering and redelivery whole;
  a corrupt, truncated or short part is refused with the reason; shards cover the fleet
  exactly once; an invitation that is not one is refused.
* The hub ignores another run's messages (a worker left over from an earlier drill).
* End to end, with processes that share nothing with the drill but the broker (their own
  working directories; one started before the drill, one after): a ``--shards 2`` drill
  passes and its history holds both shards' parts; a shard that never joins stops the drill
  with a diagnosis; a worker started with the wrong shard count, or with options the drill
  decides, says so in one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import uuid
from pathlib import Path

import pytest

from devicesim.mqtt import SECRET_ENV
from devicesim.wire.joining import (
    Invitation,
    JoinError,
    PartAssembler,
    message,
    part_messages,
    shard_range,
    topic,
)
from fleet.broker import BrokerAddress

SEEDS = [7, 1234]
SIZE_10 = 10.0


def lines(n: int, rng: random.Random) -> list[bytes]:
    return [json.dumps({"time": i, "noise": rng.random()}).encode() + b"\n" for i in range(n)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 500])
def test_a_part_arrives_whole_in_any_order_and_with_duplicates(seed: int, n: int) -> None:
    print(f"seed={seed} n={n}")
    rng = random.Random(seed)
    data = lines(n, rng)
    messages = list(part_messages("run-1", 0, iter(data), {"things": {}, "failures": []},
                                  chunk_bytes=64))
    assert n < 100 or len(messages) > 3  # really cut into chunks
    shuffled = messages + rng.sample(messages, len(messages) // 2)  # QoS 1 redelivers
    rng.shuffle(shuffled)
    part = PartAssembler()
    for m in shuffled[:-1]:
        part.add(m)
    last = shuffled[-1]
    assert not part.complete or last in shuffled[:-1]
    part.add(last)
    assert part.complete
    assert part.lines() == [line.rstrip(b"\n") for line in data]
    assert part.summary == {"things": {}, "failures": []}


def test_a_missing_or_corrupt_chunk_or_a_short_part_is_refused() -> None:
    data = lines(300, random.Random(1))
    messages = list(part_messages("r", 1, iter(data), {}, chunk_bytes=64))
    missing = PartAssembler()
    for m in messages[1:]:
        missing.add(m)
    assert not missing.complete
    with pytest.raises(JoinError, match="incomplete"):
        missing.lines()
    corrupt = PartAssembler()
    for m in messages:
        head, _, body = m.partition(b"\n")
        corrupt.add(head + b"\n" + (body[::-1] if b'"chunk":1' in head else body))
    with pytest.raises(JoinError, match="decompress"):
        corrupt.lines()
    short = PartAssembler()
    for m in messages[:-1]:
        short.add(m)
    summary = json.loads(messages[-1])
    summary["ops"] += 1
    short.add(json.dumps(summary).encode() + b"\n")
    with pytest.raises(JoinError, match="holds 300 ops; its worker wrote 301"):
        short.lines()
    with pytest.raises(JoinError, match="header"):
        PartAssembler().add(b'{"run": "r", "chunk": 0}')


@pytest.mark.parametrize("total", [1, 7, 100, 10001])
@pytest.mark.parametrize("shards", [1, 2, 3, 8])
def test_shards_cover_the_fleet_exactly_once(total: int, shards: int) -> None:
    covered: list[int] = []
    for i in range(shards):
        start, count = shard_range(i, shards, total)
        covered.extend(range(start, start + count))
    assert covered == list(range(total))
    with pytest.raises(JoinError):
        shard_range(shards, shards, total)


def test_an_invitation_round_trips_and_garbage_is_refused() -> None:
    invitation = Invitation(run="r", drill="d", prefix="dev-", total=10,
                            mix={"reference": 0.9, "stuck": 0.1}, seed=3, shards=2)
    assert Invitation.from_payload(invitation.to_payload()) == invitation
    for bad in (b"", b"[]", b"{", b'{"run": "r"}',
                b'{"run":"r","drill":"d","prefix":"p","total":0,"mix":{},"seed":1,"shards":1}',
                b'{"run":"r","drill":"d","prefix":"p","total":5,"mix":3,"seed":1,"shards":1}'):
        with pytest.raises(JoinError):
            Invitation.from_payload(bad)


# --- the hub on a real broker --------------------------------------------------------------


@pytest.mark.broker
async def test_the_hub_ignores_another_runs_workers(broker_address: BrokerAddress) -> None:
    from devicesim.mqtt import Client, ClientOptions, Pump
    from fleet.drill.shards import ShardHub

    session = f"t-{uuid.uuid4().hex[:8]}"
    print(f"session={session}")
    changed = asyncio.Event()
    joined: list[int] = []
    hub = ShardHub(broker_address, session,
                   Invitation(run="current", drill="d", prefix="dev-", total=4,
                              mix={"reference": 1.0}, seed=1, shards=2),
                   listener=lambda op: None, on_change=changed.set,
                   on_joined=lambda shard, info: joined.append(shard))
    await hub.start()
    pump = Pump()
    b = broker_address
    worker = Client(ClientOptions(client_id=f"w-{session}", host=b.host, port=b.port,
                                  clean_session=True, username=b.username,
                                  password=b.password),
                    pump, on_message=lambda t, p: None)
    await worker.connect()
    try:
        for run in ("stale", "current"):
            worker.publish(topic(session, "joined", 1), message(run, shard=1, pid=1))
            for m in part_messages(run, 1, iter([b'{"a":1}\n']), {"things": {}}):
                worker.publish(topic(session, "part", 1), m)
        async with asyncio.timeout(SIZE_10):
            while not hub.settled(1):
                changed.clear()
                await changed.wait()
        assert joined == [1]
        assert hub.parts[1].lines == [b'{"a":1}']
        assert not hub.settled(0)
    finally:
        await worker.close()
        await pump.close()
        await hub.close()


# --- end to end: workers that share only the broker ----------------------------------------


def environment(broker: BrokerAddress) -> dict[str, str]:
    """What a user gives processes started by hand: the privileged identity's secret on a
    broker running the devicesim_aws plugin (a drill's topics are not a device's)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", SECRET_ENV: broker.secret or ""}


async def start_worker(broker: BrokerAddress, session: str, shard: str, cwd: Path,
                       *extra: str) -> asyncio.subprocess.Process:
    cwd.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test's own temp dir)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicesim.cli", "run", "--broker", broker.url, "--join",
        session, "--shard", shard, "--join-timeout", "120", *extra, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=environment(broker))


async def start_drill(broker: BrokerAddress, session: str, report_dir: Path, *extra: str
                      ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", "drill", "force-delete", "--devices", "60",
        "--seed", "5", "--broker", broker.url, "--shards", "2", "--session", session,
        "--report-dir", str(report_dir), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=environment(broker))


async def output(proc: asyncio.subprocess.Process, seconds: float = 120) -> tuple[int, str]:
    assert proc.stdout is not None
    async with asyncio.timeout(seconds):
        out = (await proc.stdout.read()).decode()
        return await proc.wait(), out


@pytest.mark.broker
@pytest.mark.slow
async def test_a_drill_passes_with_shards_that_share_only_the_broker(
        broker_address: BrokerAddress, tmp_path: Path) -> None:
    session = f"remote-{uuid.uuid4().hex[:8]}"
    print(f"session={session} seed=5")
    b = broker_address
    early = await start_worker(b, session, "0/2", tmp_path / "host-a")  # before the drill
    drill = await start_drill(b, session, tmp_path / "report")
    late = await start_worker(b, session, "1/2", tmp_path / "host-b")  # and after
    code, text = await output(drill)
    results = [await output(w, 30) for w in (early, late)]
    assert code == 0, text + "".join(out for _, out in results)
    assert [c for c, _ in results] == [0, 0], results
    ops = [json.loads(line) for line in
           (tmp_path / "report" / "history.jsonl").read_text().splitlines()]
    joined = {op["value"]["shard"]: op["value"]["pid"] for op in ops
              if op["f"] == "shard-joined"}
    assert joined == {0: early.pid, 1: late.pid}
    requests = {op["process"] for op in ops if op["type"] == "invoke"
                and op["process"].startswith("dev-")}
    assert requests == {f"dev-{i:04d}" for i in range(60)}  # both shards' parts merged
    # nothing of the drill was written where the workers ran
    assert not [p for p in (tmp_path / "host-a").rglob("*")]
    assert not [p for p in (tmp_path / "host-b").rglob("*")]


@pytest.mark.broker
@pytest.mark.slow
async def test_a_shard_that_never_joins_stops_the_drill_with_a_diagnosis(
        broker_address: BrokerAddress, tmp_path: Path) -> None:
    session = f"missing-{uuid.uuid4().hex[:8]}"
    print(f"session={session} seed=5")
    worker = await start_worker(broker_address, session, "0/2", tmp_path / "host-a")
    drill = await start_drill(broker_address, session, tmp_path / "report", "--join-timeout", "3")
    code, text = await output(drill, 60)  # no wait for the part of a shard that never came
    assert code == 1, text
    _, worker_text = await output(worker, 30)  # told to stop; its part was collected
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    complete = next(r for r in report["results"] if r["name"] == "complete")
    messages = " ".join(v["message"] for v in complete["violations"])
    assert "1 of 2 shards to join" in messages, messages
    assert "the drill stalled: not every shard joined within 3 s" in messages, messages
    assert "device shard 1 failed: RuntimeError: never joined" in messages, messages


@pytest.mark.broker
async def test_a_worker_with_the_wrong_shard_count_or_the_drills_options_says_so(
        broker_address: BrokerAddress, tmp_path: Path) -> None:
    from fleet.drill.shards import ShardHub

    session = f"wrong-{uuid.uuid4().hex[:8]}"
    hub = ShardHub(broker_address, session,
                   Invitation(run="r", drill="d", prefix="dev-", total=4,
                              mix={"reference": 1.0}, seed=1, shards=2),
                   listener=lambda op: None, on_change=lambda: None,
                   on_joined=lambda shard, info: None)
    await hub.start()
    try:
        code, text = await output(await start_worker(broker_address, session, "0/3", tmp_path,
                                                     "--quiet"), 30)
    finally:
        await hub.close()
    assert code == 1
    assert text.strip().splitlines() == [
        f"devicesim run: failure: join {session!r}: drill 'd' has 2 shards; this worker is "
        "shard 0/3"]
    code, text = await output(await start_worker(broker_address, session, "0/2", tmp_path,
                                                 "--count", "5", "--seed", "2"), 30)
    assert code == 2
    assert text.strip() == ("devicesim run: --join: the drill chooses the fleet; drop --count,"
                            " --seed")


# --- the Kubernetes example ------------------------------------------------------------------


def test_the_kubernetes_example_runs_commands_the_clis_accept_and_agree_on() -> None:
    import shlex

    import yaml

    from devicesim import cli as devicesim_cli
    from fleet.cli import build_parser
    from fleet.drill.cli import _drill_from

    root = Path(__file__).parent.parent / "examples" / "kubernetes"
    docs = {(d["kind"], d["metadata"]["name"]): d for f in sorted(root.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d}
    service = docs[("Service", "devicesim-broker")]
    url = f"mqtt://devicesim-broker:{service['spec']['ports'][0]['port']}"
    drill_argv = docs[("Job", "devicesim-drill")]["spec"]["template"]["spec"][
        "containers"][0]["command"]
    assert drill_argv[:2] == ["fleet", "drill"]
    drill_args = build_parser().parse_args(drill_argv[1:])
    drill = _drill_from(drill_args)  # a usage error raises here
    assert drill_args.broker == url
    shards = docs[("Job", "devicesim-shards")]["spec"]
    assert shards["completionMode"] == "Indexed"
    assert shards["completions"] == shards["parallelism"] == drill_args.shards
    script = shards["template"]["spec"]["containers"][0]["command"]
    assert script[:2] == ["sh", "-c"]
    covered: list[int] = []
    for index in range(shards["completions"]):
        argv = shlex.split(script[2].replace("${JOB_COMPLETION_INDEX}", str(index)))
        assert argv[:3] == ["exec", "devicesim", "run"]
        args = devicesim_cli.build_parser().parse_args(argv[2:])
        session, shard, n = devicesim_cli._join_options(args)
        assert (session, shard, n, args.broker) == (drill_args.session, index,
                                                    drill_args.shards, url)
        start, count = shard_range(shard, n, drill.devices)
        covered.extend(range(start, start + count))
    assert covered == list(range(drill.devices))
