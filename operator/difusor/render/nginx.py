"""The nginx.conf of a web pod: a pure function of the publication spec, paths and ports."""

from __future__ import annotations

import ipaddress
import math
import re
import zoneinfo
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal

from difusor.models import ClientAddressHeader, PrepPublicationSpec

#: Port nginx listens on inside the pod (above 1024: nginx runs as a non-root user).
HTTP_PORT: Final = 8080
#: Liveness: 200 whenever nginx answers.
HEALTHZ_PATH: Final = "/healthz"
#: Readiness: 200 only when `current` resolves to a complete version, 503 otherwise.
READYZ_PATH: Final = "/readyz"
#: The content volume (read-only for nginx): `versions/<cut>/` and `current -> versions/<cut>`.
CONTENT_DIR: Final = "/srv/prep"
#: A writable emptyDir for the pid file and nginx's temporary directories (read-only root fs).
RUN_DIR: Final = "/tmp"
#: JSON access log, on the content volume (subPath `logs`) so that it outlives the pod and the
#: agent of the same pod can ship it; the agent rotates it and sends nginx USR1 to reopen.
ACCESS_LOG_PATH: Final = "/var/log/difusor/access.log"
#: Under the content directory: the automatic deny list that the agent writes (`*.conf`).
CONTAINMENT_DIR: Final = "containment"
#: Inside a version, the file whose presence makes the version complete (written last by the agent).
READY_MARKER: Final = ".prep/manifest.json"
#: Beside `current`: a 4-byte little-endian count of its swaps, bumped in place after each rename
#: (ingest.store.count_swap). nginx maps it and reads the link again when the count moves.
SWAP_COUNTER: Final = ".swaps"
#: What the institute asks for on /json/main.json, and what every no-store path gets.
NO_STORE: Final = "no-cache, no-store, must-revalidate"
#: Request paths never served: dotfiles (.prep/, .git ...) and the content volume's own directories.
INTERNAL_PATH_REGEX: Final = r"(^|/)\.|^/(incoming|quarantine|versions|current|logs)(/|$)"
#: The public proof of what is served: the active version's .prep/manifest.json (the archive's
#: name and SHA-256, and the path, size and SHA-256 of every file), cacheable like any file.
INTEGRITY_PATH: Final = "/.well-known/prep-difusor/manifest.json"
#: Where the web pod mounts the ConfigMap of the page served before the window opens.
PLACEHOLDER_DIR: Final = "/etc/difusor/placeholder"
#: Header limits: a request line or one header longer than this is refused (414 / 400).
LARGE_HEADER_BUFFER: Final = "4 8k"
#: The access log's format name and its fields, one JSON object per line.
LOG_FORMAT_NAME: Final = "prep_json"
LOG_FIELDS: Final = (
    "ts",
    "time",
    "addr",
    "peer",
    "method",
    "path",
    "query",
    "status",
    "bytes",
    "rt",
    "ua",
    "ref",
    "host",
    "cut",
)

#: Types served, with a charset only where the format fixes it (JSON is UTF-8 by RFC 8259); the
#: institute's HTML and CSV keep their own (some years were latin1), so no `charset` directive,
#: which would also label every text/html response.
JSON_TYPE: Final = "application/json; charset=utf-8"
_TYPES: Final = (
    ("text/html", "html htm"),
    ("text/css", "css"),
    ("text/javascript", "js mjs"),
    (JSON_TYPE, "json map"),
    ("application/manifest+json", "webmanifest"),
    ("text/csv", "csv"),
    ("text/plain", "txt sha256"),
    ("application/xml", "xml"),
    ("application/zip", "zip"),
    ("application/gzip", "gz tgz"),
    ("application/x-tar", "tar"),
    ("application/pdf", "pdf"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpg jpeg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
    ("image/avif", "avif"),
    ("image/x-icon", "ico"),
    ("font/woff", "woff"),
    ("font/woff2", "woff2"),
    ("font/ttf", "ttf"),
    ("font/otf", "otf"),
)
_GZIP_TYPES: Final = (
    "text/css",
    "text/javascript",
    JSON_TYPE,
    "application/manifest+json",
    "text/csv",
    "text/plain",
    "application/xml",
    "image/svg+xml",
)
#: nginx refuses a limit_conn of 65536 or more (the spec allows up to 100000: the same as none).
_MAX_LIMIT_CONN: Final = 65535
#: Statuses whose responses a CDN or browser may keep for max-age (never an error).
_CACHEABLE_STATUSES: Final = (200, 206, 301, 302, 304, 307, 308)
_CUT_ID_REGEX: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: How nginx reads `current` on each request (see render_nginx_conf).
CurrentResolver = Literal["lua", "realpath"]
CURRENT_RESOLVERS: Final[tuple[CurrentResolver, ...]] = ("lua", "realpath")
#: Debian's dynamic modules for `lua` (libnginx-mod-http-lua, in the difusor-nginx image).
LUA_MODULES: Final = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
)
#: Years over which a zone must keep one offset for the renderer to derive it on its own.
_FIXED_OFFSET_YEARS: Final = range(2024, 2038)


