"""The images users install: what `make image` builds, listed file by file from the OCI archive."""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from difusor.render.nginx import LUA_MODULES

from .conftest import REPO, require_binary

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]

#: Package managers and compilers: none may be left in a final image.
FORBIDDEN = [
    "usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "usr/bin/dpkg-deb", "usr/sbin/dpkg-*",
    "usr/bin/pip*", "opt/difusor/bin/pip*", "usr/bin/uv", "opt/*/bin/uv",
    "usr/bin/gcc*", "usr/bin/cc", "usr/bin/c++", "usr/bin/g++*", "usr/bin/clang*",
    "usr/bin/*-linux-gnu-gcc*", "usr/bin/ld", "usr/bin/as", "usr/bin/make", "usr/bin/go",
]  # fmt: skip


class Image:
    """An image read from an OCI archive (or `docker save` output): config and file list."""

    def __init__(self, archive: Path) -> None:
        self.size = archive.stat().st_size
        with tarfile.open(archive) as tar:

            def blob(digest: str) -> bytes:
                member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
                assert member is not None
                return member.read()

            index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
            manifest = json.loads(blob(index["manifests"][0]["digest"]))
            if "manifests" in manifest:  # an index of one image
                manifest = json.loads(blob(manifest["manifests"][0]["digest"]))
            self.config: dict[str, Any] = json.loads(blob(manifest["config"]["digest"]))["config"]
            self.files: dict[str, int] = {}
            for layer in manifest["layers"]:
                data = blob(layer["digest"])
                if data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
                with tarfile.open(fileobj=io.BytesIO(data)) as layer_tar:
                    for entry in layer_tar:
                        self.files[entry.name.lstrip("./")] = entry.size

    def forbidden(self) -> list[str]:
        return sorted(
            name for name in self.files if any(fnmatch.fnmatch(name, p) for p in FORBIDDEN)
        )

    def summary(self) -> dict[str, Any]:
        by_dir: Counter[str] = Counter()
        for name, size in self.files.items():
            by_dir["/".join(name.split("/")[:2])] += size
        return {
            "archive_bytes": self.size,
            "files": len(self.files),
            "largest_dirs_mb": {d: round(s / 2**20, 1) for d, s in by_dir.most_common(8)},
        }


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """Both images, built (or taken from the cache) by hack/image.sh."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh")],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"hack/image.sh failed:\n{out.stderr[-4000:]}"
    found: dict[str, Image] = {}
    for line in out.stdout.splitlines():
        ref, _, archive = line.partition(" ")
        if not archive:  # built by Docker: read what it would push
            archive = str(tmp_path_factory.mktemp("image") / "image.tar")
            subprocess.run([require_binary("docker"), "save", "-o", archive, ref], check=True)
        found["nginx" if "nginx" in ref.rsplit("/", 1)[-1] else "difusor"] = Image(Path(archive))
    return found


def test_the_difusor_image_runs_as_non_root_without_compilers_or_package_managers(
    images: dict[str, Image],
) -> None:
    image = images["difusor"]
    print("difusor image:", json.dumps(image.summary()))
    assert image.config["User"] == "10001:10001"
    assert image.config["Entrypoint"] == ["difusor"]
    assert image.forbidden() == []
    for wanted in ("opt/difusor/bin/difusor", "usr/sbin/sshd", "usr/lib/openssh/sftp-server",
                   "usr/bin/python3.11", "etc/passwd"):  # fmt: skip
        assert wanted in image.files, wanted
    # The pods mount the operator's host keys: none is baked into the image.
    assert not [n for n in image.files if n.startswith("etc/ssh/ssh_host_")]


def test_the_nginx_image_is_debians_nginx_non_root_without_package_managers(
    images: dict[str, Image],
) -> None:
    image = images["nginx"]
    print("nginx image:", json.dumps(image.summary()))
    assert image.config["User"] == "10001:10001"
    assert "usr/sbin/nginx" in image.files
    # The rendered nginx.conf loads these (render/nginx.py LUA_MODULES) and resty.core.
    for module in LUA_MODULES:
        assert module.lstrip("/") in image.files, module
    assert "usr/share/lua/5.1/resty/core.lua" in image.files
    assert image.forbidden() == []
