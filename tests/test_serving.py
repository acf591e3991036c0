"""The rendered nginx.conf proven against a real nginx on loopback: cuts, caching, limits, logs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from difusor.logic.attack import LogRecord, minute_figures
from difusor.render.nginx import (
    ACCESS_LOG_PATH,
    CONTENT_DIR,
    CURRENT_RESOLVERS,
    HEALTHZ_PATH,
    LOG_FIELDS,
    NO_STORE,
    READYZ_PATH,
    RUN_DIR,
    SWAP_COUNTER,
)

from .conftest import REPO, wait_for
from .nginxproc import Nginx, Site, make_spec, nginx_test, running_nginx, version_files

pytestmark = pytest.mark.e2e

CUT_A = "20240602_2040"
CUT_B = "20240602_2100"
CUT_C = "20240602_2120"
PORTAL = "https://www.portal.example.mx"
GOLDEN = REPO / "tests" / "golden" / "nginx"


@pytest.mark.parametrize("name", sorted(path.stem for path in GOLDEN.glob("*.conf")))
def test_nginx_accepts_every_golden_config(tmp_path: Path, name: str) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "run").mkdir()
    text = (GOLDEN / f"{name}.conf").read_text()
    moved = (
        text.replace(ACCESS_LOG_PATH, f"{tmp_path}/logs/access.log")
        .replace(f" {RUN_DIR}/nginx", f" {tmp_path}/run/nginx")
        .replace(f" {CONTENT_DIR}/", f" {tmp_path}/content/")
        .replace(f'"{CONTENT_DIR}/', f'"{tmp_path}/content/')
    )
    for pod_path in (CONTENT_DIR, ACCESS_LOG_PATH, f" {RUN_DIR}/nginx"):
        assert pod_path in text
        assert pod_path not in moved
    config = tmp_path / "nginx.conf"
    config.write_text(moved)
    result = nginx_test(config)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Two complete cuts, the first one active."""
    content = Site(tmp_path / "content")
    content.add_version(CUT_A)
    content.add_version(CUT_B)
    content.activate(CUT_A)
    return content


@pytest.fixture(params=CURRENT_RESOLVERS)
def nginx(tmp_path: Path, site: Site, request: pytest.FixtureRequest) -> Iterator[Nginx]:
    """nginx with generous limits, TLS set, one embedding portal and two no-store entries, once
    with each way of reading `current`."""
    spec = make_spec(
        tls={"secretName": "prep-tls"},
        embedding={"allowedOrigins": [PORTAL]},
        cache={"noStorePaths": ["/json/main.json", "/json/avance/"], "maxAgeSeconds": 45},
    )
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=site.root, current_resolver=request.param
    ) as server:
        yield server


def test_swapping_current_takes_effect_on_the_next_request_without_reload(
    nginx: Nginx, site: Site
) -> None:
    first = nginx.get("/json/main.json")
    site.activate(CUT_B)
    second = nginx.get("/json/main.json")
    site.activate(CUT_A)
    third = nginx.get("/")
    assert (first.status, second.status, third.status) == (200, 200, 200)
    assert first.headers["x-prep-cut"] == first.cut_in_body() == CUT_A
    assert second.headers["x-prep-cut"] == second.cut_in_body() == CUT_B
    assert third.headers["x-prep-cut"] == third.cut_in_body() == CUT_A
    assert second.headers["x-prep-cut-time"] == "2024-06-02T21:00:00-06:00"
    assert nginx.process.poll() is None


def _wait_served(nginx: Nginx, cut: str) -> None:
    """Until a request is answered from `cut` (at most 10 s)."""
    wait_for(
        f"{cut} served",
        lambda: nginx.get("/json/main.json").headers.get("x-prep-cut") == cut,
        timeout=10,
        interval=0.02,
    )


@pytest.fixture
def lua_nginx(tmp_path: Path, site: Site) -> Iterator[Nginx]:
    """nginx reading `current` from Lua (the pod's way), with its counter of swaps."""
    with running_nginx(
        make_spec(), workdir=tmp_path / "nginx", content=site.root, current_resolver="lua"
    ) as server:
        yield server


def test_a_swap_the_counter_does_not_announce_is_served_within_a_second_or_two(
    lua_nginx: Nginx, site: Site
) -> None:
    assert lua_nginx.get("/json/main.json").headers["x-prep-cut"] == CUT_A
    site.activate(CUT_B, count=False)
    _wait_served(lua_nginx, CUT_B)


