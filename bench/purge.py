"""CDN purge: time from the last pod's swap to the purge acknowledged, and paths purged per cut.

Prints one JSON object. Three parts, each with its baseline measured in the same run:

- `adapters`: for each cloud adapter against its local server (tests/cdnservers.py, which checks
  the documented request shape and verifies the EdgeGrid / SigV4 / HMAC signature), the time from
  the swap of a cut (t0: the manifests are known) to the last request acknowledged, for the
  computed purge of each cut of the sequence; baseline: the naive purge of everything, same run.
- `varnish`: real nginx serving versions/<cut> through real varnishd with the rendered VCL; the
  swap is the `current` symlink's rename, then the computed purge; `ack_ms` = swap -> purge
  acknowledged, `fresh_ms` = swap -> a reader sees the new cut on every purged path; the baseline
  is purging everything (BAN ^/), after which every cached file is a miss (`refetched`).
- `operator`: the real pipeline (the operator on a local control plane, 3 host pods with real
  nginx and agents, real Varnish in front): from the operator seeing the last pod swap
  (`servingAt`) to the purge acknowledged (`purge.completedAt`), for computed purges and, as the
  baseline, with `cdn.everything` (`--no-operator` skips it).
- `paths`: for a realistic night (a state's PREP: main.json, district, municipality and section
  JSON, actas CSVs, static assets; early cuts change most sections, late ones few), the items
  each provider is sent and the files invalidated per cut, against the naive purge of everything
  (every file of the site invalidated at every cut).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.cdnservers import HOST, SECRETS, ZONE, Fake, serving  # noqa: E402
from tests.nginxproc import Site as Content  # noqa: E402
from tests.nginxproc import make_spec, running_nginx  # noqa: E402
from tests.varnishproc import running_varnish  # noqa: E402

from difusor.cdn.providers import Site, purge  # noqa: E402
from difusor.logic.purge import CAPS, Backoff, Plan, plan_purge, stale_files  # noqa: E402

CLOUDS = ["cloudflare", "fastly", "akamai", "cloudfront", "webhook"]
NO_STORE = ["/json/main.json"]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def night(cuts: int, *, sections: int, seed: int = 7) -> list[dict[str, str]]:
    """Manifests (path -> digest) of a night of cuts of a state's PREP site."""
    rng = random.Random(seed)
    municipalities, districts = 113, 24
    files: dict[str, str] = {
        "index.html": "i",
        "resultados/index.html": "r",
        "css/prep.css": "c",
        "js/prep.js": "j",
        **{f"img/partido{p}.svg": f"p{p}" for p in range(12)},
        "json/main.json": "0",
        "json/estado.json": "0",
        "datos/PREP_GUB.csv": "0",
        "datos/PREP_DIP_LOC.csv": "0",
        **{f"json/distritos/{d:02d}.json": "0" for d in range(1, districts + 1)},
        **{f"json/municipios/{m:03d}.json": "0" for m in range(1, municipalities + 1)},
        **{f"json/secciones/{s:04d}.json": "0" for s in range(1, sections + 1)},
    }
    out = [dict(files)]
    for k in range(1, cuts):
        # Most sections report in the first hours; the tail brings stragglers.
        share = max(0.01, 0.6 * (0.93**k))
        new = dict(out[-1])
        touched = rng.sample(range(1, sections + 1), max(1, int(sections * share)))
        for s in touched:
            new[f"json/secciones/{s:04d}.json"] = str(k)
            new[f"json/municipios/{(s % municipalities) + 1:03d}.json"] = str(k)
            new[f"json/distritos/{(s % districts) + 1:02d}.json"] = str(k)
        for path in (
            "json/main.json",
            "json/estado.json",
            "datos/PREP_GUB.csv",
            "datos/PREP_DIP_LOC.csv",
        ):
            new[path] = str(k)
        out.append(new)
    return out


def invalidated(plan: Plan, manifest: dict[str, str]) -> int:
    """Files of the site a plan invalidates."""
    if plan.everything:
        return len(manifest)
    urls = set(plan.paths)
    return sum(
        1
        for p in manifest
        if f"/{p}" in urls or any(f"/{p}".startswith(prefix) for prefix in plan.prefixes)
    )


def paths_part(manifests: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cuts": len(manifests), "files_in_site": len(manifests[-1])}
    changed = [len(stale_files(a, b)) for a, b in itertools.pairwise(manifests)]
    out["changed_files_per_cut"] = {"mean": round(statistics.mean(changed), 1), "max": max(changed)}
    for provider in [*CLOUDS, "varnish"]:
        items, files = [], []
        for old, new in itertools.pairwise(manifests):
            plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS[provider])
            items.append(plan.items)
            files.append(invalidated(plan, new))
        naive = len(manifests[-1])
        out[provider] = {
            "items_sent_mean": round(statistics.mean(items), 1),
            "items_sent_max": max(items),
            "files_invalidated_mean": round(statistics.mean(files), 1),
            "naive_files_invalidated": naive,
            "files_invalidated_vs_naive": round(statistics.mean(files) / naive, 4),
        }
    return out


