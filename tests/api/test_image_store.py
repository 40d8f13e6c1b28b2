"""Image links: served while fresh, 410 once expired, 404 when unknown, bounded in bytes."""

import os
import stat

from t2i_core.api.image_store import ImageStore


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_expiry_and_unknown():
    clock = Clock()
    store = ImageStore(ttl_s=10, max_bytes=1000, clock=clock)
    token = store.put(b"png", "image/png")
    assert store.get(token).data == b"png"
    clock.now = 10.5
    assert store.get(token) == "gone"
    assert store.get("never-issued") is None


def test_oldest_dropped_when_over_budget():
    store = ImageStore(ttl_s=100, max_bytes=10)
    first = store.put(b"123456", "image/png")
    second = store.put(b"abcdef", "image/png")
    assert store.get(first) == "gone" and store.get(second).data == b"abcdef"


def test_a_shared_folder_serves_links_made_by_another_process(tmp_path):
    import subprocess
    import sys

    from t2i_core.api.image_store import DirectoryImageStore

    clock = Clock()
    clock.now = 1000.0
    reader = DirectoryImageStore(tmp_path, ttl_s=10, max_bytes=1000, clock=clock)
    # another process writes (the real clock there: this process's clock follows it)
    code = ("import sys; from t2i_core.api.image_store import DirectoryImageStore as S; "
            f"print(S({str(tmp_path)!r}, 10, 1000).put(b'\\x89PNG-data', 'image/png'))")
    token = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    clock.now = (tmp_path / token).stat().st_mtime + 1
    found = reader.get(token)
    assert found.data == b"\x89PNG-data" and found.media_type == "image/png"
    clock.now += 10
    assert reader.get(token) == "gone" and reader.get(token) == "gone"  # a tombstone now
    assert reader.get("never-issued-token-xyz") is None and reader.get("../../etc/passwd") is None


def test_a_shared_folder_drops_the_oldest_beyond_its_size_and_old_tombstones(tmp_path):
    from t2i_core.api.image_store import DirectoryImageStore

    clock = Clock()
    store = DirectoryImageStore(tmp_path, ttl_s=100, max_bytes=40, clock=clock)
    tokens = []
    for i in range(4):
        clock.now = 10.0 * (i + 1)  # a sweep at most once a second: these are ten seconds apart
        tokens.append(store.put(bytes(20), "image/png"))
    assert [store.get(t) == "gone" for t in tokens] == [True, True, True, False]
    clock.now = 500.0
    store.put(b"x", "image/png")  # expired images and tombstones older than the ttl are cleared
    assert sorted(p.name for p in (tmp_path / ".gone").iterdir()) == sorted([tokens[3]])


def object_store(clock, **kw):
    """An object store on fsspec's in-memory file system (a real fsspec backend), under a fresh prefix."""
    import uuid

    from t2i_core.api.image_stores import open_image_store
    from t2i_core.api.object_image_store import ObjectImageStore

    url = f"memory://t2i-{uuid.uuid4().hex}/links"
    store = open_image_store(f"fsspec:{url}", 10, 1000)
    assert isinstance(store, ObjectImageStore)
    return ObjectImageStore(url, clock=clock, **{"ttl_s": 10, "max_bytes": 1000, "sweep_every_s": 1.0, **kw})


def test_an_object_store_serves_expires_and_keeps_tombstones():
    clock = Clock()
    clock.now = 1000.0
    store = object_store(clock)
    token = store.put(b"\x89PNG-data", "image/png")
    assert len(token) == 60 and int(token[:14], 16) == 1_000_000_000  # written at 1000.000000 s
    other = object_store(clock)  # a second process on the same bucket and prefix
    other.fs, other.root = store.fs, store.root
    found = other.get(token)
    assert found.data == b"\x89PNG-data" and found.media_type == "image/png" and found.expires_at == 1010.0
    clock.now = 1010.5
    assert other.get(token) == "gone" and store.get(token) == "gone"
    assert store.fs.exists(f"{store.root}/.gone/{token}") and not store.fs.exists(f"{store.root}/{token}")
    # a well-formed token it never made: 404, and nothing written for it
    stranger = f"{900_000_000:014x}" + "A" * 46
    assert store.get(stranger) is None and not store.fs.exists(f"{store.root}/.gone/{stranger}")
    assert store.get("../../etc/passwd") is None and store.get("short") is None


def test_an_object_store_drops_the_oldest_beyond_its_size_and_old_tombstones():
    import time

    # real time: tombstones age by the modification times the object store reports
    store = object_store(time.time, ttl_s=0.6, max_bytes=60, sweep_every_s=0.0)  # 30 bytes an object
    tokens = [store.put(bytes(20), "image/png") for _ in range(4)]
    assert [store.get(t) == "gone" for t in tokens] == [True, True, False, False]  # the newest two
    time.sleep(0.7)
    store.put(b"x", "image/png")  # the two expired images become tombstones; those older than the ttl go
    assert [store.get(t) for t in tokens] == [None, None, "gone", "gone"]
    gone = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.root}/.gone", detail=False))
    assert gone == sorted(tokens[2:])


