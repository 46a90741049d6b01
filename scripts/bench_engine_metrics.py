"""bench_engine: metrics of replayed runs (TTFT, TPOT, per-token gaps by kind, SLO attainment, step stats)."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
from bench_engine_trace import STEP_FIELDS, ReqRecord, RunRecord

from unifiedserve import Engine


def pct(values, qs=(50, 90, 99)) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": None for q in qs} | {"n": 0}
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {"mean": round(float(arr.mean()), 3),
                                                                          "n": int(arr.size)}


def step_col(steps: np.ndarray, name: str) -> np.ndarray:
    return steps[:, STEP_FIELDS.index(name)]


def classify_gaps(run: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All per-token gaps (ms), their end times (s from t0) and class: 2 = a step in the gap ran encoder work,
    1 = no encoder but a prefill chunk, 0 = decode-only. A gap (t_prev, t] holds the steps that started in it."""
    starts = step_col(run.steps, "start_s")
    enc = np.sort(starts[step_col(run.steps, "encoder_tokens") > 0])
    pre = np.sort(starts[step_col(run.steps, "num_prefill_tokens") > 0])
    gaps, ends, cls = [], [], []
    for rec in run.requests:
        t = np.asarray(rec.token_times)
        if t.size < 2:
            continue
        a, b = t[:-1], t[1:]
        has_enc = np.searchsorted(enc, b, "left") > np.searchsorted(enc, a, "left")
        has_pre = np.searchsorted(pre, b, "left") > np.searchsorted(pre, a, "left")
        gaps.append((b - a) * 1000.0)
        ends.append(b - run.t0)
        cls.append(np.where(has_enc, 2, np.where(has_pre, 1, 0)))
    if not gaps:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate(gaps), np.concatenate(ends), np.concatenate(cls)


