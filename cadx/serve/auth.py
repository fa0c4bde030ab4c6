"""Bearer-token authentication: the token comes from an environment variable or a file."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from cadx.errors import ConfigError

TOKEN_ENV = "CADX_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16


def load_token(token_file: str | Path | None = None) -> str | None:
    """The token from `token_file` if given, else from $CADX_SERVE_TOKEN, else None."""
    if token_file is not None:
        path = Path(token_file)
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the token file ({exc.strerror})") from None
        source = str(path)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{source}: the token must have at least {MIN_TOKEN_CHARS} characters")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_host_names(bind_host: str = "127.0.0.1") -> list[str]:
    """Host-header names of this machine, for tokenless loopback mode: a web page elsewhere can
    point its own name at 127.0.0.1 (DNS rebinding) and its requests then carry that name."""
    names = ["localhost", "127.0.0.1", "[::1]"]
    bind = f"[{bind_host}]" if ":" in bind_host else bind_host
    return names if bind in names else [*names, bind]


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} without a token: set ${TOKEN_ENV} or "
                          "give --token-file (or listen on 127.0.0.1)")


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>` (constant-time comparison)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(),
                                                                 token.encode())