# ---- a shared store touches only its own files; its tombstones are bounded ------------------------

FOREIGN = b"a file someone else keeps here"


def test_memory_tombstones_are_capped_in_count_and_age():
    clock = Clock()
    store = ImageStore(ttl_s=10, max_bytes=4, clock=clock, max_tombstones=3)
    tokens = [store.put(b"abcd", "image/png") for _ in range(6)]  # each drops the one before
    assert [store.get(t) for t in tokens[:5]] == [None, None, "gone", "gone", "gone"]  # the 3 newest remembered
    clock.now = 25.0  # the last image expires; the tombstones made at 0 s are older than the ttl
    assert [store.get(t) for t in tokens] == [None] * 5 + ["gone"]


def plant(folder, name: str, modified: float):
    path = folder / name
    path.write_bytes(FOREIGN)
    os.utime(path, (modified, modified))
    return path


def test_a_shared_folder_never_serves_or_deletes_a_file_it_did_not_write(tmp_path):
    from t2i_core.api.image_store import DirectoryImageStore

    clock = Clock()
    clock.now = 10_000.0
    store = DirectoryImageStore(tmp_path, ttl_s=10, max_bytes=1000, clock=clock)
    mine = store.put(b"mine", "image/png")
    # named like tokens: the old shape, this store's shape with a made-up tag, any 46 URL-safe characters
    old = [plant(tmp_path, name, clock.now - 1000) for name in ("A" * 32, mine[:-22] + "B" * 22, "x" * 46)]
    fresh = plant(tmp_path, "C" * len(mine), clock.now)
    tombstone_like = plant(tmp_path / ".gone", "D" * len(mine), clock.now - 1000)
    planted = [*old, fresh, tombstone_like]
    for path in planted:
        assert store.get(path.name) is None  # neither served nor expired into a tombstone
    clock.now += 100
    store.put(b"later", "image/png")  # a sweep: its own expired image goes, nothing else
    assert store.get(mine) == "gone"
    assert all(path.read_bytes() == FOREIGN for path in planted)
    assert not any((tmp_path / ".gone" / path.name).exists() for path in old + [fresh])


def test_a_shared_folder_keeps_its_tombstones_under_their_cap(tmp_path):
    from t2i_core.api.image_store import DirectoryImageStore

    clock = Clock()
    store = DirectoryImageStore(tmp_path, ttl_s=1000, max_bytes=10, clock=clock, max_tombstones=5)
    tokens = []
    for i in range(40):
        clock.now = 2.0 * (i + 1)  # a sweep each time
        tokens.append(store.put(bytes(8), "image/png"))  # over the size cap: the one before is dropped
        assert len(list((tmp_path / ".gone").iterdir())) <= 5
    assert [store.get(t) for t in tokens[-6:-1]] == ["gone"] * 5 and store.get(tokens[-1]).data == bytes(8)
    assert store.get(tokens[0]) is None  # forgotten: beyond the cap


def test_a_shared_folder_is_the_server_users_alone(tmp_path):
    from t2i_core.api.image_store import DirectoryImageStore
    from t2i_core.api.image_tokens import KEY_FILE

    clock = Clock()
    folder = tmp_path / "links"
    store = DirectoryImageStore(folder, ttl_s=10, max_bytes=1000, clock=clock)
    token = store.put(b"img", "image/png")
    clock.now = 20.0
    assert store.get(token) == "gone"
    store.put(b"img", "image/png")

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(folder) == mode(folder / ".gone") == 0o700
    assert {mode(p) for p in folder.iterdir() if p.is_file()} == {0o600}
    assert mode(folder / KEY_FILE) == 0o600 and mode(folder / ".gone" / token) == 0o600


def test_processes_that_start_together_on_a_new_folder_serve_each_others_links(tmp_path):
    """Each process of a new shared folder makes the key if none is there: they agree on one."""
    import subprocess
    import sys

    from t2i_core.api.image_store import DirectoryImageStore

    folder = tmp_path / "fresh"
    code = ("import sys; from t2i_core.api.image_store import DirectoryImageStore as S; "
            f"print(S({str(folder)!r}, 60, 10**6).put(sys.argv[1].encode(), 'image/png'))")
    writers = [subprocess.Popen([sys.executable, "-c", code, f"image {i}"], stdout=subprocess.PIPE, text=True)
               for i in range(4)]
    tokens = [w.communicate()[0].strip() for w in writers]
    assert all(w.returncode == 0 for w in writers)
    reader = DirectoryImageStore(folder, ttl_s=60, max_bytes=10**6)
    assert [reader.get(t).data for t in tokens] == [f"image {i}".encode() for i in range(4)]