def summarize(runs: list[RunRecord], slos: dict | None, unloaded_ttft_ms: dict | None) -> dict:
    """Metrics over one or more runs of the same policy (rounds are pooled: per-request and per-token values)."""
    reqs = [r for run in runs for r in run.requests]
    kinds = np.asarray([r.kind for r in reqs])
    ttft = np.asarray([(r.token_times[0] - r.arrival) * 1000.0 if r.token_times else math.inf for r in reqs])
    tpot = np.asarray([(r.token_times[-1] - r.token_times[0]) * 1000.0 / (len(r.token_times) - 1)
                       if len(r.token_times) > 1 else (0.0 if r.token_times else math.inf) for r in reqs])
    multi = np.asarray([len(r.token_times) > 1 for r in reqs], dtype=bool)
    finished = np.asarray([r.finish_reason is not None for r in reqs], dtype=bool)
    parts = [classify_gaps(run) for run in runs]
    gaps = np.concatenate([g for g, _, _ in parts]) if parts else np.zeros(0)
    cls = np.concatenate([c for _, _, c in parts]) if parts else np.zeros(0, dtype=int)
    span = sum(max(max((r.token_times[-1] for r in run.requests if r.token_times), default=0.0)
                   - min((r.arrival for r in run.requests), default=0.0), 0.0) for run in runs) or 1e-9
    num_tokens = sum(len(r.token_times) for r in reqs)
    has_ttft = np.isfinite(ttft)
    out = {
        "num_requests": len(reqs), "num_finished": int(finished.sum()), "num_rounds": len(runs),
        "error": "; ".join(run.error for run in runs if run.error) or None,
        "span_s": round(span, 3), "output_tokens": num_tokens,
        "tokens_per_s": round(num_tokens / span, 3), "requests_per_s": round(int(finished.sum()) / span, 4),
        "ttft_ms": pct(ttft[has_ttft]),
        "ttft_ms_by_kind": {k: pct(ttft[has_ttft & (kinds == k)]) for k in ("text", "video")},
        "tpot_ms": pct(tpot[multi]),
        "tpot_ms_by_kind": {k: pct(tpot[multi & (kinds == k)]) for k in ("text", "video")},
        "token_gap_ms": pct(gaps, (50, 90, 99, 99.9)) | {"max": round(float(gaps.max()), 3) if gaps.size else None},
        "token_gap_ms_encoder": pct(gaps[cls == 2], (50, 90, 99)),
        "token_gap_ms_decode_only": pct(gaps[cls == 0], (50, 90, 99)),
        "token_gap_ms_no_encoder": pct(gaps[cls < 2], (50, 90, 99)),
        "other_cpu_cores": _mean_or_none([run.other_cpu_cores for run in runs]),
        "steps": summarize_steps(runs, slos["tpot_slo_ms"] if slos else None),
    }
    enc99, dec99 = out["token_gap_ms_encoder"]["p99"], out["token_gap_ms_decode_only"]["p99"]
    out["encoder_vs_decode_only_p99"] = round(enc99 / dec99, 3) if enc99 and dec99 else None
    if slos:
        ttft_slo = np.asarray([r.ttft_slo_ms or math.inf for r in reqs])
        ok_ttft, ok_tpot = ttft <= ttft_slo, tpot <= slos["tpot_slo_ms"]
        both = ok_ttft & ok_tpot & finished
        n = max(1, len(reqs))
        out["slo"] = {
            "attainment": round(float(both.sum()) / n, 4),
            "ttft_attainment": round(float(ok_ttft.sum()) / n, 4),
            "tpot_attainment": round(float(ok_tpot.sum()) / n, 4),
            "attainment_by_kind": {k: round(float(both[kinds == k].mean()), 4)
                                   for k in ("text", "video") if (kinds == k).any()},
            "goodput_requests_per_s": round(float(both.sum()) / span, 4),
        }
        if unloaded_ttft_ms:  # post hoc: the same runs judged at other TTFT SLO scales (TPOT SLO fixed)
            base = np.asarray([unloaded_ttft_ms[_slo_key(r)] for r in reqs])
            out["slo"]["attainment_vs_ttft_scale"] = {
                str(sc): round(float((ok_tpot & finished & (ttft <= sc * base)).sum()) / n, 4)
                for sc in (1.5, 2, 3, 5, 8, 12, 20)}
    return out


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 3) if vals else None


def _slo_key(rec: ReqRecord) -> str:
    return "text" if rec.clip is None else f"clip{rec.clip}"


def summarize_steps(runs: list[RunRecord], tpot_slo_ms: float | None) -> dict:
    s = np.concatenate([run.steps for run in runs]) if runs else np.zeros((0, len(STEP_FIELDS)))
    if not len(s):
        return {"num_steps": 0}
    dur = (step_col(s, "end_s") - step_col(s, "start_s")) * 1000.0
    enc = step_col(s, "encoder_tokens") > 0
    dec = step_col(s, "num_decode_tokens")
    pre = step_col(s, "num_prefill_tokens") > 0
    busy = float(dur.sum()) / 1000.0
    over = {}
    if tpot_slo_ms:  # steps that stalled running streams past the TPOT SLO on their own, by what they carried
        for name, sel in (("decode_only", (dec > 0) & ~pre & ~enc), ("with_prefill", (dec > 0) & pre & ~enc),
                          ("with_encoder", (dec > 0) & enc)):
            over[name] = {"steps": int(sel.sum()),
                          "over_slo": round(float((dur[sel] > tpot_slo_ms).mean()), 4) if sel.any() else None}
    return {
        "steps_with_decodes_over_tpot_slo": over,
        "num_steps": len(s), "num_encoder_steps": int(enc.sum()),
        "step_ms": pct(dur), "encoder_step_ms": pct(dur[enc]), "no_encoder_step_ms": pct(dur[~enc]),
        "encoder_steps_with_decodes": {  # the steps that stall running streams: what they carried
            "step_ms": pct(dur[enc & (dec > 0)]), "encoder_ms": pct(step_col(s, "encoder_s")[enc & (dec > 0)] * 1e3),
            "llm_ms": pct(step_col(s, "llm_s")[enc & (dec > 0)] * 1e3),
            "prefill_tokens": pct(step_col(s, "num_prefill_tokens")[enc & (dec > 0)]),
            "encoder_tokens": pct(step_col(s, "encoder_tokens")[enc & (dec > 0)]),
            "decodes": pct(dec[enc & (dec > 0)])},
        "encoder_s_total": round(float(step_col(s, "encoder_s").sum()), 3),
        "llm_s_total": round(float(step_col(s, "llm_s").sum()), 3),
        "busy_fraction": round(busy / max(sum(run.wall_s for run in runs), 1e-9), 3),
        "mean_decode_batch": round(float(dec[dec > 0].mean()), 2) if (dec > 0).any() else 0.0,
        "decode_batch": pct(dec[dec > 0]),
        "max_decode_batch": int(dec.max()),
        "encoder_tokens_per_encoder_step": pct(step_col(s, "encoder_tokens")[enc]),
        "encoder_budget_when_encoding": pct(step_col(s, "encoder_budget")[enc]),
        "token_budget": pct(step_col(s, "token_budget")),
    }


