"""The link model on its own: profiles, latency, bandwidth, ordering,
slicing, blackholes, RST/FIN, DNS and connect faults, replayable decisions.

A minimal fake board (id, seed, rng, radio, log_event) drives a `Link`
against a local asyncio server on 127.0.0.1; times are measured on the
wall clock, bounds come from the profile's own numbers."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.net.link import EAI_FAIL, ECONNRESET, ETIMEDOUT, SEND_BUFFER, Link, partition
from emulator.net.profiles import PROFILES, make_profile, profile_names

SLACK = 0.06  # scheduler slack on a loaded CI machine, seconds


class FakeBoard:
    def __init__(self, seed: int = 0, device_id: str = "dev-link"):
        self.id = device_id
        self.seed = seed
        self.rng = random.Random(f"{seed}:{device_id}")
        self.radio = SimpleNamespace(connected=True)
        self.loop = None
        self.events: list[tuple[str, str]] = []

    def log_event(self, kind: str, message: str) -> None:
        self.events.append((kind, message))

    def link_log(self) -> list[str]:
        return [m for k, m in self.events if k == "link"]


class Server:
    """A loopback TCP server: echoes (or only records) what it receives."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.received = bytearray()
        self.chunks: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.ends: list[str] = []  # "eof" / "reset" per connection
        self.tasks: list[asyncio.Task] = []
        self._got = asyncio.Event()

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer) -> None:
        self.writers.append(writer)
        self.tasks.append(asyncio.current_task())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.ends.append("eof")
                    break
                self.received += data
                self.chunks.append(data)
                self._got.set()
                if self.echo:
                    writer.write(data)
        except ConnectionResetError:
            self.ends.append("reset")
        finally:
            self._got.set()
            writer.close()

    async def wait_bytes(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            self._got.clear()
            await asyncio.wait_for(self._got.wait(), max(0.01, deadline - time.monotonic()))

    async def wait_end(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.ends:
            self._got.clear()
            await asyncio.wait_for(self._got.wait(), max(0.01, deadline - time.monotonic()))
        return self.ends[0]

    async def close(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 2)


async def read_n(stream, n: int, timeout: float = 10.0) -> tuple[bytes, list[int]]:
    """Read exactly n bytes; also return the size of every read."""
    out = bytearray()
    sizes = []
    while len(out) < n:
        chunk = await asyncio.wait_for(stream.read(4096), timeout)
        assert chunk, "unexpected EOF"
        sizes.append(len(chunk))
        out += chunk
    return bytes(out), sizes


def run(coro):
    return asyncio.run(coro)


def lossless(name: str) -> dict:
    return {"base": name, "loss_rate": 0}


# -- profiles as data -------------------------------------------------------------


def test_named_profiles_and_custom_ones():
    assert set(profile_names()) >= {"wifi-good", "wifi-weak", "cellular-2g", "nb-iot"}
    assert set(PROFILES) == set(profile_names())
    assert make_profile("wifi-good").shapes_bytes is False
    nb = make_profile("nb-iot")
    lo, hi = nb.one_way_ms()
    assert 500 <= 2 * (lo + hi) / 2 <= 700 and nb.kbps("tx") == nb.kbps("rx") == 200
    g2 = make_profile("cellular-2g")
    assert 300 <= 2 * g2.one_way_ms()[0] and 2 * g2.one_way_ms()[1] <= 1000 and 20 <= g2.kbps("rx") <= 40
    custom = make_profile({"latency_ms": 80, "jitter_ms": 10, "bandwidth_kbps": 64, "dns_fail_rate": 0.5})
    assert custom.name == "custom" and custom.latency_ms == 80 and custom.shapes_bytes
    based = make_profile({"base": "nb-iot", "up_kbps": 50})
    assert based.kbps("tx") == 50 and based.kbps("rx") == 200 and based.latency_ms == nb.latency_ms


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("wifi-perfect", "known: cellular-2g, nb-iot, wifi-good, wifi-weak"),
        ({"latency": 5}, "'latency'"),
        ({"latency_ms": -1}, "'latency_ms'"),
        ({"loss_rate": 1.5}, "'loss_rate'"),
        ({"slice_bytes": 2.5}, "'slice_bytes'"),
        ({"jitter_ms": "10"}, "'jitter_ms'"),
        ({"base": "lte"}, "unknown link profile 'lte'"),
    ],
)
def test_bad_profiles_say_what_is_wrong(spec, needle):
    with pytest.raises(ValueError) as e:
        make_profile(spec)
    assert needle in str(e.value)


