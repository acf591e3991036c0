"""The sshd_config of the sftp container: key-only, internal-sftp only, for a non-root sshd.

How the confinement works in the pod: sshd runs as the uploader's own non-root user (it can only
log that user in, and `ChrootDirectory` needs root, so there is no chroot). What confines an
uploader is `ForceCommand internal-sftp` (no shell, no command, no forwarding of any kind),
the requests refused with `-P`, and the container itself: a read-only root file system whose only
writable mount is the content volume, starting the session in its `incoming/` directory.

Keys: the host keys come from the operator's Secret, the same on every pod, so a client that
reconnects through the Service to another pod sees the same host. sshd reads
`AuthorizedKeysFile` anew at each authentication, so when the authorized-keys Secret changes and
the kubelet updates the mounted file, new sessions use the new keys while uploads in progress
carry on undisturbed: nothing is restarted.
"""

from __future__ import annotations

from collections.abc import Sequence

from difusor.models import SftpSpec

#: Where the pod mounts the host keys from the operator's Secret.
DEFAULT_HOST_KEYS = ("/etc/difusor/ssh-host/ssh_host_ed25519_key",)
#: Where the pod mounts the `authorized_keys` key of spec.sftp.authorizedKeysSecret.
DEFAULT_AUTHORIZED_KEYS = "/etc/difusor/sftp/authorized_keys"
#: Where uploads land: the content volume's incoming directory.
DEFAULT_UPLOAD_DIR = "/srv/prep/incoming"
#: Pid file on the writable run directory (an emptyDir in the pod).
DEFAULT_PID_FILE = "/run/difusor/sshd.pid"
#: Port sshd listens on in the pod (a non-root process cannot bind 22; the Service maps it).
DEFAULT_PORT = 2222

KEX = ("sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "curve25519-sha256@libssh.org")
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
#: Keys the institute may hold: RSA only with SHA-2 signatures, never ssh-rsa (SHA-1).
PUBKEY_ALGORITHMS = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
#: SFTP requests refused: links could point outside the volume, server-side copies and
#: directories have no use in a flat drop box. Rename and posix-rename stay: uploaders write a
#: temporary name and rename it when complete.
DENIED_REQUESTS = ("symlink", "hardlink", "copy-data", "mkdir", "rmdir")


def render_sshd_config(
    sftp: SftpSpec,
    *,
    port: int = DEFAULT_PORT,
    listen_addresses: Sequence[str] = ("0.0.0.0",),
    host_keys: Sequence[str] = DEFAULT_HOST_KEYS,
    authorized_keys_file: str = DEFAULT_AUTHORIZED_KEYS,
    upload_dir: str = DEFAULT_UPLOAD_DIR,
    pid_file: str = DEFAULT_PID_FILE,
    user: str | None = None,
) -> str:
    """sshd_config for the sftp container; tests may change only the user, port and paths."""
    login = user or sftp.user
    sftp_command = f"internal-sftp -d {upload_dir} -u 0022 -l INFO -P {','.join(DENIED_REQUESTS)}"
    lines = [
        "# Rendered by difusor: key-only SFTP drop box for the institute's uploads.",
        f"Port {port}",
        *(f"ListenAddress {address}" for address in listen_addresses),
        *(f"HostKey {key}" for key in host_keys),
        f"PidFile {pid_file}",
        "",
        "# Only modern algorithms.",
        f"KexAlgorithms {','.join(KEX)}",
        f"Ciphers {','.join(CIPHERS)}",
        f"MACs {','.join(MACS)}",
        f"HostKeyAlgorithms {','.join(HOST_KEY_ALGORITHMS)}",
        f"PubkeyAcceptedAlgorithms {','.join(PUBKEY_ALGORITHMS)}",
        "",
        "# One user, public keys only; the key file is read anew at each login.",
        f"AllowUsers {login}",
        "PermitRootLogin no",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {authorized_keys_file}",
        "AuthorizedPrincipalsFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "# The key file comes from a read-only Secret volume, not from a home directory that",
        "# another user could make writable, and a non-root sshd cannot own it: no StrictModes.",
        "StrictModes no",
        "",
        "# Bounded unauthenticated load.",
        "MaxAuthTries 3",
        "MaxSessions 2",
        "MaxStartups 10:30:60",
        "LoginGraceTime 30",
        "ClientAliveInterval 30",
        "ClientAliveCountMax 4",
        "",
        "# SFTP and nothing else: no shell, TTY, forwarding, agent, X11, tunnel or user files.",
        f"Subsystem sftp {sftp_command}",
        f"ForceCommand {sftp_command}",
        "DisableForwarding yes",
        "AllowTcpForwarding no",
        "AllowStreamLocalForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitListen none",
        "PermitOpen none",
        "GatewayPorts no",
        "PermitTTY no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        "",
        "# Packages are compressed already; names are not looked up; logs name the key used.",
        "Compression no",
        "UseDNS no",
        "PrintMotd no",
        "LogLevel VERBOSE",
    ]
    return "\n".join(lines) + "\n"
