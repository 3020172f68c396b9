"""How long the remote steps keep dialing, modelled on the provider's retry loop.

pulumi-command v1.2.1, provider/pkg/provider/remote/connection.go (`dialWithRetry`,
`reachedDialingErrorLimit`): dial number `try + 1` fails the step when it exceeds
`dialErrorLimit`, so the step gives up on the (limit + 1)th failed dial, after `limit`
sleeps. The sleeps are pulumi/pulumi v3.224.0's `Retryer.Until`
(sdk/go/common/util/retry/until.go), with the defaults the provider leaves in place: the
delay starts at 100 ms, is capped at 5 s before each use and grows x1.5 after it, in
integer nanoseconds like `time.Duration`. `perDialTimeout` bounds each TCP connect
(golang.org/x/crypto/ssh `ClientConfig.Timeout`).
"""

from __future__ import annotations

import copy

from components.ssh import DIAL_ERROR_LIMIT, DIAL_TIMEOUT_SECONDS, STEP_TIMEOUT
import tests.pulumi_harness as h
from tests.pulumi_harness import plain, run_program

FIRST_DELAY_NS, BACKOFF, MAX_DELAY_NS = 100_000_000, 1.5, 5_000_000_000


def sleeps_seconds(dial_error_limit: int) -> list[float]:
    """The sleeps between the dials of a step that never connects."""
    sleeps, delay = [], FIRST_DELAY_NS
    for _ in range(dial_error_limit):
        delay = min(delay, MAX_DELAY_NS)
        sleeps.append(delay / 1e9)
        delay = int(delay * BACKOFF)
    return sleeps


def refused_window_seconds(dial_error_limit: int) -> float:
    """How long a host that refuses at once is retried: the sleeps alone."""
    return sum(sleeps_seconds(dial_error_limit))


def unreachable_seconds(dial_error_limit: int, per_dial_timeout: int) -> float:
    """How long a host whose every dial times out takes to fail."""
    return (dial_error_limit + 1) * per_dial_timeout + refused_window_seconds(dial_error_limit)


def test_the_model_matches_the_retry_loop():
    assert sleeps_seconds(12)[:3] == [0.1, 0.15, 0.225]
    assert sleeps_seconds(12)[-2:] == [5.0, 5.0]  # 0.1 x 1.5^10 would be 5.77
    # The old limit of 4 gave a booting sshd less than a second.
    assert refused_window_seconds(4) < 1


def test_a_refusing_host_is_retried_for_at_least_a_minute():
    assert refused_window_seconds(DIAL_ERROR_LIMIT) >= 60


def test_an_unreachable_host_fails_within_ten_minutes_and_before_the_step_timeout():
    worst = unreachable_seconds(DIAL_ERROR_LIMIT, DIAL_TIMEOUT_SECONDS)
    assert worst <= 10 * 60
    assert STEP_TIMEOUT.endswith("m") and worst < int(STEP_TIMEOUT[:-1]) * 60


def test_every_connection_and_the_jump_through_the_gateway_carry_the_dial_budget_and_a_host_key(dev_raw):
    raw = copy.deepcopy(dev_raw)
    raw["home"]["viaGateway"] = True
    raw["home"]["sshHost"] = raw["home"]["tailnetIp"]
    run = run_program(raw)
    connections = {r.name: plain(r.inputs)["connection"] for r in run.resources
                   if "connection" in r.inputs}
    assert {"gateway-config-apply", "home-config-apply"} <= connections.keys()
    for name, connection in connections.items():
        hops = [connection, connection["proxy"]] if "proxy" in connection else [connection]
        for hop in hops:
            assert (hop["dialErrorLimit"], hop["perDialTimeout"]) == (
                DIAL_ERROR_LIMIT, DIAL_TIMEOUT_SECONDS), (name, hop["host"])
            # Never trusted on first sight (pulumi-command ignores host keys without one).
            assert hop.get("hostKey", "").startswith("ssh-ed25519 "), (name, hop["host"])
    assert "proxy" in connections["home-config-apply"]
    # The gateway's key is the one the program made for it, on the step and on the jump.
    gateway_key = " ".join(h.GATEWAY_HOST_KEY_PUBLIC.split()[:2])
    assert connections["gateway-config-apply"]["hostKey"] == gateway_key
    assert connections["home-config-apply"]["proxy"]["hostKey"] == gateway_key
    assert connections["home-config-apply"]["hostKey"] == raw["home"]["sshHostKey"]
