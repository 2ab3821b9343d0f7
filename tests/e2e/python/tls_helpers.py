"""Helpers of the HTTPS end-to-end tests (test_tls.py): a throwaway CA and a wildcard
certificate made with the `openssl` CLI, and a loopback DNS server that answers every name
under a test domain with 127.0.0.1, for clients run in a mount namespace whose
/etc/resolv.conf points at it (`run_with_dns`). The SDK's HTTP client (pyqwest) resolves names
in Rust, not through Python's `socket`, so patching `getaddrinfo` would not reach it; a DNS
server reaches every resolver, and the host's /etc/resolv.conf is never touched."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# An address on loopback (Linux routes all of 127/8 to `lo`) unlikely to hold a resolver.
DNS_ADDR = ("127.0.0.153", 53)


@dataclass
class TestPki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, names: Sequence[str]) -> TestPki:
    """A CA and a certificate for `names` (DNS names, wildcards allowed) it signed; EC P-256,
    valid two days."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    openssl(
        "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
        "-subj", "/CN=Paddock e2e throwaway CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    cert, key = directory / "cert.pem", directory / "key.pem"
    openssl(
        "req", "-x509", *ec, "-keyout", str(key), "-out", str(cert),
        "-subj", f"/CN={names[0].lstrip('*.')}", "-CA", str(ca), "-CAkey", str(ca_key),
        "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in names),
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    return TestPki(ca=ca, cert=cert, key=key)


class LoopbackDns:
    """A UDP DNS server on `DNS_ADDR` answering A queries for `domain` and every name under it
    with 127.0.0.1; other types under it get no records, names outside it NXDOMAIN."""

    def __init__(self, domain: str):
        self.domain = domain.lower().rstrip(".")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(DNS_ADDR)
        self.sock.settimeout(0.2)
        self.queries: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, query: bytes) -> Optional[bytes]:
        if len(query) < 12:
            return None
        (qid, flags, qdcount) = struct.unpack("!HHH", query[:6])
        if qdcount != 1:
            return None
        labels, i = [], 12
        while i < len(query) and query[i] != 0:
            n = query[i]
            labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        i += 1
        if i + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack("!HH", query[i : i + 4])
        question = query[12 : i + 4]
        name = ".".join(labels).lower()
        self.queries.append(name)
        ours = name == self.domain or name.endswith("." + self.domain)
        rcode = 0 if ours else 3
        answers = b""
        count = 0
        if ours and qtype == 1:
            # Name: a pointer to the question's; A, IN, TTL 5, 4 bytes.
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
            count = 1
        rd = flags & 0x0100
        header = struct.pack("!HHHHHH", qid, 0x8080 | rd | rcode, 1, count, 0, 0)
        return header + question + answers

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def run_with_dns(
    argv: Sequence[str], resolv_dir: Path, env: Dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Runs `argv` in a new mount namespace whose /etc/resolv.conf names only `DNS_ADDR`
    (a bind mount that ends with the namespace; the host's file is not changed)."""
    resolv = resolv_dir / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDR[0]}\noptions timeout:2 attempts:2\n")
    script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(resolv), *argv],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