def test_a_replaced_swap_counter_is_mapped_again(lua_nginx: Nginx, site: Site) -> None:
    assert lua_nginx.get("/json/main.json").headers["x-prep-cut"] == CUT_A
    counter = site.root / SWAP_COUNTER
    inode = counter.stat().st_ino
    # A restored volume: a new counter file, whose bumps are the only news of later swaps.
    counter.unlink()
    site.activate(CUT_B)
    assert counter.stat().st_ino != inode
    _wait_served(lua_nginx, CUT_B)
    time.sleep(1.5)  # past the once-a-second recheck that maps the new file in every worker
    for cut in (CUT_A, CUT_B, CUT_A):
        site.activate(cut)
        answers = [lua_nginx.get("/json/main.json") for _ in range(6)]
        assert [(a.status, a.headers["x-prep-cut"]) for a in answers] == [(200, cut)] * 6


def test_a_short_swap_counter_is_never_read_past_its_end(lua_nginx: Nginx, site: Site) -> None:
    counter = site.root / SWAP_COUNTER
    counter.unlink()
    counter.write_bytes(b"\x01")  # mapping it and reading 4 bytes would kill the worker (SIGBUS)
    deadline = time.monotonic() + 2.5
    statuses = set()
    while time.monotonic() < deadline:
        statuses.add(lua_nginx.get("/json/main.json").status)
        time.sleep(0.02)
    site.activate(CUT_B, count=False)
    assert lua_nginx.get("/json/main.json").headers["x-prep-cut"] == CUT_B
    assert statuses == {200}
    assert "signal" not in lua_nginx.stderr.read_text()


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    cuts_seen: set[str] = field(default_factory=set)
    mismatches: list[str] = field(default_factory=list)


def test_cut_headers_always_match_the_body_under_concurrent_swaps(
    tmp_path: Path, nginx: Nginx, site: Site
) -> None:
    site.add_version(CUT_C, version_files(CUT_C, asset_bytes=200_000))
    for cut in (CUT_A, CUT_B):
        site.add_version(cut, version_files(cut, asset_bytes=200_000))
    times = {
        CUT_A: "2024-06-02T20:40:00-06:00",
        CUT_B: "2024-06-02T21:00:00-06:00",
        CUT_C: "2024-06-02T21:20:00-06:00",
    }
    paths = ["/json/main.json", "/", "/assets/asset.bin", "/js/app.js", "/json/avance/estado.json"]
    tally = _Tally()
    done = threading.Event()
    deadline = time.monotonic() + 120

    def reader(index: int) -> None:
        client = nginx.client()
        try:
            for n in range(5000):
                if done.is_set() or time.monotonic() > deadline:
                    return
                response = client.request(paths[(index + n) % len(paths)])
                header = response.headers.get("x-prep-cut")
                body = response.cut_in_body()
                with tally.lock:
                    tally.requests += 1
                    if header is not None:
                        tally.cuts_seen.add(header)
                    if (
                        response.status != 200
                        or header != body
                        or response.headers.get("x-prep-cut-time") != times.get(body or "")
                    ):
                        tally.mismatches.append(f"{response.status} {header} {body}")
        finally:
            client.close()

    swaps = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(reader, i) for i in range(8)]
        cuts = (CUT_A, CUT_B, CUT_C)
        while swaps < 20000 and time.monotonic() < deadline:
            site.activate(cuts[swaps % 3])
            swaps += 1
            with tally.lock:
                if swaps >= 1000 and tally.requests >= 8000:
                    break
            time.sleep(0.0005)
        done.set()
        for future in futures:
            future.result()
    print(f"\n{tally.requests} requests during {swaps} swaps; cuts seen {sorted(tally.cuts_seen)}")
    assert tally.mismatches == []
    assert tally.requests >= 100
    assert len(tally.cuts_seen) >= 2


def _nginx_etag(path: Path) -> str:
    stat = path.stat()
    return f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'


