"""`esp32emu fleet --ray` (issue 17) on real Ray: a local instance
(`ray.init(num_cpus=2)`) and a two-node cluster on this machine
(`ray.cluster_utils.Cluster`), each started once per test session and
joined by the fleets, which run as `esp32emu` subprocesses.

One xdist worker starts Ray: every test that needs it is in the xdist group
"ray" (pyproject's addopts use `--dist loadgroup`), so the session fixtures
below run in one process, once, and are torn down (`ray.shutdown()`,
`Cluster.shutdown()`) when that worker ends. Without Ray (`esp32emu[ray]`
not installed) those tests skip; the exit-2 test runs anyway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emulator.fleet.groups import will_bound_s
from emulator.fleet.workers import GroupSpec, split

REPO = Path(__file__).resolve().parent.parent
ESP32EMU = [sys.executable, "-m", "emulator"]


def _env() -> dict:
    """Taken when a fleet starts: ray.init() puts what a driver needs to join
    its instance (RAY_AUTH_MODE=token: the token in ~/.ray) in os.environ."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def needs_ray(test):
    """One xdist worker runs these (and so starts Ray): the group "ray"."""
    for mark in (pytest.mark.xdist_group("ray"), pytest.mark.slow, pytest.mark.integration):
        test = mark(test)
    return test


def _ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'esp32emu[ray]')")


# The two-node cluster lives in a child process (it starts while this process
# starts its local instance: Ray's start-up is most of these tests' time);
# it shuts the cluster down when its stdin closes, also if we die.
_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    sys.stdin.read()
finally:
    cluster.shutdown()
