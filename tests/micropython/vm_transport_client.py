# Run by tests/test_vm_transport.py on the MicroPython unix port (not by
# run.mjs: it needs a socket and a broker). Not a test file itself.
#
#   micropython vm_transport_client.py FIRMWARE_DIR HOST PORT COUNT TOPIC [pump|tls]
#
# Connects firmware/mqtt_client.MqttClient to the broker, subscribes TOPIC at
# QoS 1 (waiting for the SUBACK), prints READY, and counts the QoS 1 messages
# (payload = an integer id) that arrive while another task keeps the loop
# busy, burning the CPU in short bursts. Prints one DONE line with the counts
# once COUNT distinct ids came or 120 s passed, then disconnects.
# With `pump` (keepalive 2 s): after READY only the pump runs, and one LINK
# line says why and when (ms after READY) it ended. With `tls`: the same
# count over TLS (server certificate not checked: this is about reading).
import sys

sys.path.insert(0, sys.argv[1])

import asyncio  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

import mqtt_client  # noqa: E402
import mqtt_session  # noqa: E402

HOST = sys.argv[2]
PORT = int(sys.argv[3])
COUNT = int(sys.argv[4])
TOPIC = sys.argv[5]
MODE = sys.argv[6] if len(sys.argv) > 6 else ""


class Probe:
    def __init__(self):
        self.seen = bytearray(COUNT)  # 1 per id received
        self.distinct = 0
        self.messages = 0
        self.bursts = 0
        self.done = asyncio.Event()

    def on_event(self, ev):
        if ev[0] == 3 and ev[1] == TOPIC:  # a message: (3, topic, payload, ...)
            self.messages += 1
            i = int(ev[2])
            if not self.seen[i]:
                self.seen[i] = 1
                self.distinct += 1
                if self.distinct == COUNT:
                    self.done.set()

    async def busy(self):
        # Short CPU bursts (5 ms), yielding between them: a loop that is busy
        # with other work while the messages pour in.
        while True:
            t = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t) < 5:
                pass
            self.bursts += 1
            await asyncio.sleep_ms(0)


async def main():
    probe = Probe()
    session = mqtt_session.Session("vm-transport", 2, clean_session=True)
    client = mqtt_client.MqttClient(session, probe.on_event)
    if MODE == "tls":
        import tls

        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_NONE
        await client.connect(HOST, PORT, ssl=ctx, server_hostname="localhost", timeout_ms=10000)
    else:
        await client.connect(HOST, PORT, timeout_ms=10000)
    codes = await client.subscribe_and_wait([(TOPIC, 1)], 10000)
    if MODE == "pump":
        print("READY suback=%r" % (codes,))
        t0 = time.ticks_ms()
        try:
            await client.pump()
        except mqtt_client.LinkError as e:
            print("LINK ms=%d reason=%s" % (time.ticks_diff(time.ticks_ms(), t0), e))
        return
    pump = asyncio.create_task(client.pump())
    busy = asyncio.create_task(probe.busy())
    gc.collect()
    print("READY suback=%r" % (codes,))
    t0 = time.ticks_ms()
    try:
        await asyncio.wait_for_ms(probe.done.wait(), 120000)
    except asyncio.TimeoutError:
        pass
    elapsed = time.ticks_diff(time.ticks_ms(), t0)
    busy.cancel()
    await client.disconnect()  # the pump then ends with LinkError
    try:
        await pump
    except mqtt_client.LinkError:
        pass
    missing = [i for i in range(COUNT) if not probe.seen[i]]
    print("DONE distinct=%d messages=%d bursts=%d ms=%d missing=%r"
          % (probe.distinct, probe.messages, probe.bursts, elapsed, missing[:20]))


asyncio.run(main())