def test_main_json_is_never_cached(nginx: Nginx, site: Site) -> None:
    old = nginx.get("/json/main.json")
    site.activate(CUT_B)
    for path in ("/json/main.json", "/json/avance/estado.json"):
        for cut in (CUT_A, CUT_B):
            file = site.root / "versions" / cut / path.lstrip("/")
            for validators in (
                {"If-Modified-Since": "Tue, 01 Jan 2030 00:00:00 GMT"},
                {"If-None-Match": _nginx_etag(file)},
                {"If-None-Match": f"W/{_nginx_etag(file)}"},
            ):
                response = nginx.get(path, headers=validators)
                assert response.status == 200, (path, validators)
                assert response.cut_in_body() == CUT_B
                assert response.headers["cache-control"] == NO_STORE
                assert response.headers["pragma"] == "no-cache"
                assert response.headers["expires"] == "0"
                assert "etag" not in response.headers
                assert "last-modified" not in response.headers
    assert old.headers["cache-control"] == NO_STORE
    assert "etag" not in old.headers
    assert "last-modified" not in old.headers


def test_other_files_are_cacheable_for_max_age_seconds(nginx: Nginx) -> None:
    response = nginx.get("/css/site.css")
    assert response.headers["cache-control"] == "public, max-age=45"
    again = nginx.get("/css/site.css", headers={"If-None-Match": response.headers["etag"]})
    assert again.status == 304
    missing = nginx.get("/no/such/file.html")
    assert missing.status == 404
    assert missing.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "content_type", "gzipped"),
    [
        ("/", "text/html", True),
        ("/js/app.js", "text/javascript", True),
        ("/css/site.css", "text/css", True),
        ("/json/main.json", "application/json; charset=utf-8", True),
        ("/data/resultados.csv", "text/csv", True),
        ("/data/paquete.zip", "application/zip", False),
        ("/img/logo.svg", "image/svg+xml", True),
    ],
)
def test_each_file_type_has_its_content_type_and_text_is_gzipped(
    nginx: Nginx, path: str, content_type: str, *, gzipped: bool
) -> None:
    response = nginx.get(path, headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    assert (response.headers.get("content-encoding") == "gzip") is gzipped


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_only_get_and_head_are_allowed(nginx: Nginx, method: str) -> None:
    response = nginx.get("/json/main.json", method=method)
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    head = nginx.get("/json/main.json", method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["x-prep-cut"] == CUT_A


@pytest.mark.parametrize(
    "path",
    [
        "/.prep/manifest.json",
        "/.git/config",
        "/json/.hidden.json",
        "/incoming/upload.zip",
        "/quarantine/bad.zip",
        "/versions/20240602_2040/json/main.json",
        "/current/json/main.json",
        "/logs/access.log",
        "/%2Eprep/manifest.json",
    ],
)
def test_internal_paths_and_dotfiles_answer_404(nginx: Nginx, site: Site, path: str) -> None:
    for name in ("incoming/upload.zip", "quarantine/bad.zip", "json/.hidden.json", ".git/config"):
        target = site.root / "versions" / CUT_A / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("secret")
    response = nginx.get(path)
    assert response.status == 404
    assert b"secret" not in response.body


def test_a_directory_is_never_listed(nginx: Nginx) -> None:
    response = nginx.get("/data/")
    assert response.status in (403, 404)
    assert b"resultados.csv" not in response.body


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [("/", "GET", 200), ("/json/main.json", "GET", 200), ("/nope", "GET", 404), ("/", "POST", 405)],
)
def test_security_headers_are_on_every_response(
    nginx: Nginx, path: str, method: str, status: int
) -> None:
    response = nginx.get(path, method=method)
    assert response.status == status
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert response.headers["content-security-policy"] == f"frame-ancestors 'self' {PORTAL}"
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert response.headers["server"] == "nginx"
    assert response.headers["x-prep-cut"] == CUT_A


def test_oversized_request_line_and_headers_are_refused(nginx: Nginx) -> None:
    assert nginx.get("/" + "a" * 9000).status == 414
    assert nginx.get("/", headers={"X-Big": "b" * 9000}).status == 400
    assert nginx.get("/", headers={"X-Fine": "c" * 4000}).status == 200


def test_a_slow_client_is_disconnected(tmp_path: Path, site: Site) -> None:
    spec = make_spec()
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=site.root, slow_client_timeout_seconds=1
    ) as server:
        with socket.create_connection((server.host, server.port), timeout=60) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: prep\r\n")
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                pytest.fail("nginx kept a half-sent request open for 60 s")
        assert not data.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("resolver", CURRENT_RESOLVERS)
