"""`esp32emu fleet --ray` (issue 17) on real Ray: a local instance
(`ray.init(num_cpus=2)`) and a two-node cluster on this machine
(`ray.cluster_utils.Cluster`), each started once per test session and
joined by the fleets, which run as `esp32emu` subprocesses.

One xdist worker starts Ray: everything that needs Ray is one test
(`test_ray_fleets`), so the session fixture below runs in one process, once,
and is torn down (`ray.shutdown()`, the cluster's `Cluster.shutdown()`) when
that worker ends. (xdist's `--dist loadgroup` would spread tests over
workers by group, but with pytest 9.2 and xdist 3.8 it groups nothing: the
group suffix it writes to `item._nodeid` is no longer read.) The three
fleets run at the same time, so the test costs Ray's start-up plus the
longest fleet. Without Ray (`esp32emu[ray]` not installed) it skips; the
exit-2 test runs anyway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
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


def _ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'esp32emu[ray]')")


@pytest.fixture(scope="session")
def ray_instances():
    """((address, environment) of a local instance, the same of a two-node cluster), started once:
    `ray.init(address="local", num_cpus=2)` with this process as its driver (Ray's default
    worker niceness, 15), and two one-core nodes on this
    machine (`ray.cluster_utils.Cluster`); a fleet joins either with that environment."""
    ray = _ray()
    from emulator.cluster.local import LocalCluster

    # Started first, in a child process: it comes up while ray.init() starts the local instance.
    cluster = LocalCluster(nodes=2, cpus=1, env=_env())  # a driver joins with the environment it was started with
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # ours, even when one runs here
        try:
            yield (ray.get_runtime_context().gcs_address, _env()), (cluster.address(), cluster.env)
        finally:
            ray.shutdown()
    finally:
        cluster.close()


def _fleet(tmp: Path, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ESP32EMU + ["--state", str(tmp / name), "fleet", "--quiet", "--report", str(tmp / f"{name}.json"), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env or _env())


def _finish(proc: subprocess.Popen, timeout: float = 90) -> str:
    """Wait for a fleet; one that overruns gets SIGTERM (it stops its boards and its
    private Mosquitto), then SIGKILL. Its stderr (when nobody else reads it)."""
    try:
        return proc.communicate(timeout=timeout)[1] or ""
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _connected_ids(state: Path) -> set[str]:
    """The client ids the fleet's private Mosquitto let in (its own log: a witness the fleet does not write)."""
    log = (state / "broker" / "mosquitto.log").read_text()
    return set(re.findall(r"New client connected from \S+ as (dev-\d{5})", log))


SAME = 12  # boards of the fleet run both ways


def _start_same_fleet(tmp_path: Path, local: tuple[str, dict]) -> list[subprocess.Popen]:
    common = ["--devices", str(SAME), "--interval", "1", "--keepalive", "5", "--duration", "4", "--seed", "3"]
    return [_fleet(tmp_path, "ray", *common, "--ray", local[0], "--groups", "2", env=local[1]),
            _fleet(tmp_path, "workers", *common, "--workers", "2")]


def _check_same_fleet(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    """`--ray --groups 2` and `--workers 2`: the same ids, nothing lost, both reports alike."""
    devices = SAME
    errs = []
    for proc in procs:
        errs.append(_finish(proc))
        assert proc.returncode == 0, errs[-1]
    # this instance runs Ray's workers (so the boards) at nice 15: the driver says so
    assert "warning: Ray runs the groups' boards at nice 15" in errs[0], errs[0]
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


KA, KILLED = 2, 12  # the second fleet: keepalive, boards


def _start_kill(tmp_path: Path, cluster: tuple[str, dict]) -> tuple[subprocess.Popen, threading.Thread, threading.Event, list]:
    """Group 1's node dies on cue (--kill-group: no FIN, so the broker gives its
    boards up on their keepalive); group 2's actor process is SIGKILLed from
    outside as soon as that happens (the kernel closes its sockets); group 0
    runs to the end."""
    proc = _fleet(tmp_path, "kill", "--devices", str(KILLED), "--interval", "1", "--keepalive", str(KA),
                  "--duration", "5", "--ray", cluster[0], "--groups", "3", "--kill-group", "1@2", env=cluster[1])
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
    return proc, reader, killed_2, lines


def _check_kill(tmp_path: Path, proc: subprocess.Popen, reader: threading.Thread, killed_2: threading.Event, lines: list) -> None:
    ka, devices = KA, KILLED
    reader.join(90)  # until the fleet closes its stderr
    _finish(proc, timeout=30)
    assert proc.returncode == 0, "".join(lines)
    assert killed_2.is_set(), "".join(lines)
    # local.py's cluster runs Ray's workers at the driver's priority (worker_niceness 0): no warning
    assert sum(", nice 0, pid " in line for line in lines) == 3 and not any("nice 15" in line for line in lines), "".join(lines)
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


@pytest.mark.slow
@pytest.mark.integration
def test_ray_fleets(tmp_path, ray_instances):
    """On real Ray, three fleets at once: the same fleet with --ray (local
    instance) and --workers; on the two-node cluster, a group killed on cue
    and one that dies by itself, while the third goes on."""
    local, cluster = ray_instances
    kill = _start_kill(tmp_path, cluster)
    same = _start_same_fleet(tmp_path, local)
    _check_same_fleet(tmp_path, same)
    _check_kill(tmp_path, *kill)


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



@pytest.mark.parametrize("argv, message", [
    (["--kill-group", "one@2", "--workers", "2"], "want G@S"),
    (["--kill-group", "1@2"], "--kill-group needs the boards in groups"),
    (["--kill-group", "2@1", "--workers", "2"], "there is no group 2"),
    (["--groups", "2"], "--groups needs --ray"),
])
def test_group_options_bad_input_exits_2(tmp_path, capsys, argv, message):
    from emulator.cli import main

    try:
        code = main(["--state", str(tmp_path), "fleet", "--devices", "4", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.integration
def test_kill_group_works_on_local_worker_processes_too(tmp_path):
    """The same --kill-group on --workers (groups.GroupHost is both hosts' parent side)."""
    proc = _fleet(tmp_path, "w", "--devices", "6", "--interval", "1", "--keepalive", str(KA), "--duration", "3",
                  "--workers", "2", "--kill-group", "1@1")
    err = _finish(proc)
    assert proc.returncode == 0, err
    report = json.loads((tmp_path / "w.json").read_text())
    assert report["engine"] == "processes" and [g["state"] for g in report["groups"]] == ["running", "killed"]
    (lost,) = report["groups_lost"]
    assert lost["boards"] == ["dev-00002", "dev-00004", "dev-00006"]
    assert lost["wills_seen"] == lost["wills_within_bound"] == 3 and lost["will_after_s"]["min"] >= 1.5 * KA - 1 - 0.2
    assert report["online_at_end"] == 3 and report["telemetry_lost"] == 0 and report["rss_per_board_kb"] > 0