def fixed_utc_offset(timezone: str) -> str:
    """The UTC offset (`-06:00`) of a zone that keeps one offset all year, from the tz database.

    A zone with daylight saving time (America/Tijuana) raises ValueError: its offset depends on
    the date, so the caller passes `cut_utc_offset` for the night of the election. This reads
    the tz database, which is data that does not change with the clock (America/Mexico_City has
    had no DST since October 2022).
    """
    zone = zoneinfo.ZoneInfo(timezone)
    offsets = {
        datetime(year, month, 15, 12, tzinfo=zone).utcoffset()
        for year in _FIXED_OFFSET_YEARS
        for month in (1, 7)
    }
    if len(offsets) != 1:
        raise ValueError(
            f"time zone {timezone} observes daylight saving time; pass cut_utc_offset "
            "(the offset in force on the night of the election)"
        )
    (offset,) = offsets
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def render_nginx_conf(
    spec: PrepPublicationSpec,
    *,
    content_dir: str = CONTENT_DIR,
    run_dir: str = RUN_DIR,
    access_log: str = ACCESS_LOG_PATH,
    error_log: str = "stderr",
    listen_addresses: Sequence[str] = ("0.0.0.0",),
    port: int = HTTP_PORT,
    user: str | None = None,
    worker_processes: int | str = "auto",
    cut_utc_offset: str | None = None,
    slow_client_timeout_seconds: int = 10,
    placeholder_dir: str = PLACEHOLDER_DIR,
    current_resolver: CurrentResolver = "lua",
) -> str:
    """nginx.conf for a web pod serving `<content_dir>/current` (run with `-g 'daemon off;'`).

    The defaults are the pod's: a non-root nginx (no `user` directive) on a read-only root
    filesystem, writing only under `run_dir` and `access_log`. Tests pass loopback addresses,
    temporary directories and, when they run as root, `user="root"` so that workers can read a
    private temporary directory. `cut_utc_offset` (`-06:00`) builds X-Prep-Cut-Time from the
    cut id; when None it is derived from `spec.ingest.timezone` with `fixed_utc_offset`.
    With `spec.window`, requests before its start (by nginx's own clock) are served from
    `placeholder_dir` with the same headers, and /readyz answers 200 without a cut.

    Every request resolves `current` once, so that a swap needs no reload and the cut headers
    come from the version whose file is served. `current_resolver="lua"` (Debian's
    libnginx-mod-http-lua, in the difusor-nginx image) keeps the target per worker and reads the
    link again, with one readlink(2) through LuaJIT's FFI, when the agent's swap counter
    (`SWAP_COUNTER`, mapped from the content volume) has moved since, at least once a second,
    and on every request while there is no counter. `"realpath"` needs no module and pays
    realpath(3) on every request, one readlink per path component (bench/serving.py measures
    both).
    """
    if current_resolver not in CURRENT_RESOLVERS:
        raise ValueError(
            f"current_resolver {current_resolver!r} is not one of {', '.join(CURRENT_RESOLVERS)}"
        )
    offset = (
        cut_utc_offset if cut_utc_offset is not None else fixed_utc_offset(spec.ingest.timezone)
    )
    if not re.fullmatch(r"[+-]\d{2}:\d{2}|Z", offset):
        raise ValueError(f"cut_utc_offset {offset!r} is not an ISO 8601 offset such as -06:00")
    content = content_dir.rstrip("/") or "/"
    if re.search(r'["\\\s;{}]', content):
        raise ValueError(f"content_dir {content_dir!r} has a quote, backslash, space, ; or brace")
    current = f"{content}/current"
    rate = spec.rate_limit
    no_store = _no_store_locations(spec.cache.no_store_paths)
    max_age = f"public, max-age={spec.cache.max_age_seconds}"

    out: list[str] = [
        f"# Rendered by difusor for {spec.host}: do not edit, the operator rewrites it.",
        f"# Serves {current} (a symlink to versions/<cut>) on port {port}.",
    ]
    if current_resolver == "lua":
        out += [f"load_module {module};" for module in LUA_MODULES]
    if user is not None:
        out.append(f"user {user};")
    out += [
        f"worker_processes {worker_processes};",
        "worker_rlimit_nofile 16384;",
        f"pid {run_dir}/nginx.pid;",
        "pcre_jit on;",
        f"error_log {error_log} warn;",
        "",
        "events {",
        "    worker_connections 4096;",
        "}",
        "",
        "http {",
        "    server_tokens off;",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    tcp_nodelay on;",
        "    # `current` is swapped by rename(2); every request resolves it anew.",
        "    disable_symlinks off;",
        "    open_file_cache off;",
        "    absolute_redirect off;",
        "    log_not_found off;",
        "    autoindex off;",
        "",
        f"    client_body_temp_path {run_dir}/nginx-client-body;",
        f"    proxy_temp_path {run_dir}/nginx-proxy;",
        f"    fastcgi_temp_path {run_dir}/nginx-fastcgi;",
        f"    uwsgi_temp_path {run_dir}/nginx-uwsgi;",
        f"    scgi_temp_path {run_dir}/nginx-scgi;",
        "",
        "    # Slow or oversized clients are cut short.",
        "    client_header_buffer_size 1k;",
        f"    large_client_header_buffers {LARGE_HEADER_BUFFER};",
        "    client_max_body_size 1k;",
        f"    client_header_timeout {slow_client_timeout_seconds}s;",
        f"    client_body_timeout {slow_client_timeout_seconds}s;",
        f"    send_timeout {slow_client_timeout_seconds}s;",
        "    keepalive_timeout 15s;",
        "    keepalive_requests 1000;",
        "    reset_timedout_connection on;",
        "",
        "    types {",
        *(f"        {_q(mime) if ' ' in mime else mime} {exts};" for mime, exts in _TYPES),
        "    }",
        "    default_type application/octet-stream;",
        "    gzip on;",
        "    gzip_vary on;",
        "    gzip_proxied any;",
        "    gzip_comp_level 5;",
        "    gzip_min_length 1024;",
        f"    gzip_types {' '.join(_q(t) if ' ' in t else t for t in _GZIP_TYPES)};",
        "",
        *_indent(_real_ip(rate.trusted_proxies, rate.client_address_header), 4),
        *_indent(_current_resolution(current_resolver, content), 4),
        "    map $prep_root $prep_cut {",
        f'        "~/versions/(?<prep_cut_id>{_CUT_ID_REGEX})$" $prep_cut_id;',
        '        default "";',
        "    }",
        "    map $prep_cut $prep_cut_time {",
        '        "~^(?<prep_y>[0-9]{4})(?<prep_mo>[0-9]{2})(?<prep_d>[0-9]{2})_'
        '(?<prep_h>[0-9]{2})(?<prep_mi>[0-9]{2})"'
        f' "${{prep_y}}-${{prep_mo}}-${{prep_d}}T${{prep_h}}:${{prep_mi}}:00{offset}";',
        '        default "";',
        "    }",
        "    # Internal paths answer 404, apart from the public manifest of the version served.",
        "    map $uri $prep_internal {",
        f'        "{INTEGRITY_PATH}" 0;',
        f'        "~{INTERNAL_PATH_REGEX}" 1;',
        "        default 0;",
        "    }",
        *_indent(_window_maps(spec), 4),
        "    # Errors (429, 503 ...) must never be cached by a CDN.",
        "    map $status $prep_cache_control {",
        "        volatile;",
        *(f'        {status} "{max_age}";' for status in _CACHEABLE_STATUSES),
        '        default "no-store";',
        "    }",
        "    map $status $prep_retry_after {",
        "        volatile;",
        '        429 "1";',
        '        default "";',
        "    }",
        "    map $request_method $prep_bad_method {",
        "        GET 0;",
        "        HEAD 0;",
        "        default 1;",
        "    }",
        "    map $status $prep_allow {",
        "        volatile;",
        '        405 "GET, HEAD";',
        '        default "";',
        "    }",
        "    # Probes are never limited: a flood from the node's address must not unready the pod.",
        "    map $uri $prep_limit_key {",
        f'        "{HEALTHZ_PATH}" "";',
        f'        "{READYZ_PATH}" "";',
        "        default $binary_remote_addr;",
        "    }",
        "    geo $prep_denied {",
        "        default 0;",
        *(f"        {cidr} 1;" for cidr in _cidrs(rate.deny_list)),
        "    }",
        f"    limit_req_zone $prep_limit_key zone=prep_req:32m rate={rate.requests_per_second}r/s;",
        "    limit_conn_zone $prep_limit_key zone=prep_conn:16m;",
        "    limit_req_status 429;",
        "    limit_conn_status 429;",
        "    # Rejections are counted from the access log, not written one by one to the error log.",
        "    limit_req_log_level info;",
        "    limit_conn_log_level info;",
        "",
        f"    log_format {LOG_FORMAT_NAME} escape=json",
        *(f"        '{part}'" for part in _log_format_parts()[:-1]),
        f"        '{_log_format_parts()[-1]}';",
        f"    access_log {access_log} {LOG_FORMAT_NAME} buffer=64k flush=1s;",
        "",
        "    server {",
        *(
            f"        listen {_listen(address, port)} default_server;"
            for address in listen_addresses
        ),
        f"        server_name {spec.host};",
        f"        root {current};",
        "        index index.html;",
        # nginx refuses burst=0; leaving it out means no burst.
        f"        limit_req zone=prep_req{f' burst={rate.burst}' if rate.burst else ''} nodelay;",
        f"        limit_conn prep_conn {min(rate.connections, _MAX_LIMIT_CONN)};",
        "",
        "        # Resolve `current` once (see $prep_realpath): the file and the cut headers come",
        "        # from the same version even if the symlink is swapped while the request is served.",
        "        # Without `current` (a new pod) the value is empty: files and /readyz answer 503.",
        *(
            ["        set_by_lua_block $prep_current { return prep_current() }"]
            if current_resolver == "lua"
            else []
        ),
        "        set $prep_root $prep_realpath;",
        "        # The operator's automatic deny list (containment of an attack), written by the agent",
        "        # and applied by a coalesced reload; none at all is fine.",
        f"        include {content}/{CONTAINMENT_DIR}/*.conf;",
        *_indent(_placeholder_switch(spec, placeholder_dir), 8),
        "        if ($prep_denied) {",
        "            return 403;",
        "        }",
        "        if ($prep_bad_method) {",
        "            return 405;",
        "        }",
        "        if ($prep_internal) {",
        "            return 404;",
        "        }",
        *_indent(_headers(spec, cache_control="$prep_cache_control"), 8),
        "",
        f"        location = {HEALTHZ_PATH} {{",
        "            access_log off;",
        "            allow all;",
        "            default_type text/plain;",
        *_indent(_headers(spec, cache_control="no-store"), 12),
        '            return 200 "ok\\n";',
        "        }",
        "",
        f"        location = {READYZ_PATH} {{",
        "            access_log off;",
        "            allow all;",
        "            default_type text/plain;",
        *_indent(_headers(spec, cache_control="no-store"), 12),
        *_indent(_placeholder_ready(spec), 12),
        '            if ($prep_cut = "") {',
        '                return 503 "no version behind current\\n";',
        "            }",
        f"            if (!-f $prep_root/{READY_MARKER}) {{",
        '                return 503 "version $prep_cut is incomplete\\n";',
        "            }",
        '            return 200 "ready $prep_cut\\n";',
        "        }",
    ]
    out += ["", *_indent(_integrity_location(spec), 8)]
    if "/" not in no_store:
        out += ["", *_indent(_file_location("location /", spec, no_store=False), 8)]
    for path, modifier in no_store.items():
        out += [
            "",
            *_indent(_file_location(f"location {modifier} {_q(path)}", spec, no_store=True), 8),
        ]
    out += ["    }", "}", ""]
    return "\n".join(out)