def test_healthz_is_up_and_readyz_needs_a_complete_version(tmp_path: Path, resolver: str) -> None:
    site = Site(tmp_path / "content")
    site.add_version(CUT_A, complete=False)
    (site.root / "versions").mkdir(parents=True, exist_ok=True)
    with running_nginx(
        make_spec(), workdir=tmp_path / "nginx", content=site.root, current_resolver=resolver
    ) as server:
        assert server.get(HEALTHZ_PATH).status == 200
        assert server.get(READYZ_PATH).status == 503
        assert server.get("/json/main.json").status == 503
        assert server.get("/etc/passwd").status == 503
        site.activate(CUT_A)
        assert server.get(READYZ_PATH).status == 503
        site.add_version(CUT_B)
        site.activate(CUT_B)
        ready = server.get(READYZ_PATH)
        assert (ready.status, ready.headers["x-prep-cut"]) == (200, CUT_B)
        assert server.get(HEALTHZ_PATH).status == 200


def test_access_log_is_one_json_object_per_request_with_the_cut_served(
    tmp_path: Path, site: Site
) -> None:
    with running_nginx(make_spec(), workdir=tmp_path / "nginx", content=site.root) as server:
        server.get(
            "/json/main.json?x=1",
            source="127.0.0.5",
            headers={"User-Agent": 'ua "quoted"', "Referer": "https://ref.example/"},
        )
        site.activate(CUT_B)
        server.get("/nope", source="127.0.0.6")
        server.get(HEALTHZ_PATH)
        server.stop()
        records = server.log_records()
    assert [tuple(r) for r in records] == [LOG_FIELDS, LOG_FIELDS]
    # Each worker buffers its own log lines: order them by request, not by line.
    first, second = sorted(records, key=lambda r: r["path"] != "/json/main.json")
    assert first["addr"] == "127.0.0.5"
    assert first["method"] == "GET"
    assert (first["path"], first["query"]) == ("/json/main.json", "x=1")
    assert first["status"] == 200
    assert first["bytes"] == len(version_files(CUT_A)["json/main.json"])
    assert first["ua"] == 'ua "quoted"'
    assert first["ref"] == "https://ref.example/"
    assert first["cut"] == CUT_A
    assert isinstance(first["ts"], float)
    assert isinstance(first["rt"], float)
    assert "." in str(first["ts"])
    assert (second["addr"], second["status"], second["cut"]) == ("127.0.0.6", 404, CUT_B)


def test_excess_requests_get_429_with_retry_after(tmp_path: Path, site: Site) -> None:
    spec = make_spec(rateLimit={"requestsPerSecond": 1, "burst": 0, "connections": 10})
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        client = server.client("127.0.0.2")
        statuses = [client.request("/json/main.json") for _ in range(10)]
        client.close()
        rejected = [r for r in statuses if r.status == 429]
        assert rejected
        for response in rejected:
            assert response.headers["retry-after"] == "1"
            assert "no-store" in response.headers["cache-control"]
            assert response.headers["x-prep-cut"] == CUT_A
        assert server.get(HEALTHZ_PATH, source="127.0.0.2").status == 200
        assert server.get(READYZ_PATH, source="127.0.0.2").status == 200
        assert server.get("/json/main.json", source="127.0.0.3").status == 200


