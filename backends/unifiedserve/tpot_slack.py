"""How long one step may take while streams decode: what each stream's TPOT SLO (a mean over its gaps) allows.

A stream's SLO is on its mean TPOT, as clients measure it over the whole answer: (last token - first token) /
gaps. So a step may spend the slack the stream's faster gaps banked (its mean so far under SLO x
`tpot_headroom`), and, when the stream's remaining length is certain, part of the slack its remaining
decode-only steps will earn (`tpot_credit_fraction`): a stream that surely decodes 100 more tokens at 12 ms
against a 16 ms target can afford a 40 ms step now, however far behind its mean is at this instant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def stream_left_tokens(req) -> int:
    """Upper bound of the decode steps a running stream still takes (max_tokens, or the length cap)."""
    by_max = req.sampling_params.max_tokens - req.num_output_tokens
    by_len = req.max_total_tokens - req.num_tokens if req.max_total_tokens else by_max
    return max(0, min(by_max, by_len))


def guaranteed_steps_after_this(req) -> int:
    """Decode steps `req` will surely take after this step's: its remaining length when only the length limits
    can end it (ignore_eos, no stop strings), else 0 (an end-of-sequence token may be the next one)."""
    if req.eos_token_ids or req.sampling_params.stop:
        return 0
    return max(0, stream_left_tokens(req) - 1)


def tpot_credit_s(config, req, slo_s: float, decode_s: float | None) -> float:
    """The part of the slack `req`'s certain future decode-only steps earn (SLO x headroom - `decode_s` each) that
    this step may spend now: `tpot_credit_fraction` of it, so that every decode-only step still gains the rest
    (the credit shrinks by fraction x earning per step while the banked slack grows by the whole earning), and
    the credit is 0 by the stream's last token: its final mean stays under SLO x headroom if the prices hold."""
    if decode_s is None or config.tpot_credit_fraction <= 0:
        return 0.0
    earning = slo_s * config.tpot_headroom - decode_s
    return config.tpot_credit_fraction * guaranteed_steps_after_this(req) * earning if earning > 0 else 0.0


def can_meet_slo(req, slo_s: float, now: float, decode_s: float | None) -> bool:
    """Whether decode-only steps of `decode_s` from now on would still bring `req`'s mean TPOT under its SLO by its
    last possible token (max_tokens or the length cap; an answer that may end earlier by EOS gets the benefit of
    the doubt). A stream that cannot is lost whatever the scheduler does: it still decodes every step, but its
    slack no longer holds other requests back (the goodput view SLO-aware schedulers take of hopeless requests).
    Served (2026-12-06, 0.416 req/s): two streams 79-222 ms behind, whose decode-only steps were predicted above
    the per-gap target, took a forced encoder unit (7-9 ms) in each of 12 steps; one ended at a mean of 26 ms
    against an 18.27 ms SLO."""
    if decode_s is None or getattr(req, "first_token_time", None) is None:
        return True
    left = stream_left_tokens(req)
    gaps_at_end = req.num_output_tokens - 1 + left
    return (now - req.first_token_time) + left * decode_s <= slo_s * gaps_at_end


def _stream_slos(config, decoders: Sequence) -> list[tuple]:
    """(stream, its TPOT SLO in seconds) for the decoding streams that have one (their own, else the config's)."""
    slos = [(r, (r.tpot_slo_ms or config.tpot_slo_ms) / 1000.0) for r in decoders]
    return [(r, s) for r, s in slos if s > 0]


def _stream_slack_s(config, req, slo_s: float, level: float, now: float, decode_s: float | None,
                    full_credit: bool = False) -> float:
    """The time this step may take so that `req`'s mean TPOT after it stays under `level` x its SLO: what its gaps so
    far banked (after this step it has num_output_tokens gaps) plus its credit (full_credit: all that its certain
    decode-only steps will earn at `level`, not `tpot_credit_fraction` of their earning at the headroom target)."""
    banked = slo_s * level * req.num_output_tokens - (now - req.first_token_time)
    if full_credit and decode_s is not None:
        return banked + guaranteed_steps_after_this(req) * (slo_s * level - decode_s)
    return banked + tpot_credit_s(config, req, slo_s, decode_s)