def _current_resolution(resolver: CurrentResolver, content: str) -> list[str]:
    """$prep_realpath: the version directory behind `current`, or "" without one.

    A map caches its value for the whole request, internal redirects (index) included, so the
    file and the cut headers come from one version even when the server block's rewrite runs
    again after the redirect and reads the link anew.
    """
    cached = [
        "# `current` is read once per request: a map caches $prep_realpath for the whole request,",
        "# internal redirects (index) included, so the file and the cut headers come from one",
        "# version; the server block copies it into $prep_root.",
    ]
    if resolver == "realpath":
        # $realpath_root is not cacheable and `set` would evaluate it twice (length, then
        # value); nginx logs a failed realpath() when there is no `current` yet.
        return [
            *cached,
            "map $realpath_root $prep_realpath {",
            '    "~^(?<prep_realpath_value>/.*)$" $prep_realpath_value;',
            '    default "";',
            "}",
        ]
    # `current` is always `versions/<cut>`, written by the agent (Store.swap_current), which bumps
    # the swap counter beside it after each rename. Each nginx worker is one thread, so the
    # module-level state is safe. Linux values: O_RDONLY 0, SEEK_END 2, PROT_READ 1, MAP_SHARED 1.
    return [
        "# `current` is read again only when the agent's swap counter moves (a load from shared",
        "# memory per request, no system call), and at least once a second whatever the counter",
        "# says; without the counter (a pod whose agent has not started yet), on every request.",
        "init_by_lua_block {",
        '    local ffi = require "ffi"',
        "    ffi.cdef[[",
        "        long readlink(const char *path, char *buf, size_t size);",
        "        int memcmp(const void *a, const void *b, size_t n);",
        "        int open(const char *path, int flags, ...);",
        "        long lseek(int fd, long offset, int whence);",
        "        void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);",
        "        int munmap(void *addr, size_t length);",
        "        int close(int fd);",
        "    ]]",
        "    local C, now, size = ffi.C, ngx.now, 4096",
        '    local buf, last = ffi.new("char[?]", size), ffi.new("char[?]", size)',
        '    local last_n, root, failed = -1, "", ffi.cast("void *", -1)',
        f'    local current, base = "{content}/current", "{content}/"',
        f'    local counter = "{content}/{SWAP_COUNTER}"',
        "    local region, map, seen, recheck = nil, nil, -1, 0",
        "    -- The counter, mapped read-only afresh (the file may have been replaced); nil while it",
        "    -- is missing or shorter than its 4 bytes (reading past its end would be SIGBUS).",
        "    local function remap()",
        "        if region ~= nil then C.munmap(region, 4) end",
        "        region, map = nil, nil",
        "        local fd = C.open(counter, 0)",
        "        if fd < 0 then return end",
        "        if C.lseek(fd, 0, 2) >= 4 then",
        "            local p = C.mmap(nil, 4, 1, 1, fd, 0)",
        "            if p ~= failed then",
        '                region, map = p, ffi.cast("const volatile uint32_t *", p)',
        "            end",
        "        end",
        "        C.close(fd)",
        "    end",
        "    -- One readlink(2) (realpath(3) takes one per path component); the root string is",
        "    -- rebuilt only when the target changes.",
        "    local function resolve()",
        "        local n = tonumber(C.readlink(current, buf, size))",
        "        if n <= 0 or n >= size then",
        '            last_n, root = -1, ""',
        "        elseif n ~= last_n or C.memcmp(buf, last, n) ~= 0 then",
        "            local target = ffi.string(buf, n)",
        "            root = target:byte(1) == 47 and target or base .. target",
        "            ffi.copy(last, buf, n)",
        "            last_n = n",
        "        end",
        "        return root",
        "    end",
        "    -- The counter is read before the link: the agent renames, then bumps.",
        "    function prep_current()",
        "        local t = now()",
        "        if t >= recheck then",
        "            recheck = t + 1",
        "            remap()",
        "            if map ~= nil then seen = map[0] end",
        "            return resolve()",
        "        end",
        "        if map == nil then return resolve() end",
        "        local count = map[0]",
        "        if count == seen then return root end",
        "        seen = count",
        "        return resolve()",
        "    end",
        "}",
        *cached,
        "map $prep_current $prep_realpath {",
        "    default $prep_current;",
        "}",
    ]