def test_an_object_store_never_serves_or_deletes_an_object_it_did_not_write():
    clock = Clock()
    clock.now = 1000.0
    store = object_store(clock)
    mine = store.put(b"mine", "image/png")
    old_time = f"{100_000_000:014x}"  # long expired, were it the store's
    names = [old_time + "A" * 24, old_time + "A" * 46, mine[:-22] + "B" * 22, f"{999_000_000:014x}" + "C" * 46]
    for name in names:
        store.fs.pipe_file(f"{store.root}/{name}", FOREIGN)
    store.fs.pipe_file(f"{store.root}/.gone/{old_time + 'D' * 46}", FOREIGN)
    for name in names:
        assert store.get(name) is None
    clock.now = 1020.0
    store.put(b"later", "image/png")  # a sweep: its own expired image goes, nothing else
    assert store.get(mine) == "gone"
    for name in names:
        assert store.fs.cat_file(f"{store.root}/{name}") == FOREIGN
        assert not store.fs.exists(f"{store.root}/.gone/{name}")
    assert store.fs.cat_file(f"{store.root}/.gone/{old_time + 'D' * 46}") == FOREIGN


def test_an_object_store_keeps_its_tombstones_under_their_cap():
    clock = Clock()
    store = object_store(clock, ttl_s=1000, max_bytes=10, max_tombstones=5)
    for i in range(30):
        clock.now = 2.0 * (i + 1)
        store.put(bytes(8), "image/png")
        gone = store.fs.ls(f"{store.root}/.gone", detail=False) if store.fs.exists(f"{store.root}/.gone") else []
        assert len(gone) <= 5


def test_object_stores_that_made_their_keys_at_once_serve_each_others_links():
    """Replicas starting together on a new prefix may each write a key: a token verifies under any."""
    clock = Clock()
    clock.now = 1000.0
    first = object_store(clock)
    # a second replica wrote its key at the same time (its name sorts first: the second signs with it)
    first.fs.pipe_file(f"{first.root}/.keys/{'0' * 32}", os.urandom(32))
    from t2i_core.api.object_image_store import ObjectImageStore

    second = ObjectImageStore(f"memory://{first.root}", ttl_s=10, max_bytes=1000, clock=clock)
    assert len(second.signer.keys) == 2
    token = second.put(b"from the second", "image/png")
    assert first.get(token).data == b"from the second"  # read its keys again
    assert second.get(first.put(b"from the first", "image/png")).data == b"from the first"


def test_links_in_the_shared_state_are_served_by_any_server_and_bounded(redis_server):
    """T2I_IMAGE_STORE=state (auto with Redis): two API processes on one Redis serve each other's links;
    the byte cap drops the oldest, whose link then answers gone."""
    import time as clock

    from t2i_core.api.state_image_store import StateImageStore
    from t2i_core.state.redis import RedisState

    url = f"{redis_server.url}?prefix=images{clock.monotonic_ns()}:"
    a, b = StateImageStore(RedisState(url), ttl_s=60, max_bytes=250), StateImageStore(RedisState(url), ttl_s=60, max_bytes=250)
    first = a.put(b"x" * 100, "image/png")
    found = b.get(first)
    assert found is not None and found != "gone" and found.data == b"x" * 100 and found.media_type == "image/png"
    second, third = b.put(b"y" * 100, "image/webp"), a.put(b"z" * 100, "image/jpeg")
    assert a.get(first) == "gone" and b.get(second).data == b"y" * 100 and b.get(third).media_type == "image/jpeg"
    assert a.get("never-made") is None
    short = StateImageStore(RedisState(url), ttl_s=0.2, max_bytes=10_000)
    token = short.put(b"q", "image/png")
    clock.sleep(0.3)
    assert short.get(token) == "gone"


def test_the_shared_image_counter_does_not_drift_under_concurrent_drops(redis_server):
    """Four workers putting at once over a small cap: each dropped image is uncounted once, so the
    counter keeps saying what the kept images take (every one's size key outlives its drop)."""
    import threading
    import time as clock

    from t2i_core.api.state_image_store import StateImageStore
    from t2i_core.state.redis import RedisState

    url = f"{redis_server.url}?prefix=drift{clock.monotonic_ns()}:"
    stores = [StateImageStore(RedisState(url), ttl_s=60, max_bytes=1000) for _ in range(4)]
    barrier = threading.Barrier(4)

    def put_many(store: StateImageStore) -> None:
        barrier.wait()
        for _ in range(40):
            store.put(b"i" * 90, "image/png")

    threads = [threading.Thread(target=put_many, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = stores[0].state
    kept = [m for m, _ in state.index_range("images", limit=1000)]
    counted = int(state.get("images:bytes"))
    assert counted == 90 * len(kept) and counted <= 1000 + 90
    assert all(state.get(f"image:{t}") is not None for t in kept)