"""


@pytest.fixture(scope="session")
def ray_instances():
    """(local instance's address, two-node cluster's address), each started once."""
    ray = _ray()
    cluster_env = _env()  # a driver joins with the environment its cluster was started with (auth mode)
    cluster = subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=cluster_env)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            address = cluster.stdout.readline().strip()
            assert address, "the two-node cluster did not start"
            yield (ray.get_runtime_context().gcs_address, _env()), (address, cluster_env)
        finally:
            ray.shutdown()
    finally:
        cluster.stdin.close()
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()


@pytest.fixture
def ray_local(ray_instances):
    """A local Ray instance (`ray.init(num_cpus=2)`, this process its driver): (address, environment) for fleets to join."""
    return ray_instances[0]


@pytest.fixture
def ray_two_nodes(ray_instances):
    """Two Ray nodes on this machine (one core each, `ray.cluster_utils.Cluster`): (head's address, environment)."""
    return ray_instances[1]


def _fleet(tmp: Path, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ESP32EMU + ["--state", str(tmp / name), "fleet", "--quiet", "--report", str(tmp / f"{name}.json"), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env or _env())


def _connected_ids(state: Path) -> set[str]:
    """The client ids the fleet's private Mosquitto let in (its own log: a witness the fleet does not write)."""
    log = (state / "broker" / "mosquitto.log").read_text()
    return set(re.findall(r"New client connected from \S+ as (dev-\d{5})", log))


@needs_ray
def test_ray_and_workers_run_the_same_fleet(tmp_path, ray_local):
    devices = 12
    common = ["--devices", str(devices), "--interval", "1", "--keepalive", "5", "--duration", "4", "--seed", "3"]
    address, env = ray_local
    ray_run = _fleet(tmp_path, "ray", *common, "--ray", address, "--groups", "2", env=env)
    local_run = _fleet(tmp_path, "workers", *common, "--workers", "2")
    for proc in (ray_run, local_run):
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
    ray_report = json.loads((tmp_path / "ray.json").read_text())
    local_report = json.loads((tmp_path / "workers.json").read_text())
    ids = {f"dev-{i:05d}" for i in range(1, devices + 1)}
    assert _connected_ids(tmp_path / "ray") == _connected_ids(tmp_path / "workers") == ids
    for report in (ray_report, local_report):
        assert report["online_at_end"] == devices and report["all_online_s"] is not None
        assert report["telemetry_lost"] == 0 and report["telemetry_received"] >= devices * 2
        assert report["lwt_seen"] == 0 and report["reconnects"] == 0
        assert report["commands_ok"] == report["commands_sent"] > 0
        assert [g["boards"] for g in report["groups"]] == [devices // 2, devices // 2]
    assert local_report["engine"] == "processes" and ray_report["engine"] == "ray"
    assert ray_report["nodes"] == 1 and ray_report["groups_lost"] == []
    assert all(g["state"] == "running" and g["rss_mb"] > 0 and g["loop_lag_p99_ms"] is not None for g in ray_report["groups"])


@needs_ray
def test_a_killed_group_and_a_group_that_died_are_reported_and_the_fleet_goes_on(tmp_path, ray_two_nodes):
    """Group 1's node dies on cue (--kill-group: no FIN, so the broker gives its
    boards up on their keepalive); group 2's actor process is SIGKILLed from
    outside (the kernel closes its sockets); group 0 runs to the end."""
    ka, devices = 2, 12
    proc = _fleet(tmp_path, "kill", "--devices", str(devices), "--interval", "1", "--keepalive", str(ka),
                  "--duration", "5", "--ray", ray_two_nodes[0], "--groups", "3", "--kill-group", "1@2", env=ray_two_nodes[1])
    pids: dict[int, int] = {}
    killed_2 = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = re.match(r"esp32emu: group (\d+): \d+ boards on node \S+ \(.*, pid (\d+)\)", line)
            if m:
                pids[int(m.group(1))] = int(m.group(2))
            if "group 1's node dies" in line and 2 in pids:
                os.kill(pids[2], signal.SIGKILL)
                killed_2.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert proc.returncode == 0, "".join(lines)
    assert killed_2.is_set(), "".join(lines)
    report = json.loads((tmp_path / "kill.json").read_text())
    groups = split(range(devices), 3)
    assert report["engine"] == "ray" and report["nodes"] == 2  # SPREAD: both nodes hold groups
    assert [g["state"] for g in report["groups"]] == ["running", "killed", "died"]
    lost = {g["group"]: g for g in report["groups_lost"]}
    assert set(lost) == {1, 2}
    bound = will_bound_s(ka)
    for g in (1, 2):
        assert lost[g]["boards"] == [f"dev-{i + 1:05d}" for i in groups[g]]
        assert lost[g]["wills_seen"] == lost[g]["wills_within_bound"] == len(groups[g]), lost[g]
        assert lost[g]["will_bound_s"] == bound
    assert lost[1]["how"] == "killed" and lost[2]["how"] == "died" and lost[2]["reason"]
    # No FIN from the killed node: the broker waited for the keepalive (1.5·KA after
    # the last packet, which left at most one telemetry interval before the kill).
    assert lost[1]["will_after_s"]["min"] >= 1.5 * ka - 1 - 0.2, lost[1]
    # The fleet went on: group 0's boards online to the end, nothing lost.
    assert report["online_at_end"] == len(groups[0])
    assert report["telemetry_lost"] == 0 and report["lwt_seen"] == len(groups[1]) + len(groups[2])


def test_a_group_refuses_when_its_node_cannot_hold_its_boards(tmp_path):
    """The open-file check each actor makes before building (here beyond
    what any process may raise its limit to: /proc/sys/fs/nr_open)."""
    import asyncio

    ray_host = pytest.importorskip("emulator.cluster.ray_host")
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    spec = GroupSpec(range(nr_open + 1), nr_open + 1, "127.0.0.1", 1883, False, 5, 1, 0, tmp_path, tmp_path, 50.0)
    with pytest.raises(ray_host.GroupRefused, match=r"group 0 on .*: \d+ boards need about \d+ open files .* use more --groups"):
        asyncio.run(ray_host.GroupActor(spec, 0).build(1))


def test_ray_flag_without_ray_exits_2_with_the_install_command(tmp_path):
    hide = "import sys; sys.modules['ray'] = None; from emulator.cli import main; raise SystemExit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", hide, "--state", str(tmp_path), "fleet", "--ray", "--devices", "2"],
                       capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "esp32emu: --ray needs Ray, which is not installed here: pip install 'esp32emu[ray]'"
    assert not (tmp_path / "broker").exists()  # nothing started