def _file_location(head: str, spec: PrepPublicationSpec, *, no_store: bool) -> list[str]:
    lines = [f"{head} {{", "    root $prep_root;"]
    if no_store:
        # No validators, so no 304 can confirm a reader's copy of an older cut.
        lines += ["    etag off;", "    if_modified_since off;", '    add_header Last-Modified "";']
        lines += _indent(_headers(spec, cache_control=NO_STORE, no_store=True), 4)
    else:
        lines += _indent(_headers(spec, cache_control="$prep_cache_control"), 4)
    lines += ["    if ($prep_unserved) {", "        return 503;", "    }", "}"]
    return lines


def _integrity_location(spec: PrepPublicationSpec) -> list[str]:
    """The manifest of the version served, from the same resolution of `current` as its files."""
    return [
        f"location = {INTEGRITY_PATH} {{",
        f"    alias $prep_root/{READY_MARKER};",
        *_indent(_headers(spec, cache_control="$prep_cache_control"), 4),
        '    if ($prep_cut = "") {',
        "        return 404;",
        "    }",
        "}",
    ]


def _window_maps(spec: PrepPublicationSpec) -> list[str]:
    """$prep_before_start from nginx's clock, and $prep_unserved: no cut and no placeholder."""
    if spec.window is None:
        return ["map $prep_cut $prep_unserved {", '    "" 1;', "    default 0;", "}"]
    start = spec.window.start
    # Whole seconds: $msec is `seconds.millis`, and a window starts on a second.
    limit = math.ceil(start.timestamp())
    return [
        f"# Before the window opens ({start.isoformat()}, {limit} s after the epoch) every",
        "# pod serves the placeholder, each by its own clock.",
        "map $msec $prep_before_start {",
        f'    "~^{epoch_below(limit)}\\." 1;',
        "    default 0;",
        "}",
        "# Files answer 503 without a cut, unless the placeholder is being served.",
        'map "$prep_before_start:$prep_cut" $prep_unserved {',
        '    "0:" 1;',
        "    default 0;",
        "}",
    ]


