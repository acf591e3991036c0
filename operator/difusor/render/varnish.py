"""The VCL of the optional Varnish cache tier: caches the site, never the no-store paths, and takes
PURGE and BAN only from the operator's addresses (an ACL); a pure function of the spec."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Final

from difusor.models import PrepPublicationSpec

#: Port the cache tier listens on.
VARNISH_PORT: Final = 6081
#: File name of the VCL in the publication's varnish ConfigMap.
VCL_FILE: Final = "default.vcl"


def _string(value: str) -> str:
    """A VCL long string: no escapes exist inside {"..."}; the pattern forbids `"}` in paths."""
    if '"}' in value:
        raise ValueError(f"{value!r} cannot be written in VCL")
    return '{"' + value + '"}'


def _acl_entry(cidr: str) -> str:
    net = ipaddress.ip_network(cidr, strict=False)
    return f'"{net.network_address}"/{net.prefixlen};'


def _no_store_regex(paths: Sequence[str]) -> str:
    parts = [re.escape(p) if p.endswith("/") else re.escape(p) + r"(\?|$)" for p in paths]
    return "^(" + "|".join(parts) + ")"


def render_vcl(
    spec: PrepPublicationSpec, *, backends: Sequence[tuple[str, int]], purgers: Sequence[str]
) -> str:
    """VCL 4.1 for varnishd in front of the web pods (`backends`: host or address, port)."""
    if not backends:
        raise ValueError("the VCL needs at least one backend")
    if not purgers:
        raise ValueError("cdn.purgers: the VCL needs the addresses allowed to purge")
    lines = ["vcl 4.1;", "", "import directors;", ""]
    for index, (host, port) in enumerate(backends):
        lines += [
            f"backend web{index} {{",
            f'    .host = "{host}";',
            f'    .port = "{port}";',
            "    .connect_timeout = 2s;",
            "    .first_byte_timeout = 30s;",
            "    .probe = {",
            '        .url = "/healthz";',
            "        .interval = 2s;",
            "        .timeout = 1s;",
            "        .window = 3;",
            "        .threshold = 2;",
            "    }",
            "}",
            "",
        ]
    lines += [
        "# Only these may PURGE or BAN (cdn.purgers: the operator's addresses).",
        "acl purgers {",
    ]
    lines += [f"    {_acl_entry(c)}" for c in dict.fromkeys(purgers)]
    lines += ["}", "", "sub vcl_init {", "    new web = directors.round_robin();"]
    lines += [f"    web.add_backend(web{i});" for i in range(len(backends))]
    lines += ["}", ""]
    no_store = _no_store_regex(spec.cache.no_store_paths) if spec.cache.no_store_paths else None
    lines += [
        "sub vcl_recv {",
        "    set req.backend_hint = web.backend();",
        f"    set req.http.host = {_string(spec.host)};",
        '    if (req.method == "PURGE") {',
        "        if (client.ip !~ purgers) {",
        '            return (synth(405, "PURGE not allowed from this address"));',
        "        }",
        "        return (purge);",
        "    }",
        '    if (req.method == "BAN") {',
        "        if (client.ip !~ purgers) {",
        '            return (synth(405, "BAN not allowed from this address"));',
        "        }",
        "        if (!req.http.X-Ban-Url) {",
        '            return (synth(400, "BAN needs X-Ban-Url"));',
        "        }",
        "        # Lurker-friendly: the ban tests only obj.* fields, so the ban lurker clears it.",
        '        ban("obj.http.x-url ~ " + req.http.X-Ban-Url);',
        '        return (synth(200, "Banned"));',
        "    }",
        '    if (req.method != "GET" && req.method != "HEAD") {',
        '        return (synth(405, "Method not allowed"));',
        "    }",
        "    unset req.http.Cookie;",
    ]
    if no_store:
        lines += [
            "    # cache.noStorePaths: always from the origin, never stored.",
            f"    if (req.url ~ {_string(no_store)}) {{",
            "        return (pass);",
            "    }",
        ]
    lines += [
        "    return (hash);",
        "}",
        "",
        "sub vcl_backend_response {",
        "    # Kept on the object for BAN expressions, removed before delivery.",
        "    set beresp.http.x-url = bereq.url;",
    ]
    if no_store:
        lines += [
            f"    if (bereq.url ~ {_string(no_store)}) {{",
            "        set beresp.uncacheable = true;",
            "        set beresp.ttl = 0s;",
            "        return (deliver);",
            "    }",
        ]
    lines += [
        "    # A purge replaces expiry: the origin's max-age stays what browsers get, and the",
        "    # cache keeps nothing stale beyond it either (no grace: a purged path is fetched anew).",
        "    set beresp.grace = 0s;",
        "    unset beresp.http.Set-Cookie;",
        "}",
        "",
        "sub vcl_deliver {",
        "    unset resp.http.x-url;",
        "    if (obj.hits > 0) {",
        '        set resp.http.X-Cache = "HIT";',
        "    } else {",
        '        set resp.http.X-Cache = "MISS";',
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)