def test_link_takes_a_profile_and_logs_changes():
    async def go():
        board = FakeBoard()
        link = Link(board, profile="wifi-weak")
        assert link.profile.name == "wifi-weak"
        with pytest.raises(ValueError, match="known: "):
            link.set_profile("satellite")
        link.set_profile({"latency_ms": 10})
        link.set_latency(250, 50)
        assert link.profile.latency_ms == 250 and link.profile.jitter_ms == 50
        link.set_bandwidth(16)
        assert link.profile.kbps("tx") == 16
        log = board.link_log()
        assert log[0] == "profile custom: latency_ms=10"
        assert "latency_ms=250" in log[1] and "jitter_ms=50" in log[1]

    run(go())


# -- the delivery model --------------------------------------------------------------


def test_wifi_good_is_the_fast_path():
    async def go():
        srv = await Server().start()
        link = Link(FakeBoard())
        r, w = await link.open_connection("127.0.0.1", srv.port)
        conn = next(iter(link.connections))
        t0 = time.monotonic()
        for i in range(20):
            w.write(b"ping%02d" % i)
            await w.drain()
            data, _ = await read_n(r, 6)
            assert data == b"ping%02d" % i
        assert time.monotonic() - t0 < 0.5
        assert conn.tx._timer is None and conn.rx._timer is None and not conn.tx.flight
        w.close()
        await srv.close()

    run(go())


class RecordingTransport:
    """The real transport, with every write recorded as it is made."""

    def __init__(self, transport):
        self._t = transport
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))
        self._t.write(data)

    def __getattr__(self, name):
        return getattr(self._t, name)


def test_a_write_without_shaping_is_on_the_socket_when_write_returns():
    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard())
        tapped = []
        link.taps.append(lambda direction, data, now: tapped.append((direction, data)))
        _, w = await link.open_connection("127.0.0.1", srv.port)
        conn = next(iter(link.connections))
        rec = conn.transport = RecordingTransport(conn.transport)
        w.write(b"straight")
        assert rec.writes == [b"straight"] and conn.tx.pending == 0 and conn.tx.flight is None
        # A profile that shapes bytes: the pipe holds them until their time.
        link.set_profile({"latency_ms": 40})
        w.write(b"shaped")
        assert rec.writes == [b"straight"] and conn.tx.pending == 6 and conn.tx.flight
        await srv.wait_bytes(14)
        assert rec.writes == [b"straight", b"shaped"] and conn.tx.pending == 0
        # The fast path again, behind nothing: straight through.
        link.set_profile("wifi-good")
        w.write(b"again")
        assert rec.writes[-1] == b"again"
        await srv.wait_bytes(19)
        assert bytes(srv.received) == b"straightshapedagain"
        assert tapped == [("tx", b"straight"), ("tx", b"shaped"), ("tx", b"again")]
        w.close()
        await srv.close()

    run(go())


def test_round_trip_time_of_each_profile_is_within_its_bounds():
    """An echo of 10 bytes takes latency±jitter each way (losses off)."""
    measured: dict[str, list[float]] = {}

    async def one(name: str, rounds: int) -> None:
        srv = await Server().start()
        link = Link(FakeBoard(seed=3), profile=lossless(name))
        prof = link.profile
        r, w = await link.open_connection("127.0.0.1", srv.port)
        lo, hi = prof.one_way_ms()
        ser = 10 * 8 / (prof.kbps("tx") * 1000) if prof.kbps("tx") else 0.0
        rtts = []
        for i in range(rounds):
            t0 = time.monotonic()
            w.write(b"0123456789")
            await w.drain()
            await read_n(r, 10)
            rtts.append(time.monotonic() - t0)
        measured[name] = rtts
        for rtt in rtts:
            assert 2 * lo / 1000 + 2 * ser - 0.005 <= rtt <= 2 * hi / 1000 + 2 * ser + SLACK, (name, rtts)
        w.close()
        await srv.close()

    async def go():
        await asyncio.gather(one("wifi-weak", 8), one("nb-iot", 4), one("cellular-2g", 3))

    run(go())
    means = {k: sum(v) / len(v) for k, v in measured.items()}
    assert means["wifi-weak"] < means["nb-iot"], means
    print("RTT means (s):", {k: round(v, 3) for k, v in means.items()})


