"""The last few finished transcriptions, by upload: the page streams a file's text, then asks
for its srt, vtt or verbose_json, and those come from here instead of running the model again.

The key is the upload's bytes (SHA-256) and the delay: the same bytes and delay give the same
tokens, so a cached answer is the answer a new run would give.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

SIZE = 8                     # transcripts kept (least recently used dropped first)


@dataclass(frozen=True)
class Transcript:
    text: str
    tokens: list             # with `logprob` (the sessions run LogprobStream)


def upload_key(data: bytes, delay_ms: float | None) -> str:
    return f"{hashlib.sha256(data).hexdigest()}:{delay_ms}"


class Recent:
    def __init__(self, size: int = SIZE):
        self.size = size
        self._items: OrderedDict[str, Transcript] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Transcript | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, transcript: Transcript) -> None:
        with self._lock:
            self._items[key] = transcript
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
