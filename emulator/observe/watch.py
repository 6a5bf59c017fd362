"""`esp32emu watch`: the live table of every device seen on a broker —
ours or not (real boards on the same broker show up too) — built on the
independent observer (counting.py). Also the pieces of that table which
the fleet's live view reuses (figures, worst boards, messages/s).

Three ways out: a rich live table on a terminal, plain periodic lines when
stdout is not a terminal (or with --plain), and the whole per-device table
once at the end (--duration; --once: once the retained statuses and one
telemetry round from every online device are in, at most ONCE_WAIT_S).
"""

from __future__ import annotations

import sys
import time
from collections import deque

from emulator.observe.counting import DeviceView, FleetObserver
from emulator.validation import UsageError, parse_broker_url

PLAIN_EVERY_S = 5.0
ONCE_WAIT_S = 30.0  # --once: the longest wait for one telemetry round (--duration for slower devices)
TABLE_ROWS = 30  # devices shown in the live table (the worst first)


class Rate:
    """Messages per second over the last few seconds, from a running total."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, total: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def status_text(v: DeviceView) -> str:
    if v.state == "offline" and v.reason:
        return f"offline ({v.reason})"
    return {"online": "online", "offline": "offline", "will": "Will", None: "?"}[v.state]


def age_text(t: float | None, now: float) -> str:
    return "-" if t is None else f"{now - t:.1f} s"


def rtt_text(rtt: dict) -> str:
    return "-" if rtt["p50"] is None else f"{rtt['p50']:.0f}/{rtt['p99']:.0f} ms"


def _badness(v: DeviceView, now: float) -> tuple:
    """Sort key: not online first (longest offline first), then most lost, most reconnects."""
    offline_for = now - v.offline_since if v.state != "online" and v.offline_since is not None else -1.0
    return (-offline_for, -v.lost, -v.births)


def device_rows(views: dict[str, DeviceView], now: float, limit: int | None = None) -> list[tuple[str, ...]]:
    """(id, status, last telemetry, received, lost, reconnects, Wills): the worst first."""
    order = sorted(views.items(), key=lambda dv: (_badness(dv[1], now), dv[0]))
    if limit is not None:
        order = order[:limit]
    return [
        (
            d,
            status_text(v),
            age_text(v.last_telemetry_at, now),
            str(v.received),
            str(v.lost),
            str(v.reconnects),
            str(v.wills),
        )
        for d, v in order
    ]


DEVICE_COLUMNS = ("device", "status", "last telemetry", "received", "lost (seq gaps)", "reconnects", "Wills")


def device_table(views: dict[str, DeviceView], now: float, limit: int | None, title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for i, col in enumerate(DEVICE_COLUMNS):
        t.add_column(col, justify="left" if i < 2 else "right")
    for row in device_rows(views, now, limit):
        style = None if row[1] == "online" else "red" if row[1] == "Will" else "yellow"
        t.add_row(*row, style=style)
    if limit is not None and len(views) > limit:
        t.caption = f"{len(views) - limit} more devices not shown (worst first)"
    return t


def plain_device_lines(views: dict[str, DeviceView], now: float) -> list[str]:
    """The device table as text: each column as wide as its widest cell or
    header, device and status left-aligned, the figures right-aligned under
    their headers (as in the live table)."""
    rows = device_rows(views, now)
    widths = [max(len(cell) for cell in column) for column in zip(DEVICE_COLUMNS, *rows)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(DEVICE_COLUMNS), *(line(row) for row in rows)]


def silent_online(devices: dict[str, DeviceView]) -> list[str]:
    """Devices online now that have sent no telemetry since we subscribed."""
    return sorted(d for d, v in devices.items() if v.state == "online" and not v.received)


def summary_text(s: dict, rate: float) -> str:
    return (
        f"devices {s['devices_seen']} online {s['online']} msg/s {rate:.0f} telemetry {s['telemetry_received']} "
        f"lost {s['telemetry_lost']} reconnects {s['reconnects']} wills {s['lwt_seen']}"
    )


def worst_table(rows: list[tuple[str, str]]):
    from rich.table import Table

    t = Table(title="worst boards", title_justify="left")
    t.add_column("device")
    t.add_column("why")
    for d, why in rows or [("-", "none: no loss, no reconnects, all online")]:
        t.add_row(d, why)
    return t


class WatchView:
    """The live table of `esp32emu watch`."""

    def __init__(self, observer: FleetObserver, where: str, plain: bool):
        self.observer = observer
        self.where = where
        self.rate = Rate()
        self.fancy = not plain and sys.stdout.isatty()
        self.live = None
        self._last_plain = time.monotonic()

    def _renderable(self):
        from rich.console import Group
        from rich.text import Text

        now = time.monotonic()
        s = self.observer.summary()
        head = Text(f"esp32emu watch {self.where} — " + summary_text(s, self.rate.update(s["telemetry_total"], now)))
        views = self.observer.snapshot()
        return Group(head, device_table(views, now, TABLE_ROWS, f"{len(views)} devices"))

    def start(self) -> None:
        if self.fancy:
            from rich.live import Live

            self.live = Live(self._renderable(), refresh_per_second=2)
            self.live.start()

    def tick(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable())
            return
        now = time.monotonic()
        s = self.observer.summary()
        rate = self.rate.update(s["telemetry_total"], now)
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            print(f"esp32emu watch: {summary_text(s, rate)}", flush=True)

    def close(self, final_table: bool) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if final_table:
            now = time.monotonic()
            print("\n".join(plain_device_lines(self.observer.snapshot(), now)), flush=True)
            s = self.observer.summary()
            print(f"esp32emu watch: {summary_text(s, self.rate.update(s['telemetry_total'], now))}", flush=True)


def run_watch(
    broker: str | None,
    prefix: str = "devices",
    duration: float | None = None,
    once: bool = False,
    plain: bool = False,
    certs_dir=None,
) -> int:
    """Watch `broker` (default: the local Mosquitto on 1883) until Ctrl-C or
    `duration`; with `once`, print the device table a single time and exit."""
    from pathlib import Path

    from emulator.broker.mosquitto import BrokerError

    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration}")
    if not prefix or "+" in prefix or "#" in prefix:
        raise UsageError(f"--prefix must be a topic prefix without wildcards, got {prefix!r}")
    url = parse_broker_url(broker or "mqtt://127.0.0.1:1883")
    observer = FleetObserver(url.host, url.port, prefix=prefix.strip("/"))
    if url.tls:
        try:
            observer.use_tls(Path(certs_dir or "certs"), "backend-watch")
        except FileNotFoundError as e:
            raise UsageError(f"mqtts:// watches as the backend identity: {e}") from None
    try:
        observer.start()
    except ConnectionError as e:
        raise BrokerError(str(e)) from None
    print(f"esp32emu: watching {url} ({prefix}/+/status, telemetry, cmd/result)", file=sys.stderr, flush=True)
    view = WatchView(observer, str(url), plain or once)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        if once and duration is None:
            observer.flush()  # the retained statuses have arrived
            # ...and one telemetry round: every device online has sent once.
            if not observer.wait_until(lambda devices: not silent_online(devices), ONCE_WAIT_S):
                with observer.lock:
                    silent = silent_online(observer.devices)
                if silent:
                    print(f"esp32emu: no telemetry within {ONCE_WAIT_S:.0f} s from {len(silent)} online device(s) "
                          f"({', '.join(silent[:5])}{' ...' if len(silent) > 5 else ''}); --duration S waits longer",
                          file=sys.stderr, flush=True)
        else:
            view.start()
            while deadline is None or time.monotonic() < deadline:
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)) if deadline else 0.5)
                view.tick()
            observer.flush()
    except KeyboardInterrupt:
        pass
    finally:
        view.close(final_table=once or duration is not None or not view.fancy)
        observer.stop()
    return 0
