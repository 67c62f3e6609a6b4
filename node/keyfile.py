"""The node's persistent Ed25519 identity file: created once with mode 0600, refused if others can read it.

The same key is the libp2p peer id and the signer of bundles and commitments, so it lives below
every subsystem: the kernel loads it before any of them exists.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from protocol.identity import Identity

__all__ = ["IDENTITY_FILE_MODE", "IdentityFileError", "load_or_create_identity"]

log = logging.getLogger("veilnet.node")

IDENTITY_FILE_MODE = 0o600


class IdentityFileError(RuntimeError):
    """The identity key file is unreadable, malformed, or readable by other users."""



def load_or_create_identity(path: Path) -> Identity:
    """The node's Ed25519 identity, created on first start, so the peer id survives restarts.

    The file holds the 32-byte seed and is created with mode 0600; an existing file that group or
    others can read is refused rather than silently used (like ssh does with private keys).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, IDENTITY_FILE_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityFileError(
                f"{path} has mode {mode:04o}; it holds the node's private key and must be 0600"
                f" (fix with: chmod 600 {path})"
            ) from None
        seed = path.read_bytes()
        if len(seed) != 32:
            raise IdentityFileError(f"{path} must hold exactly 32 bytes (an Ed25519 seed)") from None
        return Identity(seed)
    identity = Identity.generate()
    with os.fdopen(fd, "wb") as handle:
        handle.write(identity.seed)
    log.info("created a new identity %s in %s", identity.peer_id_text, path)
    return identity