def test_connect_costs_a_round_trip():
    async def go():
        srv = await Server().start()
        link = Link(FakeBoard(), profile={"latency_ms": 150})
        t0 = time.monotonic()
        _, w = await link.open_connection("127.0.0.1", srv.port)
        assert 0.3 - 0.005 <= time.monotonic() - t0 <= 0.3 + SLACK
        w.close()
        await srv.close()

    run(go())


def test_bandwidth_cap_both_directions():
    """5000 bytes at 40 kbit/s take >= 1 s up, and again >= 1 s down."""

    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard(), profile={"bandwidth_kbps": 40})
        r, w = await link.open_connection("127.0.0.1", srv.port)
        payload = bytes(range(256)) * 19 + b"x" * 136  # 5000 bytes
        t0 = time.monotonic()
        w.write(payload)
        await srv.wait_bytes(5000)
        up = time.monotonic() - t0
        assert srv.received == payload
        t1 = time.monotonic()
        srv.writers[0].write(payload)
        data, _ = await read_n(r, 5000)
        down = time.monotonic() - t1
        assert data == payload
        assert 1.0 - 0.005 <= up <= 1.0 + SLACK, up
        assert 1.0 - 0.005 <= down <= 1.0 + SLACK, down
        print(f"5000 B at 40 kbit/s: up {up:.3f} s, down {down:.3f} s")
        w.close()
        await srv.close()

    run(go())


def test_drain_stalls_like_a_full_send_window():
    """20000 bytes at 160 kbit/s: drain returns once what is left fits the
    send buffer (SEND_BUFFER bytes), i.e. after (20000-5744)*8/160000 s."""

    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard(), profile={"bandwidth_kbps": 160})
        _, w = await link.open_connection("127.0.0.1", srv.port)
        t0 = time.monotonic()
        w.write(b"z" * 20000)
        await w.drain()
        drained = time.monotonic() - t0
        want = (20000 - SEND_BUFFER) * 8 / 160000
        assert want - 0.01 <= drained <= want + SLACK, drained
        await srv.wait_bytes(20000)
        assert time.monotonic() - t0 >= 1.0 - 0.005
        w.close()
        await srv.close()

    run(go())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=st.lists(st.integers(1, 300), min_size=5, max_size=40))
def test_order_is_preserved_under_jitter_and_slicing(seed, sizes):
    """Jitter larger than the latency and random slicing never reorder bytes."""

    async def go():
        srv = await Server().start()
        link = Link(FakeBoard(seed=seed), profile={"latency_ms": 4, "jitter_ms": 4, "slice_bytes": 50, "slice_rate": 0.5})
        r, w = await link.open_connection("127.0.0.1", srv.port)
        sent = bytearray()
        for i, n in enumerate(sizes):
            chunk = bytes((i + k) & 0xFF for k in range(n))
            sent += chunk
            w.write(chunk)
            if i % 7 == 0:
                await asyncio.sleep(0.001)
        await w.drain()
        data, _ = await read_n(r, len(sent))
        assert srv.received == sent
        assert data == sent
        w.close()
        await srv.close()

    run(go())


def test_slicing_gives_partial_reads_of_an_identical_stream():
    async def go():
        srv = await Server(echo=False).start()
        board = FakeBoard()
        link = Link(board, profile={"slice_bytes": 16})
        r, w = await link.open_connection("127.0.0.1", srv.port)
        payload = bytes(range(200)) * 5
        w.write(payload)
        await w.drain()
        await srv.wait_bytes(len(payload))
        assert srv.received == payload
        assert len(srv.chunks) > 1, "the peer saw the write in pieces"
        srv.writers[0].write(payload)  # one write from the peer...
        data, sizes = await read_n(r, len(payload))
        assert data == payload  # ...trickles in, 1..16 bytes per read
        assert len(sizes) >= 1000 // 16 and max(sizes) <= 16, sizes
        assert any("sliced into" in m for m in board.link_log())
        w.close()
        await srv.close()

    run(go())


