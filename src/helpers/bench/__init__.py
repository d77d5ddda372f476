"""Honest benchmarks: vLLM vs Hugging Face transformers offline, and a server under load (notebook 04).

* :mod:`.prompts` - one seeded prompt set (token ids) with fixed or ShareGPT-like mixed lengths;
* :mod:`.offline` - offline throughput, each engine in its own subprocess, token counts asserted;
* :mod:`.serving` - streaming client sweeping concurrency: TTFT, TPOT, ITL, e2e percentiles;
* :mod:`.stats` - percentiles (numpy's linear interpolation) and token accounting;
* :mod:`.report` - tables, conclusions and plots computed from the records.

From a terminal: ``python -m helpers.bench offline ...`` / ``serve ...`` / ``show ...``
(see :mod:`.cli`). Importing this package does not import torch, transformers or vLLM.
"""

from .offline import (
    BenchConfigError,
    BenchError,
    FitReport,
    OfflineConfig,
    check_lengths,
    check_offline_fit,
    load_records,
    run_offline,
    save_records,
)
from .prompts import SHAREGPT_LIKE, LogNormalLengths, Request, make_requests, regular_token_ids, sample_lengths
from .report import (
    Plot,
    conclusions,
    plot_latency_throughput,
    plot_speedup,
    plot_throughput,
    speedup_rows,
    speedup_table,
    table,
)
from .serving import ServeConfig, check_server, level_record, run_serving
from .stats import percentile, summarize, time_per_output_token, useful_output_tokens

__all__ = [
    "BenchConfigError", "BenchError", "FitReport", "LogNormalLengths", "OfflineConfig", "Plot", "Request",
    "SHAREGPT_LIKE", "ServeConfig", "check_lengths", "check_offline_fit", "check_server", "conclusions", "level_record",
    "load_records", "make_requests", "percentile", "plot_latency_throughput", "plot_speedup", "plot_throughput",
    "regular_token_ids", "run_offline", "run_serving", "sample_lengths", "save_records", "speedup_rows",
    "speedup_table", "summarize", "table", "time_per_output_token", "useful_output_tokens",
]