def cost_model_check(engine: Engine, run: RunRecord) -> dict:
    """How well the engine's final cost-model fit predicts the measured steps of the run (actual / predicted)."""
    s = run.steps
    try:
        cost = engine.cost
        decodes, prefills = step_col(s, "num_decode_tokens"), step_col(s, "num_prefill_tokens")
        tokens = decodes + prefills
        pred = np.asarray([cost.llm_s(int(d), int(p), float(a)) for d, p, a in zip(
            decodes, prefills, step_col(s, "attention_work"), strict=True)])
        enc = step_col(s, "encoder_tokens") > 0
        pred_enc = np.asarray([cost.encoder_s(int(p), e, a) for p, e, a in zip(
            step_col(s, "num_encoder_pieces_started")[enc], step_col(s, "encoder_tokens")[enc],
            step_col(s, "encoder_attention_work")[enc], strict=True)])
    except (AttributeError, TypeError) as exc:
        return {"unavailable": str(exc)}
    llm = step_col(s, "llm_s")
    pre = step_col(s, "num_prefill_tokens") > 0
    dec = step_col(s, "num_decode_tokens") > 0
    ok = (tokens > 0) & (pred > 0)
    return {
        "llm_actual_over_predicted_decode_only": pct((llm / np.where(ok, pred, 1))[ok & dec & ~pre], (10, 50, 90)),
        "llm_actual_over_predicted_with_prefill": pct((llm / np.where(ok, pred, 1))[ok & pre], (10, 50, 90)),
        "encoder_actual_over_predicted": pct(step_col(s, "encoder_s")[enc] / np.maximum(pred_enc, 1e-9),
                                             (10, 50, 90)),
    }


def cost_model_state(engine: Engine) -> dict:
    """The online cost model's coefficients (best effort: reads engine internals for reporting only)."""
    try:
        llm, enc = engine.cost.llm, engine.cost.encoder
        return {"llm_w_[1,decode_rows,prefill_tokens,attention_kwork]": [float(x) for x in llm.w],
                "encoder_w_[pieces_started,encoder_tokens,attention_kwork]": [float(x) for x in enc.w],
                "llm_samples": len(llm._xs), "encoder_samples": len(enc._xs)}
    except AttributeError as exc:
        return {"unavailable": str(exc)}


def decode_period_ms(run: RunRecord, batch: int) -> float | None:
    """Start-to-start period of pure decode steps at exactly `batch` (what a stream sees per token): the 25th
    percentile, not the median, because on a shared machine other processes only ever add time."""
    s = run.steps
    if len(s) < 2:
        return None
    start = step_col(s, "start_s")
    pure = ((step_col(s, "num_decode_tokens") == batch) & (step_col(s, "num_prefill_tokens") == 0)
            & (step_col(s, "encoder_tokens") == 0))[:-1]
    periods = np.diff(start)[pure] * 1000.0
    return round(float(np.percentile(periods, 25)), 3) if periods.size else None