def _decisions(seed: int) -> list[str]:
    async def go():
        srv = await Server(echo=False).start()
        board = FakeBoard(seed=seed)
        link = Link(board, profile={"latency_ms": 3, "jitter_ms": 3, "slice_bytes": 40, "slice_rate": 0.5, "loss_rate": 0.2, "rto_ms": 5})
        link.log_delays = True
        _, w = await link.open_connection("127.0.0.1", srv.port)
        total = 0
        for i in range(30):
            w.write(bytes([i]) * (10 + 7 * i))
            total += 10 + 7 * i
        await srv.wait_bytes(total)
        w.close()
        await srv.close()
        return [m.split(" in ")[0] if " in " in m and "sliced" not in m else m for m in board.link_log() if not m.startswith("connected")]
        # (the delay itself is measured from "now" and so carries scheduler noise;
        # the decisions — sizes, slices, losses — must be identical)

    return run(go())


def test_same_seed_same_decisions():
    a, b, c = _decisions(11), _decisions(11), _decisions(12)
    assert a == b
    assert a != c
    assert any("lost" in m for m in a) and any("sliced" in m for m in a)


def test_delays_are_drawn_from_the_seed():
    def delays(seed: int) -> list[float]:
        async def go():
            link = Link(FakeBoard(seed=seed), profile={"latency_ms": 50, "jitter_ms": 40})
            srv = await Server(echo=False).start()
            _, w = await link.open_connection("127.0.0.1", srv.port)
            conn = next(iter(link.connections))
            now = conn.tx.loop.time()
            for _ in range(10):
                conn.tx._schedule(b"x", link.profile, now)
            out = [round(at - now, 6) for at, _, _ in conn.tx.flight]
            conn.tx.drop()
            w.close()
            await srv.close()
            return out

        return run(go())

    assert delays(5) == delays(5) != delays(6)


# -- path faults --------------------------------------------------------------------


def test_blackhole_holds_bytes_and_releases_them_in_order():
    async def go():
        srv = await Server().start()
        board = FakeBoard()
        link = Link(board)
        r, w = await link.open_connection("127.0.0.1", srv.port)
        link.blackhole(rx=False, tx=True)
        for i in range(5):
            w.write(b"<%d>" % i)
        await asyncio.sleep(0.3)
        assert srv.received == b""
        # Broker->board still flows: only the board's side is cut.
        srv.writers[0].write(b"hello")
        assert (await read_n(r, 5))[0] == b"hello"
        link.heal()
        await srv.wait_bytes(15)
        assert srv.received == b"<0><1><2><3><4>"
        assert (await read_n(r, 15))[0] == b"<0><1><2><3><4>"
        # One way the other: the broker's bytes are held, not lost.
        link.blackhole(rx=True, tx=False)
        srv.writers[0].write(b"held-1 ")
        srv.writers[0].write(b"held-2")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r.read(100), 0.3)
        link.heal()
        assert (await read_n(r, 13))[0] == b"held-1 held-2"
        assert "blackhole rx=True tx=False" in board.link_log()
        w.close()
        await srv.close()

    run(go())


def test_bytes_in_flight_when_the_path_dies_are_resent_after_the_heal():
    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard(), profile={"latency_ms": 200})
        _, w = await link.open_connection("127.0.0.1", srv.port)
        w.write(b"first")
        await asyncio.sleep(0.05)
        link.blackhole()
        await asyncio.sleep(0.4)
        assert srv.received == b""
        t_heal = time.monotonic()
        link.heal()
        w.write(b"second")
        await srv.wait_bytes(11)
        assert srv.received == b"firstsecond"
        assert 0.2 - 0.005 <= time.monotonic() - t_heal <= 0.2 + SLACK
        w.close()
        await srv.close()

    run(go())


def test_held_bytes_die_with_a_reset():
    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard())
        r, w = await link.open_connection("127.0.0.1", srv.port)
        link.blackhole(tx=True, rx=False)
        w.write(b"never")
        assert link.kill_connections(rst=True) == 1
        assert await srv.wait_end() == "reset"
        link.heal()
        await asyncio.sleep(0.1)
        assert srv.received == b""
        with pytest.raises(OSError) as e:
            await r.read(10)
        assert e.value.args[0] == ECONNRESET
        await srv.close()

    run(go())


