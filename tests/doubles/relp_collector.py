"""TEST DOUBLE of a SIEM's RELP/TLS input (what rsyslog imrelp or a SIEM collector does).

It stands in for the collector in the shipper's unit tests only; the Molecule scenario
`audit_shipping` ships to a real rsyslog imrelp. It speaks the RELP subset a sender
needs (open, syslog, close, rsp, serverclose), requires a client certificate from the
test CA, and can misbehave on purpose:

- ``break_after``: after acknowledging that many syslog frames, read the next frames
  but answer none and drop the connection (a collector that dies mid-session);
- ``refuse``: a set of message bodies answered with ``500`` instead of ``200``.
"""
from __future__ import annotations

import socket
import ssl
import threading


class RelpCollectorDouble:
    def __init__(self, cert: str, key: str, ca: str, host: str = "127.0.0.1", port: int = 0):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_cert_chain(cert, key)
        self.host, self.port = host, port
        self.messages: list[bytes] = []
        self.sessions = 0
        self.refuse: set[bytes] = set()
        self.break_after: int | None = None
        self._acked_in_session = 0
        self._listener = None
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "RelpCollectorDouble":
        self._stop.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(8)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self._listener = None

    def lines(self) -> list[bytes]:
        with self._lock:
            return list(self.messages)

    # -- serving -------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _addr = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            self.sessions += 1
            self._acked_in_session = 0
            try:
                self._session(conn)
            except (OSError, ValueError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def _session(self, conn) -> None:
        conn.settimeout(0.2)
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return
            buffer += chunk
            while True:
                frame, buffer = self._take_frame(buffer)
                if frame is None:
                    break
                txnr, command, data = frame
                if command == "open":
                    offers = b"200 OK\nrelp_version=0\nrelp_software=relp-collector-double\ncommands=syslog"
                    self._respond(conn, txnr, offers)
                elif command == "close":
                    conn.sendall(f"{txnr} rsp 0\n".encode())
                    return
                elif command == "syslog":
                    if self.break_after is not None and self._acked_in_session >= self.break_after:
                        self.break_after = None      # misbehave once
                        return
                    if data.split(b": ", 1)[-1] in self.refuse:
                        self.refuse.discard(data.split(b": ", 1)[-1])
                        self._respond(conn, txnr, b"500 refused by the double")
                        continue
                    with self._lock:
                        self.messages.append(data)
                    self._acked_in_session += 1
                    self._respond(conn, txnr, b"200 OK")
                else:
                    self._respond(conn, txnr, b"500 unknown command")

    @staticmethod
    def _respond(conn, txnr: int, data: bytes) -> None:
        conn.sendall(f"{txnr} rsp {len(data)} ".encode() + data + b"\n")

    @staticmethod
    def _take_frame(buffer: bytes):
        parts = buffer.split(b" ", 2)
        if len(parts) < 3:
            return None, buffer
        txnr, command = int(parts[0]), parts[1].decode()
        rest = parts[2]
        digits = b""
        for byte in rest:
            if 48 <= byte <= 57:
                digits += bytes([byte])
            else:
                break
        if not digits or len(rest) == len(digits):
            return None, buffer
        length = int(digits)
        if length == 0:
            if rest[len(digits):len(digits) + 1] != b"\n":
                raise ValueError("bad frame")
            consumed = len(parts[0]) + len(parts[1]) + 2 + len(digits) + 1
            return (txnr, command, b""), buffer[consumed:]
        start = len(digits) + 1
        if len(rest) < start + length + 1:
            return None, buffer
        data = rest[start:start + length]
        if rest[start + length:start + length + 1] != b"\n":
            raise ValueError("bad trailer")
        consumed = len(parts[0]) + len(parts[1]) + 2 + start + length + 1
        return (txnr, command, data), buffer[consumed:]
