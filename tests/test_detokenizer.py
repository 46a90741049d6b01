"""IncrementalDetokenizer with the tiny model's byte-level BPE tokenizer.

Properties, for random token sequences and for encodings of multi-byte text:
- the deltas (plus flush) concatenate to the full decode;
- what has been emitted is always a prefix of the full decode of the whole sequence: a delta never holds
  a broken character (U+FFFD) that a later token completes;
- nothing complete is held back: whenever the decode of the tokens so far does not end in an incomplete
  character, all of it has been emitted.
"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from unifiedserve.detokenizer import REPLACEMENT, IncrementalDetokenizer

TEXTS = [
    "héllo wörld, ça va? naïve café",
    "中文字符测试，一二三。",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷 done",
    "mixed: Grüße 東京 🎉 ok\nnew line\ttab",
    "a real replacement char \ufffd stays",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def byte_token_ids(tokenizer) -> list[int]:
    """Ids of the 256 single-byte tokens (many are UTF-8 lead or continuation bytes)."""
    return [i for i in range(len(tokenizer)) if len(tokenizer.convert_ids_to_tokens(i)) == 1]


def check_stream(tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens)
    final = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    emitted = ""
    deltas = []
    for k, token in enumerate(ids):
        delta = detok.push(token)
        deltas.append(delta)
        emitted += delta
        assert final.startswith(emitted), f"after {k + 1} tokens emitted {emitted!r}, final is {final!r}"
        so_far = tokenizer.decode(ids[: k + 1], skip_special_tokens=skip_special_tokens)
        if not so_far.endswith(REPLACEMENT):
            assert emitted == so_far, f"after {k + 1} tokens held back {so_far[len(emitted):]!r}"
    tail = detok.flush()
    deltas.append(tail)
    assert emitted + tail == final
    assert detok.flush() == ""  # a second flush adds nothing
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_text_streams_exactly(tokenizer, text) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = check_stream(tokenizer, ids)
    assert "".join(deltas) == text
    if REPLACEMENT not in text:
        assert not any(REPLACEMENT in d for d in deltas), deltas


def test_emoji_split_over_tokens_is_held_until_complete(tokenizer) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the tokenizer splits it: the case this test is about
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.push(t) for t in ids] == [""] * (len(ids) - 1) + ["🙂"]


def test_incomplete_character_at_the_end_is_flushed_as_is(tokenizer) -> None:
    ids = tokenizer.encode("ok 🙂", add_special_tokens=False)[:-1]  # drop the last byte of the emoji
    detok = IncrementalDetokenizer(tokenizer)
    emitted = "".join(detok.push(t) for t in ids)
    assert emitted.rstrip() == "ok"  # the space may share a token with the emoji's first bytes
    tail = detok.flush()
    assert tail.endswith(REPLACEMENT) and emitted + tail == tokenizer.decode(ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_token_sequences(tokenizer, byte_token_ids, skip_special_tokens) -> None:
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(150):
        n = rng.randint(1, 40)
        if rng.random() < 0.5:  # mostly raw bytes: many broken / completed characters
            ids = [rng.choice(byte_token_ids) if rng.random() < 0.8 else rng.randrange(vocab) for _ in range(n)]
        else:
            ids = [rng.randrange(vocab) for _ in range(n)]
        check_stream(tokenizer, ids, skip_special_tokens)


def test_random_multibyte_strings(tokenizer) -> None:
    rng = random.Random(1)
    alphabet = list("abc xyz.,!") + list("éüß") + list("中文東京") + ["🙂", "👍🏽", "🇫🇷", "👨‍👩‍👧", "\n"]
    for _ in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        deltas = check_stream(tokenizer, ids)
        assert "".join(deltas) == text
        assert not any(REPLACEMENT in d for d in deltas)


def test_special_tokens(tokenizer) -> None:
    ids = tokenizer.encode("hi", add_special_tokens=False)
    special = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "".join(check_stream(tokenizer, [*ids, special, *ids], skip_special_tokens=True)) == "hihi"
    assert "".join(check_stream(tokenizer, [*ids, special, *ids], skip_special_tokens=False)) == "hi<|im_end|>hi"
