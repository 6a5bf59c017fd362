"""The dashboard page (SPEC §6, issue 16) in a real headless Chromium.

Emulated boards on a private Mosquitto, the backend (`emulator.dashboard`)
in this process on a free port, and Debian's `/usr/bin/chromium` driven by
Playwright (never `playwright install`: the browser is the system's). Every
wait is a `wait_for_function` with a deadline on what the page shows.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from emulator.broker.mosquitto import Broker
from emulator.observe.counting import FleetObserver
from emulator.testing.handles import BoardHandle, will_deadline

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "test-token-0123456789"

pytestmark = [pytest.mark.mosquitto, pytest.mark.integration,
              pytest.mark.esp32emu(keepalive=2, interval=1)]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.errors = []  # uncaught exceptions in the page: every test asserts there were none
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    context.close()


class Backend:
    """The dashboard backend on the test's broker: one FleetObserver (the
    model `fleet` and `watch` use) and the server; `restart()` stops the
    server and starts it again on the same port with the same token."""

    def __init__(self, broker: Broker, prefix: str, state: Path) -> None:
        from emulator.dashboard.server import Dashboard, events_log_in

        self._Dashboard = Dashboard
        self.observer = FleetObserver(broker.host, broker.port, prefix=prefix).start()
        self.state = state
        self.log = events_log_in(state)  # where `esp32emu dashboard` keeps its replay ring
        self.dash = Dashboard(self.observer, port=0, token=TOKEN, events_log=self.log).start()
        self.port = self.dash.port

    @property
    def url(self) -> str:
        return self.dash.url

    def stop(self) -> None:
        self.dash.stop()

    def start_again(self) -> None:
        self.dash = self._Dashboard(self.observer, port=self.port, token=TOKEN, events_log=self.log).start()

    def close(self) -> None:
        self.dash.stop()
        self.observer.stop()


class Cable:
    """A TCP relay between the browser and the backend that can be unplugged:
    `unplug()` cuts every connection and refuses new ones until `plug()`."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.plugged = threading.Event()
        self.plugged.set()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.plugged.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def unplug(self) -> None:
        self.plugged.clear()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def plug(self) -> None:
        self.plugged.set()

    def close(self) -> None:
        self.server.close()
        self.unplug()


