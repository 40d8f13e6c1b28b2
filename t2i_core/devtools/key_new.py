"""``python -m t2i_core key-new --name NAME``: a new API key and its keys-file entry.

The key is printed once, for the caller to hand over; the entry holds only its SHA-256, and a new
webhook signing secret (Standard Webhooks, "whsec_" + base64 of 32 random bytes) for its webhooks.
"""

from __future__ import annotations

import base64
import secrets

import yaml

from t2i_core.api.keys.keys_file import NAME
from t2i_core.api.keys.records import digest


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_key_entry(name: str, role: str = "user", priority: str = "interactive", weight: float = 1.0) -> tuple[str, dict]:
    """(the key, its entry for the keys file)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"--name must be 1 to 64 letters, digits, '.', '_' or '-'; got {name!r}")
    key = "t2i_" + secrets.token_urlsafe(32)
    entry = {"name": name, "key_sha256": digest(key), "role": role, "priority": priority,
             "weight": int(weight) if float(weight).is_integer() else weight, "webhook_secret": new_webhook_secret()}
    return key, entry


def main(name: str, role: str, priority: str, weight: float) -> int:
    key, entry = new_key_entry(name, role, priority, weight)
    print(f"# the key for {name!r} (shown once; the file keeps only its SHA-256):\n#   {key}")
    print("# its entry, under keys: in the keys file (T2I_API_KEYS_FILE):")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0
