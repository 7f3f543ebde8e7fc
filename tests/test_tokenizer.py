"""Tekken ids -> text (SPEC §9) on the real vocabulary: specials, byte tokens, incremental UTF-8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxnp.tokenizer import TextDecoder, Tokenizer

REAL_VOCAB_SIZE = 131072  # params.json vocab_size of the real model
REPLACEMENT = "\ufffd"


def real_tekken_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


@pytest.fixture(scope="module")
def tiny_tok(tiny_dir) -> Tokenizer:
    """The tiny checkpoint's tekken.json: the real vocabulary cut to 3096 entries, with specials."""
    return Tokenizer.from_file(tiny_dir / "tekken.json", 4096)


@pytest.fixture(scope="module")
def real_tok() -> Tokenizer:
    """mistral_common's full Tekken vocabulary (150000 entries, no special_tokens list)."""
    return Tokenizer.from_file(real_tekken_path(), REAL_VOCAB_SIZE)


@pytest.fixture(scope="module")
def incomplete_ids(real_tok) -> list[int]:
    """Real multi-byte tokens whose bytes are not valid UTF-8 on their own (a split character)."""
    ids = []
    for i, b in enumerate(real_tok.vocab):
        if len(b) > 1:
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                ids.append(real_tok.n_special + i)
    return ids


def stream(tok: Tokenizer, ids) -> list[str]:
    """The pieces a TextDecoder returns for each id, then the flush."""
    dec = TextDecoder(tok)
    return [dec.push(int(i)) for i in ids] + [dec.flush()]


def byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    return [tok.n_special + b for b in data]


def completion(data: bytes) -> bytes | None:
    """Continuation bytes that make `data` end on a whole character, if `data` only lacks an ending."""
    for tail in (b"", b"\xa9", b"\xa0\x80", b"\x80", b"\x80\x80", b"\x90\x80\x80", b"\x80\x80\x80",
                 b"\x9f\x98\x80", b"\x98\x80"):
        try:
            (data + tail).decode("utf-8")
            return tail
        except UnicodeDecodeError:
            continue
    return None


def test_vocab_sizes(tiny_tok, real_tok):
    assert tiny_tok.n_special == real_tok.n_special == 1000
    assert tiny_tok.vocab_size == 4096 and len(tiny_tok.vocab) == 3096
    assert real_tok.vocab_size == REAL_VOCAB_SIZE
    assert real_tok.vocab[:3096] == tiny_tok.vocab  # the tiny file is a prefix of the real one


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_special_ids_print_nothing(which, tiny_tok, real_tok):
    tok = tiny_tok if which == "tiny" else real_tok
    specials = [0, 1, 2, 24, 25, 32, 33, 999]
    for i in specials:
        assert tok.is_special(i)
        assert tok.token_bytes(i) == b""
    assert not tok.is_special(1000)
    assert stream(tok, specials) == [""] * (len(specials) + 1)
    assert tok.decode([1, 32, 1000 + ord("H"), 33, 1000 + ord("i"), 2]) == "Hi"


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_byte_tokens(which, tiny_tok, real_tok):
    tok = tiny_tok if which == "tiny" else real_tok
    for b in range(256):
        assert tok.token_bytes(1000 + b) == bytes([b])
    ascii_ids = byte_ids(tok, b"Hello, world!")
    assert "".join(stream(tok, ascii_ids)) == "Hello, world!"
    assert stream(tok, ascii_ids)[:-1] == list("Hello, world!")  # ASCII comes out at once


@pytest.mark.parametrize("char", ["é", "😀", "日", "Я"])
def test_split_character_is_held_back(tiny_tok, char):
    data = char.encode("utf-8")  # é = C3 A9, 😀 = F0 9F 98 80
    pieces = stream(tiny_tok, byte_ids(tiny_tok, data))
    assert pieces == [""] * (len(data) - 1) + [char, ""]  # printed once, when its last byte arrives
    text = "".join(stream(tiny_tok, byte_ids(tiny_tok, f"a{char}b{char}".encode())))
    assert text == f"a{char}b{char}" and REPLACEMENT not in text


def test_flush_of_an_incomplete_character(tiny_tok):
    dec = TextDecoder(tiny_tok)
    assert dec.push(1000 + ord("x")) == "x"
    assert dec.push(1000 + 0xF0) == "" and dec.push(1000 + 0x9F) == ""
    assert dec.push(2) == ""  # EOS in the middle changes nothing
    assert dec.flush() == REPLACEMENT  # exactly one U+FFFD for the unfinished sequence
    assert dec.flush() == ""


