"""request_fields: Triton tensors (as the python backend's as_numpy gives them) + JSON parameters -> parsed
request. Every input and default, bad types and bad UTF-8 as InvalidRequestError with a clear message,
scheduling hints from parameters (preferred) or from same-named inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triton_adapters.request_fields import parse_generate_request, scalar, strings
from unifiedserve.errors import InvalidRequestError
from unifiedserve.sampling_params import SamplingParams

DEFAULT_MAX_TOKENS = 77


def text(value: str | bytes = "Describe the video.") -> np.ndarray:
    return np.array([value.encode() if isinstance(value, str) else value], dtype=np.object_)


def parse(tensors: dict, parameters: dict | None = None):
    return parse_generate_request(tensors, parameters or {}, DEFAULT_MAX_TOKENS)


def test_defaults() -> None:
    p = parse({"text_input": text("hi")})
    assert p.text == "hi"
    assert p.sampling == SamplingParams(max_tokens=DEFAULT_MAX_TOKENS)
    assert p.sampling.ignore_eos is False and p.sampling.stop == () and p.sampling.seed is None
    assert (p.stream, p.priority, p.ttft_slo_ms, p.tpot_slo_ms) == (False, 0, None, None)


def test_every_input() -> None:
    tensors = {
        "text_input": text("Qu'est-ce que c'est ? 中文 🙂"),
        "max_tokens": np.array([12], dtype=np.int32),
        "temperature": np.array([0.7], dtype=np.float32),
        "top_p": np.array([0.9], dtype=np.float32),
        "top_k": np.array([40], dtype=np.int32),
        "seed": np.array([2**40], dtype=np.int64),
        "stop": np.array([b"\n\n", "é".encode(), b""], dtype=np.object_),  # empty entries are dropped
        "ignore_eos": np.array([True]),
        "stream": np.array([True]),
        "priority": np.array([2], dtype=np.int32),
        "ttft_slo_ms": np.array([250.0], dtype=np.float32),
        "tpot_slo_ms": np.array([40.0], dtype=np.float32),
    }
    p = parse(tensors)
    assert p.text == "Qu'est-ce que c'est ? 中文 🙂"
    s = p.sampling
    assert (s.max_tokens, s.top_k, s.seed, s.stop, s.ignore_eos) == (12, 40, 2**40, ("\n\n", "é"), True)
    assert s.temperature == pytest.approx(0.7) and s.top_p == pytest.approx(0.9)
    assert (p.stream, p.priority, p.ttft_slo_ms, p.tpot_slo_ms) == (True, 2, 250.0, 40.0)
    assert isinstance(s.max_tokens, int) and isinstance(s.temperature, float) and isinstance(p.priority, int)


def test_shapes_and_empty_optional_inputs() -> None:
    p = parse({"text_input": np.array([[b"hi"]], dtype=np.object_),  # [1, 1] from a batched client
               "max_tokens": np.array([[5]], dtype=np.int32),
               "temperature": np.zeros((0,), dtype=np.float32)})  # present but empty: default
    assert (p.text, p.sampling.max_tokens, p.sampling.temperature) == ("hi", 5, 0.0)
    assert parse({"text_input": np.array(["as str"], dtype=np.object_)}).text == "as str"
    assert parse({"text_input": text("")}).text == ""  # empty text is the engine's call (it may have a video)


@pytest.mark.parametrize("tensors", [{}, {"text_input": np.array([], dtype=np.object_)},
                                     {"max_tokens": np.array([3], dtype=np.int32)}])
def test_missing_text_input(tensors) -> None:
    with pytest.raises(InvalidRequestError, match="text_input is required"):
        parse(tensors)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"text_input": text(b"\xff\xfe bad")}, "text_input is not valid UTF-8"),
        ({"text_input": text("ok"), "stop": np.array([b"fine", b"\xc3("], dtype=np.object_)},
         "stop is not valid UTF-8"),
        ({"text_input": text("ok"), "max_tokens": np.array([b"ten"], dtype=np.object_)}, "max_tokens must be a int"),
        ({"text_input": text("ok"), "top_k": np.array([None], dtype=np.object_)}, "top_k must be a int"),
        ({"text_input": text("ok"), "temperature": np.array([b"hot"], dtype=np.object_)},
         "temperature must be a float"),
        ({"text_input": text("ok"), "temperature": np.array([np.nan], dtype=np.float32)}, "finite"),
        ({"text_input": text("ok"), "top_p": np.array([np.inf], dtype=np.float32)}, "finite"),
        ({"text_input": text("ok"), "max_tokens": np.array([np.inf], dtype=np.float64)}, "max_tokens must be a int"),
        ({"text_input": text("ok"), "ttft_slo_ms": np.array([-np.inf], dtype=np.float32)}, "finite"),
    ],
)
def test_bad_inputs(tensors, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse(tensors)


def test_hints_from_parameters_win_over_inputs() -> None:
    tensors = {"text_input": text(), "priority": np.array([9], dtype=np.int32),
               "ttft_slo_ms": np.array([1.0], dtype=np.float32)}
    p = parse(tensors, {"priority": 1, "ttft_slo_ms": 500, "tpot_slo_ms": "25.5"})
    assert (p.priority, p.ttft_slo_ms, p.tpot_slo_ms) == (1, 500.0, 25.5)
    assert isinstance(p.ttft_slo_ms, float)
    p = parse(tensors, {"unrelated": "x"})
    assert (p.priority, p.ttft_slo_ms) == (9, 1.0)  # from the inputs
    assert parse({"text_input": text()}, {"priority": "3"}).priority == 3
    assert parse({"text_input": text()}, {"priority": 0}).priority == 0
    assert parse({"text_input": text()}, {"priority": 4.0}).priority == 4


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"priority": "high"}, "request parameter priority must be a int"),
        ({"priority": None}, "request parameter priority must be a int"),
        ({"priority": True}, "request parameter priority must be a int"),  # would have been level 1
        ({"priority": 2.5}, "request parameter priority must be a int"),
        ({"priority": math.inf}, "request parameter priority must be a int"),  # JSON 1e400
        ({"ttft_slo_ms": "soon"}, "request parameter ttft_slo_ms must be a float"),
        ({"ttft_slo_ms": "nan"}, "request parameter ttft_slo_ms must be a float"),
        ({"tpot_slo_ms": math.inf}, "request parameter tpot_slo_ms must be a float"),
        ({"tpot_slo_ms": [1, 2]}, "request parameter tpot_slo_ms must be a float"),
    ],
)
def test_bad_hint_parameters(parameters, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse({"text_input": text()}, parameters)


def test_scalar_and_strings_helpers() -> None:
    tensors = {"k": np.array([b"key"], dtype=np.object_), "f": np.array([2.5], dtype=np.float32),
               "s": np.array([b"a", b"", "b"], dtype=np.object_)}
    assert scalar(tensors, "k", str) == "key"
    assert scalar(tensors, "f", float) == 2.5 and isinstance(scalar(tensors, "f", float), float)
    assert scalar(tensors, "missing", int, 4) == 4
    assert strings(tensors, "s") == ("a", "b") and strings(tensors, "missing") == ()
    with pytest.raises(InvalidRequestError, match="video_key is not valid UTF-8"):
        scalar({"video_key": np.array([b"\x80"], dtype=np.object_)}, "video_key", str)


def test_parsed_sampling_params_are_validated_by_the_engine() -> None:
    """Parsing keeps values as given; the limits are SamplingParams.validate's job (make_request calls it)."""
    p = parse({"text_input": text(), "max_tokens": np.array([0], dtype=np.int32)})
    with pytest.raises(InvalidRequestError, match="max_tokens must be between 1 and"):
        p.sampling.validate(max_tokens_limit=4096)
