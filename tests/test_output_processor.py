"""OutputProcessor: stop strings (single, several, split across tokens), eos, max_tokens, max_total_tokens.

Tokens are fed one by one as the engine does; checked: the deltas concatenate to the final text, what has
been streamed is always a prefix of the final text (a stop string is never partly emitted and then taken
back), the text is cut before the stop string, and the finish reasons.
"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from unifiedserve.output_processor import OutputProcessor
from unifiedserve.outputs import RequestOutput
from unifiedserve.request import Request
from unifiedserve.sampling_params import SamplingParams

EOS = 3002


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def _request(rid: str = "r", max_total_tokens: int = 10**6, **params) -> Request:
    return Request(rid, [1, 2, 3], SamplingParams(**params), eos_token_ids=frozenset({EOS}),
                   max_total_tokens=max_total_tokens)


def feed(processor: OutputProcessor, req: Request, ids: list[int]) -> tuple[list[RequestOutput], str]:
    """Append tokens until the request finishes; returns the outputs and the streamed text."""
    outs: list[RequestOutput] = []
    streamed = ""
    for token in ids:
        out = processor.append_token(req, token)
        outs.append(out)
        streamed += out.text_delta
        assert out.token_ids_delta == [token] and out.num_output_tokens == len(outs)
        if out.finished:
            break
        assert out.finish_reason is None
    return outs, streamed


def expected(tokenizer, ids: list[int], stops: list[str], max_tokens: int) -> tuple[str, int, str]:
    """Oracle for `ids` followed by eos: (final text, number of outputs, finish reason).

    A stop string counts once its text is final: while the decode ends in an incomplete character
    (U+FFFD) the text of the tokens since the last complete point is held back (the detokenizer's rule),
    so a stop string in it is seen when the character completes (like vLLM; the cut text is the same), or
    at the end, when the held-back tail is flushed."""
    text = ""
    for k in range(1, min(len(ids), max_tokens) + 1):
        decoded = tokenizer.decode(ids[:k])
        if not decoded.endswith("\ufffd") or k == max_tokens:  # max_tokens: the end, flushed
            text = decoded
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], k, "stop"
    if max_tokens <= len(ids):
        return text, max_tokens, "length"
    final = tokenizer.decode(ids)  # eos: the tail is flushed
    hits = [final.find(s) for s in stops if s in final]
    return (final[: min(hits)] if hits else final), len(ids) + 1, "stop"


def check_streaming_prefixes(outs: list[RequestOutput], final: str) -> None:
    emitted = ""
    for out in outs:
        emitted += out.text_delta
        assert final.startswith(emitted), f"streamed {emitted!r}, but the final text is {final!r}"


def test_single_stop_string_split_across_tokens(tokenizer) -> None:
    text = "The answer is STOP and more"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(tokenizer.encode("STOP", add_special_tokens=False)) > 1
    req = _request(stop=("STOP",), max_tokens=100)
    outs, streamed = feed(OutputProcessor(tokenizer), req, ids)
    assert streamed == "The answer is "
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert not any("S" in o.text_delta for o in outs)  # no part of "STOP" ever went out
    check_streaming_prefixes(outs, streamed)
    assert len(outs) < len(ids)  # stopped at the token that completed the stop string


def test_several_stop_strings_first_completed_wins(tokenizer) -> None:
    ids = tokenizer.encode("one, two; three. four", add_special_tokens=False)
    req = _request(stop=("three", ";", "four"), max_tokens=100)
    outs, streamed = feed(OutputProcessor(tokenizer), req, ids)
    assert streamed == "one, two"
    assert outs[-1].finish_reason == "stop"


def test_stop_string_at_the_very_start(tokenizer) -> None:
    ids = tokenizer.encode("STOP now", add_special_tokens=False)
    outs, streamed = feed(OutputProcessor(tokenizer), _request(stop=("STOP",)), ids)
    assert streamed == "" and outs[-1].finish_reason == "stop"


def test_stop_string_with_multibyte_characters(tokenizer) -> None:
    ids = tokenizer.encode("voilà le café 🙂 fin", add_special_tokens=False)
    outs, streamed = feed(OutputProcessor(tokenizer), _request(stop=("é 🙂",)), ids)
    assert streamed == "voilà le caf" and outs[-1].finish_reason == "stop"
    check_streaming_prefixes(outs, streamed)


def test_stop_string_completed_by_the_flushed_tail_is_a_stop(tokenizer) -> None:
    # "beta " ends in a space that shares its token with the first bytes of the emoji: at max_tokens the
    # tail is flushed, the stop string shows up there, the text is cut and the reason is "stop".
    ids = tokenizer.encode("beta 🙂", add_special_tokens=False)
    assert tokenizer.decode(ids[:-1]).endswith("\ufffd")
    req = _request(stop=("beta ",), max_tokens=len(ids) - 1)
    outs, streamed = feed(OutputProcessor(tokenizer), req, ids)
    assert streamed == "" and len(outs) == len(ids) - 1
    assert outs[-1].finish_reason == "stop"


def test_random_texts_and_stop_strings(tokenizer) -> None:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "δέλτα", "中文", "🙂", "stop", "end", ".", ",", "\n", "x"]
    processor = OutputProcessor(tokenizer)
    for trial in range(300):
        text = "".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(rng.randint(1, 15)))
        ids = tokenizer.encode(text, add_special_tokens=False)
        stops = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.7:  # a substring of the text: it will hit
                a = rng.randrange(len(text))
                stops.append(text[a: a + rng.randint(1, 6)])
            else:
                stops.append(rng.choice(["zzz", "never", "🙃"]))
        max_tokens = rng.choice([len(ids), len(ids) + 5, max(1, len(ids) // 2)])
        req = _request(f"t{trial}", stop=tuple(stops), max_tokens=max_tokens)
        outs, streamed = feed(processor, req, [*ids, EOS])  # eos ends it if nothing else does
        ctx = f"trial {trial}: text={text!r} stops={stops} max_tokens={max_tokens}"
        assert outs[-1].finished, ctx
        assert (streamed, len(outs), outs[-1].finish_reason) == expected(tokenizer, ids, stops, max_tokens), ctx
        check_streaming_prefixes(outs, streamed)
        assert all(s not in streamed for s in stops), ctx
        assert req.request_id not in processor.states  # state released on finish


def test_eos_stops_and_adds_no_text(tokenizer) -> None:
    ids = tokenizer.encode("hello 🙂", add_special_tokens=False)
    req = _request(max_tokens=100)
    outs, streamed = feed(OutputProcessor(tokenizer), req, [*ids, EOS, *ids])
    assert streamed == "hello 🙂"
    assert outs[-1].token_ids_delta == [EOS] and outs[-1].finish_reason == "stop"
    assert req.output_token_ids == [*ids, EOS]


def test_eos_while_a_character_is_incomplete_flushes_it(tokenizer) -> None:
    ids = tokenizer.encode("hi 🙂", add_special_tokens=False)[:-1]
    outs, streamed = feed(OutputProcessor(tokenizer), _request(max_tokens=100), [*ids, EOS])
    assert streamed == tokenizer.decode(ids) and outs[-1].finish_reason == "stop"


def test_ignore_eos_request_has_no_eos_ids(tokenizer) -> None:
    # InputProcessor gives ignore_eos requests an empty eos set; the output processor just follows it.
    req = Request("r", [1], SamplingParams(max_tokens=3, ignore_eos=True), eos_token_ids=frozenset(),
                  max_total_tokens=100)
    outs, _ = feed(OutputProcessor(tokenizer), req, [EOS, EOS, EOS])
    assert len(outs) == 3 and outs[-1].finish_reason == "length"


def test_max_tokens_is_length_and_releases_held_text(tokenizer) -> None:
    ids = tokenizer.encode("abc def ghi", add_special_tokens=False)
    # A stop string that never hits still holds back the last characters while streaming.
    req = _request(stop=("never-there",), max_tokens=len(ids))
    outs, streamed = feed(OutputProcessor(tokenizer), req, ids)
    assert streamed == "abc def ghi"
    assert outs[-1].finish_reason == "length" and len(outs) == len(ids)
    assert outs[-1].text_delta  # the held-back tail comes with the final output
    check_streaming_prefixes(outs, streamed)


def test_max_total_tokens_is_length(tokenizer) -> None:
    ids = tokenizer.encode("one two three four five", add_special_tokens=False)
    req = _request(max_total_tokens=3 + 2, max_tokens=100)  # 3 prompt tokens: room for 2 more
    outs, streamed = feed(OutputProcessor(tokenizer), req, ids)
    assert len(outs) == 2 and outs[-1].finish_reason == "length"
    assert streamed == tokenizer.decode(ids[:2])


def test_first_token_and_finish_times(tokenizer) -> None:
    req = _request(max_tokens=2)
    outs, _ = feed(OutputProcessor(tokenizer), req, [10, 11])
    assert req.first_token_time is not None and req.finish_time >= req.first_token_time
    assert [o.finished for o in outs] == [False, True]
