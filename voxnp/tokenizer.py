"""Tekken token ids -> text (SPEC §9), with incremental UTF-8.

Ids below `n_special` (1000) are control tokens and print nothing; id >= 1000 is the
base64 `token_bytes` of vocab[id - 1000]. A character may be split across tokens, so
`TextDecoder` holds back an incomplete UTF-8 sequence until its last byte arrives.
For display of alternatives, `printable` shows bytes that are not valid UTF-8 on their
own as `<0xNN>` instead of U+FFFD, and `TextDecoder.peek` merges a candidate with the
bytes held back before it.
"""
from __future__ import annotations

import base64
import codecs
from pathlib import Path

from .config import read_json
from .errors import VoxnpError


class Tokenizer:
    def __init__(self, tekken: dict, vocab_size: int, path: Path | None = None):
        where = path or "tekken.json"
        try:
            config = tekken["config"]
            self.n_special = int(config.get("default_num_special_tokens", 1000))
            entries = tekken["vocab"][:vocab_size - self.n_special]
            self.vocab = [base64.b64decode(e["token_bytes"], validate=True) for e in entries]
            self.special_names = {int(s["rank"]): str(s["token_str"]) for s in tekken.get("special_tokens", [])}
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # binascii.Error is a ValueError
            raise VoxnpError(f"{where}: not a Tekken vocabulary ({type(e).__name__}: {e})") from None
        self.vocab_size = self.n_special + len(self.vocab)
        if self.vocab_size < vocab_size:
            raise VoxnpError(f"{where}: only {self.vocab_size} token ids, params.json vocab_size is {vocab_size}")

    @classmethod
    def from_file(cls, path: Path, vocab_size: int) -> "Tokenizer":
        return cls(read_tekken(path), vocab_size, path)

    def is_special(self, token_id: int) -> bool:
        return token_id < self.n_special

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < self.n_special:
            return b""
        return self.vocab[token_id - self.n_special]

    def token_name(self, token_id: int) -> str:
        """A printable name: the text of a text token, `[NAME]` of a control token."""
        if token_id < self.n_special:
            return self.special_names.get(token_id, f"<special {token_id}>")
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")


class TextDecoder:
    """Feeds token ids one at a time and returns the text that is complete so far."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of text: whatever is held back is emitted (as U+FFFD if incomplete)."""
        return self._utf8.decode(b"", final=True)

    @property
    def held(self) -> bytes:
        """The start of a character still waiting for its last bytes."""
        return self._utf8.getstate()[0]

    def peek(self, token_id: int) -> str:
        """What `token_id` would show if it came next, for display: the held-back bytes
        and the token's own, every byte that does not complete a character as <0xNN>.
        Nothing changes: the decoder is as before."""
        if self.tokenizer.is_special(token_id):
            return self.tokenizer.token_name(token_id)
        return printable(self.held + self.tokenizer.token_bytes(token_id))


def printable(data: bytes) -> str:
    """Bytes as text for display: UTF-8 where valid, any other byte as <0xNN>."""
    out = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[:e.start].decode("utf-8"))
            out.extend(f"<0x{b:02X}>" for b in data[e.start:e.end])
            data = data[e.end:]
    return "".join(out)


def read_tekken(path: Path) -> dict:
    return read_json(path)