def spread(total: int, count: int) -> list[int]:
    """`count` cut indexes (1..total) spread evenly over the night."""
    return sorted({max(1, round(total * (i + 1) / count)) for i in range(count)})


async def adapters_part(manifests: list[dict[str, str]], picks: list[int]) -> dict[str, Any]:
    policy = Backoff(base=0.05)
    out: dict[str, Any] = {}
    for provider in CLOUDS:
        fake = Fake(provider)
        async with serving(fake):
            site = Site(
                provider=provider, host=HOST, namespace="bench", publication="prep", cut="c",
                zone="12345" if provider == "akamai" else ZONE, endpoint=fake.url,
            )  # fmt: skip
            computed, naive, requests = [], [], []
            for index in picks:
                old, new = manifests[index - 1], manifests[index]
                cut_site = Site(**{**site.__dict__, "cut": f"c{index}"})
                started = time.perf_counter()
                plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS[provider])
                result = await purge(cut_site, plan, SECRETS[provider], policy=policy)
                computed.append(time.perf_counter() - started)
                requests.append(result.requests)
                everything = Site(**{**site.__dict__, "cut": f"all{index}"})
                started = time.perf_counter()
                await purge(everything, Plan(everything=True), SECRETS[provider], policy=policy)
                naive.append(time.perf_counter() - started)
        refused = [s for s in fake.seen if not 200 <= s.status < 300]
        if refused:
            raise RuntimeError(f"{provider}: the server refused {len(refused)} requests")
        out[provider] = {
            "ack_ms_p50": ms(pct(computed, 0.5)),
            "ack_ms_p99": ms(pct(computed, 0.99)),
            "requests_per_cut_mean": round(statistics.mean(requests), 1),
            "everything_ack_ms_p50": ms(pct(naive, 0.5)),
            "ack_vs_everything": round(pct(computed, 0.5) / pct(naive, 0.5), 2),
        }
    return out


def varnish_part(manifests: list[dict[str, str]], work: Path, picks: list[int]) -> dict[str, Any]:
    spec = make_spec()
    content = Content(work / "content")
    names = [f"c{i:03d}" for i in range(len(manifests))]

    def files_of(index: int) -> dict[str, bytes]:
        cut = names[index]
        return {
            path: (f"cut={cut}\n" if path.endswith(("main.json", "index.html")) else "").encode()
            + f"{path}:{digest}\n".encode()
            for path, digest in manifests[index].items()
        }

    for index in sorted({0, *picks, *(i - 1 for i in picks)}):
        content.add_version(names[index], files_of(index))
    content.activate(names[0])
    result: dict[str, Any] = {}
    with (
        running_nginx(spec, workdir=work / "nginx", content=content.root) as nginx,
        running_varnish(spec, workdir=work / "varnish", backends=[("127.0.0.1", nginx.port)]) as varnish,
    ):  # fmt: skip
        site = Site(provider="varnish", host="prep.example.mx", namespace="bench",
                    publication="prep", cut="c", endpoint=varnish.endpoint)  # fmt: skip
        sample = [p for p in manifests[0] if not p.startswith("json/secciones/")][:60]
        sample += [p for p in manifests[0] if p.startswith("json/secciones/")][:140]

        def warm() -> None:
            for path in sample:
                varnish.request(f"/{path}")

        for mode in ("computed", "everything"):
            acks, fresh, refetched = [], [], []
            for index in picks:
                content.activate(names[index - 1])
                asyncio.run(purge(site, Plan(everything=True), {}))
                warm()
                old, new = manifests[index - 1], manifests[index]
                started = time.perf_counter()
                content.activate(names[index])
                if mode == "computed":
                    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["varnish"])
                else:
                    plan = Plan(everything=True)
                asyncio.run(purge(site, plan, {}))
                acks.append(time.perf_counter() - started)
                expected = files_of(index)
                misses = 0
                for path in sample:
                    _, headers, body = varnish.request(f"/{path}")
                    misses += headers.get("x-cache") == "MISS"
                    if body != expected[path]:
                        raise RuntimeError(f"/{path} still stale after the purge")
                fresh.append(time.perf_counter() - started)
                refetched.append(misses)
            result[mode] = {
                "ack_ms_p50": ms(pct(acks, 0.5)),
                "ack_ms_p99": ms(pct(acks, 0.99)),
                "fresh_ms_p50": ms(pct(fresh, 0.5)),
                "refetched_of_sample": round(statistics.mean(refetched), 1),
                "sample": len(sample),
            }
    result["ack_vs_everything"] = round(
        result["computed"]["ack_ms_p50"] / max(result["everything"]["ack_ms_p50"], 0.01), 2
    )
    return result


