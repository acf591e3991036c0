"""Real varnishd from Debian on loopback with the VCL the operator renders."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from difusor.models import PrepPublicationSpec
from difusor.render.varnish import render_vcl

from .conftest import require_binary
from .nginxproc import free_port

START_TIMEOUT = 60.0


@dataclass
class Varnish:
    """A running varnishd."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, path: str, *, method: str = "GET", source: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        """One request on a fresh connection, from `source` (a 127.x address) when given."""
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0) if source else None
        )
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def compile_vcl(vcl: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`varnishd -C`: compile the VCL to C, as varnishd does before loading it."""
    return subprocess.run(
        [require_binary("varnishd"), "-C", "-j", "none", "-f", str(vcl), "-n", str(workdir / "compile")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def running_varnish(
    spec: PrepPublicationSpec,
    *,
    workdir: Path,
    backends: Sequence[tuple[str, int]],
    purgers: Sequence[str] = ("127.0.0.1/32",),
    port: int | None = None,
) -> Iterator[Varnish]:
    """varnishd in the foreground with the rendered VCL; always stopped."""
    binary = require_binary("varnishd")
    workdir.mkdir(parents=True, exist_ok=True)
    vcl = workdir / "default.vcl"
    vcl.write_text(render_vcl(spec, backends=backends, purgers=purgers))
    port = port or free_port()
    log = (workdir / "varnishd.log").open("ab")
    process = subprocess.Popen(
        [
            binary, "-F", "-j", "none", "-n", str(workdir / "state"), "-f", str(vcl),
            "-a", f"127.0.0.1:{port}", "-s", "malloc,64m", "-T", "none",
            "-p", "ban_lurker_sleep=0.1",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    varnish = Varnish(process, port, workdir)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"varnishd exited: {(workdir / 'varnishd.log').read_text()}")
            try:
                varnish.request("/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("varnishd did not answer") from None
                time.sleep(0.1)
        yield varnish
    finally:
        varnish.stop()
        log.close()
