"""Prometheus metrics: counters kept by the SCP process, the rest read from the database at scrape time
(so workers in other processes or machines need no metrics server of their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy.orm import sessionmaker

from . import ledger
from .status import queue_depths

LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances = Counter("contourqa_instances_received", "C-STORE requests by outcome",
                                 ["outcome"], registry=self.registry)
        self.associations = Counter("contourqa_associations", "association requests by outcome",
                                    ["outcome"], registry=self.registry)

    def watch(self, sessions: sessionmaker, broker_url: str | None) -> None:
        self.registry.register(_DatabaseCollector(sessions, broker_url))

    def serve(self, port: int, host: str = "0.0.0.0"):
        return start_http_server(port, addr=host, registry=self.registry)


class _DatabaseCollector:
    def __init__(self, sessions: sessionmaker, broker_url: str | None):
        self.sessions, self.broker_url = sessions, broker_url

    def collect(self):
        with self.sessions() as session:
            cases, outbox = ledger.counts_by_state(session)
            outside = ledger.rois_outside_domain(session)
            unreadable = ledger.rois_unreadable(session)
            failures = ledger.export_failures(session)
            latencies = ledger.latencies_s(session)
        for name, help_text, counts in (("contourqa_cases", "cases by state", cases),
                                        ("contourqa_outbox", "SRs in the outbox by state", outbox)):
            family = GaugeMetricFamily(name, help_text, labels=["state"])
            for state, count in counts.items():
                family.add_metric([state], count)
            yield family
        yield CounterMetricFamily("contourqa_export_failures", "failed export attempts", value=failures)
        yield CounterMetricFamily("contourqa_rois_outside_domain",
                                  "ROIs whose image lay outside the model's training domain (no Dice given)", value=outside)
        yield CounterMetricFamily("contourqa_rois_unreadable",
                                  "ROIs in whose contour the model read no organ's surface (no Dice given)", value=unreadable)
        yield _latency_histogram(latencies)
        depth = GaugeMetricFamily("contourqa_queue_depth", "messages waiting per queue", labels=["queue"])
        for queue, count in queue_depths(self.broker_url).items():
            if count is not None:
                depth.add_metric([queue], count)
        yield depth


def _latency_histogram(seconds: list[float]) -> HistogramMetricFamily:
    buckets = [(str(le), sum(1 for s in seconds if s <= le)) for le in LATENCY_BUCKETS]
    buckets.append(("+Inf", len(seconds)))
    return HistogramMetricFamily("contourqa_assessment_latency_seconds",
                                 "time from a case being complete to its result", buckets=buckets,
                                 sum_value=sum(seconds))
