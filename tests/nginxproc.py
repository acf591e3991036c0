"""Real nginx on loopback with the rendered nginx.conf, the content it serves, and an HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difusor.ingest.store import count_swap
from difusor.models import PrepPublicationSpec
from difusor.render.nginx import HEALTHZ_PATH, READY_MARKER, render_nginx_conf

from .conftest import require_binary

#: Generous: the machine may be busy compiling while the tests run.
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
CUT_IN_BODY = re.compile(rb"cut=([0-9]{8}_[0-9]{4})")


def make_spec(**overrides: Any) -> PrepPublicationSpec:
    """A valid spec with the fields a serving test cares about (camelCase, nested dicts)."""
    spec: dict[str, Any] = {
        "host": "prep.example.mx",
        "sftp": {"authorizedKeysSecret": "iem-keys"},
        "rateLimit": {"requestsPerSecond": 100000, "burst": 1000000, "connections": 100000},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return PrepPublicationSpec.model_validate(spec)


def version_files(cut: str, *, asset_bytes: int = 2048) -> dict[str, bytes]:
    """A small PREP site whose every file says which cut it belongs to (`cut=<id>`)."""
    pad = "x" * 1500
    return {
        "index.html": f"<!doctype html><title>PREP</title><p>cut={cut}</p><!-- {pad} -->".encode(),
        "json/main.json": json.dumps({"corte": f"cut={cut}", "pad": pad}).encode(),
        "json/avance/estado.json": json.dumps({"corte": f"cut={cut}", "pad": pad}).encode(),
        "css/site.css": f"/* cut={cut} */ body {{ color: #222; }} /* {pad} */".encode(),
        "js/app.js": f"// cut={cut}\nconsole.log('{pad}');\n".encode(),
        "data/resultados.csv": (f"cut={cut}\n" + "acta,votos\n" * 200).encode(),
        "data/paquete.zip": b"PK\x05\x06" + f"cut={cut}".encode() + b"\0" * 2000,
        "img/logo.svg": f'<svg xmlns="http://www.w3.org/2000/svg"><!-- cut={cut} {pad} --></svg>'.encode(),
        "assets/asset.bin": f"cut={cut}\n".encode().ljust(asset_bytes, b"."),
    }


@dataclass
class Site:
    """A content directory as on a pod's volume: `versions/<cut>/` and `current`."""

    root: Path

    def add_version(
        self, cut: str, files: Mapping[str, bytes] | None = None, *, complete: bool = True
    ) -> Path:
        """Write versions/<cut>/ with its files, and its manifest when complete."""
        base = self.root / "versions" / cut
        for name, data in (files if files is not None else version_files(cut)).items():
            path = base / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if complete:
            marker = base / READY_MARKER
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"cut": cut}))
        return base

    def activate(self, cut: str, *, count: bool = True) -> None:
        """Point `current` at versions/<cut> as the agent does: a temporary link, rename(2), then
        the swap counter's bump (without `count=False`, which leaves nginx to notice within a
        second)."""
        temporary = self.root / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(f"versions/{cut}")
        temporary.replace(self.root / "current")
        if count:
            count_swap(self.root)


@dataclass
class Response:
    """Status, headers (names lower case) and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def cut_in_body(self) -> str | None:
        """The cut id written into the body, if any."""
        found = CUT_IN_BODY.search(self.body)
        return found.group(1).decode() if found else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host at the moment of asking."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Client:
    """A keep-alive HTTP/1.1 client from a chosen loopback source address."""

    host: str
    port: int
    source: str | None = None
    timeout: float = REQUEST_TIMEOUT
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def request(
        self, path: str, *, method: str = "GET", headers: Mapping[str, str] | None = None
    ) -> Response:
        """One request on the kept-alive connection (reconnecting once if the server closed it)."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    source_address=(self.source, 0) if self.source else None,
                )
            try:
                self._conn.request(method, path, headers=dict(headers or {}))
                raw = self._conn.getresponse()
                body = raw.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
                continue
            result = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, body)
            if raw.will_close:
                self.close()
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Nginx:
    """One running nginx master and where it listens, logs and keeps its config."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    config: Path
    access_log: Path
    stderr: Path

    def client(self, source: str | None = None) -> Client:
        """A keep-alive client, from `source` (a 127.x address) when given."""
        return Client(self.host, self.port, source)

    def get(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> Response:
        """One request on a fresh connection."""
        client = self.client(source)
        try:
            return client.request(path, method=method, headers=headers)
        finally:
            client.close()

    def log_records(self) -> list[dict[str, Any]]:
        """The access log as parsed JSON objects (stop nginx first: the log is buffered)."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def stop(self) -> None:
        """Graceful stop (flushes the buffered access log), then a kill if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def _wait_until_listening(nginx: Nginx) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            raise RuntimeError(f"nginx exited: {nginx.stderr.read_text()}")
        try:
            if nginx.get(HEALTHZ_PATH).status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not answer within {START_TIMEOUT}s: {nginx.stderr.read_text()}")


def nginx_test(config: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a config file."""
    binary = require_binary("nginx")
    return subprocess.run(
        [binary, "-e", "stderr", "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def render_for_tests(
    spec: PrepPublicationSpec, *, workdir: Path, content: Path, port: int, **overrides: Any
) -> str:
    """The pod's config with loopback, temporary paths and, as root, workers running as root."""
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "content_dir": str(content),
        "run_dir": str(workdir / "run"),
        "access_log": str(workdir / "logs" / "access.log"),
        "listen_addresses": ("127.0.0.1",),
        "port": port,
        "user": "root" if os.geteuid() == 0 else None,
        "worker_processes": 2,
    }
    kwargs.update(overrides)
    return render_nginx_conf(spec, **kwargs)


@contextlib.contextmanager
def running_nginx(
    spec: PrepPublicationSpec, *, workdir: Path, content: Path, **overrides: Any
) -> Iterator[Nginx]:
    """nginx with exactly the rendered config, on 127.0.0.1 and a free port; always stopped."""
    binary = require_binary("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        config = workdir / "nginx.conf"
        config.write_text(
            render_for_tests(spec, workdir=workdir, content=content, port=port, **overrides)
        )
        stderr = workdir / f"nginx.stderr.{attempt}"
        with stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    binary,
                    "-e",
                    "stderr",
                    "-p",
                    str(workdir),
                    "-c",
                    str(config),
                    "-g",
                    "daemon off;",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        nginx = Nginx(process, "127.0.0.1", port, config, workdir / "logs" / "access.log", stderr)
        try:
            _wait_until_listening(nginx)
        except RuntimeError:
            nginx.stop()
            if "Address already in use" in stderr.read_text() and attempt < 2:
                continue
            raise
        try:
            yield nginx
        finally:
            nginx.stop()
        return