def _placeholder_switch(spec: PrepPublicationSpec, placeholder_dir: str) -> list[str]:
    if spec.window is None:
        return []
    return [
        "if ($prep_before_start) {",
        f"    set $prep_root {_q(placeholder_dir)};",
        "}",
    ]


def _placeholder_ready(spec: PrepPublicationSpec) -> list[str]:
    if spec.window is None:
        return []
    return ["if ($prep_before_start) {", '    return 200 "placeholder\\n";', "}"]


def _headers(spec: PrepPublicationSpec, *, cache_control: str, no_store: bool = False) -> list[str]:
    """add_header lines for one level (nginx inherits add_header only into levels with none)."""
    ancestors = " ".join(dict.fromkeys(["'self'", *spec.embedding.allowed_origins]))
    lines = [
        "add_header X-Prep-Cut $prep_cut always;",
        "add_header X-Prep-Cut-Time $prep_cut_time always;",
        f'add_header Cache-Control "{cache_control}" always;',
    ]
    if no_store:
        lines += ['add_header Pragma "no-cache" always;', 'add_header Expires "0" always;']
    lines += [
        'add_header X-Content-Type-Options "nosniff" always;',
        'add_header Referrer-Policy "strict-origin-when-cross-origin" always;',
        f'add_header Content-Security-Policy "frame-ancestors {ancestors}" always;',
        "add_header Retry-After $prep_retry_after always;",
        "add_header Allow $prep_allow always;",
    ]
    if spec.tls is not None:
        lines.append('add_header Strict-Transport-Security "max-age=31536000" always;')
    return lines


