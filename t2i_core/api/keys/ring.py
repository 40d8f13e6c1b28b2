"""The keys a server accepts now: the keys file (``T2I_API_KEYS_FILE``), the plain list (``T2I_API_KEYS``,
each key named ``key-<first 8 hex digits of its SHA-256>``) and the admin key (``T2I_ADMIN_KEY``, named
``admin``, role admin).

The file is read again without a restart: on SIGHUP (every API worker that gets it; the server's main
process passes it on, see ``t2i_core/patches/circus.py``) or ``POST /admin/keys/reload``, which also
bumps a counter in the shared state (``keys:generation``) that every other API worker (and replica)
looks at, at most once a second, before it serves a request. A file that cannot be used is refused as a
whole: the keys in force stay, and the error is logged (and answered by the admin route).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass, field

from t2i_core.api.keys.keys_file import KeysFileError, load_keys_file
from t2i_core.api.keys.records import ADMIN, ApiKey, digest
from t2i_core.common.config import Settings
from t2i_core.state.store import StateStore

log = logging.getLogger("t2i.keys")
#: the shared counter a reload through the admin API bumps
GENERATION = "keys:generation"
#: seconds between two looks at that counter by an API worker
SYNC_EVERY_S = 1.0


@dataclass(frozen=True)
class KeySet:
    """One immutable snapshot of the keys (swapped whole on reload)."""

    by_digest: dict[str, ApiKey] = field(default_factory=dict)
    by_name: dict[str, ApiKey] = field(default_factory=dict)
    #: whether generation routes need a key (any key besides the admin key is configured)
    required: bool = False


def plain_key(secret: str) -> ApiKey:
    d = digest(secret)
    return ApiKey(name=f"key-{d[:8]}", digests=(d,))


def build_key_set(settings: Settings) -> KeySet:
    """The keys of ``settings`` (the file read now); KeysFileError when the file cannot be used."""
    keys: list[ApiKey] = [plain_key(k.strip()) for k in settings.api_keys.split(",") if k.strip()]
    required = bool(keys) or bool(settings.api_keys_file)
    if settings.api_keys_file:
        keys += load_keys_file(settings.api_keys_file)
    if settings.admin_key:
        if any(k.name == ADMIN for k in keys):
            raise KeysFileError(f"{settings.api_keys_file}: the name {ADMIN!r} is T2I_ADMIN_KEY's; name the key otherwise")
        keys.append(ApiKey(name=ADMIN, role="admin", digests=(digest(settings.admin_key),)))
    by_digest: dict[str, ApiKey] = {}
    by_name: dict[str, ApiKey] = {}
    for key in keys:
        by_name.setdefault(key.name, key)
        for d in key.digests:
            by_digest.setdefault(d, key)
    return KeySet(by_digest, by_name, required)


class KeyRing:
    def __init__(self, settings: Settings, state: StateStore | None = None):
        self.settings = settings
        self.state = state
        self._keys = build_key_set(settings)  # at startup a bad file stops the server (startup.py checks it)
        self._lock = threading.Lock()
        self._generation = self._shared_generation()
        self._synced_at = time.monotonic()

    # ---- lookup ----------------------------------------------------------------------------------
    @property
    def required(self) -> bool:
        return self._keys.required

    def lookup(self, token: str) -> ApiKey | None:
        """The key whose secret is ``token``; None when none is. Looked up by its SHA-256 (a digest's
        place in a dict tells nothing about a key), then compared in constant time."""
        d = digest(token)
        found = self._keys.by_digest.get(d)
        if found is None or not any(hmac.compare_digest(d, k) for k in found.digests):
            return None
        return found

    def by_name(self, name: str) -> ApiKey | None:
        return self._keys.by_name.get(name)

    def keys(self) -> list[ApiKey]:
        return sorted(self._keys.by_name.values(), key=lambda k: k.name)

    def admin_enabled(self) -> bool:
        return any(k.admin for k in self._keys.by_name.values())

    # ---- reload ----------------------------------------------------------------------------------
    def reload(self) -> list[str]:
        """Read the keys again (this process); KeysFileError (the keys in force stay) when the file
        cannot be used. Returns the names now accepted."""
        with self._lock:
            try:
                keys = build_key_set(self.settings)
            except KeysFileError as exc:
                log.error("keys not reloaded, the keys in force stay: %s", exc)
                raise
            self._keys = keys
        names = sorted(keys.by_name)
        log.warning("keys reloaded: %d key(s): %s", len(names), ", ".join(names))
        return names

    def reload_everywhere(self) -> list[str]:
        """Reload here, then tell every other API worker (and replica) to (the shared counter)."""
        names = self.reload()
        if self.state is not None:
            self._generation = self.state.incr(GENERATION)
        return names

    def reload_in_background(self) -> None:
        """For a signal handler: reload on a thread of its own (a signal handler must not block)."""
        def run() -> None:
            try:
                self.reload()
            except KeysFileError:
                pass

        threading.Thread(target=run, name="t2i-keys-reload", daemon=True).start()

    def sync_due(self) -> bool:
        return self.state is not None and time.monotonic() - self._synced_at >= SYNC_EVERY_S

    def sync(self) -> None:
        """Reload if another worker reloaded since (the shared counter moved). Blocking: call it off
        the event loop for a shared backend (``state.aio.call``)."""
        self._synced_at = time.monotonic()
        generation = self._shared_generation()
        if generation != self._generation:
            self._generation = generation
            try:
                self.reload()
            except KeysFileError:
                pass

    def _shared_generation(self) -> int:
        if self.state is None:
            return 0
        try:
            return int(self.state.get(GENERATION) or 0)
        except Exception:  # noqa: BLE001 - the state is unreachable: look again later
            return self._generation if hasattr(self, "_generation") else 0
