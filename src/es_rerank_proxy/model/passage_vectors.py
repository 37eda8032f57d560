"""Where `embeddings.EmbeddingsClient` keeps passage vectors: in process first, then the shared cache.

With `cache.backend: redis` a vector embedded (or imported) by one replica is found by every other: a
search asks the shared level once for the passages its own cache lacks, within its budget; vectors embedded
for a search go back without waiting, those of warming and imports are written before the admin is told.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from .resilience import Clock, TTLCache
from .shared_cache import SharedCache, vector_key
from .vectors import Vector

PassageKey = tuple[str, str, bytes]  # model, passage prefix, digest of the text sent

# Imported vectors wait for `share_imported`; beyond this many (15 MB of e5-small) they stay local only.
_MAX_UNSHARED = 10_000
_NO_EXPIRY = math.inf


class PassageVectors:
    """The two levels of the passage-vector cache; `get`/`put` are the in-process level alone."""

    def __init__(
        self,
        max_vectors: int,
        *,
        clock: Clock = time.monotonic,
        shared: SharedCache | None = None,
        shared_ttl_s: float = 30 * 86400.0,
    ) -> None:
        self._local: TTLCache[PassageKey, Vector] = TTLCache(max_vectors, _NO_EXPIRY, clock=clock)
        self._shared = shared
        self._shared_ttl_s = shared_ttl_s
        self._unshared: list[tuple[PassageKey, Vector]] = []
        self.unshared_imports = 0  # imported vectors beyond `_MAX_UNSHARED`: in this replica only
        # Dimensions of the vectors this replica embedded or imported; a shared vector of another size
        # (another model under the same name) would poison the local level, so it counts as a miss.
        self.dims: int | None = None

    def __len__(self) -> int:
        return len(self._local)

    def get(self, key: PassageKey) -> Vector | None:
        return self._local.get(key)

    def put(self, key: PassageKey, vector: Vector) -> None:
        self._local.put(key, vector)
        self.dims = len(vector)

    async def fill_from_shared(
        self, missing: dict[PassageKey, str], found: dict[PassageKey, Vector], wait_s: float
    ) -> int:
        """One shared lookup for `missing` (at most `wait_s`): each vector found moves from `missing`
        into `found` and the in-process level. How many were found."""
        if self._shared is None or not missing:
            return 0
        wanted = list(missing)
        values = await self._shared.get_vectors([self._key(key) for key in wanted], wait_s)
        hits = wrong_size = 0
        for key, vector in zip(wanted, values, strict=True):
            if vector is not None and self.dims is not None and len(vector) != self.dims:
                wrong_size += 1
            elif vector is not None:
                found[key] = vector
                self._local.put(key, vector)
                del missing[key]
                hits += 1
        if wrong_size:
            self._shared.count_garbage(wrong_size, f"vectors not of {self.dims} dimensions")
        return hits

    def share(self, items: Sequence[tuple[PassageKey, Vector]]) -> None:
        """New vectors to the shared level without waiting (fire and forget, bounded)."""
        if self._shared is not None and items:
            self._shared.put_vectors(self._shared_items(items), self._shared_ttl_s)

    async def share_now(self, items: Sequence[tuple[PassageKey, Vector]]) -> int:
        """New vectors to the shared level, waiting until they are written; how many were."""
        if self._shared is None or not items:
            return 0
        return await self._shared.write_vectors(self._shared_items(items), self._shared_ttl_s)

    def imported(self, key: PassageKey, vector: Vector) -> None:
        """An imported vector: cached here, and queued for `share_imported` (imports arrive one by one)."""
        self.put(key, vector)
        if self._shared is None:
            return
        if len(self._unshared) < _MAX_UNSHARED:
            self._unshared.append((key, vector))
        else:
            self.unshared_imports += 1

    async def share_imported(self) -> int:
        """Write the vectors imported since the last call to the shared level, and wait; how many were."""
        items, self._unshared = self._unshared, []
        return await self.share_now(items)

    def _key(self, key: PassageKey) -> bytes:
        assert self._shared is not None
        return vector_key(self._shared.prefix, *key)

    def _shared_items(self, items: Sequence[tuple[PassageKey, Vector]]) -> list[tuple[bytes, Vector]]:
        return [(self._key(key), vector) for key, vector in items]