def _real_ip(trusted: Sequence[str], header: ClientAddressHeader) -> list[str]:
    if not trusted:
        return ["# No trusted proxies: the client address is the TCP peer.", ""]
    lines = [f"# {header.value} is believed only from these proxies."]
    lines += [f"set_real_ip_from {cidr};" for cidr in _cidrs(trusted)]
    lines.append(f"real_ip_header {header.value};")
    if header is ClientAddressHeader.X_FORWARDED_FOR:
        lines.append("real_ip_recursive on;")
    return [*lines, ""]


def _log_format_parts() -> list[str]:
    values = {
        "ts": "$msec",
        "time": '"$time_iso8601"',
        "addr": '"$remote_addr"',
        "peer": '"$realip_remote_addr"',
        "method": '"$request_method"',
        "path": '"$uri"',
        "query": '"$args"',
        "status": "$status",
        "bytes": "$body_bytes_sent",
        "rt": "$request_time",
        "ua": '"$http_user_agent"',
        "ref": '"$http_referer"',
        "host": '"$host"',
        "cut": '"$prep_cut"',
    }
    assert tuple(values) == LOG_FIELDS
    items = [f'"{key}":{value}' for key, value in values.items()]
    return ["{" + items[0] + ","] + [f"{item}," for item in items[1:-1]] + [items[-1] + "}"]


