"""High availability (notebook 06): one of two upstreams dies during a load through the real gateway."""

from __future__ import annotations

import pytest

from gateway_upstream import MODEL, FakeUpstream, GatewayThread
from helpers.bench.failover import run_failover
from helpers.gateway.app import create_app
from helpers.gateway.config import GatewayConfig


def test_a_replica_killed_mid_load_loses_no_request():
    with FakeUpstream() as survivor, FakeUpstream() as victim:
        victim.delay = survivor.delay = 0.01
        app = create_app(GatewayConfig(upstreams=(victim.url, survivor.url), backoff_s=0.01))
        with GatewayThread(app) as gateway:
            def kill() -> None:   # as a killed process: open connections drop, the port refuses new ones
                victim.drop = 10**6
                victim.httpd.shutdown()
                victim.httpd.server_close()

            outcome = run_failover(gateway.url, MODEL, kill, requests=24, concurrency=4, kill_after=6)
    assert outcome["answered"] == 24 and outcome["lost"] == 0 and outcome["errors"] == {}
    assert outcome["killed_at_s"] is not None
    assert len(victim.posts()) >= 1 and len(survivor.posts()) + len(victim.posts()) >= 24
    assert outcome["gateway_upstream_errors"] >= 1   # the gateway saw the dead replica and moved on


def test_kill_after_must_fall_inside_the_load():
    with pytest.raises(ValueError, match="kill_after"):
        run_failover("http://127.0.0.1:9", MODEL, lambda: None, requests=4, kill_after=4)
