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
