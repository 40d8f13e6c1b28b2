"""The keys file (``T2I_API_KEYS_FILE``): YAML (or JSON, which YAML reads too), one entry per key.

    keys:
      - name: web-app                # what logs, metrics and usage say (letters, digits, . _ -)
        key_sha256: 9f86d08...       # SHA-256 of the key, hex; a list while a key is rotated
        role: user                   # user (default) | admin (admin API, every caller's tasks)
        priority: interactive        # interactive (default) | batch: interactive work goes first
        weight: 2                    # share of the engine against the other keys of its class
        images_per_minute: 120       # optional limit (429 beyond)
        max_concurrent: 8            # optional limit on requests in flight, running tasks included
        webhook_url: https://hooks.example.com/t2i   # optional default for its tasks
        webhook_events: [completed, failed]          # optional (default: all but progress)
        webhook_secret: whsec_...    # optional; else T2I_WEBHOOK_SECRET signs its webhooks

``python -m t2i_core key-new --name web-app`` prints a new key and its entry. Every problem is a
``KeysFileError`` naming the file, the entry and the field.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from pathlib import Path
from typing import Any

from t2i_core.api.keys.records import PRIORITIES, ROLES, ApiKey
from t2i_core.api.webhooks.events import check_events

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
FIELDS = frozenset({"name", "key_sha256", "role", "priority", "weight", "images_per_minute", "max_concurrent",
                    "webhook_url", "webhook_events", "webhook_secret"})
MAX_WEIGHT = 1000.0
#: a Standard Webhooks secret's least size, decoded (the spec asks for 24 to 64 bytes; 16 is refused below)
MIN_SECRET_BYTES = 16


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file, the entry and the field."""


def check_webhook_secret(secret: object, where: str) -> str:
    """``secret`` as given when it is "whsec_" + base64 of at least 16 bytes; ValueError otherwise."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ValueError(f"{where} must be 'whsec_' followed by base64 (python -m t2i_core key-new makes one); "
                         f"got {'a value without the whsec_ prefix' if isinstance(secret, str) else repr(secret)}")
    try:
        raw = base64.b64decode(secret[len("whsec_"):] + "==", validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"{where} must decode to at least {MIN_SECRET_BYTES} bytes; got {len(raw)}")
    return secret


def _entry(raw: Any, index: int, path: str) -> ApiKey:
    where = f"{path}: keys[{index}]"
    if not isinstance(raw, dict):
        raise KeysFileError(f"{where} must be a mapping of fields; got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise KeysFileError(f"{where}.name must be 1 to 64 letters, digits, '.', '_' or '-'; got {name!r}")
    where = f"{path}: key {name!r}"
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(FIELDS))}")
    digests = raw.get("key_sha256")
    digests = [digests] if isinstance(digests, str) else digests
    if not isinstance(digests, list) or not digests or not all(isinstance(d, str) and HEX_DIGEST.fullmatch(d.lower())
                                                                 for d in digests):
        raise KeysFileError(f"{where}: key_sha256 must be the SHA-256 of the key as 64 hex digits (or a list of them); "
                            f"got {raw.get('key_sha256')!r}")
    role, priority = raw.get("role", "user"), raw.get("priority", "interactive")
    if role not in ROLES:
        raise KeysFileError(f"{where}: role must be one of {', '.join(ROLES)}; got {role!r}")
    if priority not in PRIORITIES:
        raise KeysFileError(f"{where}: priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0 < weight <= MAX_WEIGHT:
        raise KeysFileError(f"{where}: weight must be a number above 0 and at most {MAX_WEIGHT:g}; got {weight!r}")
    limits: dict[str, int | None] = {}
    for field in ("images_per_minute", "max_concurrent"):
        value = raw.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise KeysFileError(f"{where}: {field} must be an integer of 1 or more (or absent: no limit); got {value!r}")
        limits[field] = value
    url = raw.get("webhook_url")
    if url is not None and (not isinstance(url, str) or not re.match(r"https?://[^/\s]", url)):
        raise KeysFileError(f"{where}: webhook_url must be an http:// or https:// URL; got {url!r}")
    try:
        events = None if raw.get("webhook_events") is None else check_events(raw["webhook_events"], "webhook_events")
        secret = None if raw.get("webhook_secret") is None else check_webhook_secret(raw["webhook_secret"],
                                                                                     "webhook_secret")
    except ValueError as exc:
        raise KeysFileError(f"{where}: {exc}") from None
    return ApiKey(name=name, role=role, priority=priority, weight=float(weight), webhook_url=url,
                  webhook_events=events, webhook_secret=secret, digests=tuple(d.lower() for d in digests),
                  images_per_minute=limits["images_per_minute"], max_concurrent=limits["max_concurrent"])


def load_keys_file(path: str) -> list[ApiKey]:
    """The keys of the file at ``path``; KeysFileError when it cannot be read or an entry is wrong."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeysFileError(f"T2I_API_KEYS_FILE {path!r} cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{path}: not valid YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeysFileError(f"{path}: must be a mapping with a list 'keys' (one entry per key); got "
                            f"{type(data).__name__ if not isinstance(data, dict) else 'no list under keys'}")
    keys = [_entry(raw, i, path) for i, raw in enumerate(data["keys"])]
    seen_names: set[str] = set()
    seen_digests: dict[str, str] = {}
    for key in keys:
        if key.name in seen_names:
            raise KeysFileError(f"{path}: the name {key.name!r} is used by two keys; names must be unique")
        seen_names.add(key.name)
        for d in key.digests:
            if d in seen_digests:
                raise KeysFileError(f"{path}: keys {seen_digests[d]!r} and {key.name!r} have the same key_sha256")
            seen_digests[d] = key.name
    return keys
