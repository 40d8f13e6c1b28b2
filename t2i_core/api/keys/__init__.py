"""API keys with names, roles, priority classes, weights and limits (``T2I_API_KEYS_FILE``).

- ``records.py``: one key's record (``ApiKey``) and how a key is hashed;
- ``keys_file.py``: the keys file (YAML or JSON), checked entry by entry;
- ``ring.py``: the keys a server accepts now (the file, ``T2I_API_KEYS``, ``T2I_ADMIN_KEY``), reloaded
  without a restart (SIGHUP, or ``POST /admin/keys/reload``);
- ``context.py``: the key of the request being served (set once by the guard, read by routes, the
  coalescer's fair share, logs and metrics, always by its name).
"""
