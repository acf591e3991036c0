"""The operator caps glibc's malloc arenas before its threads start (cli.limit_malloc_arenas),
and the read buffer asyncio gives each TLS connection (cli.limit_ssl_read_buffers)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from difusor.cli import limit_malloc_arenas

from .conftest import REPO

pytestmark = pytest.mark.unit

#: Twelve threads allocate at once (blocks below the mmap threshold, so from arenas); glibc's
#: arenas besides the main one are anonymous heaps aligned to 64 MiB: counted from /proc.
_ARENAS = """
import sys, threading
sys.path.insert(0, {operator!r})
from difusor.cli import limit_malloc_arenas
capped = limit_malloc_arenas() if sys.argv[1] == "cap" else False
barrier = threading.Barrier(12)
kept = []
def grow():
    barrier.wait()
    kept.append([bytearray(20_000) for _ in range(300)])
threads = [threading.Thread(target=grow) for _ in range(12)]
for t in threads: t.start()
for t in threads: t.join()
heaps = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    start = int(fields[0].split("-")[0], 16)
    if len(fields) == 5 and start % (64 << 20) == 0:
        heaps += 1
print(capped, heaps)
"""


def _heaps(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS.format(operator=str(REPO / "operator")), mode],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


def test_the_variable_wins_over_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_threads_share_two_arenas_once_capped() -> None:
    capped, heaps = _heaps("cap")
    uncapped, more = _heaps("nocap")
    assert (capped, uncapped) == ("True", "False")
    assert heaps <= 1 < more, (heaps, more)


#: 64 TLS connections to a server on loopback, both ends in this process (each end has its own
#: read buffer), then one MiB echoed whole through one of them; the resident growth per end.
_TLS = """
import asyncio, datetime, os, ssl, sys, tempfile
sys.path.insert(0, {operator!r})
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from difusor.cli import limit_ssl_read_buffers
capped = limit_ssl_read_buffers() if sys.argv[1] == "cap" else False
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.UTC)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256()))
work = tempfile.mkdtemp()
with open(os.path.join(work, "cert.pem"), "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
with open(os.path.join(work, "key.pem"), "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
server_ctx.load_cert_chain(os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"))
client_ctx = ssl.create_default_context(cafile=os.path.join(work, "cert.pem"))

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    warm = [await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                          server_hostname="localhost") for _ in range(4)]
    before = rss()
    conns = [await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                           server_hostname="localhost") for _ in range(64)]
    await asyncio.sleep(0.2)
    grown = rss() - before
    reader, writer = conns[0]
    payload = os.urandom(1 << 20)
    writer.write(payload)
    await writer.drain()
    echoed = await reader.readexactly(len(payload))
    print(capped, grown // 128, echoed == payload)

asyncio.run(main())
"""


def _tls(mode: str) -> tuple[str, int, str]:
    out = subprocess.run(
        [sys.executable, "-c", _TLS.format(operator=str(REPO / "operator")), mode],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1]), out[2]


def test_a_tls_connection_reads_through_a_smaller_buffer_once_capped() -> None:
    capped, per_end, echoed = _tls("cap")
    uncapped, default_per_end, default_echoed = _tls("nocap")
    assert (capped, uncapped) == ("True", "False")
    assert (echoed, default_echoed) == ("True", "True")
    # asyncio's 256 KiB per end, against the 64 KiB kept (both with OpenSSL's own state).
    assert default_per_end > 256 << 10, default_per_end
    assert per_end < default_per_end - (160 << 10), (per_end, default_per_end)
