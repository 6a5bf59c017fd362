# MicroPython script (run by bench/vm_transport.py): heap bytes the client
# allocates per read on a deterministic stream, no socket, no broker.
#
#   micropython vm_reader_alloc_mp.py FIRMWARE_DIR [PACKETS_PER_READ]
#
# A fake stream hands the client's reader one chunk per read holding
# PACKETS_PER_READ QoS 1 PUBLISHes (and swallows the PUBACKs); the collector
# is off while 200 reads go through. Prints the bytes allocated per read and
# per message, and the same for the session alone (bytes in + events +
# data_to_send), so the client's own share is the difference.
# Works with a client that has _read_loop(reader) (one reader task) or
# _read_once(timeout_ms) (a read per call under wait_for_ms).
import sys

sys.path.insert(0, sys.argv[1])

import asyncio  # noqa: E402
import gc  # noqa: E402

import mqtt_client  # noqa: E402
import mqtt_session  # noqa: E402
from mqtt_codec import encode  # noqa: E402

PER_READ = int(sys.argv[2]) if len(sys.argv) > 2 else 1
READS = 200


def chunk(first_pid):
    out = b""
    for k in range(PER_READ):
        out += encode((3, "bench/in", b"12345", 1, False, False, first_pid + k))  # a PUBLISH tuple
    return out


CHUNKS = [chunk(1 + i * PER_READ % 60000) for i in range(8)]


class FakeStream:
    def __init__(self):
        self.n = 0
        self.done = asyncio.Event()

    async def readinto(self, buf):
        await asyncio.sleep_ms(0)  # a real read always yields (MicroPython's is allocation-free)
        if self.n >= READS + 10:
            self.done.set()
            await asyncio.Event().wait()  # idle like a quiet socket
        c = CHUNKS[self.n % 8]
        self.n += 1
        buf[:len(c)] = c
        return len(c)

    async def read(self, n):
        await asyncio.sleep_ms(0)
        if self.n >= READS + 10:
            self.done.set()
            await asyncio.Event().wait()
        c = CHUNKS[self.n % 8]
        self.n += 1
        return c

    def write(self, data):
        pass

    async def drain(self):
        pass

    def close(self):
        pass

    async def wait_closed(self):
        pass


def rx(s, data, now):
    # bytes into the session: its receive buffer (decoder.space() + received)
    # where it has one, else receive_data (older firmware)
    if not hasattr(s, "received"):
        return s.receive_data(data, now)
    space = s.decoder.space()
    space[:len(data)] = data
    s.received(len(data), now)


def connected_session():
    s = mqtt_session.Session("bench", 30)
    s.start(0)
    s.data_to_send()
    rx(s, b"\x20\x02\x00\x00", 0)  # CONNACK
    s.next_event()
    return s


def measure_session():
    s = connected_session()
    for i in range(10):
        rx(s, CHUNKS[i % 8], 1)
        while s.next_event() is not None:
            pass
        s.data_to_send()
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(READS):
        rx(s, CHUNKS[i % 8], 1)
        while s.next_event() is not None:
            pass
        s.data_to_send()
    used = gc.mem_alloc() - a
    gc.enable()
    return used


async def measure_client():
    stream = FakeStream()
    session = connected_session()
    client = mqtt_client.MqttClient(session, lambda ev: None)
    client._reader = client._writer = stream
    marks = []

    def mark():
        gc.collect()
        gc.disable()
        marks.append(gc.mem_alloc())

    if hasattr(client, "_read_loop"):
        task = asyncio.create_task(client._read_loop(stream))
        while stream.n < 10:
            await asyncio.sleep_ms(0)
        mark()
        n0 = stream.n
        while stream.n < n0 + READS:
            await asyncio.sleep_ms(0)
        marks.append(gc.mem_alloc())
        task.cancel()
    else:
        for _ in range(10):
            await client._read_once(1000)
        mark()
        for _ in range(READS):
            await client._read_once(1000)
        marks.append(gc.mem_alloc())
    gc.enable()
    return marks[1] - marks[0]


sess = measure_session()
cli = asyncio.run(measure_client())
print("RESULT per_read=%d per_msg=%d session_per_msg=%d" % (
    cli // READS, cli // (READS * PER_READ), sess // (READS * PER_READ)))
