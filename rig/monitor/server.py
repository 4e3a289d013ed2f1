"""The live monitor's web server: stdlib ``http.server`` in a thread, on 127.0.0.1 only.

``GET /`` is the page (``page.html``: inline SVG drawn by a little script; nothing from
the internet), ``GET /state.json`` what it draws (``MonitorState.snapshot``). Every other
method is refused: the page has no control actions. To watch from another computer, tunnel:
``ssh -N -L 8765:127.0.0.1:8765 user@controller`` and open http://127.0.0.1:8765/.
"""
from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rig.monitor.state import MonitorState

PAGE = Path(__file__).with_name("page.html")


def _handler(state: MonitorState, page: bytes):
    class Handler(BaseHTTPRequestHandler):
        server_version = "itloop-monitor"

        def log_message(self, *args) -> None:     # quiet: the session's progress bar owns the terminal
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:   # (http.server's name)
            address = self.server.server_address   # (host, port, ...): a TCP server
            if not isinstance(address, tuple) or not host_allowed(self.headers.get("Host"), address[1]):
                # DNS rebinding: a web page whose name now points at 127.0.0.1 would send its own Host
                self._send(421, b"misdirected: the live monitor answers http://127.0.0.1:PORT/ only\n", "text/plain")
                return
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/state.json":
                self._send(200, json.dumps(state.snapshot(), allow_nan=False).encode(), "application/json")
            else:
                self._send(404, b"not found: the monitor serves / and /state.json\n", "text/plain")

        def _refuse(self) -> None:
            self._send(405, b"read-only: the live monitor takes no actions\n", "text/plain")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    return Handler


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def host_allowed(host: str | None, port: int) -> bool:
    """Whether a request's ``Host`` header names this loopback server (127.0.0.1, localhost or
    [::1], with this port or none); anything else is refused (DNS rebinding)."""
    if not host:
        return False
    host = host.strip().lower()
    name, sep, tail = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name, tail = host, ""
    if tail and tail != str(port):
        return False
    return name in _LOOPBACK_NAMES


class LiveMonitor:
    """Serve ``state`` on ``host:port`` (loopback only; port 0 picks a free one) until ``close()``."""

    def __init__(self, state: MonitorState, host: str = "127.0.0.1", port: int = 8765):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the live monitor binds to loopback only, not {host!r}; reach it from another "
                             "computer through an SSH tunnel (see the README)")
        self.state = state
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(state, PAGE.read_bytes()))
        except OSError as exc:
            raise ValueError(f"live monitor: cannot listen on {host}:{port} ({exc}); set live_monitor.port "
                             "to a free port (0 = any)") from None
        self.httpd.daemon_threads = True
        bound, self.port = self.httpd.server_address[:2]
        self.host = bound.decode() if isinstance(bound, (bytes, bytearray)) else bound
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="itloop-live-monitor", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def observe(self, rows, status) -> None:
        """The session runner's observer: one call per stored trial (``status``: its TrialProgress)."""
        self.state.observe(rows, status)

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()

    def __enter__(self) -> "LiveMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
