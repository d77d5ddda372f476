"""helpers.speculative (notebook 09): the counters' arithmetic, and ngram speculation in real vLLM
(``tiny``): the counters are there, consistent with each other, and an engine without statistics
is a clear error. Speed is not asserted: it lives in the notebook's measurement."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from helpers.speculative import SpecCounts, copy_prompts, first_difference, open_prompts


def test_the_counters_arithmetic():
    later, earlier = SpecCounts(10, 40, 30, (9, 8, 7, 6)), SpecCounts(2, 8, 4, (2, 1, 1))
    assert later - earlier == SpecCounts(8, 32, 26, (7, 7, 6, 6))
    assert (later - earlier).acceptance_rate == 26 / 32
    assert (later - earlier).mean_acceptance_length == 1 + 26 / 8
    assert math.isnan(SpecCounts().acceptance_rate) and math.isnan(SpecCounts().mean_acceptance_length)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_the_workloads():
    copies = copy_prompts(5)
    assert len(copies) == 5 and all(len(p) == 1 and p[0]["role"] == "user" for p in copies)
    assert len({p[0]["content"] for p in open_prompts(8)}) == 8


SCRIPT = """
import json
from helpers.errors import CourseError
from helpers.engines import release
from helpers.settings import get_settings
from helpers.speculative import spec_counts, timed_chat

if __name__ == "__main__":
    settings = get_settings("tiny")
    settings.apply_vllm_environment()
    from vllm import LLM, SamplingParams
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    prompts = [[{"role": "user", "content": "a b c a b c a b c a b c " * 4}]] * 3
    result = {}
    llm = LLM(**settings.llm_kwargs())
    try:
        spec_counts(llm)
    except CourseError as error:
        result["no stats"] = str(error)
    release(llm); del llm
    # the speculative engine last: the CPU build cannot start another engine in this process after it
    llm = LLM(**settings.llm_kwargs(disable_log_stats=False, speculative_config={
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}))
    run = timed_chat(llm, prompts, params, one_at_a_time=True)
    c = run.counts
    result["ngram"] = [c.drafts, c.draft_tokens, c.accepted, list(c.per_position), run.tokens]
    print("RESULT" + json.dumps(result))
"""


@pytest.mark.vllm
def test_ngram_counters_in_vllm(tmp_path):
    from helpers.settings import get_settings

    script = tmp_path / "spec.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "COURSE_MODELS_ROOT": str(get_settings("tiny").models_root)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    drafts, draft_tokens, accepted, per_position, tokens = result["ngram"]
    assert tokens == 3 * 64
    assert drafts > 0 and drafts <= draft_tokens <= 4 * drafts   # at most 4 proposed per draft
    assert 0 <= accepted <= draft_tokens and sum(per_position) == accepted and len(per_position) == 4
    assert "disable_log_stats=False" in result["no stats"]
