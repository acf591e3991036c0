"""wrk against the rendered nginx.conf and a stock nginx serving the same files: one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from difusor.ingest.store import count_swap
from difusor.models import PrepPublicationSpec
from difusor.render.nginx import HEALTHZ_PATH, READY_MARKER, SWAP_COUNTER, render_nginx_conf

CUT = "20240602_2040"
PATHS = {"main_json": "/json/main.json", "asset_200k": "/js/app.js"}
GOAL = 0.95
NOTES = (
    "Same files, same worker count, same wrk load; the configs run one after the other in each "
    "repeat and ratios are medians of those paired runs. cpu_us_per_request is the CPU of the "
    "nginx processes (from /proc) per request: unlike rps it hardly depends on what else the "
    "machine runs (wrk shares the CPUs). The rendered "
    "config logs every request as JSON (buffered as in the pod) and applies limit_req/limit_conn "
    "keyed on the client; its limits are set to the spec's maxima (100000 r/s, burst 1000000, "
    "100000 connections) so that wrk, one address, is measured and not throttled (non_2xx shows "
    "it). The stock config is nginx defaults plus sendfile, no access log. wrk sends no "
    "Accept-Encoding, so neither side gzips. ratio_rps = rendered rps / stock rps; "
    "ratio_cpu_efficiency = stock CPU per request / this config's. The first two ablations "
    "(the rendered config without its access log, without its limits) show what each costs; "
    "the rest is reading `current` on every request, the price of swapping cuts without a reload "
    "while X-Prep-Cut stays true to the body: the rendered config reads it with one readlink(2) "
    "from Lua; the third ablation uses realpath(3) instead (one readlink per path component, "
    "5 in the pod, 6 here: what an nginx without the lua module gets), and the fourth (root "
    "written in, as a reload per cut would have it) measures the whole price."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _content(root: Path) -> None:
    version = root / "versions" / CUT
    (version / "json").mkdir(parents=True)
    (version / "js").mkdir()
    (version / ".prep").mkdir()
    rows = [{"id": i, "votos": i * 7, "corte": CUT} for i in range(300)]
    (version / "json" / "main.json").write_text(json.dumps({"corte": CUT, "actas": rows}))
    (version / "js" / "app.js").write_bytes(f"// {CUT}\n".encode().ljust(200 * 1024, b"/"))
    (version / READY_MARKER).write_text("{}")
    (root / "current").symlink_to(f"versions/{CUT}")
    count_swap(root)


def _stock_conf(*, content: Path, run: Path, port: int, workers: int, user: str | None) -> str:
    user_line = f"user {user};\n" if user else ""
    return (
        f"{user_line}worker_processes {workers};\npid {run}/stock.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n    include /etc/nginx/mime.types;\n    sendfile on;\n    access_log off;\n"
        f"    client_body_temp_path {run}/stock-body;\n    proxy_temp_path {run}/stock-proxy;\n"
        f"    fastcgi_temp_path {run}/stock-fcgi;\n    uwsgi_temp_path {run}/stock-uwsgi;\n"
        f"    scgi_temp_path {run}/stock-scgi;\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        root {content}/current;\n"
        f"        location = {HEALTHZ_PATH} {{ return 200; }}\n    }}\n}}\n"
    )


@contextmanager
def _nginx(binary: str, config: Path, port: int) -> Iterator[int]:
    process = subprocess.Popen(
        [binary, "-e", "stderr", "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTHZ_PATH}", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield process.pid
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(group: int) -> float:
    """User + system CPU of every process in a process group (an nginx master and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _wrk(url: str, *, duration: int, threads: int, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (make deps)")
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if rps is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "p99_ms": round(float(p99.group(1)) * _UNITS[p99.group(2)], 3),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def _ablations(rendered: str, realpath: str, content: Path) -> dict[str, str]:
    """The rendered config, and the same without its access log, without its limits, reading
    `current` with realpath(3) instead of Lua (what an nginx without the lua module gets), or with
    the version's directory written in instead of reading `current` on every request (what
    swapping cuts by reloading nginx would cost: the price of swaps without a reload)."""
    no_log = re.sub(r"access_log \S+ prep_json[^;]*;", "access_log off;", rendered)
    no_limits = re.sub(r"\n\s*limit_(req zone=prep_req|conn prep_conn)[^;]*;", "", rendered)
    per_request = rendered.replace(f'"{content}/{SWAP_COUNTER}"', f'"{content}/absent"')
    fixed = rendered.replace(
        "set_by_lua_block $prep_current { return prep_current() }",
        f"set $prep_current {content}/versions/{CUT};",
    )
    assert no_log != rendered
    assert no_limits != rendered
    assert fixed != rendered
    assert per_request != rendered
    assert "$realpath_root" in realpath
    return {
        "rendered": rendered,
        "rendered_without_log": no_log,
        "rendered_without_limits": no_limits,
        "rendered_reading_current_per_request": per_request,
        "rendered_with_realpath": realpath,
        "rendered_with_fixed_root": fixed,
    }


def _summary(runs: list[dict[str, Any]], stock: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats, and ratios to stock taken run by run (the runs were paired)."""
    return {
        "rps": statistics.median(run["rps"] for run in runs),
        "p99_ms": statistics.median(run["p99_ms"] for run in runs),
        "cpu_us_per_request": round(statistics.median(run["cpu_us"] for run in runs), 1),
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": sum(run["socket_errors"] for run in runs),
        "ratio_rps": round(
            statistics.median(r["rps"] / s["rps"] for r, s in zip(runs, stock, strict=True)), 3
        ),
        "ratio_cpu_efficiency": round(
            statistics.median(s["cpu_us"] / r["cpu_us"] for r, s in zip(runs, stock, strict=True)),
            3,
        ),
        "runs_rps": [run["rps"] for run in runs],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s per run, two paired runs each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    duration, repeats = (3, 2) if args.quick else (8, 5)
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("nginx is not installed (make deps)")
    workers = os.cpu_count() or 1
    user = "root" if os.geteuid() == 0 else None
    spec = PrepPublicationSpec.model_validate(
        {
            "host": "prep.example.mx",
            "sftp": {"authorizedKeysSecret": "bench"},
            "rateLimit": {"requestsPerSecond": 100000, "burst": 1000000, "connections": 100000},
        }
    )
    started = time.monotonic()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="difusor-bench-") as tmp:
        base = Path(tmp)
        content, run, logs = base / "content", base / "run", base / "logs"
        for directory in (content, run, logs):
            directory.mkdir()
        _content(content)
        ports = {"stock": _free_port(), "rendered": _free_port()}
        rendered, realpath = (
            render_nginx_conf(
                spec,
                content_dir=str(content),
                run_dir=str(run),
                access_log=str(logs / "access.log"),
                listen_addresses=("127.0.0.1",),
                port=ports["rendered"],
                user=user,
                worker_processes=workers,
                current_resolver=resolver,
            )
            for resolver in ("lua", "realpath")
        )
        texts = {
            "stock": _stock_conf(
                content=content, run=run, port=ports["stock"], workers=workers, user=user
            )
        }
        for kind, text in _ablations(rendered, realpath, content).items():
            if kind != "rendered":
                ports[kind] = _free_port()
                text = text.replace(f"127.0.0.1:{ports['rendered']} ", f"127.0.0.1:{ports[kind]} ")
                text = text.replace(f"{run}/nginx", f"{run}/{kind}-nginx")
            texts[kind] = text
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {kind: [] for kind in texts} for name in PATHS
        }
        with ExitStack() as stack:
            groups = {}
            for kind, text in texts.items():
                config = base / f"{kind}.conf"
                config.write_text(text)
                groups[kind] = stack.enter_context(_nginx(binary, config, ports[kind]))
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports['rendered']}/json/main.json"
            ) as r:
                assert r.headers["X-Prep-Cut"] == CUT, "the rendered config did not serve the cut"
            for name, path in PATHS.items():
                for _ in range(repeats):
                    for kind in texts:
                        before = _cpu_seconds(groups[kind])
                        result = _wrk(
                            f"http://127.0.0.1:{ports[kind]}{path}",
                            duration=duration,
                            threads=args.threads,
                            connections=args.connections,
                        )
                        cpu = _cpu_seconds(groups[kind]) - before
                        result["cpu_us"] = cpu / max(result["rps"] * duration, 1) * 1e6
                        runs[name][kind].append(result)
        access_log = logs / "access.log"
        log_lines = len(access_log.read_bytes().splitlines()) if access_log.exists() else 0
    results: dict[str, Any] = {}
    for name, by_kind in runs.items():
        results[name] = {"path": PATHS[name]}
        for kind, kind_runs in by_kind.items():
            results[name][kind] = _summary(kind_runs, by_kind["stock"])
    ratios = [results[name]["rendered"]["ratio_rps"] for name in PATHS]
    report = {
        "benchmark": "serving",
        "quick": args.quick,
        "nginx": subprocess.run(
            [binary, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "workers": workers,
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": duration},
        "repeats": repeats,
        "results": results,
        "access_log_lines_written": log_lines,
        "goal_ratio_rps": GOAL,
        "meets_goal": min(ratios) >= GOAL
        and all(results[name]["rendered"]["non_2xx"] == 0 for name in PATHS),
        "elapsed_s": round(time.monotonic() - started, 1),
        "notes": NOTES,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
