"""A minimal OTLP/HTTP trace collector for the tests: `POST /v1/traces` with an
`ExportTraceServiceRequest` in protobuf, decoded here by a small protobuf reader (the fields a
test looks at: each span's resource `service.name`, trace id, span id, parent span id, name and
string attributes), so the suite needs no OpenTelemetry packages.

    collector = Collector().start()
    ... roles run with OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint ...
    spans = collector.spans()          # [Span(...), ...]

Run as a program (`python otlp.py`), it prints its endpoint and serves until killed; `GET /count`
answers the number of spans received.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Tuple


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> Iterator[Tuple[int, object]]:
    """(field number, value) of a protobuf message: ints for varints and fixed, bytes for
    length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _key_value(buf: bytes) -> Tuple[str, str]:
    """A `KeyValue` whose value is a string (other kinds come back as '')."""
    key, text = "", ""
    for n, v in fields(buf):
        if n == 1:
            key = v.decode()
        elif n == 2:
            for m, w in fields(v):
                if m == 1:  # AnyValue.string_value
                    text = w.decode()
    return key, text


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: Dict[str, str] = field(default_factory=dict)


def decode_request(body: bytes) -> List[Span]:
    """The spans of an `ExportTraceServiceRequest`."""
    out: List[Span] = []
    for n, resource_spans in fields(body):
        if n != 1:
            continue
        service = ""
        scopes: List[bytes] = []
        for m, v in fields(resource_spans):
            if m == 1:  # Resource
                for a, kv in fields(v):
                    if a == 1:
                        k, text = _key_value(kv)
                        if k == "service.name":
                            service = text
            elif m == 2:
                scopes.append(v)
        for scope in scopes:
            for m, span in fields(scope):
                if m != 2:
                    continue
                s = Span(service, "", "", "", "")
                for k, v in fields(span):
                    if k == 1:
                        s.trace_id = v.hex()
                    elif k == 2:
                        s.span_id = v.hex()
                    elif k == 4:
                        s.parent_span_id = v.hex()
                    elif k == 5:
                        s.name = v.decode()
                    elif k == 9:
                        key, text = _key_value(v)
                        s.attributes[key] = text
                out.append(s)
    return out


class Collector:
    """Collects every span sent to `endpoint` (an OTLP/HTTP base URL)."""

    def __init__(self) -> None:
        self._spans: List[Span] = []
        self._lock = threading.Lock()
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces" and \
                    self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    spans = decode_request(body)
                    with collector._lock:
                        collector._spans.extend(spans)
                        collector.requests += 1
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                # `GET /count`: spans received so far (for a collector in another process).
                body = str(len(collector.spans())).encode()
                self.send_response(200 if self.path == "/count" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "Collector":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()

    def spans(self) -> List[Span]:
        with self._lock:
            return list(self._spans)


if __name__ == "__main__":
    # A collector of its own process (bench/telemetrybench.py): prints its endpoint, serves until
    # killed.
    c = Collector()
    print(c.endpoint, flush=True)
    c._server.serve_forever()
