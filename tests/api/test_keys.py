"""API keys: the keys file (checked entry by entry, errors naming the entry and field), the keys a
server accepts (file, T2I_API_KEYS, T2I_ADMIN_KEY, by their SHA-256 only), a reload that keeps the
keys in force when the new file is bad, the reload of another worker seen through the shared state,
and ``key-new``'s entry working as it is."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from t2i_core.api.keys.keys_file import KeysFileError, load_keys_file
from t2i_core.api.keys.records import digest
from t2i_core.api.keys.ring import KeyRing
from t2i_core.common.config import Settings
from t2i_core.devtools.key_new import new_key_entry
from t2i_core.state.memory import MemoryState

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 bytes


def write(tmp_path, text: str):
    path = tmp_path / "keys.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_keys_file_gives_named_keys_with_roles_classes_weights_and_limits(tmp_path):
    path = write(tmp_path, f"""
        keys:
          - name: web-app
            key_sha256: {digest("web-secret")}
            weight: 2
            images_per_minute: 120
            max_concurrent: 8
            webhook_url: https://hooks.example.com/t2i
            webhook_events: [completed, failed]
            webhook_secret: {SECRET}
          - name: nightly
            key_sha256: [{digest("old-nightly")}, {digest("new-nightly")}]
            priority: batch
          - {{name: ops, key_sha256: {digest("ops-secret")}, role: admin}}
        """)
    web, nightly, ops = load_keys_file(path)
    assert (web.name, web.role, web.priority, web.weight, web.images_per_minute, web.max_concurrent) == \
        ("web-app", "user", "interactive", 2.0, 120, 8)
    assert web.webhook_events == ("completed", "failed") and web.webhook_secret == SECRET
    assert nightly.priority == "batch" and len(nightly.digests) == 2 and ops.admin
    ring = KeyRing(Settings(api_keys_file=path, admin_key="the-admin"))
    assert ring.required
    assert ring.lookup("web-secret").name == "web-app"
    assert ring.lookup("old-nightly").name == ring.lookup("new-nightly").name == "nightly"  # a key rotated
    assert ring.lookup("the-admin").name == "admin" and ring.lookup("the-admin").admin
    assert ring.lookup("web-secret ") is None and ring.lookup(digest("web-secret")) is None
    assert "web-secret" not in repr(ring.keys()) and digest("web-secret") not in str([k.public() for k in ring.keys()])


def test_plain_keys_are_named_by_their_hash_and_a_server_with_only_an_admin_key_stays_open():
    ring = KeyRing(Settings(api_keys="k1,k2"))
    assert ring.required and ring.lookup("k1").name == f"key-{digest('k1')[:8]}"
    assert not KeyRing(Settings(admin_key="a")).required


@pytest.mark.parametrize("entry, says", [
    ("{name: 'bad name', key_sha256: %s}", "keys[0].name must be 1 to 64 letters"),
    ("{name: a, key_sha256: abc}", "key 'a': key_sha256 must be the SHA-256 of the key as 64 hex digits"),
    ("{name: a, key_sha256: %s, role: root}", "key 'a': role must be one of admin, user; got 'root'"),
    ("{name: a, key_sha256: %s, priority: urgent}", "priority must be one of interactive, batch; got 'urgent'"),
    ("{name: a, key_sha256: %s, weight: 0}", "weight must be a number above 0 and at most 1000; got 0"),
    ("{name: a, key_sha256: %s, images_per_minute: -1}", "images_per_minute must be an integer of 1 or more"),
    ("{name: a, key_sha256: %s, webhook_url: 'ftp://x'}", "webhook_url must be an http:// or https:// URL"),
    ("{name: a, key_sha256: %s, webhook_events: [done]}", "unknown event(s) 'done'"),
    ("{name: a, key_sha256: %s, webhook_secret: 'shh'}", "webhook_secret must be 'whsec_' followed by base64"),
    ("{name: a, key_sha256: %s, colour: red}", "key 'a': unknown field(s) colour"),
])
def test_each_problem_of_an_entry_is_named(tmp_path, entry, says):
    path = write(tmp_path, "keys:\n  - " + (entry % digest("x") if "%s" in entry else entry) + "\n")
    with pytest.raises(KeysFileError) as err:
        load_keys_file(path)
    assert says in str(err.value) and path in str(err.value)


def test_names_and_keys_are_unique_and_admin_is_the_admin_keys_name(tmp_path):
    path = write(tmp_path, f"keys:\n  - {{name: a, key_sha256: {digest('1')}}}\n  - {{name: a, key_sha256: {digest('2')}}}\n")
    with pytest.raises(KeysFileError, match="the name 'a' is used by two keys"):
        load_keys_file(path)
    path = write(tmp_path, f"keys:\n  - {{name: a, key_sha256: {digest('1')}}}\n  - {{name: b, key_sha256: {digest('1')}}}\n")
    with pytest.raises(KeysFileError, match="keys 'a' and 'b' have the same key_sha256"):
        load_keys_file(path)
    path = write(tmp_path, f"keys:\n  - {{name: admin, key_sha256: {digest('1')}}}\n")
    with pytest.raises(KeysFileError, match="the name 'admin' is T2I_ADMIN_KEY's"):
        KeyRing(Settings(api_keys_file=path, admin_key="x"))


def test_a_reload_takes_the_new_file_and_a_bad_file_keeps_the_keys_in_force(tmp_path):
    path = write(tmp_path, f"keys:\n  - {{name: a, key_sha256: {digest('one')}}}\n")
    state = MemoryState()
    here, there = KeyRing(Settings(api_keys_file=path), state), KeyRing(Settings(api_keys_file=path), state)
    write(tmp_path, f"keys:\n  - {{name: b, key_sha256: {digest('two')}}}\n")
    assert here.reload_everywhere() == ["b"]
    assert here.lookup("two").name == "b" and here.lookup("one") is None
    assert there.lookup("one").name == "a"  # another worker: until it looks at the shared counter
    there.sync()
    assert there.lookup("two").name == "b" and there.lookup("one") is None
    write(tmp_path, "keys: [oops\n")
    with pytest.raises(KeysFileError, match="not valid YAML or JSON"):
        here.reload()
    assert here.lookup("two").name == "b"


def test_key_new_makes_a_key_and_an_entry_the_file_takes(tmp_path):
    key, entry = new_key_entry("web-app", weight=2)
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    ring = KeyRing(Settings(api_keys_file=str(path)))
    found = ring.lookup(key)
    assert found is not None and found.name == "web-app" and found.weight == 2.0
    assert key not in path.read_text() and found.webhook_secret.startswith("whsec_")
