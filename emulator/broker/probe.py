"""Raw MQTT 3.1.1, just enough to ask a broker "are you there?": a CONNECT,
its CONNACK's return code, a DISCONNECT. No client library, so `Broker`
can tell "started" from "answering MQTT" without importing paho.
"""

from __future__ import annotations

import socket
import ssl
import struct


def _mqtt_string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 10,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """Encode an MQTT 3.1.1 CONNECT packet (no Will)."""
    flags = 0x02 if clean_session else 0
    payload = _mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} CONNACK bytes")
        data += chunk
    return data


def mqtt_connect_rc(
    host: str,
    port: int,
    *,
    client_id: str = "esp32emu-probe",
    keepalive: int = 10,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Open a connection, send CONNECT, return the CONNACK return code, disconnect.

    0 = accepted, 1 = bad protocol, 2 = identifier rejected (also Mosquitto's
    answer to a keepalive above `max_keepalive`), 3 = unavailable,
    4 = bad username or password, 5 = not authorized.
    Raises OSError (`socket.timeout` included) when no CONNACK comes in time.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
        sock.sendall(
            connect_packet(client_id, keepalive=keepalive, username=username, password=password)
        )
        header = _recv_exactly(sock, 4)
        if header[0] != 0x20 or header[1] != 0x02:
            raise ConnectionError(f"expected CONNACK, got {header.hex()}")
        rc = header[3]
        if rc == 0:
            try:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: no Will, clean log line
            except OSError:
                pass
        return rc
