"""Many servers at once: the shared parts are safe from threads, the pool keeps hosts apart."""

from __future__ import annotations

import threading
from pathlib import Path

from app.core import keys
from app.core.profiles import Profile, ProfileStore


def _together(n: int, fn: object) -> list[object]:
    """Run ``fn(i)`` in ``n`` threads released at the same instant; their results in order."""
    assert callable(fn)
    barrier = threading.Barrier(n)
    out: list[object] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_hosts_that_share_a_key_name_get_one_key_never_a_replaced_one(tmp_path: Path) -> None:
    """Three hosts named alike make the app's key at once: each installer is handed the key
    that stays on disk (a second writer replacing the file would lock the first host out)."""
    for round_ in range(6):  # a race: several rounds make the old code's loss near certain
        path = keys.key_path(tmp_path / "keys", f"127.0.0.{round_}")
        lines = _together(16, lambda _i, p=path: keys.load_or_create(p, "nkw")[1])
        on_disk = keys.load_or_create(path, "nkw")[1]
        assert set(lines) == {on_disk}
        assert path.with_name(path.name + ".pub").read_text().split()[:2] == on_disk.split()[:2]


def test_profiles_recorded_from_many_threads_are_all_kept(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    _together(12, lambda i: store.put(Profile(f"web-{i}", f"10.0.0.{i}")))
    assert sorted(store.load()) == sorted(f"web-{i}" for i in range(12))
