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
