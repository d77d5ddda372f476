"""Honest benchmarks: vLLM vs Hugging Face transformers offline, and a server under load (notebook 04).

* :mod:`.prompts` - one seeded prompt set (token ids) with fixed or ShareGPT-like mixed lengths;
* :mod:`.config` and :mod:`.fit` - what an offline sweep runs, and the check that it fits;
* :mod:`.offline` - offline throughput, each engine in its own process (:mod:`.worker`), token counts asserted;
* :mod:`.variants` - how each engine runs: transformers variants (sorted batches, attention, cache), vLLM engine mode;
* :mod:`.vllm_tools` - ``vllm bench throughput`` / ``serve`` on the same work, and the agreement check;
* :mod:`.serving` - streaming client sweeping concurrency: TTFT, TPOT, ITL, e2e percentiles;
* :mod:`.stats` - percentiles (``numpy.percentile``) and token accounting;
* :mod:`.records` - the JSON results files: atomic writes, one reader that refuses damaged files;
* :mod:`.report` and :mod:`.plots` - tables, conclusions and plots computed from the records;
* :mod:`.gateway` - what the API gateway of notebook 05 adds: the same streams direct and through it.

From a terminal: ``.venv/bin/python -m helpers.bench offline ...`` / ``serve ...`` / ``gateway ...`` /
``show ...`` (see :mod:`.cli`). Importing this package does not import torch, transformers or vLLM.
"""

from ..errors import BenchConfigError, BenchError
from .config import OfflineConfig
from .fit import FitReport, check_lengths, check_offline_fit
from .offline import run_offline
from .plots import Plot, plot_crossover, plot_latency_throughput, plot_speedup, plot_throughput, run_name
from .prompts import SHAREGPT_LIKE, LogNormalLengths, Request, make_requests, regular_token_ids, sample_lengths
from .records import RECORD_KINDS, load_records, save_records
from .report import conclusions, speedup_rows, speedup_table, table
from .variants import ENGINE_MODES, HFVariant
from .serving import RequestResult, ServeConfig, check_server, level_record, run_serving
from .stats import percentile, summarize, time_per_output_token, useful_output_tokens

__all__ = [
    "BenchConfigError", "BenchError", "ENGINE_MODES", "HFVariant", "FitReport", "LogNormalLengths", "OfflineConfig", "Plot", "RECORD_KINDS",
    "Request", "RequestResult", "SHAREGPT_LIKE", "ServeConfig", "check_lengths", "check_offline_fit", "check_server",
    "conclusions", "level_record", "load_records", "make_requests", "percentile", "plot_latency_throughput",
    "plot_crossover", "plot_speedup", "run_name", "plot_throughput", "regular_token_ids", "run_offline", "run_serving", "sample_lengths",
    "save_records", "speedup_rows", "speedup_table", "summarize", "table", "time_per_output_token",
    "useful_output_tokens",
]