def test_concurrent_connections_beyond_the_limit_get_429(tmp_path: Path, site: Site) -> None:
    big = site.root / "versions" / CUT_A / "assets" / "huge.bin"
    with big.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)
    spec = make_spec(rateLimit={"connections": 2})
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        stalled = []
        for _ in range(2):
            sock = socket.create_connection((server.host, server.port), timeout=60)
            sock.sendall(b"GET /assets/huge.bin HTTP/1.1\r\nHost: prep\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
            stalled.append(sock)
        try:
            assert server.get("/json/main.json").status == 429
            assert server.get("/json/main.json", source="127.0.0.9").status == 200
        finally:
            for sock in stalled:
                sock.close()
        statuses = []
        for _ in range(200):
            statuses.append(server.get("/json/main.json").status)
            if statuses[-1] == 200:
                break
            time.sleep(0.05)
        assert statuses[-1] == 200


def test_the_client_address_header_is_believed_only_from_trusted_proxies(
    tmp_path: Path, site: Site
) -> None:
    spec = make_spec(
        rateLimit={
            "requestsPerSecond": 1,
            "burst": 0,
            "trustedProxies": ["127.0.0.1/32"],
            "denyList": ["198.51.100.0/24"],
        }
    )
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        denied = {"X-Forwarded-For": "198.51.100.7"}
        assert server.get("/", headers=denied, source="127.0.0.1").status == 403
        assert server.get("/", headers=denied, source="127.0.0.2").status == 200
        chain = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        assert server.get("/chain", headers=chain, source="127.0.0.1").status == 404
        flood = [
            server.get("/", headers={"X-Forwarded-For": "203.0.113.50"}).status for _ in range(10)
        ]
        assert 429 in flood
        other = server.get("/other", headers={"X-Forwarded-For": "203.0.113.51"})
        assert other.status == 404
        server.stop()
        seen = {(r["path"], r["addr"], r["peer"], r["status"]) for r in server.log_records()}
    assert ("/", "198.51.100.7", "127.0.0.1", 403) in seen
    assert ("/index.html", "127.0.0.2", "127.0.0.2", 200) in seen
    assert ("/chain", "203.0.113.9", "127.0.0.1", 404) in seen
    assert ("/other", "203.0.113.51", "127.0.0.1", 404) in seen
    assert ("/", "203.0.113.50", "127.0.0.1", 429) in seen


def test_a_cdn_client_header_is_believed_only_from_the_cdn(tmp_path: Path, site: Site) -> None:
    spec = make_spec(
        rateLimit={
            "trustedProxies": ["127.0.0.1/32"],
            "clientAddressHeader": "CF-Connecting-IP",
            "denyList": ["198.51.100.0/24", "127.0.0.3/32"],
        }
    )
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        cdn = {"CF-Connecting-IP": "198.51.100.7"}
        assert server.get("/", headers=cdn, source="127.0.0.1").status == 403
        assert server.get("/", headers=cdn, source="127.0.0.2").status == 200
        xff = {"X-Forwarded-For": "198.51.100.7"}
        assert server.get("/", headers=xff, source="127.0.0.1").status == 200
        assert server.get("/", source="127.0.0.3").status == 403


def test_a_flood_from_one_address_leaves_other_clients_served(tmp_path: Path, site: Site) -> None:
    spec = make_spec(rateLimit={"requestsPerSecond": 20, "burst": 40, "connections": 30})
    normal_clients, normal_requests, pause = 20, 100, 0.1
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        stop = threading.Event()
        deadline = time.monotonic() + 180
        flood_statuses: list[int] = []
        flood_retry_after: set[str | None] = set()
        lock = threading.Lock()

        def flooder() -> None:
            client = server.client("127.0.0.2")
            try:
                for _ in range(20000):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    response = client.request("/json/main.json")
                    with lock:
                        flood_statuses.append(response.status)
                        if response.status == 429:
                            flood_retry_after.add(response.headers.get("retry-after"))
            finally:
                client.close()

        def reader(index: int) -> list[bool]:
            client = server.client(f"127.0.0.{10 + index}")
            outcomes = []
            try:
                for n in range(normal_requests):
                    if time.monotonic() > deadline:
                        break
                    path = "/json/main.json" if n % 2 else "/"
                    try:
                        response = client.request(path)
                        outcomes.append(response.status == 200 and response.cut_in_body() == CUT_A)
                    except OSError:
                        outcomes.append(False)
                    time.sleep(pause)
            finally:
                client.close()
            return outcomes

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=6 + normal_clients) as pool:
            floods = [pool.submit(flooder) for _ in range(6)]
            readers = [pool.submit(reader, i) for i in range(normal_clients)]
            outcomes = [ok for future in readers for ok in future.result()]
            stop.set()
            for future in floods:
                future.result()
        elapsed = time.monotonic() - started
        server.stop()
        figures = minute_figures([LogRecord.from_json(r) for r in server.log_records()], top=3)
    rejected = flood_statuses.count(429)
    success = sum(outcomes) / len(outcomes)
    print(
        f"\nflood: {len(flood_statuses)} requests from 127.0.0.2 in {elapsed:.1f}s "
        f"({len(flood_statuses) / elapsed:.0f}/s against a limit of 20/s), {rejected} got 429; "
        f"other clients: {sum(outcomes)}/{len(outcomes)} succeeded ({success:.4%})"
    )
    assert len(outcomes) == normal_clients * normal_requests
    assert success >= 0.999
    assert rejected > 0
    assert flood_retry_after == {"1"}
    assert all(status in (200, 429) for status in flood_statuses)
    assert sum(f.too_many for f in figures) >= rejected
    assert any(t.key == "127.0.0.2" for f in figures for t in f.top_addresses)