@pytest.fixture
def backend(mosquitto: Broker, esp32emu_prefix: str, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(mosquitto, esp32emu_prefix, tmp_path / "dashboard")
    yield b
    b.close()


def open_page(page, backend: Backend, fragment: str = "") -> None:
    page.goto(backend.url + fragment)
    page.wait_for_function("window.esp32dash && window.esp32dash.state === 'live'", timeout=10_000)


def shown(page, selector: str) -> str:
    return page.inner_text(selector)


def wait_row(page, device_id: str, state: str, timeout_s: float) -> None:
    """Until the fleet table shows `device_id` in `state` (the page's own row text)."""
    page.wait_for_function(
        """([id, state]) => [...document.querySelectorAll('#rows .row')].some(r =>
             r.style.display !== 'none' && r.children[1].textContent === id &&
             r.children[0].textContent.toLowerCase() === state)""",
        arg=[device_id, state], timeout=timeout_s * 1000)


def filter_to(page, text: str) -> None:
    page.fill("#filter", text)


def boot_all(boards: Callable[..., list[BoardHandle]], n: int) -> list[BoardHandle]:
    made = boards(n)
    for b in made:
        b.boot()
    return made


def test_page_shows_every_board_online_with_counts(page, backend, boards):
    made = boot_all(boards, 5)
    open_page(page, backend)
    page.wait_for_function("document.getElementById('count-online').textContent === '5'", timeout=20_000)
    assert shown(page, "#count-total") == "5"
    assert shown(page, "#count-will") == "0"
    for b in made:
        wait_row(page, b.id, "online", 5)
    # telemetry reaches the table: every row gets a temperature reading
    page.wait_for_function(
        "[...document.querySelectorAll('#rows .row')].filter(r => r.style.display !== 'none' && /\\d/.test(r.children[7].textContent)).length === 5",
        timeout=10_000)
    # the id filter narrows the table and says how many it shows
    filter_to(page, made[2].id)
    page.wait_for_function("document.getElementById('shown').textContent === 'showing 1 of 5'", timeout=5_000)
    assert page.evaluate("window.esp32dash.stats.dups") == 0
    assert page.errors == []


def test_power_loss_turns_the_board_to_will_within_the_spec_bound(page, backend, boards):
    made = boot_all(boards, 2)
    open_page(page, backend)
    for b in made:
        wait_row(page, b.id, "online", 20)
    victim = made[0]
    victim.power_loss()
    # SPEC §4.5: the Will within floor(1.5 KA) + 7 s of the last packet; +2 s for backend and page
    wait_row(page, victim.id, "will", will_deadline(victim.keepalive) + 2)
    page.wait_for_function("document.getElementById('count-will').textContent === '1'", timeout=2_000)
    assert shown(page, "#count-online") == "1"
    # the state filter shows only the Will
    page.click(".states button[data-state=will]")
    page.wait_for_function("document.getElementById('shown').textContent === 'showing 1 of 2'", timeout=5_000)
    assert page.errors == []


def test_ping_button_shows_the_result_and_round_trip(page, backend, boards):
    (b,) = boot_all(boards, 1)
    open_page(page, backend, f"#device={b.id}")
    wait_row(page, b.id, "online", 20)
    page.wait_for_function("document.getElementById('p-state').textContent === 'online'", timeout=10_000)
    page.click("#panel button[data-op=ping]")
    page.wait_for_function("document.querySelector('#p-results li') && !document.querySelector('#p-results li.pending')",
                           timeout=15_000)
    item = page.locator("#p-results li").first
    assert item.get_attribute("class") == "ok", item.inner_text()
    assert "pong" in item.locator(".out").inner_text()
    rtt = item.locator(".rtt").inner_text()
    assert rtt.endswith(" ms") and float(rtt[:-3]) > 0
    # a bad argument comes back as the device's error, shown as such
    page.fill("#a-interval", "0")
    page.click("#panel button[data-op=set_interval]")
    page.wait_for_function("document.querySelectorAll('#p-results li').length === 2 && !document.querySelector('#p-results li.pending')",
                           timeout=15_000)
    assert page.locator("#p-results li").first.get_attribute("class") == "fail"
    # a command another client sends shows up in the open panel too, once
    status, body = post_command(backend, b.id, {"op": "read"})
    assert status == 200 and body["ok"], body
    page.wait_for_function("document.querySelectorAll('#p-results li').length === 3", timeout=10_000)
    other = page.locator("#p-results li").first
    assert other.get_attribute("class") == "ok" and other.locator(".op").inner_text().startswith("other client")
    assert page.errors == []


def post_command(backend: Backend, device_id: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.parse
    import urllib.request

    req = urllib.request.Request(f"{backend.dash.base}/api/devices/{urllib.parse.quote(device_id, safe='')}/commands",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sensor_fault_shows_in_the_panel(page, backend, boards):
    (b,) = boot_all(boards, 1)
    open_page(page, backend, f"#device={b.id}")
    wait_row(page, b.id, "online", 20)
    page.wait_for_function("!document.querySelector('#p-charts .chart').hidden", timeout=10_000)  # readings charted
    assert page.is_hidden("#p-faults")
    b.sensor_fault("bme280", "missing")
    page.wait_for_function("!document.getElementById('p-faults').hidden", timeout=10_000)
    assert "ENODEV" in shown(page, "#p-faults")  # the device's own words, per reading
    page.wait_for_function("document.getElementById('count-faults').textContent === '1'", timeout=5_000)
    assert page.errors == []


def record_telemetry(page) -> None:
    page.evaluate("""() => {
        window.seen = [];  // (device, seq) of every telemetry event the page handled
        window.esp32dash.listeners.push((type, d) => { if (type === 'telemetry') window.seen.push([d.device, d.payload.seq]); });
    }""")


def seen_pairs(page) -> list[tuple[str, int]]:
    return [tuple(p) for p in page.evaluate("window.seen")]


def assert_no_duplicate_and_no_seq_gap(pairs: list[tuple[str, int]]) -> None:
    assert len(pairs) == len(set(pairs)), "a telemetry message was handled twice"
    for dev in {d for d, _ in pairs}:
        seqs = [s for d, s in pairs if d == dev]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{dev}: seq gap in the page {seqs}"


def test_network_drop_replays_what_was_missed_with_no_gap_and_no_duplicate(page, backend, boards):
    """The browser loses the network (Chromium offline) while the boards go on
    publishing; back online, EventSource reconnects with Last-Event-ID and the
    ring's replay fills the hole: every board's seq is contiguous in the page."""
    boot_all(boards, 3)
    cable = Cable(backend.port)
    try:
        page.goto(backend.url.replace(f":{backend.port}/", f":{cable.port}/"))
        page.wait_for_function("window.esp32dash && window.esp32dash.state === 'live'", timeout=10_000)
        record_telemetry(page)
        page.wait_for_function("window.seen.length >= 6", timeout=20_000)
        cable.unplug()
        replayed_after_drop(page, backend, cable)
    finally:
        cable.close()


def replayed_after_drop(page, backend: Backend, cable: Cable) -> None:
    page.wait_for_function("window.esp32dash.state === 'reconnecting'", timeout=15_000)
    assert page.is_visible("#banner")
    missed_from = backend.dash.hub.last_id
    # the boards publish on while the page is away: at least 3 events it has not seen
    assert backend.observer.wait_until(lambda _devices: backend.dash.hub.last_id >= missed_from + 3, 20)
    cable.plug()
    page.wait_for_function("window.esp32dash.state === 'live'", timeout=20_000)
    page.wait_for_function(f"window.esp32dash.stats.lastId >= {backend.dash.hub.last_id}", timeout=20_000)
    stats = page.evaluate("window.esp32dash.stats")
    assert stats["opens"] >= 2, stats
    assert stats["dups"] == 0 and stats["gaps"] == 0 and stats["resyncs"] == 0, stats
    assert_no_duplicate_and_no_seq_gap(seen_pairs(page))
    assert page.is_hidden("#banner")
    assert page.errors == []


def test_backend_restart_reconnects_with_no_gap_and_no_duplicate(page, backend, boards):
    """The backend stopped and started again on the same port and state
    folder: the page got every event the old run numbered, shows
    "reconnecting", comes back by itself with its Last-Event-ID, which the
    new run's ring (read back from the event log) holds: no resync, no
    second snapshot, ids go on from the old run's last with no hole, and no
    event handled twice."""
    made = boot_all(boards, 3)
    open_page(page, backend)
    record_telemetry(page)
    page.wait_for_function("window.seen.length >= 6", timeout=20_000)
    backend.stop()
    old_last = backend.dash.hub.last_id
    page.wait_for_function("window.esp32dash.state === 'reconnecting'", timeout=10_000)
    assert page.is_visible("#banner")
    # Everything the old run numbered reached the page before its stream ended
    # (the hub stops numbering, sends what it numbered, then closes).
    assert page.evaluate("window.esp32dash.stats.lastId") == old_last
    backend.start_again()
    assert backend.dash.hub.first_id == old_last  # the id sequence goes on from the log's last id
    page.wait_for_function("window.esp32dash.state === 'live'", timeout=20_000)
    page.wait_for_function(f"window.esp32dash.stats.lastId > {old_last} + 6", timeout=20_000)
    stats = page.evaluate("window.esp32dash.stats")
    assert stats["resyncs"] == 0 and stats["dups"] == 0 and stats["gaps"] == 0, stats
    assert stats["snapshots"] == 1 and stats["opens"] >= 2, stats
    pairs = seen_pairs(page)  # once: telemetry keeps arriving between two reads
    assert len(pairs) == len(set(pairs)), "a telemetry message was handled twice"
    assert page.inner_text("#count-online") == str(len(made))
    assert page.is_hidden("#banner")
    assert page.errors == []


HOSTILE_ID = '"><img src=x onerror="window.__xss=1">'
HOSTILE_ID2 = "<script>window.__xss=2<\\script>"


def test_device_strings_are_shown_as_text(page, backend, observer_factory, mosquitto, esp32emu_prefix):
    pub = observer_factory(mosquitto, subscribe=[])
    script = "<script>window.__xss=3</script>"
    img = '"><img src=x onerror="window.__xss=4">'
    for dev in (HOSTILE_ID, HOSTILE_ID2):
        pub.publish(f"{esp32emu_prefix}/{dev}/status",
                    json.dumps({"online": True, "fw": script, "boot": 1, "reset": img, "ip": img}), qos=1, retain=True)
        pub.publish(f"{esp32emu_prefix}/{dev}/telemetry",
                    json.dumps({"seq": 0, "ts": None, "t": 20.5, "err": {"bme280": script + img}}), qos=1)
    open_page(page, backend)
    page.wait_for_function("document.getElementById('count-total').textContent === '2'", timeout=10_000)
    ids = page.evaluate("[...document.querySelectorAll('#rows .row')].filter(r => r.style.display !== 'none').map(r => r.children[1].textContent)")
    assert sorted(ids) == sorted([HOSTILE_ID, HOSTILE_ID2])
    # open the hostile device's panel: its strings are text there too
    page.evaluate("""id => [...document.querySelectorAll('#rows .row')]
                      .find(r => r.children[1].textContent === id).children[1].click()""", HOSTILE_ID2)
    page.wait_for_function("!document.getElementById('p-faults').hidden", timeout=10_000)
    assert page.inner_text("#p-id") == HOSTILE_ID2
    assert script in page.inner_text("#p-faults")
    assert script in page.inner_text("#p-facts")
    assert page.evaluate("document.querySelectorAll('img, #rows script, #panel script').length") == 0
    assert page.evaluate("window.__xss") is None
    assert page.errors == []


def test_page_without_token_says_why_it_shows_nothing(page, backend, boards):
    boot_all(boards, 1)
    backend.observer.wait_until(lambda devices: len(devices) == 1, 20)
    page.goto(backend.url.split("?")[0])  # the page itself needs no token; its stream does
    page.wait_for_function("window.esp32dash && window.esp32dash.state === 'closed'", timeout=10_000)
    assert "token" in page.inner_text("#banner")
    assert page.inner_text("#count-total") == "0"
    assert page.errors == []
