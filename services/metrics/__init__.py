"""Prometheus metrics of every EDIS process: one `edis_` prefix, base units, counters ending
in `_total`, histograms with buckets that fit what they measure, low-cardinality labels.

- `endpoint.py`: the /metrics HTTP endpoint of a process (127.0.0.1 unless told otherwise);
- `learner.py`: the learner of `edis run`, read from the records it writes to metrics.jsonl;
- `sampler.py`: the sampler service, its state at scrape time and its gRPC calls;
- `rollout.py`: the rollout actors, through `ray.util.metrics` (exported by Ray's node agent).
"""
