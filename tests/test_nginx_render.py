"""nginx.conf rendered from the spec: golden files and each serving field reaching the config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from difusor.controller.reconcile import Settings, nginx_resolver
from difusor.models import PrepPublicationSpec
from difusor.render.files import config_files
from difusor.render.nginx import (
    ACCESS_LOG_PATH,
    CONTENT_DIR,
    HTTP_PORT,
    LOG_FIELDS,
    LUA_MODULES,
    NO_STORE,
    RUN_DIR,
    fixed_utc_offset,
    render_nginx_conf,
)

from .conftest import REPO

pytestmark = pytest.mark.unit

GOLDEN = REPO / "tests" / "golden" / "nginx"
UPDATE = os.environ.get("DIFUSOR_UPDATE_GOLDEN") == "1"
CASES = sorted(path.stem for path in GOLDEN.glob("*.yaml"))


def golden_spec(name: str) -> PrepPublicationSpec:
    """The spec of one golden case (a whole PrepPublication manifest)."""
    manifest = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
    return PrepPublicationSpec.model_validate(manifest["spec"])


def _spec(**overrides: Any) -> PrepPublicationSpec:
    base: dict[str, Any] = {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    base.update(overrides)
    return PrepPublicationSpec.model_validate(base)


def test_there_are_golden_cases() -> None:
    assert {"minimal", "michoacan", "cloudflare"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_render_of_each_golden_spec_matches_its_golden_config(name: str) -> None:
    rendered = render_nginx_conf(golden_spec(name))
    golden = GOLDEN / f"{name}.conf"
    if UPDATE:
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"regenerate with DIFUSOR_UPDATE_GOLDEN=1 ({golden})"


def test_rendering_is_a_pure_function_of_its_inputs() -> None:
    spec = golden_spec("michoacan")
    assert render_nginx_conf(spec) == render_nginx_conf(spec.model_copy(deep=True))
    assert render_nginx_conf(spec) != render_nginx_conf(spec, port=9090)


def test_the_pod_config_needs_no_root_and_writes_only_to_its_volumes() -> None:
    conf = render_nginx_conf(_spec())
    assert not re.search(r"^\s*user\s", conf, re.MULTILINE)
    assert f"listen 0.0.0.0:{HTTP_PORT} default_server;" in conf
    assert HTTP_PORT > 1024
    writable = (RUN_DIR + "/", ACCESS_LOG_PATH)
    for directive in ("pid", "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path"):
        (path,) = re.findall(rf"^\s*{directive} (\S+);", conf, re.MULTILINE)
        assert path.startswith(writable), directive
    assert f"access_log {ACCESS_LOG_PATH} " in conf
    assert "error_log stderr" in conf
    assert f"root {CONTENT_DIR}/current;" in conf
    assert "daemon" not in conf


def test_tests_can_move_every_path_and_the_listen_address() -> None:
    conf = render_nginx_conf(
        _spec(),
        content_dir="/tmp/x/content",
        run_dir="/tmp/x/run",
        access_log="/tmp/x/access.log",
        listen_addresses=("127.0.0.7", "::1"),
        port=18080,
        user="root",
    )
    assert "/srv/prep" not in conf
    assert "/var/log" not in conf
    assert "listen 127.0.0.7:18080 default_server;" in conf
    assert "listen [::1]:18080 default_server;" in conf
    assert "\nuser root;\n" in conf


def test_main_json_and_every_no_store_path_get_no_store_and_no_validators() -> None:
    conf = render_nginx_conf(_spec(cache={"noStorePaths": ["/json/main.json", "/json/ultimo/"]}))
    for head in ('location = "/json/main.json" {', 'location ^~ "/json/ultimo/" {'):
        block = conf.split(head, 1)[1].split("\n        }", 1)[0]
        assert f'add_header Cache-Control "{NO_STORE}" always;' in block
        assert "etag off;" in block
        assert "if_modified_since off;" in block
        assert 'add_header Last-Modified "";' in block
        assert 'add_header Pragma "no-cache" always;' in block
        assert 'add_header Expires "0" always;' in block


def test_hsts_only_when_tls_is_set() -> None:
    assert "Strict-Transport-Security" not in render_nginx_conf(_spec())
    assert "Strict-Transport-Security" in render_nginx_conf(_spec(tls={"secretName": "t"}))


def test_frame_ancestors_lists_self_and_the_allowed_portals() -> None:
    conf = render_nginx_conf(_spec(embedding={"allowedOrigins": ["https://a.example", "'self'"]}))
    assert "frame-ancestors 'self' https://a.example\" always;" in conf


def test_the_client_header_is_believed_only_when_proxies_are_trusted() -> None:
    assert "real_ip_header" not in render_nginx_conf(_spec())
    conf = render_nginx_conf(
        _spec(rateLimit={"trustedProxies": ["10.1.2.3/8"], "clientAddressHeader": "True-Client-IP"})
    )
    assert "set_real_ip_from 10.0.0.0/8;" in conf
    assert "real_ip_header True-Client-IP;" in conf
    assert "real_ip_recursive" not in conf
    xff = render_nginx_conf(_spec(rateLimit={"trustedProxies": ["10.0.0.0/8"]}))
    assert "real_ip_header X-Forwarded-For;\n    real_ip_recursive on;" in xff


def test_limits_reach_limit_req_and_limit_conn() -> None:
    conf = render_nginx_conf(
        _spec(rateLimit={"requestsPerSecond": 7, "burst": 9, "connections": 11})
    )
    assert "rate=7r/s;" in conf
    assert "limit_req zone=prep_req burst=9 nodelay;" in conf
    assert "limit_conn prep_conn 11;" in conf
    assert "limit_req_status 429;" in conf


def test_limits_that_nginx_would_refuse_are_rendered_as_it_accepts_them() -> None:
    conf = render_nginx_conf(_spec(rateLimit={"burst": 0, "connections": 100000}))
    assert "limit_req zone=prep_req nodelay;" in conf
    assert "limit_conn prep_conn 65535;" in conf


def test_deny_list_cidrs_are_normalised_and_deduplicated() -> None:
    conf = render_nginx_conf(
        _spec(rateLimit={"denyList": ["203.0.113.9/24", "203.0.113.0/24", "2001:db8::1/48"]})
    )
    geo = conf.split("geo $prep_denied {", 1)[1].split("}", 1)[0]
    assert geo.split() == ["default", "0;", "203.0.113.0/24", "1;", "2001:db8::/48", "1;"]


def test_the_cut_time_offset_is_derived_for_a_zone_without_dst() -> None:
    assert fixed_utc_offset("America/Mexico_City") == "-06:00"
    assert fixed_utc_offset("America/Cancun") == "-05:00"
    assert fixed_utc_offset("UTC") == "+00:00"
    assert ':00-06:00";' in render_nginx_conf(_spec())


def test_a_zone_with_daylight_saving_needs_an_explicit_offset() -> None:
    spec = _spec(ingest={"timezone": "America/Tijuana"})
    with pytest.raises(ValueError, match="daylight saving"):
        render_nginx_conf(spec)
    assert ':00-07:00";' in render_nginx_conf(spec, cut_utc_offset="-07:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        render_nginx_conf(spec, cut_utc_offset="UTC-7")


def test_probe_paths_cannot_be_no_store_paths() -> None:
    with pytest.raises(ValueError, match="probe"):
        render_nginx_conf(_spec(cache={"noStorePaths": ["/readyz"]}))


def test_no_store_for_the_whole_site_replaces_the_default_location() -> None:
    conf = render_nginx_conf(_spec(cache={"noStorePaths": ["/"]}))
    assert "location / {" not in conf
    assert 'location ^~ "/" {' in conf


def test_the_access_log_is_json_with_every_field() -> None:
    conf = render_nginx_conf(_spec())
    log_format = conf.split("log_format prep_json escape=json", 1)[1].split(";\n", 1)[0]
    assert [f'"{field}":' for field in LOG_FIELDS] == re.findall(r'"[a-z]+":', log_format)


def test_golden_configs_live_beside_their_specs() -> None:
    assert sorted(Path(p).stem for p in GOLDEN.glob("*.conf")) == CASES


def test_the_lua_resolver_loads_its_modules_and_realpath_needs_none() -> None:
    lua = render_nginx_conf(_spec(), content_dir="/data/prep/")
    assert lua.splitlines()[2:4] == [f"load_module {module};" for module in LUA_MODULES]
    assert '"/data/prep/current", "/data/prep/"' in lua
    assert "set_by_lua_block $prep_current { return prep_current() }" in lua
    assert "$realpath_root" not in lua
    plain = render_nginx_conf(_spec(), content_dir="/data/prep/", current_resolver="realpath")
    assert "load_module" not in plain
    assert "lua" not in plain
    assert "map $realpath_root $prep_realpath {" in plain
    # Either way the root of every request is read once, through the cached map.
    for conf in (lua, plain):
        assert conf.count("set $prep_root $prep_realpath;") == 1


def test_an_unknown_resolver_or_an_unquotable_content_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="current_resolver 'readlink' is not one of lua, realpath"):
        render_nginx_conf(_spec(), current_resolver="readlink")  # type: ignore[arg-type]
    for bad in ('/srv/"prep', "/srv/pr ep", "/srv/prep;", "/srv/{prep}", "/srv\\prep"):
        with pytest.raises(ValueError, match="content_dir"):
            render_nginx_conf(_spec(), content_dir=bad)


def test_the_operator_reads_its_resolver_from_the_environment() -> None:
    assert nginx_resolver(None) == nginx_resolver("") == Settings.nginx_resolver == "lua"
    assert nginx_resolver("realpath") == "realpath"
    with pytest.raises(
        ValueError, match="DIFUSOR_NGINX_RESOLVER='Lua' is not one of lua, realpath"
    ):
        nginx_resolver("Lua")
    files = config_files(_spec(), name="p", nginx_resolver="realpath")
    assert "lua" not in files["nginx.conf"]
    assert "load_module" in config_files(_spec(), name="p")["nginx.conf"]