def test_drain_stalls_on_a_blackhole_until_healed():
    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard())
        _, w = await link.open_connection("127.0.0.1", srv.port)
        link.blackhole(rx=False, tx=True)
        w.write(b"a" * 2000)
        assert w.out_buf == b""  # MicroPython's sign that drain() will not wait
        await asyncio.wait_for(w.drain(), 0.2)  # fits the send buffer
        w.write(b"b" * 8000)
        assert w.out_buf
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(w.drain(), 0.3)
        link.heal()
        await asyncio.wait_for(w.drain(), 1)
        assert w.out_buf == b""
        await srv.wait_bytes(10000)
        assert srv.received == b"a" * 2000 + b"b" * 8000
        w.close()
        await srv.close()

    run(go())


@pytest.mark.parametrize("rst", [True, False], ids=["RST", "FIN"])
def test_kill_is_seen_by_both_sides(rst):
    async def go():
        srv = await Server().start()
        link = Link(FakeBoard(), profile="wifi-weak")
        r, w = await link.open_connection("127.0.0.1", srv.port)
        w.write(b"x")
        await read_n(r, 1)
        link.kill_connections(rst=rst)
        assert await srv.wait_end() == ("reset" if rst else "eof")
        if rst:
            with pytest.raises(OSError) as e:
                await r.read(10)
            assert e.value.args[0] == ECONNRESET
        else:
            assert await r.read(10) == b""
        assert not link.connections
        await srv.close()

    run(go())


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_peer_close_arrives_after_its_data(how):
    """The broker's FIN/RST travels the same delayed path, behind its bytes."""

    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard(), profile={"latency_ms": 100})
        r, w = await link.open_connection("127.0.0.1", srv.port)
        await asyncio.sleep(0.05)
        peer = srv.writers[0]
        if how == "fin":
            peer.write(b"bye")
            peer.close()
        else:
            peer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.transport.abort()
        t0 = time.monotonic()
        if how == "fin":
            assert (await read_n(r, 3))[0] == b"bye"
            assert await r.read(10) == b""
        else:
            with pytest.raises(OSError) as e:
                await r.read(10)
            assert e.value.args[0] == ECONNRESET
        assert time.monotonic() - t0 >= 0.1 - 0.01
        w.close()
        await srv.close()

    run(go())


def test_board_close_sends_fin_behind_its_bytes():
    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard(), profile={"latency_ms": 60, "bandwidth_kbps": 100})
        _, w = await link.open_connection("127.0.0.1", srv.port)
        w.write(b"k" * 1000)
        w.close()
        await w.wait_closed()
        assert not link.connections
        assert await srv.wait_end(3) == "eof"
        assert srv.received == b"k" * 1000
        await srv.close()

    run(go())


def test_dns_and_connect_faults():
    async def go():
        srv = await Server().start()
        board = FakeBoard()
        link = Link(board)
        link.hosts["broker.lab"] = "127.0.0.1"
        link.dns_fail = True
        with pytest.raises(OSError) as e:
            await link.open_connection("broker.lab", srv.port)
        assert e.value.args[0] == EAI_FAIL == -202
        link.dns_fail = False
        link.set_profile({"dns_fail_rate": 1.0})
        with pytest.raises(OSError) as e:
            await link.resolve("broker.lab")
        assert e.value.args[0] == -202
        link.set_profile({"dns_fail_rate": 0.5})
        outcomes = []
        for _ in range(40):
            try:
                await link.resolve("broker.lab")
                outcomes.append(True)
            except OSError:
                outcomes.append(False)
        assert 5 < outcomes.count(False) < 35
        link.set_profile("wifi-good")
        link.refuse_connect = True
        with pytest.raises(OSError) as e:
            await link.open_connection("broker.lab", srv.port)
        assert e.value.args[0] == ECONNRESET
        link.refuse_connect = False
        link.drop_syn = True
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(link.open_connection("broker.lab", srv.port), 0.3)
        link.drop_syn = False
        # A connect while the path is cut waits for the heal.
        link.blackhole(rx=True, tx=False)
        task = asyncio.ensure_future(link.open_connection("broker.lab", srv.port))
        await asyncio.sleep(0.2)
        assert not task.done()
        link.heal()
        r, w = await asyncio.wait_for(task, 2)
        w.write(b"ok")
        assert (await read_n(r, 2))[0] == b"ok"
        board.radio.connected = False
        with pytest.raises(OSError):
            await link.open_connection("broker.lab", srv.port)
        log = board.link_log()
        assert "DNS failure for 'broker.lab' (injected)" in log
        assert any("refused" in m for m in log) and any("SYN lost" in m for m in log)
        w.close()
        await srv.close()

    run(go())


