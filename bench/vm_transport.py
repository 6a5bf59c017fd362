"""The firmware's MQTT client on the real MicroPython VM (not a test).

    .venv/bin/python bench/vm_transport.py [--busy-count 3000] [FIRMWARE_DIR ...]

For each firmware folder (default: ./firmware):
  B/read 1, 10   heap bytes allocated per read by the client and session
                 together, with 1 and 10 QoS 1 PUBLISHes per read, on a
                 deterministic fake stream (bench/vm_reader_alloc_mp.py)
  session share  of that, the session's part (receive_data, events,
                 PUBACK, data_to_send) per read, 1 PUBLISH per read
  busy: got      against a private Mosquitto: distinct ids received out of
                 --busy-count QoS 1 messages published while a task burns
                 the CPU in 5 ms bursts (tests/micropython/vm_transport_client.py)
  PUBACKs        the client's PUBACKs that Mosquitto logged in that run

A folder needs mqtt_codec.py, mqtt_session.py and an mqtt_client.py whose
MqttClient has connect/subscribe_and_wait/pump/disconnect (the busy run) and
_read_loop or _read_once (the allocation run).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.broker.mosquitto import Broker  # noqa: E402

MICROPYTHON = Path(sys.executable).parent / "micropython"
PROBE = REPO / "tests" / "micropython" / "vm_transport_client.py"
ALLOC = REPO / "bench" / "vm_reader_alloc_mp.py"


def alloc_per_read(firmware: Path, per_read: int) -> dict[str, str]:
    out = subprocess.run([str(MICROPYTHON), "-X", "heapsize=4m", str(ALLOC), str(firmware), str(per_read)],
                         capture_output=True, text=True, timeout=120).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"{firmware}: allocation run failed:\n{out}")
    return dict(re.findall(r"(\w+)=(\S+)", line))


def run_probe(firmware: Path, count: int, mode: str) -> tuple[dict[str, str], int]:
    with tempfile.TemporaryDirectory() as work:
        broker = Broker(Path(work), extra_config=["max_queued_messages 100000"], log_types=("all",)).start()
        try:
            args = [str(MICROPYTHON), "-X", "heapsize=2m", str(PROBE), str(firmware), broker.host,
                    str(broker.port), str(count), "bench/in"] + ([mode] if mode else [])
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            ready = proc.stdout.readline()
            if not ready.startswith("READY"):
                proc.kill()
                raise SystemExit(f"{firmware}: probe did not start: {ready}{proc.stdout.read()}")
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311)
            pub.max_inflight_messages_set(100)
            pub.max_queued_messages_set(0)
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            infos = [pub.publish("bench/in", str(i), qos=1) for i in range(count)]
            for info in infos:
                info.wait_for_publish(60)
            pub.loop_stop()
            pub.disconnect()
            out, _ = proc.communicate(timeout=180)
            done = next((line for line in out.splitlines() if line.startswith("DONE")), None)
            if done is None:
                raise SystemExit(f"{firmware}: no DONE line:\n{out}")
            pubacks = len(re.findall(r"Received PUBACK from vm-transport", broker.log_text()))
            return dict(re.findall(r"(\w+)=(\S+)", done)), pubacks
        finally:
            broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("firmware", nargs="*", type=Path, default=[REPO / "firmware"])
    p.add_argument("--busy-count", type=int, default=3000)
    args = p.parse_args()
    print("| firmware | B/read, 1 msg | B/read, 10 msgs | session share (1 msg) | busy: got | PUBACKs |")
    print("|---|---|---|---|---|---|")
    for fw in args.firmware:
        one, ten = alloc_per_read(fw, 1), alloc_per_read(fw, 10)
        busy, pubacks = run_probe(fw, args.busy_count, "")
        print(f"| {fw} | {one['per_read']} | {ten['per_read']} | {one['session_per_msg']} | "
              f"{busy['distinct']}/{args.busy_count} | {pubacks} |")


if __name__ == "__main__":
    main()