def step_target_s(config, decoders: Sequence, candidates: Sequence, now: float, decode_s: float | None = None
                  ) -> tuple[float, float, float] | None:
    """(target, boost, per-gap target) for one step's time (policy `unified`), or None when no TPOT target
    applies. `decode_s`: the predicted time of a decode-only step of `decoders` (None: no credit).

    With streams decoding: the per-gap target is the tightest TPOT SLO x `tpot_headroom`; a step may take up to
    `tpot_max_gap_factor` per-gap targets but never past a stream's slack: the time this step may take so that
    the mean TPOT of the stream's gaps so far stays under its SLO x `tpot_headroom`, plus its credit (a stream
    that lost time to a slow step or a preemption, with no credit, gets decode-only steps until it is back).
    The boost is what the slack allows beyond the target, up to twice the per-gap target (or the gap cap, if
    larger).
    Streams that can no longer meet their SLO (`can_meet_slo`) set no target; when no other stream does, steps
    are timed as if none decoded.
    Without decoders: `max_idle_step_ms` (default 2 x the TPOT target), so that a request arriving during a
    long prefill or encoder step waits at most that long before the scheduler sees it.
    """
    if config.policy != "unified":
        return None
    slos = _stream_slos(config, decoders)
    if decoders and not slos:
        return None
    slos = [(r, s) for r, s in slos if can_meet_slo(r, s, now, decode_s)]
    if slos:
        per_gap = min(s for _, s in slos) * config.tpot_headroom
        slack = math.inf
        for r, slo in slos:
            if getattr(r, "first_token_time", None) is not None:
                # The mean is steered to SLO x headroom too: steered to the SLO itself, streams ended 0.5-1 %
                # above it as the client measured them (serving benchmark, 2026-11-21).
                slack = min(slack, _stream_slack_s(config, r, slo, config.tpot_headroom, now, decode_s))
            else:  # no gap measured yet: nothing banked
                slack = min(slack, per_gap)
        # One gap may run past the per-gap target up to tpot_max_gap_factor x it, paid from the slack: a few long
        # steps with big prefill chunks, then decode-only steps that earn the slack back (the mean stays steered).
        gap_cap = per_gap * config.tpot_max_gap_factor
        target = min(gap_cap, slack)
        return target, max(0.0, min(slack, max(2.0 * per_gap, gap_cap)) - max(target, 0.0)), per_gap
    if config.max_idle_step_ms > 0:
        return config.max_idle_step_ms / 1000.0, 0.0, math.inf
    idle_slos = [s for s in [config.tpot_slo_ms] + [r.tpot_slo_ms or 0.0 for r in [*decoders, *candidates]] if s > 0]
    return (2.0 * min(idle_slos) / 1000.0, 0.0, math.inf) if idle_slos else None


def risk_slack_s(config, decoders: Sequence, now: float, decode_s: float | None = None, full_credit: bool = False
                 ) -> float:
    """The time one step may take, for a request whose TTFT deadline is at risk, so that every stream's mean TPOT
    stays under the midpoint of its SLO x `tpot_headroom` and the SLO itself (plus its credit): half of the noise
    margin the per-gap target keeps is worth spending on a first token that would otherwise come late. Served
    (2026-12-06, step trace at 2.0 req/s): two streams decoding at their headroom target left a 95-token question
    4-15 tokens per step until its 119 ms deadline passed (first token after 938 ms), while `blocking` prefilled
    such questions in one step and its streams still met the SLO.

    full_credit: each stream lends all that its certain remaining decode-only steps will earn at that level, not
    `tpot_credit_fraction` of their earning at the headroom target: it can still end under the midpoint if every
    later step is decode-only at `decode_s` (what a catch-up step's request at risk may spend, cost_model.py)."""
    level = (1.0 + config.tpot_headroom) / 2.0
    slack = math.inf
    for r, slo in _stream_slos(config, decoders):
        if getattr(r, "first_token_time", None) is None or not can_meet_slo(r, slo, now, decode_s):
            continue
        slack = min(slack, _stream_slack_s(config, r, slo, level, now, decode_s, full_credit))
    return max(0.0, slack) if math.isfinite(slack) else 0.0
