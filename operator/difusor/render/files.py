"""The configuration files of a publication's web pods, as they go into its ConfigMap."""

from __future__ import annotations

from difusor.models import PrepPublicationSpec
from difusor.render.children import AUTHORIZED_KEYS_DIR, CONTENT_DIR, HTTP_PORT, SFTP_PORT
from difusor.render.nginx import CurrentResolver, render_nginx_conf
from difusor.render.sshd import render_sshd_config

#: Where the sftp entry point copies the host keys (see agent/sftpserver.py) and keeps its pid.
SSHD_RUNTIME_DIR = "/tmp/sshd"
HOST_KEY_NAMES = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key")


def config_files(
    spec: PrepPublicationSpec, *, name: str, nginx_resolver: CurrentResolver = "lua"
) -> dict[str, str]:
    """File name -> content for the ConfigMap mounted in every web pod.

    `nginx_resolver` must suit the nginx image: "lua" (the default, difusor-nginx) needs Debian's
    lua module, "realpath" runs on any nginx (see render_nginx_conf).
    """
    del name  # every file is a function of the spec alone; the name is for the callers' logs
    return {
        # Two workers match the container's CPU request; `auto` would count the node's CPUs.
        "nginx.conf": render_nginx_conf(
            spec,
            content_dir=CONTENT_DIR,
            port=HTTP_PORT,
            worker_processes=2,
            current_resolver=nginx_resolver,
        ),
        "sshd_config": render_sshd_config(
            spec.sftp,
            port=SFTP_PORT,
            host_keys=tuple(f"{SSHD_RUNTIME_DIR}/{key}" for key in HOST_KEY_NAMES),
            authorized_keys_file=f"{AUTHORIZED_KEYS_DIR}/authorized_keys",
            upload_dir=f"{CONTENT_DIR}/incoming",
            pid_file=f"{SSHD_RUNTIME_DIR}/sshd.pid",
        ),
    }
