"""A bounded reader of the site through a Service, run inside the node's network namespace.

    python -m tests.node_reader http://10.0.0.42/json/main.json --seconds 120 --max-requests 4000

Reads until SIGTERM, the time bound or the request bound, then prints one JSON object: requests,
non_2xx (refused or failed connections included), mixed (a body whose cut is not the one its
X-Prep-Cut header names), and the cuts seen in order.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
import urllib.parse
from types import FrameType


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    counts = {"requests": 0, "non_2xx": 0, "mixed": 0}
    cuts: list[str] = []
    failures: list[str] = []
    deadline = time.monotonic() + args.seconds
    while not stopping and time.monotonic() < deadline and counts["requests"] < args.max_requests:
        counts["requests"] += 1
        try:
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=5)
            conn.request("GET", url.path, headers={"Host": "prep.example.mx"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
        except OSError as exc:
            counts["non_2xx"] += 1
            failures.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
        else:
            if not 200 <= resp.status < 300:
                counts["non_2xx"] += 1
                failures.append(f"{time.time():.3f} HTTP {resp.status}")
            else:
                cut = resp.getheader("X-Prep-Cut") or ""
                if json.loads(body).get("horaCorte") != cut:
                    counts["mixed"] += 1
                if not cuts or cuts[-1] != cut:
                    cuts.append(cut)
        time.sleep(args.interval)
    json.dump({**counts, "cuts": cuts, "failures": failures[:20]}, sys.stdout)


if __name__ == "__main__":
    main()
