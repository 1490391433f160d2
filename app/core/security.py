"""API keys: who may read, who may change the model.

A key is configured as `name:scope:secret` or, to keep the secret out of the configuration,
`name:scope:sha256=<hex digest of the secret>`, in EDITSERVE_API_KEYS (comma-separated) or in a keys
file (one per line, # comments). Only digests are kept in memory; a presented key is hashed and
compared with every configured digest in constant time. Scopes nest: `read` (generate, completions,
list/get/export edits) < `edit` (also create, preview, update, withdraw, import) < `admin`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("read", "edit", "admin")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    scope: str
    digest: bytes

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def parse_entry(entry: str, where: str) -> ApiKey:
    parts = entry.strip().split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{where}: an API key is name:scope:secret or name:scope:sha256=<hex>, not {entry!r}")
    name, scope, secret = parts
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: key name {name!r}: 1-128 letters, digits or ._@-")
    if scope not in SCOPES:
        raise ValueError(f"{where}: key {name}: scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if secret.startswith("sha256="):
        try:
            raw = bytes.fromhex(secret.removeprefix("sha256="))
        except ValueError as exc:
            raise ValueError(f"{where}: key {name}: sha256= takes 64 hex digits") from exc
        if len(raw) != 32:
            raise ValueError(f"{where}: key {name}: sha256= takes 64 hex digits")
        return ApiKey(name, scope, raw)
    if len(secret) < 16:
        raise ValueError(f"{where}: key {name}: a secret of at least 16 characters, please")
    return ApiKey(name, scope, digest(secret))


def load_keys(inline: str | None, file: Path | None) -> list[ApiKey]:
    keys = [parse_entry(e, "EDITSERVE_API_KEYS") for e in (inline or "").split(",") if e.strip()]
    if file is not None:
        for number, line in enumerate(Path(file).read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(parse_entry(line, f"{file}:{number}"))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError("API keys: two keys have the same name; each name must be unique (it is the actor)")
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    def find(self, secret: str) -> ApiKey | None:
        presented, found = digest(secret), None
        for key in self.keys:  # every digest is compared, so the time says nothing about which matched
            if hmac.compare_digest(presented, key.digest):
                found = key
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_key(name: str, scope: str) -> tuple[str, str]:
    """A fresh secret and its configuration line (the digest form)."""
    secret = "es-" + secrets.token_urlsafe(32)
    return secret, f"{name}:{scope}:sha256={digest(secret).hex()}"