def test_connect_timeout_is_reported_as_etimedout(monkeypatch):
    monkeypatch.setattr("emulator.net.link.SYN_TIMEOUT_S", 0.2)

    async def go():
        link = Link(FakeBoard(), profile={"connect_timeout_rate": 1.0})
        with pytest.raises(OSError) as e:
            await link.open_connection("127.0.0.1", 9)
        assert e.value.args[0] == ETIMEDOUT

    run(go())


def test_partition_cuts_and_heals_a_group():
    async def go():
        srv = await Server().start()
        boards = [FakeBoard(device_id=f"dev-p{i}") for i in range(3)]
        links = [Link(b) for b in boards]
        streams = [await link.open_connection("127.0.0.1", srv.port) for link in links]
        p = partition(links[:2])
        assert all(link.blackhole_rx and link.blackhole_tx for link in links[:2])
        assert not links[2].blackhole_rx
        for i, (_, w) in enumerate(streams):
            w.write(b"%d" % i)
        await srv.wait_bytes(1)
        await asyncio.sleep(0.2)
        assert bytes(srv.received) == b"2"
        p.heal()
        await srv.wait_bytes(3)
        assert sorted(bytes(srv.received).decode()) == ["0", "1", "2"]
        for (r, _), i in zip(streams, range(3)):
            assert (await read_n(r, 1))[0] == b"%d" % i
        with partition([SimpleNamespace(link=links[2])], rx=True, tx=False) as q:
            assert links[2].blackhole_rx and not links[2].blackhole_tx and q.active
        assert not links[2].blackhole_rx
        assert "partition of 2 board(s) starts" in boards[0].link_log()
        for _, w in streams:
            w.close()
        await srv.close()

    run(go())


def test_wifi_loss_stalls_old_connections_only():
    async def go():
        srv = await Server().start()
        link = Link(FakeBoard())
        r1, w1 = await link.open_connection("127.0.0.1", srv.port)
        link.wifi_lost()
        w1.write(b"lost")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r1.read(10), 0.2)
        r2, w2 = await link.open_connection("127.0.0.1", srv.port)
        w2.write(b"new")
        assert (await read_n(r2, 3))[0] == b"new"
        w1.close()
        w2.close()
        await srv.close()

    run(go())


def test_receive_window_holds_back_the_sender():
    """A board that does not read stops the socket reading: the peer's bytes
    wait in the kernel, not in the emulator."""

    async def go():
        srv = await Server(echo=False).start()
        link = Link(FakeBoard())
        r, w = await link.open_connection("127.0.0.1", srv.port)
        await asyncio.sleep(0.05)
        conn = next(iter(link.connections))
        srv.writers[0].write(b"q" * 200_000)
        await asyncio.sleep(0.2)
        assert conn._reading_paused and conn._rx_size < 200_000
        data, _ = await read_n(r, 200_000)
        assert data == b"q" * 200_000
        w.close()
        await srv.close()

    run(go())


def test_read_yields_to_the_loop_even_when_bytes_are_waiting():
    """A board's stream read goes through the poller, so a reader under a
    flood cannot hold the loop: each read (and readinto) lets the other
    tasks run, even when the bytes are already buffered."""

    async def go():
        srv = await Server().start()
        link = Link(FakeBoard())
        r, w = await link.open_connection("127.0.0.1", srv.port)
        conn = next(iter(link.connections))
        payload = bytes(range(256)) * 8
        w.write(payload)
        await w.drain()
        deadline = time.monotonic() + 5
        while conn._rx_size < len(payload):  # all of it buffered on the board's side
            conn._rx_event.clear()
            await asyncio.wait_for(conn._rx_event.wait(), max(0.01, deadline - time.monotonic()))
        turns = 0

        async def other():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        side = asyncio.create_task(other())
        await asyncio.sleep(0)
        got = bytearray()
        buf = bytearray(64)
        mv = memoryview(buf)
        reads = 0
        while len(got) < len(payload):
            before = turns
            n = await r.readinto(mv[:32] if reads % 2 else buf)
            assert n > 0
            got += buf[:n]
            reads += 1
            assert turns > before, f"read {reads} returned without yielding"
        assert bytes(got) == payload
        side.cancel()
        w.close()
        await srv.close()

    run(go())
