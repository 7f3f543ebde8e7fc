"""The circular KV buffer: one per attention layer.

Capacity is the layer's sliding window plus a few spare slots, so a stream of any
length uses fixed memory. Position p lives in slot p % capacity; appending never
reallocates or shifts, it overwrites the oldest slot. Keys are stored after RoPE, so
wrapping never re-rotates anything.

Visibility is by logical position (a query at p sees p - window < j <= p), not by
what the slots hold. With `spare` slots beyond the window, up to `spare` positions
can be appended speculatively without evicting anything a later query may see, and
taking them back is `truncate(length)`: the slots are simply overwritten later.

The buffers live where the backend computes: `xp` is its array namespace (NumPy, or
CuPy for rings on the GPU). Positions first..last-1 occupy at most two contiguous slot
ranges (`slot_runs`), so appends and reads are slices, never gathers. A host ring takes
memory only where written (an anonymous map); a device ring starts at DEVICE_START
slots and doubles, before it first wraps, up to its full capacity, so a short stream
holds megabytes of GPU memory, not the 1.7 GB of a full decoder window.

A host ring may store its keys and values as BF16 (`bf16=True`: the int8 and q4
formats' decoder, as the model runs in BF16 elsewhere): half the memory, and half the
bytes each decoder step reads at long contexts. Appends round to BF16 (nearest, ties to
even); every read gives them back as float32 (exact), so attention computes in float32.
"""
from __future__ import annotations

import mmap

import numpy as np

from .bf16 import bf16_bits_to_float32, float32_to_bf16_bits

DEVICE_START = 256  # slots of a new device ring (it doubles as positions arrive)


def ring_buffer(xp, shape: tuple, dtype=np.float32) -> np.ndarray:
    """Zeros that take memory only where written. On the host: an anonymous map
    (NumPy asks for 2 MB huge pages on big arrays, so the first positions of a ring would
    pin 2 MB per head: measured 1.1 GB per decoder state instead of a few MB)."""
    if xp is not np:
        return xp.zeros(shape, dtype=dtype)
    count, dtype = int(np.prod(shape)), np.dtype(dtype)
    buffer = mmap.mmap(-1, max(dtype.itemsize * count, 1), flags=mmap.MAP_PRIVATE)  # anonymous, zeroed
    return np.frombuffer(buffer, dtype, count=count).reshape(shape)


class KVCache:
    def __init__(self, window: int, n_kv_heads: int, head_dim: int, spare: int = 0, xp=np,
                 bf16: bool = False):
        self.window = window
        self.spare = spare
        self.full_capacity = window + spare
        capacity = self.full_capacity if xp is np else min(self.full_capacity, DEVICE_START + spare)
        self.capacity = capacity             # slots now (a device ring grows to full_capacity)
        self.xp = xp                         # the backend's array namespace (numpy or cupy)
        self.bf16 = bf16 and xp is np        # keys and values stored as BF16 bits (host rings)
        dtype = np.uint16 if self.bf16 else np.float32
        self.k = ring_buffer(xp, (n_kv_heads, capacity, head_dim), dtype)  # [Hkv, W, hd]
        self.v = ring_buffer(xp, (n_kv_heads, capacity, head_dim), dtype)
        self.length = 0                      # positions appended so far (logical)
        self.generation = 0                  # bumped when contents change other than by append
        self.appended = 0                    # length after the last append (truncate's bound)

    def slot_runs(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """Positions first..last-1 (at most `capacity` of them) as contiguous slot runs:
        [(position, slot, count)], oldest first (two runs when they wrap)."""
        runs = []
        p = first
        while p < last:
            slot = p % self.capacity
            n = min(last - p, self.capacity - slot)
            runs.append((p, slot, n))
            p += n
        return runs

    def make_room(self, n_positions: int) -> None:
        """Grow a ring that has not wrapped yet so that it holds n_positions (up to its
        full capacity). Before the first wrap position p sits in slot p, so the slots
        written so far move over as they are."""
        if n_positions <= self.capacity or self.capacity == self.full_capacity:
            return
        capacity = min(self.full_capacity, max(2 * self.capacity, n_positions))
        held = min(self.appended, self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = ring_buffer(self.xp, (old.shape[0], capacity, old.shape[2]), old.dtype)
            new[:, :held] = old[:, :held]
            setattr(self, name, new)
        self.capacity = capacity

    def reserve(self, T: int) -> int:
        """Count T new positions as appended (growing a device ring first) and return the
        first one; the caller writes them to slots position % capacity (append does)."""
        self.make_room(self.length + T)
        first = self.length
        self.length = self.appended = first + T
        return first

    def append(self, k, v) -> None:
        """Store T new positions; k, v [T, Hkv, hd]. Only the last `capacity` matter."""
        T = k.shape[0]
        start = self.reserve(T)
        first = max(0, T - self.capacity)
        for p, slot, n in self.slot_runs(start + first, start + T):
            i = p - start                                         # row of k, v
            self.k[:, slot:slot + n, :] = self.stored(k[i:i + n].transpose(1, 0, 2))
            self.v[:, slot:slot + n, :] = self.stored(v[i:i + n].transpose(1, 0, 2))

    def stored(self, a):
        """float32 keys or values as the ring stores them (rounded to BF16 bits, or as they are)."""
        return float32_to_bf16_bits(a) if self.bf16 else a

    def as_float32(self, a):
        """Slots read from the ring as float32 (BF16 bits widened: exact; else `a` itself)."""
        return bf16_bits_to_float32(a) if self.bf16 else a

    def check_last_visible(self, T: int) -> None:
        """The last T positions, appended at once, must not have evicted a slot one of them
        sees: T <= spare + 1, or no wrap-around yet."""
        if T > self.spare + 1 and self.length > self.capacity:
            raise ValueError(f"{T} positions appended at once to a ring with {self.spare} spare slots")

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
        """The cached positions oldest first: (k, v) [Hkv, S, hd] float32 and positions [S]. Copies."""
        runs = self.slot_runs(self.length - self.n_valid(), self.length)
        xp = self.xp
        k = xp.concatenate([self.k[:, s:s + n] for _, s, n in runs] or [self.k[:, :0]], axis=1)
        v = xp.concatenate([self.v[:, s:s + n] for _, s, n in runs] or [self.v[:, :0]], axis=1)
        return self.as_float32(k), self.as_float32(v), np.arange(self.length - self.n_valid(), self.length)

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
        """Copies of the cached positions (oldest first, in the backend's namespace) and the length."""
        k, v, _ = self.ordered()
        return k, v, self.length

    def restore(self, snap: tuple) -> None:
        k, v, length = snap
        length = int(length)
        self.make_room(length)
        for p, slot, n in self.slot_runs(length - k.shape[1], length):
            i = p - (length - k.shape[1])                         # column of the snapshot
            self.k[:, slot:slot + n, :] = self.stored(self.xp.asarray(k[:, i:i + n]))
            self.v[:, slot:slot + n, :] = self.stored(self.xp.asarray(v[:, i:i + n]))
        self.length = self.appended = length
        self.generation += 1
