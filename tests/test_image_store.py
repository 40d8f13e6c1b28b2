"""Image links: served while fresh, 410 once expired, 404 when unknown, bounded in bytes."""

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

    from t2i_core.api.image_store import open_image_store
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
    assert len(token) == 38 and int(token[:14], 16) == 1_000_000_000  # written at 1000.000000 s
    other = object_store(clock)  # a second process on the same bucket and prefix
    other.fs, other.root = store.fs, store.root
    found = other.get(token)
    assert found.data == b"\x89PNG-data" and found.media_type == "image/png" and found.expires_at == 1010.0
    clock.now = 1010.5
    assert other.get(token) == "gone" and store.get(token) == "gone"
    assert store.fs.exists(f"{store.root}/.gone/{token}") and not store.fs.exists(f"{store.root}/{token}")
    # a well-formed token it never made: 404, and nothing written for it
    stranger = f"{900_000_000:014x}" + "A" * 24
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