def targets(results: dict) -> dict:
    pols, out = results["policies"], {}
    u = pols.get("unified")
    if not u:
        return out
    ratio = u["encoder_vs_decode_only_p99"]
    out["unified_encoder_gap_p99_vs_decode_only_p99"] = {"value": ratio, "target": "<= 1.5",
                                                         "met": ratio is not None and ratio <= 1.5}
    for name in ("blocking", "fcfs"):
        if name in pols:
            out[f"{name}_encoder_gap_p99_vs_decode_only_p99"] = pols[name]["encoder_vs_decode_only_p99"]
    if "blocking" in pols:
        r = u["tokens_per_s"] / max(pols["blocking"]["tokens_per_s"], 1e-9)
        out["unified_tokens_per_s_vs_blocking"] = {"value": round(r, 3), "target": ">= 0.9", "met": r >= 0.9}
        burst = results.get("burst") or {}
        if "unified" in burst and "blocking" in burst:
            rb = burst["unified"]["tokens_per_s"] / max(burst["blocking"]["tokens_per_s"], 1e-9)
            out["unified_burst_tokens_per_s_vs_blocking"] = {"value": round(rb, 3), "target": ">= 0.9",
                                                             "met": rb >= 0.9}
            if "fcfs" in burst:
                out["unified_burst_tokens_per_s_vs_fcfs"] = round(
                    burst["unified"]["tokens_per_s"] / max(burst["fcfs"]["tokens_per_s"], 1e-9), 3)
    att = {k: v.get("slo", {}).get("attainment") for k, v in pols.items()}
    others = [att[k] for k in ("blocking", "fcfs") if att.get(k) is not None]
    if att.get("unified") is not None and others:
        out["unified_slo_attainment_vs_baselines"] = {"value": att, "target": "unified > both",
                                                      "met": all(att["unified"] > o for o in others)}
    return out


def raw_dump(runs: dict[str, list[RunRecord]]) -> dict:
    return {name: [{
        "t0": run.t0,
        "requests": [{**{k: v for k, v in asdict(r).items() if k != "token_times"},
                      "arrival_s": round(r.arrival - run.t0, 6),
                      "token_times_s": [round(t - run.t0, 6) for t in r.token_times]} for r in run.requests],
        "step_fields": [f if not f.endswith("_s") or f in ("llm_s", "encoder_s") else f + "_from_t0"
                        for f in STEP_FIELDS],
        "steps": [[round(v - (run.t0 if j < 2 else 0.0), 6) for j, v in enumerate(row)] for row in run.steps.tolist()],
        "wall_s": run.wall_s, "other_cpu_cores": run.other_cpu_cores, "error": run.error,
    } for run in rounds] for name, rounds in runs.items()}


def load_raw(runs: dict) -> dict[str, list[RunRecord]]:
    """raw_dump's output back into RunRecords (times from each run's t0 = 0): for --replot."""
    out = {}
    for name, rounds in runs.items():
        out[name] = []
        for run in rounds:
            reqs = [ReqRecord(r["request_id"], r["kind"], r["clip"], r["arrival_s"], r["max_tokens"],
                              r["num_prompt_tokens"], r["ttft_slo_ms"], r["token_times_s"], r["finish_reason"])
                    for r in run["requests"]]
            steps = np.asarray(run["steps"], dtype=np.float64)
            steps = steps.reshape(len(run["steps"]), -1) if steps.size else steps.reshape(0, len(STEP_FIELDS))
            # Runs recorded before a field was appended to STEP_FIELDS: the missing columns are 0.
            steps = np.pad(steps, ((0, 0), (0, len(STEP_FIELDS) - steps.shape[1])))
            out[name].append(RunRecord(0.0, reqs, steps, run.get("wall_s", 0.0), run.get("other_cpu_cores"),
                                       run.get("error")))
    return out
