"""The opt-in step trace (EngineConfig.trace_path): one JSON line per arrival and per step, enough to tell after a
served run why a request waited (what each step ran, the queue it left and whether a request was demoted)."""

from __future__ import annotations

import json

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams


def test_trace_records_arrivals_steps_and_the_queue(tiny_model_path, tmp_path):
    path = tmp_path / "trace.jsonl"
    engine = Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu", trace_path=str(path),
                                 max_num_batched_tokens=16, tpot_slo_ms=1000.0))
    outs = engine.generate([GenerationInput(text="Tell me about a red ball and a blue cube, please."),
                            GenerationInput(text="Hello!")], SamplingParams(max_tokens=4, ignore_eos=True))
    engine.trace.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    arrivals = [x for x in lines if x["ev"] == "arrival"]
    steps = [x for x in lines if x["ev"] == "step"]
    assert [a["id"] for a in arrivals] == [o.request_id for o in outs]
    assert len(steps) == engine.num_steps
    # Every prompt token was prefilled in some step, in chunks within the token budget.
    for out in outs:
        chunks = [n for s in steps for rid, n in s["prefill"] if rid == out.request_id]
        assert sum(chunks) == len(out.prompt_token_ids) and max(chunks) <= 16
    # 4 outputs each: the first comes from a prefill step, the other 3 from decodes.
    assert sum(s["decodes"] for s in steps) == 2 * 3
    first = steps[0]
    assert first["queue"] and all(isinstance(k, list) and k[1] in (True, False) for _, k in first["queue"])
    assert all(s["dur"] >= s["llm_s"] for s in steps)
    # The prices each step was planned with: six LLM coefficients and three encoder ones, none negative.
    assert all(len(s["llm_w"]) == 6 and len(s["enc_w"]) == 3 and min(s["llm_w"] + s["enc_w"]) >= 0 for s in steps)
    assert all(isinstance(s["burst"], bool) and s["attn"] >= 0 for s in steps)


def test_the_trace_report_prices_encoder_slices_and_tells_a_request_story(tiny_model_path, tmp_path):
    """scripts/step_trace_report.py on a real trace: a video request under a TPOT target is encoded in slices, each
    recorded with its groups, blocks and attention; the report compares them with their planned price."""
    import step_trace_report  # scripts/ is on sys.path (conftest)
    from engine_helpers import synthetic_frames

    from unifiedserve import VideoInput

    path = tmp_path / "trace.jsonl"
    engine = Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu", trace_path=str(path),
                                 tpot_slo_ms=5.0))
    video = VideoInput(synthetic_frames(8, 112, 140, seed=1), sample_fps=2.0)
    engine.generate([GenerationInput(text="What happens?", videos=(video,)), GenerationInput(text="Hi")],
                    SamplingParams(max_tokens=6, ignore_eos=True))
    engine.trace.close()
    steps = [x for x in map(json.loads, path.read_text().splitlines()) if x["ev"] == "step"]
    slices = [e for s in steps for e in s["encoder"]]
    assert slices and all(len(e) == 6 and e[2] >= 1 and e[4] >= 1 and e[5] > 0 for e in slices)
    report = step_trace_report.prices(path)
    assert report["encoder_actual_over_planned"]["n"] == sum(1 for s in steps if s["encoder"])
    video_id = next(x["id"] for x in map(json.loads, path.read_text().splitlines()) if x.get("videos"))
    lines = step_trace_report.story(path, video_id)
    assert lines[0].startswith(f"arrival {video_id}") and any("encoder [[" in line for line in lines[1:])
