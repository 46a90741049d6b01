"""UnifiedServe metrics on Triton's metrics port (pb_utils.MetricFamily), labelled by model/version.

Values are read from the engine by the adapter's watcher thread (cheap counter reads, no locks on the
engine loop) and observed per request by the response thread.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TPOT_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]


class UnifiedServeMetrics:
    def __init__(self, labels: dict[str, str]) -> None:
        def family(name: str, desc: str, kind):
            return pb_utils.MetricFamily(name=name, description=desc, kind=kind)

        kinds = pb_utils.MetricFamily
        gauge, counter, hist = kinds.GAUGE, kinds.COUNTER, kinds.HISTOGRAM
        self._families = {
            "in_flight": family("unifiedserve_requests_in_flight", "Requests admitted and not finished", gauge),
            "waiting": family("unifiedserve_requests_waiting", "Requests waiting for prefill or preempted", gauge),
            "running": family("unifiedserve_requests_running", "Requests with KV blocks (prefill or decode)", gauge),
            "waiting_encoder": family("unifiedserve_requests_waiting_encoder",
                                      "Requests whose video is not fully encoded yet", gauge),
            "encoder_share": family("unifiedserve_encoder_time_share",
                                    "Share of recent step time spent in the vision encoder", gauge),
            "cache_hits": family("unifiedserve_encoder_cache_hits_total", "Videos served from the encoder cache",
                                 counter),
            "kv_usage": family("unifiedserve_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", gauge),
            "preemptions": family("unifiedserve_preemptions_total", "Requests preempted (recompute)", counter),
            "finished": family("unifiedserve_requests_finished_total", "Requests finished, any reason", counter),
            "cancelled": family("unifiedserve_requests_cancelled_total", "Requests cancelled by the client", counter),
            "ttft": family("unifiedserve_time_to_first_token_seconds", "Arrival to first token", hist),
            "tpot": family("unifiedserve_time_per_output_token_seconds", "Mean gap between output tokens", hist),
        }
        f = self._families
        self.in_flight = f["in_flight"].Metric(labels=labels)
        self.waiting = f["waiting"].Metric(labels=labels)
        self.running = f["running"].Metric(labels=labels)
        self.kv_usage = f["kv_usage"].Metric(labels=labels)
        self.waiting_encoder = f["waiting_encoder"].Metric(labels=labels)
        self.encoder_share = f["encoder_share"].Metric(labels=labels)
        self.cache_hits = f["cache_hits"].Metric(labels=labels)
        self._hits_seen = 0
        self.preemptions = f["preemptions"].Metric(labels=labels)
        self.finished = f["finished"].Metric(labels=labels)
        self.cancelled = f["cancelled"].Metric(labels=labels)
        self.ttft = f["ttft"].Metric(labels=labels, buckets=LATENCY_BUCKETS_S)
        self.tpot = f["tpot"].Metric(labels=labels, buckets=TPOT_BUCKETS_S)
        self._preemptions_seen = 0

    def update_engine_state(self, stats: dict) -> None:
        self.in_flight.set(stats["num_in_flight"])
        self.waiting.set(stats["num_waiting"])
        self.running.set(stats["num_running"])
        self.kv_usage.set(stats["kv_cache_usage"])
        self.waiting_encoder.set(stats["num_waiting_encoder"])
        self.encoder_share.set(stats["encoder_time_share"])
        if stats["encoder_cache_hits"] > self._hits_seen:
            self.cache_hits.increment(stats["encoder_cache_hits"] - self._hits_seen)
            self._hits_seen = stats["encoder_cache_hits"]
        new = stats["num_preemptions"] - self._preemptions_seen
        if new > 0:
            self.preemptions.increment(new)
            self._preemptions_seen += new

    def observe_finished(self, ttft_s: float | None, tpot_s: float | None, cancelled: bool) -> None:
        self.finished.increment(1)
        if cancelled:
            self.cancelled.increment(1)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def close(self) -> None:
        # Metric objects must go before their families (python_backend rule).
        for name in list(self._families):
            delattr(self, name)
        self._families.clear()