def test_flush_after_whole_text_is_empty(tiny_tok):
    dec = TextDecoder(tiny_tok)
    assert [dec.push(i) for i in byte_ids(tiny_tok, "é".encode())] == ["", "é"]
    assert dec.flush() == ""


def test_token_name(tiny_tok, real_tok):
    assert tiny_tok.token_name(32) == "[STREAMING_PAD]"
    assert tiny_tok.token_name(33) == "[STREAMING_WORD]"
    assert tiny_tok.token_name(1) == "<s>" and tiny_tok.token_name(2) == "</s>"
    assert real_tok.token_name(32) == "<special 32>"  # tekken_240911.json lists no special tokens
    assert tiny_tok.token_name(1000 + ord("A")) == "A"
    text_id = next(i for i in range(1256, 4096) if len(tiny_tok.token_bytes(i)) > 2
                   and tiny_tok.token_bytes(i).isascii())
    assert tiny_tok.token_name(text_id) == tiny_tok.token_bytes(text_id).decode()
    assert tiny_tok.token_name(1000 + 0xC3) == REPLACEMENT  # half a character, printable


def test_decode_list_and_array(real_tok):
    ids = [1, 32] + byte_ids(real_tok, "naïve café".encode()) + [2]
    assert real_tok.decode(ids) == "naïve café"
    assert real_tok.decode(np.array(ids, dtype=np.int32)) == "naïve café"
    assert real_tok.decode([]) == ""
    assert real_tok.decode([1000 + 0xE6, 1000 + 0x97]) == REPLACEMENT  # one-shot decode replaces


def test_real_tokens_that_split_characters(real_tok, incomplete_ids):
    """Multi-character tokens ending (or starting) mid-character, completed by other tokens."""
    assert len(incomplete_ids) > 1000  # e.g. b' \xc3', b'\xe2\x80', b'\xd0\xbe\xd0'
    checked = 0
    for i in incomplete_ids:
        data = real_tok.token_bytes(i)
        tail = completion(data)
        if tail is None:  # starts with continuation bytes: needs a lead before it instead
            continue
        ids = [i] + byte_ids(real_tok, tail) + [1000 + ord("!")]
        expected = (data + tail + b"!").decode("utf-8")
        pieces = stream(real_tok, ids)
        assert "".join(pieces) == expected and REPLACEMENT not in "".join(pieces), (data, tail)
        assert pieces[0] == data[:len(data) - _incomplete_suffix(data)].decode("utf-8")
        checked += 1
    assert checked > 1000


def _incomplete_suffix(data: bytes) -> int:
    """Length of the unfinished character at the end of data (0 if it ends on a whole one)."""
    for n in range(1, min(4, len(data)) + 1):
        try:
            data[:-n].decode("utf-8")
            return n
        except UnicodeDecodeError:
            continue
    return 0


def test_incremental_equals_one_shot_on_random_sequences(real_tok, incomplete_ids):
    """Any mix of split tokens, bytes, text tokens and specials: streaming = bytes.decode of the whole."""
    rng = np.random.default_rng(0)
    pools = [np.array(incomplete_ids), np.arange(1000 + 0x80, 1000 + 0x100),
             np.arange(1000, REAL_VOCAB_SIZE), np.array([1, 2, 32, 33])]
    for _ in range(300):
        n = int(rng.integers(1, 12))
        ids = [int(rng.choice(pools[int(rng.integers(len(pools)))])) for _ in range(n)]
        expected = b"".join(real_tok.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        assert "".join(stream(real_tok, ids)) == expected, ids
        assert real_tok.decode(ids) == expected


def test_matches_mistral_common(real_tok, incomplete_ids):
    """mistral_common's own Tekkenizer agrees (skipped if it cannot read the file)."""
    try:
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        mc = Tekkenizer.from_file(str(real_tekken_path()))
        probe = mc.decode([1000 + ord("o"), 1000 + ord("k")])
    except Exception as e:  # an optional cross-check: any failure of the library is a skip
        pytest.skip(f"mistral_common cannot decode {real_tekken_path().name}: {e}")
    assert probe == "ok"
    text = "Voxtral transcribes: naïve café, Привет, 日本語, مرحبا, 😀!"
    ids = [int(i) for i in mc.encode(text, bos=False, eos=False)]
    assert any(i in set(incomplete_ids) for i in ids)  # the sentence does split characters
    pieces = stream(real_tok, [1, 32] + ids + [2])
    assert "".join(pieces) == text and REPLACEMENT not in "".join(pieces)
    for i in incomplete_ids[:200]:
        data = real_tok.token_bytes(i)
        tail = completion(data)
        if tail is not None:
            seq = [i] + byte_ids(real_tok, tail)
            assert real_tok.decode(seq) == mc.decode(seq)
