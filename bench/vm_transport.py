"""The firmware's MQTT client on the real MicroPython VM (not a test).

    .venv/bin/python bench/vm_transport.py [--count 500] [--busy-count 3000] [FIRMWARE_DIR ...]

For each firmware folder (default: ./firmware), against a private Mosquitto:
  alloc B/msg  heap bytes allocated per received QoS 1 message (collector
               off while --count messages arrive; includes the session's
               events, the PUBACK and the probe's own int(payload))
  ms           how long those messages took to arrive
  busy: got    distinct ids received out of --busy-count QoS 1 messages
               published while a task burns the CPU in 5 ms bursts
  PUBACKs      the client's PUBACKs that Mosquitto logged in the busy run

The VM side is tests/micropython/vm_transport_client.py; a folder only needs
mqtt_codec.py, mqtt_session.py and an mqtt_client.py with MqttClient(session,
on_event).connect/subscribe_and_wait/pump/disconnect.
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

from emulator.broker import Broker  # noqa: E402

MICROPYTHON = Path(sys.executable).parent / "micropython"
PROBE = REPO / "tests" / "micropython" / "vm_transport_client.py"


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
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--busy-count", type=int, default=3000)
    args = p.parse_args()
    print("| firmware | alloc B/msg | ms | busy: got | PUBACKs |")
    print("|---|---|---|---|---|")
    for fw in args.firmware:
        alloc, _ = run_probe(fw, args.count, "alloc")
        busy, pubacks = run_probe(fw, args.busy_count, "")
        per_msg = int(alloc["alloc"]) / args.count
        print(f"| {fw} | {per_msg:.0f} | {alloc['ms']} | {busy['distinct']}/{args.busy_count} | {pubacks} |")


if __name__ == "__main__":
    main()
