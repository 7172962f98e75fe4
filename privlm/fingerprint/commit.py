"""Committed fingerprint sets: the owner publishes, before any model is trained, a SHA-256 commitment to the whole set
(every key and response, in order) and the settings that generated it, salted with a secret so that the commitment
says nothing about the keys. At a dispute the owner reveals the set and the salt; anyone can then verify that the
keys checked are exactly the committed ones: no subset picked after seeing the suspect, no reordering, no edit.

With a secret seed file the generation's randomness and the salt are derived from one secret by HMAC-SHA256 (in the
spirit of Chain & Hash): the commitment also binds SHA-256(secret), so revealing the secret later shows that the set
came from it, and a set built from a suspect model's own outputs cannot be passed off as committed."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_json, read_json

SCHEME = "privlm-fingerprint-commitment-v1"


def canonical(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def canonical_set(fps: list[dict]) -> bytes:
    """The set as committed: keys and responses only, in file order (extra fields such as probabilities are
    annotations, not part of the claim)."""
    return canonical([{"key": f["key"], "response": f["response"]} for f in fps])


def digest(fps: list[dict], salt: bytes, settings: dict) -> str:
    h = hashlib.sha256()
    for part in (SCHEME.encode(), salt, canonical(settings), canonical_set(fps)):
        h.update(len(part).to_bytes(8, "big") + part)  # length-prefixed: no two splits of the input hash alike
    return h.hexdigest()


def salt_path(commitment_path: str | Path) -> Path:
    p = Path(commitment_path)
    return p.with_name(p.stem + ".salt" + (p.suffix or ".json"))


# ------------------------------------------------------------------------------------------------- secret seeds
def load_or_create_secret(path: str | Path) -> bytes:
    """32 random bytes (hex) in an owner-only file, created from the OS's secure randomness when missing."""
    p = Path(path)
    if p.exists():
        try:
            secret = bytes.fromhex(p.read_text().strip())
        except ValueError:
            raise UserError(f"secret seed file {p}: expected hex digits") from None
        if len(secret) < 16:
            raise UserError(f"secret seed file {p}: holds {len(secret)} bytes, fewer than 16")
        return secret
    secret = secrets.token_bytes(32)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return secret


def derived_seed(secret: bytes, settings: dict) -> int:
    """The generation's seed: HMAC-SHA256(secret, settings), 63 bits."""
    mac = hmac.new(secret, b"privlm/fingerprint-seed/v1" + canonical(settings), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") >> 1


def derived_salt(secret: bytes) -> bytes:
    return hmac.new(secret, b"privlm/commitment-salt/v1", hashlib.sha256).digest()


# ------------------------------------------------------------------------------------------------- write / verify
def write(path: str | Path, fps: list[dict], settings: dict, salt: bytes | None = None,
          secret: bytes | None = None) -> dict:
    """The public commitment at `path` and its salt, owner-only, beside it (<name>.salt.json)."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    public = {"scheme": SCHEME, "sha256": digest(fps, salt, settings), "num_fingerprints": len(fps),
              "settings": settings, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if secret is not None:
        public["secret_sha256"] = hashlib.sha256(secret).hexdigest()
    atomic_write_json(salt_path(path), {"scheme": SCHEME, "salt": salt.hex()}, private=True)
    atomic_write_json(path, public)
    return public


def verify(path: str | Path, fps: list[dict], salt_file: str | Path | None = None) -> dict:
    """Raise a UserError unless `fps` is exactly the committed set; return the commitment."""
    c = read_json(path, "commitment")
    if not isinstance(c, dict) or c.get("scheme") != SCHEME or not isinstance(c.get("sha256"), str):
        raise UserError(f"commitment {path}: not a {SCHEME} file")
    sp = Path(salt_file) if salt_file else salt_path(path)
    if not sp.is_file():
        raise UserError(f"commitment {path}: its salt {sp} is missing (the owner reveals it to verify; "
                        f"--commitment_salt names another file)")
    s = read_json(sp, "commitment salt")
    try:
        salt = bytes.fromhex(s["salt"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"commitment salt {sp}: expected {{\"salt\": <hex>}}") from None
    if digest(fps, salt, c.get("settings", {})) != c["sha256"]:
        n = c.get("num_fingerprints")
        why = f"{len(fps)} checked, {n} committed" if n != len(fps) else "same count, different keys, responses " \
                                                                         "or order"
        raise UserError(f"the fingerprints checked are not the committed set ({path}: {why})")
    return c
