"""The configuration files of a publication's web pods, as they go into its ConfigMap."""

from __future__ import annotations

from difusor.models import PrepPublicationSpec


def config_files(spec: PrepPublicationSpec, *, name: str) -> dict[str, str]:
    """File name -> content for the ConfigMap mounted in every web pod."""
    return {
        "nginx.conf": (
            f"# difusor publication {name}: {spec.host}\n"
            "worker_processes auto;\npid /tmp/nginx.pid;\nevents {}\n"
            "http {\n  server {\n    listen 8080;\n    root /srv/prep/current;\n  }\n}\n"
        ),
    }