def operator_part(work: Path, *, per_mode: int) -> dict[str, Any]:
    """The real pipeline: operator, 3 host pods, real Varnish in front; last swap -> purge acked."""
    import subprocess
    import uuid

    import yaml
    from bench.common import operator_on_a_cluster
    from tests.archives import make_zip, site_files
    from tests.conftest import kubectl, wait_for
    from tests.hostpods import Harness, host_public_key, sftp_put

    from difusor.models import parse_time

    pub = "prep-bench"
    out: dict[str, Any] = {}
    with operator_on_a_cluster() as bench:
        kubeconfig = bench.kubeconfig
        namespace = f"purge-{uuid.uuid4().hex[:5]}"
        kubectl(kubeconfig, "create", "namespace", namespace)
        harness = Harness(kubeconfig, namespace=namespace)
        harness.start()
        key = work / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kubectl(kubeconfig, "-n", namespace, "create", "secret", "generic", "keys",
                f"--from-file=authorized_keys={key}.pub")  # fmt: skip
        doc = {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": pub},
            "spec": {
                "host": "prep.example.mx", "replicas": 3, "sftp": {"authorizedKeysSecret": "keys"},
                "scheduling": {"nodeSelector": harness.node_selector},
                "rateLimit": {"requestsPerSecond": 100000, "burst": 100000, "connections": 10000},
            },
        }  # fmt: skip
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
        try:
            wait_for("3 host pods", lambda: len(harness.running()) == 3, timeout=300)
            public = host_public_key(kubeconfig, namespace=namespace, publication=pub).strip()
            backends = [(p.ip, 8080) for p in harness.running()]
            with running_varnish(
                make_spec(), workdir=work / "varnish", backends=backends
            ) as varnish:
                number = 0
                for mode in ("computed", "everything"):
                    cdn = {"provider": "varnish", "endpoint": varnish.endpoint,
                           "purgers": ["127.0.0.1/32"], "everything": mode == "everything"}  # fmt: skip
                    kubectl(kubeconfig, "-n", namespace, "patch", "prep", pub, "--type=merge",
                            "-p", json.dumps({"spec": {"cdn": cdn}}))  # fmt: skip
                    swap_to_ack, swap_to_request = [], []
                    # The first cut of the night has no purged cut to compare with: not timed.
                    for _ in range(per_mode + (1 if number == 0 else 0)):
                        number += 1
                        cut_id = f"20240602_{20 + number // 3:02d}{(number % 3) * 20:02d}"
                        archive = make_zip(work / f"{cut_id}_PREP_MICH.zip",
                                           site_files(cut=cut_id, actas=300, seed=number))  # fmt: skip
                        running = harness.running()
                        known = work / "known_hosts"
                        known.write_text("".join(f"[{p.ip}]:2222 {public}\n" for p in running))
                        proc = sftp_put(archive, user=harness.sftp_user,
                                        ip=running[number % 3].ip, key=key, known_hosts=known)  # fmt: skip
                        if proc.returncode != 0:
                            raise RuntimeError(f"sftp failed: {proc.stderr}")
                        name = f"{pub}-{cut_id.replace('_', '-')}"

                        def done(name: str = name) -> dict[str, Any] | None:
                            got = kubectl(kubeconfig, "-n", namespace, "get", "prepcut", name,
                                          "-o", "json", check=False)  # fmt: skip
                            status = (
                                json.loads(got).get("status", {}) if got.startswith("{") else {}
                            )
                            ok = (status.get("purge") or {}).get("outcome") == "Succeeded"
                            return status if ok and status.get("phase") == "Promoted" else None

                        status = wait_for(f"{cut_id} purged", done, timeout=300)
                        if number == 1:
                            continue
                        live = parse_time(status["servingAt"])
                        purge_ = status["purge"]
                        swap_to_ack.append(
                            (parse_time(purge_["completedAt"]) - live).total_seconds()
                        )
                        swap_to_request.append(
                            (parse_time(purge_["requestedAt"]) - live).total_seconds()
                        )
                    out[mode] = {
                        "cuts": len(swap_to_ack),
                        "swap_to_ack_ms_p50": ms(pct(swap_to_ack, 0.5)),
                        "swap_to_ack_ms_max": ms(max(swap_to_ack)),
                        "swap_to_request_ms_p50": ms(pct(swap_to_request, 0.5)),
                    }
        finally:
            harness.stop()
            kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)
    out["ack_vs_everything"] = round(
        out["computed"]["swap_to_ack_ms_p50"] / max(out["everything"]["swap_to_ack_ms_p50"], 0.01),
        2,
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short night: fewer cuts")
    parser.add_argument(
        "--no-operator", action="store_true", help="skip the part that needs the control plane"
    )
    args = parser.parse_args()
    # The night: 72 cuts (every 20 minutes for 24 hours); timings on cuts spread over it.
    manifests = night(73, sections=2700)
    picks = spread(72, 6 if args.quick else 24)
    report: dict[str, Any] = {"quick": args.quick, "timed_cuts": picks}
    report["paths"] = paths_part(manifests)
    report["adapters"] = asyncio.run(adapters_part(manifests, picks))
    with tempfile.TemporaryDirectory(prefix="difusor-bench-purge-") as work:
        report["varnish"] = varnish_part(manifests, Path(work), picks)
        if not args.no_operator:
            report["operator"] = operator_part(Path(work), per_mode=2 if args.quick else 6)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
