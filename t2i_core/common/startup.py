"""The checks that stop the server at startup, in one line, before any worker starts.

``bentoml serve`` imports ``service.py`` in its main process first: a ``SystemExit`` raised there ends
the server with its message and no traceback. The same problem found later, in the engine worker's
``__init__``, made BentoML restart the worker forever (a typo in ``T2I_MODEL`` restarted it 18 times a
minute, each with a full traceback, and ``/readyz`` stayed 503).
"""

from __future__ import annotations

from t2i_core.common.config import Settings, SettingsError
from t2i_core.common.errors import UnknownModel
from t2i_core.common.registry import Registry, RegistryError, registry_path

PREFIX = "t2i-server cannot start: "


def startup_settings() -> Settings:
    """The server's settings; SystemExit with one line naming the problem when a ``T2I_*`` value, the
    registry file, the default model (``T2I_MODEL``, else the file's ``default``) or the keys file
    (``T2I_API_KEYS_FILE``) cannot be used."""
    try:
        settings = Settings.from_env()
        try:
            Registry(default=settings.model or None)  # reads and checks the registry file too
        except UnknownModel as exc:
            where = "T2I_MODEL" if settings.model else f"registry file {registry_path()}: field default"
            raise SettingsError(f"{where}: {exc.message}") from None
        if settings.api_keys_file or settings.admin_key:
            from t2i_core.api.keys.keys_file import KeysFileError
            from t2i_core.api.keys.ring import build_key_set

            try:
                build_key_set(settings)  # the keys file read and checked entry by entry
            except KeysFileError as exc:
                raise SettingsError(str(exc)) from None
    except (SettingsError, RegistryError) as exc:
        raise SystemExit(PREFIX + str(exc)) from None
    return settings
