#!/usr/bin/env python
"""Offline engine benchmark (no Triton): `unified` vs `blocking` vs `fcfs` on one Poisson trace of video + text.

    .venv/bin/python scripts/bench_engine.py [--quick] [--out bench_out/engine]
        [--model-preset small|tiny|7b | --model PATH] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--policies unified,blocking,fcfs] [--duration S | --num-requests N] [--rate auto|REQ_PER_S] [--load 0.5]
        [--rounds R] [--video-fraction 0.35] [--tpot-slo-scale 1.5 | --tpot-slo-ms MS] [--ttft-slo-scale 5]
        [--burst N] [--seed 0] [--replot DIR]      (all flags: --help; results: docs/benchmarks_engine.md)

What it does, in order (DESIGN.md 7: one run, same inputs, side by side, the machine stated):

1. Model and clips. The generated `small` Qwen2.5-VL (encoding one video ~ 10-20 decode steps on a 2-core CPU) is
   made if missing; real videos from ``--video-dir`` are decoded ONCE with FlashCodec at the model's pixel limits
   (16-32 frames each); decoding is not part of this benchmark. Every video request is encoded (no content key, so
   the encoder output cache never hits).
2. Calibration on an unloaded engine: the decode step period vs batch size (text contexts) and at the typical batch
   with a video/text mix (25th percentile of step periods), the TTFT of one text request alone and of each clip
   alone, the encoder time per clip and its smallest unit, one temporal group through one vision block (minimum of
   repetitions: on a shared machine other processes only add time). SLOs derive from it:
   TPOT SLO = tpot_slo_scale x decode step at the typical mixed batch; TTFT SLO per request = ttft_slo_scale x the
   unloaded TTFT of its kind (text, or that clip). The engine's `tpot_slo_ms` is the same TPOT SLO (what `unified`
   plans against). With ``--rate auto`` the arrival rate is chosen from the same numbers for a target load.
3. A seeded trace: Poisson arrivals, ~35 % video requests, fixed output lengths (ignore_eos), each request
   carrying its TTFT and TPOT SLO. Replayed in wall-clock time against each policy in turn: a fresh Engine per policy
   (same weights and seed), an untimed warm-up of a few requests first (so `unified`'s online cost model has
   samples), then `engine.step()` in a loop, adding the requests whose arrival time has passed, sleeping only when
   idle. Arrival, first-token and every token time are recorded per request, and every step's StepStats. The
   default mode replays the trace twice per policy (order rotated each round, waiting for a quiet machine first) and
   pools the rounds; the CPU other processes used during each run is recorded (shared machines are noisy).
4. Optional ``--burst N``: the first N trace requests all at t=0 (the machine saturated): token throughput capacity.

Metrics per policy: TTFT and TPOT (per-request mean gap) p50/p90/p99, per-token gap percentiles, tokens/s and
requests/s over the run, SLO attainment (TTFT <= its SLO and mean TPOT <= the TPOT SLO) and goodput, attainment at
other TTFT scales (post hoc), and the key one: p99 of per-token gaps whose interval overlapped a step that ran
encoder work vs p99 of gaps of pure decode steps. Outputs in ``--out``: ``results.json`` (machine, config,
calibration, per-policy metrics, step-stats summaries), ``raw.json`` (per-request token times, per-step stats),
``timeline.png`` (per-token gaps over time with encoder steps shaded; TTFT/TPOT CDFs) and a printed table.
Numbers, never pass/fail: tests only check that this runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "backends", REPO / "scripts"):  # works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_engine_calibration import auto_rate, calibrate, choose_slos, make_engine, warmup_items  # noqa: E402
from bench_engine_metrics import (  # noqa: E402
    cost_model_check,
    cost_model_state,
    load_raw,
    raw_dump,
    summarize,
    targets,
)
from bench_engine_report import fv, machine_info, machine_line, plot, print_table  # noqa: E402
from bench_engine_trace import (  # noqa: E402
    CLIP_POOL,
    OtherCpu,
    RunRecord,
    TraceItem,
    load_clips,
    make_trace,
    replay,
    wait_quiet,
)

DEFAULT_OUT = Path("bench_out/engine")
MODEL_DIRS = {"tiny": "tiny-qwen2.5-vl", "small": "small-qwen2.5-vl", "7b": "7b-qwen2.5-vl"}


# --------------------------------------------------------------------------------------------- inputs




def ensure_model(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    path = REPO / "artifacts" / "models" / MODEL_DIRS[args.model_preset]
    import make_tiny_model  # idempotent: cheap when the folder is complete and current

    argv = ["--out", str(path), "--preset", args.model_preset]
    if make_tiny_model.main(argv) != 0:
        raise SystemExit(f"could not generate the {args.model_preset} model in {path}")
    return str(path)








# --------------------------------------------------------------------------------------------- replay














# --------------------------------------------------------------------------------------------- metrics


















# --------------------------------------------------------------------------------------------- calibration














# --------------------------------------------------------------------------------------------- output




















def replot(folder: Path) -> int:
    results = json.loads((folder / "results.json").read_text())
    runs = load_raw(json.loads((folder / "raw.json").read_text())["trace"])
    for name, rounds in runs.items():  # older raw.json files lack the per-run background load: take it from results
        for run, info in zip(rounds, results["policies"][name].get("rounds", []), strict=False):
            run.other_cpu_cores = info.get("other_cpu_cores") if run.other_cpu_cores is None else run.other_cpu_cores
    return 0 if plot(results, runs, folder / "timeline.png") else 1


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short trace and calibration (~2-3 min on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model-preset", choices=sorted(MODEL_DIRS), default="small")
    ap.add_argument("--model", type=Path, help="checkpoint folder (overrides --model-preset)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on cuda")
    ap.add_argument("--video-dir", type=Path, default=REPO / "artifacts" / "videos")
    ap.add_argument("--num-clips", type=int, default=len(CLIP_POOL))
    ap.add_argument("--policies", default="unified,blocking,fcfs")
    ap.add_argument("--duration", type=float, default=None, help="trace length in s (default 70; --quick 35)")
    ap.add_argument("--rounds", type=int, default=None, help="replays of the trace per policy, order rotated, pooled "
                    "(default 2; --quick 1)")
    ap.add_argument("--wait-quiet", type=float, default=None, help="before each run, wait up to this many s for "
                    "other processes to use < --quiet-cores (default 30; --quick 0)")
    ap.add_argument("--quiet-cores", type=float, default=0.3)
    ap.add_argument("--num-requests", type=int, default=None, help="fixed request count instead of --duration")
    ap.add_argument("--rate", default="auto", help="req/s, or auto: --load x the machine's estimated capacity")
    ap.add_argument("--load", type=float, default=0.5, help="target load for --rate auto (an estimate: the measured "
                    "busy fraction comes out higher, ~0.65 at 0.5 on 2 CPU cores)")
    ap.add_argument("--video-fraction", type=float, default=0.35)
    ap.add_argument("--text-tokens", default="48,160", help="min,max output tokens of text requests")
    ap.add_argument("--video-tokens", default="32,96", help="min,max output tokens of video requests")
    ap.add_argument("--tpot-slo-scale", type=float, default=1.5)
    ap.add_argument("--tpot-slo-ms", type=float, default=None, help="fixed TPOT SLO instead of the scale rule")
    ap.add_argument("--ttft-slo-scale", type=float, default=5.0)
    ap.add_argument("--typical-batch", type=int, default=4)
    ap.add_argument("--calib-batches", default=None, help="decode batches to time (default 1,2,4,8,16; quick 1,4,8)")
    ap.add_argument("--calib-reps", type=int, default=None)
    ap.add_argument("--burst", type=int, default=None, help="also run N requests at t=0 (default 16; quick 0)")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--encoder-budget-tokens", type=int, default=4096)
    ap.add_argument("--kv-cache-gib", type=float, default=None, help="KV pool size (default: engine's; cuda: 8)")
    ap.add_argument("--no-overlap-encoder", action="store_true",
                    help="CUDA: no low-priority encoder stream beside the LLM step (EngineConfig.overlap_encoder)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", type=Path, metavar="DIR", help="only redraw DIR/timeline.png from its JSON files")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.kv_cache_gib is None and args.device.startswith("cuda"):
        args.kv_cache_gib = 8.0
    args.duration = args.duration or (35.0 if args.quick else 70.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.wait_quiet = (0.0 if args.quick else 30.0) if args.wait_quiet is None else args.wait_quiet
    batches = args.calib_batches or ("1,4,8" if args.quick else "1,2,4,8,16")
    args.calib_batches = sorted({int(x) for x in batches.split(",")} | {args.typical_batch})
    args.calib_reps = args.calib_reps or (2 if args.quick else 3)
    args.burst = (0 if args.quick else 16) if args.burst is None else args.burst
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    machine = machine_info(args.device)
    print(f"machine: {machine_line(machine)}")
    if machine["loadavg_start"][0] > 0.5 * machine["cores"] and not args.device.startswith("cuda"):
        print(f"WARNING: load average {machine['loadavg_start'][0]} on {machine['cores']} cores: other work is "
              "running; timings will be noisy (see other_cpu_cores per policy)")
    model_path = ensure_model(args)
    clips = load_clips(args.video_dir, model_path, args.num_clips)
    print(f"model {model_path}; clips: " + ", ".join(f"{c.name} {tuple(c.frames.shape)}" for c in clips))

    waited = wait_quiet(args.quiet_cores, args.wait_quiet)
    t, other = time.monotonic(), OtherCpu()
    calib = calibrate(args, model_path, clips)
    calib["other_cpu_cores"], calib["waited_for_quiet_s"] = other.cores(), round(waited, 1)  # the SLOs depend on it
    print(f"calibration ({time.monotonic() - t:.0f} s): decode period vs batch "
          f"{calib['decode_period_ms_vs_batch_text']} ms, typical mixed batch "
          f"{calib['decode_period_ms_typical_mixed']} ms, unloaded TTFT "
          f"{calib['unloaded_ttft_ms']} ms; encode ms / smallest unit ms per clip: "
          + ", ".join(f"{c['encode_ms']:.0f}/{fv(c['smallest_unit_ms'], '.1f')} ({c['encode_in_decode_steps']} steps)"
                      for c in calib["clips"]))
    slos = choose_slos(args, calib, clips)
    text_tokens = tuple(int(x) for x in args.text_tokens.split(","))
    video_tokens = tuple(int(x) for x in args.video_tokens.split(","))
    rate_info = auto_rate(args, calib, text_tokens, video_tokens) if args.rate == "auto" else {"rate": float(args.rate)}
    rate = rate_info["rate"]
    trace = make_trace(np.random.default_rng(args.seed), rate, args.duration, args.num_requests,
                       args.video_fraction, len(clips), text_tokens, video_tokens)
    if not trace:
        raise SystemExit("empty trace: raise --duration or --rate")
    unloaded = calib["unloaded_ttft_ms"]
    command = " ".join(["scripts/bench_engine.py", *(argv if argv is not None else sys.argv[1:])])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"model_path": model_path}
    results: dict = {
        "machine": machine, "command": command, "config": config,
        "calibration": calib, "slos": slos, "rate": rate_info,
        "trace": {"rate": rate, "duration_s": trace[-1].arrival_s, "num_requests": len(trace),
                  "num_video": sum(it.kind == "video" for it in trace),
                  "output_tokens": sum(it.max_tokens for it in trace), "seed": args.seed},
        "policies": {}, "burst": {},
    }
    print(f"SLOs: {slos['rule']}\ntrace: {len(trace)} requests, {results['trace']['num_video']} video, "
          f"{rate} req/s ({rate_info})")
    runs: dict[str, list[RunRecord]] = {p: [] for p in args.policies}
    bursts: dict[str, list[RunRecord]] = {p: [] for p in args.policies}
    per_round: dict[str, list[dict]] = {p: [] for p in args.policies}
    for rnd in range(args.rounds):
        # Rotate the order each round so slow drifts of the machine's background load hit every policy alike.
        for policy in args.policies[rnd % len(args.policies):] + args.policies[: rnd % len(args.policies)]:
            waited = wait_quiet(args.quiet_cores, args.wait_quiet)
            engine = make_engine(args, model_path, policy, slos["tpot_slo_ms"])
            warm = replay(engine, warmup_items(len(clips)), clips, slos, max_wall_s=300.0, start_delay_s=0.0)
            t = time.monotonic()
            run = replay(engine, trace, clips, slos, max_wall_s=args.duration * 4 + 300.0)
            runs[policy].append(run)
            m = summarize([run], slos, unloaded)
            per_round[policy].append({
                "round": rnd, "waited_for_quiet_s": round(waited, 1), "other_cpu_cores": m["other_cpu_cores"],
                "warmup_error": warm.error, "slo_attainment": m["slo"]["attainment"],
                "tokens_per_s": m["tokens_per_s"], "encoder_vs_decode_only_p99": m["encoder_vs_decode_only_p99"],
                "cost_model_end": cost_model_state(engine), "cost_model_check": cost_model_check(engine, run)})
            print(f"[{policy} round {rnd}] {time.monotonic() - t:.0f} s: TTFT p50 {fv(m['ttft_ms']['p50'])} ms, "
                  f"TPOT p99 {fv(m['tpot_ms']['p99'], '.1f')} ms, gap p99 enc/dec "
                  f"{fv(m['token_gap_ms_encoder']['p99'], '.1f')}/{fv(m['token_gap_ms_decode_only']['p99'], '.1f')} "
                  f"ms, SLO {fv(m['slo']['attainment'], '.1%')}, {m['tokens_per_s']:.1f} tok/s, other CPU "
                  f"{fv(m['other_cpu_cores'], '.2f')} cores" + (f", ERROR {m['error']}" if m["error"] else ""))
            if args.burst:
                burst = [TraceItem(f"b{i:04d}", 0.0, it.kind, it.prompt, it.max_tokens, it.clip)
                         for i, it in enumerate(trace[: args.burst])]
                bursts[policy].append(replay(engine, burst, clips, slos, max_wall_s=600.0))
            del engine
    for policy in args.policies:
        results["policies"][policy] = summarize(runs[policy], slos, unloaded) | {"rounds": per_round[policy]}
        if bursts[policy]:
            b = summarize(bursts[policy], slos, None)
            results["burst"][policy] = {k: b[k] for k in ("num_requests", "span_s", "output_tokens", "tokens_per_s",
                                                         "requests_per_s", "ttft_ms", "tpot_ms", "error",
                                                         "other_cpu_cores")}
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    raw = {"trace": raw_dump(runs), "burst": raw_dump({p: b for p, b in bursts.items() if b})}
    (args.out / "raw.json").write_text(json.dumps(raw) + "\n")
    if not args.no_plot and plot(results, runs, args.out / "timeline.png"):
        print(f"plot: {args.out / 'timeline.png'}")
    print_table(results)
    print(f"\nresults: {args.out / 'results.json'} (raw: raw.json)")
    return 1 if any(m["error"] for m in results["policies"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
