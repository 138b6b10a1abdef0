"""tenacity runs the retry loop; the I/O-free core (``core.retry``) makes every decision."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_never

from .core.deadline import Deadline
from .core.retry import RetryDecision, RetryPolicy, decide
from .core.urls import redact_url
from .errors import FetchError

logger = logging.getLogger("vllm_fetch")


def _loop_settings(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    rand: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """tenacity keyword arguments wired to ``core.retry.decide``; shared by sync and async."""
    safe = redact_url(url)
    decisions: dict[int, RetryDecision] = {}

    def should_retry(state: RetryCallState) -> bool:
        if state.outcome is None or not state.outcome.failed:
            return False
        error = state.outcome.exception()
        assert error is not None
        decision = decide(policy, error, attempt=state.attempt_number,
                          remaining=deadline.remaining(), rand=rand(), now=time.time())
        decisions[state.attempt_number] = decision
        if not decision.retry and isinstance(error, FetchError):
            error.attempts = state.attempt_number
        return decision.retry

    def wait(state: RetryCallState) -> float:
        return decisions[state.attempt_number].wait

    def before_sleep(state: RetryCallState) -> None:
        decision = decisions[state.attempt_number]
        logger.warning(
            "%s %s: attempt %d/%d failed (%s); retrying in %.2f s",
            what, safe, state.attempt_number, policy.max_attempts, decision.reason, decision.wait,
        )

    return {"retry": should_retry, "wait": wait, "stop": stop_never,
            "before_sleep": before_sleep, "reraise": True}


def sync_retrying(policy: RetryPolicy, deadline: Deadline, what: str, url: str) -> Retrying:
    return Retrying(**_loop_settings(policy, deadline, what, url))


def async_retrying(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str
) -> AsyncRetrying:
    return AsyncRetrying(**_loop_settings(policy, deadline, what, url))
