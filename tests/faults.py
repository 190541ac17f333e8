"""A fault-injecting HTTP proxy on loopback, in front of the test S3 server: a flaky, busy object store.

Every `every`-th request fails, in turn: a 503 SlowDown, a 500 InternalError, a connection
dropped mid-upload (part of the request body read, then the socket closed without an answer;
a request without a body gets a 503 instead), and a stall longer than the client's read timeout
(at most `stalls` of them, since each costs the timeout).  The failed requests never reach the
server, so a client that retries them sees the store as it is.  The rest pass through untouched,
Host header included (SigV4 signs it).  The schedule is fixed, so a run through the proxy
always meets the same faults in the same order.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("slow_down", "internal_error", "dropped", "stall")
ERROR_BODY = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'


class FaultProxy:
    def __init__(self, upstream_port: int, every: int = 5, stalls: int = 2, stall_s: float = 8.0):
        self.upstream_port = upstream_port
        self.every = every
        self.stalls = stalls
        self.stall_s = stall_s
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.requests % self.every:
                return None
            kind = KINDS[(self.requests // self.every - 1) % len(KINDS)]
            if kind == "stall" and self.faults["stall"] >= self.stalls:
                kind = "slow_down"
            self.faults[kind] += 1
            return kind

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        kind = self._fault()
        if kind == "dropped" and length == 0:
            kind = "slow_down"
        if kind == "dropped":
            handler.rfile.read(length // 2)
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        body = handler.rfile.read(length) if length else b""
        if kind == "stall":
            time.sleep(self.stall_s)
            kind = "internal_error"  # if the client is still there, it gets an error too
        if kind in ("slow_down", "internal_error"):
            status, code, message = (
                (503, "SlowDown", "Please reduce your request rate.")
                if kind == "slow_down"
                else (500, "InternalError", "We encountered an internal error. Please try again.")
            )
            data = ERROR_BODY.format(code=code, message=message).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
            return
        self._forward(handler, body)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            upstream.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            handler.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    handler.send_header(name, value)
            head = handler.command == "HEAD"  # no body, but the object's length
            handler.send_header(
                "Content-Length", (response.getheader("Content-Length") or "0") if head else str(len(data))
            )
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            upstream.close()