def _no_store_locations(paths: Sequence[str]) -> dict[str, str]:
    """no-store path -> location modifier: `=` for a file, `^~` for a directory (trailing /)."""
    locations: dict[str, str] = {}
    for path in paths:
        if path in (HEALTHZ_PATH, READYZ_PATH):
            raise ValueError(f"cache.noStorePaths cannot hold the probe path {path}")
        locations[path] = "^~" if path.endswith("/") else "="
    return locations


def _cidrs(values: Sequence[str]) -> list[str]:
    """CIDRs normalised (host bits cleared) and deduplicated, in the spec's order."""
    return list(dict.fromkeys(str(ipaddress.ip_network(v, strict=False)) for v in values))


def _listen(address: str, port: int) -> str:
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{address}:{port}"


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _indent(lines: list[str], width: int) -> list[str]:
    pad = " " * width
    return [pad + line if line else line for line in lines]


def epoch_below(limit: int) -> str:
    """A regular expression matching the decimal integers of limit's width that are below it.

    nginx has no arithmetic: the rendered config compares $msec (seconds since the epoch) with
    the window's start through this expression, so every pod switches on its own clock.
    """
    if limit <= 0:
        raise ValueError("the limit must be a positive number of seconds")
    digits = str(limit)
    width = len(digits)
    options = []
    for i, digit in enumerate(digits):
        if digit == "0":
            continue
        rest = width - i - 1
        low = "1" if i == 0 else "0"
        if int(digit) - 1 < int(low):
            continue
        head = digits[:i] + (low if int(digit) - 1 == int(low) else f"[{low}-{int(digit) - 1}]")
        options.append(head + (f"[0-9]{{{rest}}}" if rest else ""))
    if width > 1:
        options.append(f"[0-9]{{1,{width - 1}}}")
    return "(?:" + "|".join(options) + ")"
