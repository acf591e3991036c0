"""Secrets the operator generates once per publication: SSH host keys and the agents' token."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from difusor.render.children import Target, child_meta
from difusor.render.labels import GENERATED_ANNOTATION, Names

Obj = dict[str, Any]


def _openssh_pair(key: Any) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def host_key_files() -> dict[str, bytes]:
    """Fresh ed25519, ECDSA P-256 and RSA 3072 host keys in OpenSSH format, as sshd names them."""
    files: dict[str, bytes] = {}
    for name, key in (
        ("ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("ecdsa", ec.generate_private_key(ec.SECP256R1())),
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=3072)),
    ):
        private, public = _openssh_pair(key)
        files[f"ssh_host_{name}_key"] = private
        files[f"ssh_host_{name}_key.pub"] = public
    return files


def _secret(target: Target, name: str, data: dict[str, bytes], note: str) -> Obj:
    meta = child_meta(target, name, annotations={GENERATED_ANNOTATION: note})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def host_keys_secret(target: Target, owners: list[Obj]) -> Obj:
    """The SFTP host keys shared by every pod (so the uploader sees one host).

    `owners` is `host_keys_owners`: none while the volumes are kept on delete (the default),
    so that a publication applied again under its name is the same host to the uploader's
    known_hosts. They are set when the Secret is made: the operator creates and reads Secrets,
    and may change none.
    """
    secret = _secret(
        target,
        Names(target.name).host_keys,
        host_key_files(),
        "SFTP host keys, generated once and "
        + ("deleted with the publication, as its volumes are" if owners else
           "kept, with the volumes, when the publication is deleted")
        + "; delete the Secret to rotate them",
    )  # fmt: skip
    secret["metadata"].pop("ownerReferences", None)
    if owners:
        secret["metadata"]["ownerReferences"] = owners
    return secret


def agent_token_secret(target: Target) -> Obj:
    """The token agents present to each other when one fetches a cut from a peer."""
    token = secrets.token_urlsafe(32).encode()
    return _secret(
        target,
        Names(target.name).agent_token,
        {"token": token},
        "token between the agents of this publication, generated once",
    )
