"""tenacity runs the retry loop; the I/O-free core (``core.retry``) makes every decision."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_never

from .core.deadline import Deadline
from .core.retry import RetryDecision, RetryPolicy, decide
from .core.urls import redact_url
from .errors import FetchError

logger = logging.getLogger("vllm_fetch")

T = TypeVar("T")


@dataclass(frozen=True)
class ResultRetry(Generic[T]):
    """Retry on a *returned* value too (get_response returns any status, yet retries a 503).

    ``failure`` says why a result should be retried (an error for ``decide``) or None to keep
    it; ``discard`` releases a result that is dropped for a retry. When the policy gives up,
    the last result is returned as it is, like any other status.
    """

    failure: Callable[[T], BaseException | None]
    discard: Callable[[T], None]


def _loop_settings(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
    rand: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """tenacity keyword arguments wired to ``core.retry.decide``; shared by sync and async."""
    decisions: dict[int, RetryDecision] = {}

    def should_retry(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None:
            return False
        result: Any = None
        if outcome.failed:
            error = outcome.exception()
        elif on_result is not None:
            result = outcome.result()
            error = on_result.failure(result)
        else:
            return False
        if error is None:
            return False
        decision = decide(policy, error, attempt=state.attempt_number,
                          remaining=deadline.remaining(), rand=rand(), now=time.time())
        decisions[state.attempt_number] = decision
        if decision.retry and not outcome.failed:
            assert on_result is not None
            on_result.discard(result)
        if not decision.retry and isinstance(error, FetchError):
            error.attempts = state.attempt_number
        return decision.retry

    def wait(state: RetryCallState) -> float:
        return decisions[state.attempt_number].wait

    def before_sleep(state: RetryCallState) -> None:
        decision = decisions[state.attempt_number]
        logger.warning(
            "%s %s: attempt %d/%d failed (%s); retrying in %.2f s",
            what, redact_url(url), state.attempt_number, policy.max_attempts, decision.reason,
            decision.wait,
        )

    return {"retry": should_retry, "wait": wait, "stop": stop_never,
            "before_sleep": before_sleep, "reraise": True}


def sync_retrying(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` whose every decision comes from ``core.retry.decide``."""
    return Retrying(**_loop_settings(policy, deadline, what, url, on_result))


def async_retrying(
    policy: RetryPolicy, deadline: Deadline, what: str, url: str,
    on_result: ResultRetry[Any] | None = None,
) -> AsyncRetrying:
    """The async twin of :func:`sync_retrying` (sleeps with ``asyncio.sleep``)."""
    return AsyncRetrying(**_loop_settings(policy, deadline, what, url, on_result))
