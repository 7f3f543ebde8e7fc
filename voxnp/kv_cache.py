"""The circular KV buffer: one per attention layer.

Capacity is the layer's sliding window plus a few spare slots, so a stream of any
length uses fixed memory. Position p lives in slot p % capacity; appending never
reallocates or shifts, it overwrites the oldest slot. Keys are stored after RoPE, so
wrapping never re-rotates anything.

Visibility is by logical position (a query at p sees p - window < j <= p), not by
what the slots hold. With `spare` slots beyond the window, up to `spare` positions
can be appended speculatively without evicting anything a later query may see, and
taking them back is `truncate(length)`: the slots are simply overwritten later.
"""
from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, window: int, n_kv_heads: int, head_dim: int, spare: int = 0):
        capacity = window + spare
        self.window = window
        self.spare = spare
        self.capacity = capacity
        self.k = np.zeros((n_kv_heads, capacity, head_dim), dtype=np.float32)  # [Hkv, W, hd]
        self.v = np.zeros((n_kv_heads, capacity, head_dim), dtype=np.float32)
        self.length = 0                      # positions appended so far (logical)
        self.generation = 0                  # bumped when contents change other than by append
        self.appended = 0                    # length after the last append (truncate's bound)

    def append(self, k, v) -> None:
        """Store T new positions; k, v [T, Hkv, hd]. Only the last `capacity` matter."""
        T = k.shape[0]
        first = max(0, T - self.capacity)
        slots = (self.length + np.arange(first, T)) % self.capacity
        self.k[:, slots, :] = k[first:].transpose(1, 0, 2)
        self.v[:, slots, :] = v[first:].transpose(1, 0, 2)
        self.length += T
        self.appended = self.length

    def n_valid(self) -> int:
        """Positions held. After a truncate the oldest `spare` of them may hold data of
        dropped positions, but those are outside every later query's window."""
        return min(self.length, self.capacity)

    def slot_positions(self) -> np.ndarray:
        """Logical position held by each slot [capacity] (-1 for an empty slot)."""
        slots = np.arange(self.capacity)
        latest = self.length - 1 - ((self.length - 1 - slots) % self.capacity)
        return np.where(slots < self.length, latest, -1)

    def ordered(self):
        """The cached positions oldest first: (k, v) [Hkv, S, hd] and positions [S]. Copies."""
        positions = np.arange(self.length - self.n_valid(), self.length)
        slots = positions % self.capacity
        return self.k[:, slots, :], self.v[:, slots, :], positions

    def reset(self) -> None:
        self.length = self.appended = 0
        self.generation += 1

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (rejected speculative positions are dropped).

        Any length back to `spare` positions before the last append is allowed, and so
        is moving forward again up to that append: the slots still hold the data.
        """
        if not self.appended - self.spare <= length <= self.appended:
            raise ValueError(f"cannot set a cache whose last append ended at {self.appended} "
                             f"to {length} positions ({self.spare} spare slots)")
        self.length = length

    def snapshot(self) -> tuple:
        """Copies of the cached positions (oldest first) and the length."""
        k, v, _ = self.ordered()
        return k.copy(), v.copy(), self.length

    def restore(self, snap: tuple) -> None:
        k, v, length = snap
        slots = np.arange(length - k.shape[1], length) % self.capacity
        self.k[:, slots, :] = k
        self.v[:, slots, :] = v
        self.length = self.appended = length
        self.generation += 1
