"""The gateway under fuzzing and a soak (notebook 05): no server error, no stream damaged.

* **Fuzzing**: schemathesis generates requests from the gateway's OpenAPI schema, valid
  (positive) and invalid (negative) ones, with and without the key, and every answer must be
  a non-5xx with a JSON error body when it is an error. The upstream is
  :mod:`helpers.instant_upstream` in its own process, so pass-through requests get real answers.
* **Soak**: 96 streams, 32 at a time, two rounds, through the gateway and directly: 0 errors
  and the same token counts on both paths.
"""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from helpers.gateway import GatewayConfig, create_app
from helpers.instant_upstream import InstantUpstream

pytest.register_assert_rewrite("gateway_upstream")
from gateway_upstream import GatewayThread  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 25
CALLS: list[int] = []

_config = SchemathesisConfig()
_config.projects.default.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                           max_examples=EXAMPLES)
SCHEMA = schemathesis.openapi.from_dict(
    create_app(GatewayConfig(upstreams=("http://127.0.0.1:9",), api_keys=(KEY,))).openapi(), config=_config)


@pytest.fixture(scope="module")
def instant():
    with InstantUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(instant):
    app = create_app(GatewayConfig(upstreams=(instant.base_url,), api_keys=(KEY,), read_timeout=30, retries=1))
    with GatewayThread(app) as served:
        yield served


def _json_error_when_error(ctx, response, case) -> None:
    """4xx answers carry an OpenAI-shaped JSON error body, and nothing looks like a traceback."""
    assert "Traceback" not in response.text
    if response.status_code == 400 and response.text == "Invalid HTTP request received.":
        return  # uvicorn refused bytes that are not HTTP (e.g. a control character in a header): not the app's
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"HTTP {response.status_code} with a body that is not JSON: {response.text[:200]!r} "
                                 f"(headers {dict(response.headers)})") from None
        assert set(body["error"]) >= {"message", "type"}, body
        assert "Traceback" not in response.text


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzing_the_schema_finds_no_server_error(case, gateway):
    headers = {"Authorization": f"Bearer {KEY}"} if len(CALLS) % 5 else {}  # every 5th without the key
    response = case.call(base_url=gateway.url, headers=headers, timeout=30)
    CALLS.append(response.status_code)
    case.validate_response(response, checks=[not_a_server_error, _json_error_when_error])


def test_fuzzing_made_many_requests_and_saw_every_kind_of_answer():
    """Runs after the fuzzing tests: they did call the gateway, and got both successes and 4xx."""
    if not CALLS:
        pytest.skip("the fuzzing tests did not run in this session")
    from collections import Counter

    print(f"fuzzing: {len(CALLS)} requests, answers {dict(sorted(Counter(CALLS).items()))}")
    assert len(CALLS) >= 7 * 10 and not [code for code in CALLS if code >= 500]
    assert any(code < 300 for code in CALLS) and 401 in CALLS and any(code in (400, 422) for code in CALLS)


def test_a_soak_of_concurrent_streams_loses_nothing(instant):
    from helpers.bench.gateway import OverheadConfig, measure_overhead_async

    config = OverheadConfig(concurrency=(32,), requests_per_level=96, input_len=8, output_len=64, rounds=2)
    with GatewayThread(create_app(GatewayConfig(upstreams=(instant.base_url,)))) as gateway:
        records = asyncio.run(measure_overhead_async(instant.base_url, gateway.url, instant.model,
                                                     list(range(100, 200)), config, upstream="instant", progress=False))
    assert len(records) == 4 and sum(r["failed"] for r in records) == 0
    tokens = {path: sorted(r["output_tokens"] for r in records if r["path"] == path) for path in ("direct", "gateway")}
    assert tokens["direct"] == tokens["gateway"] == [96 * 64] * 2
