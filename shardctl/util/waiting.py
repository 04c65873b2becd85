"""One polling helper for everything shardctl waits on, and one retry helper for what it redoes.

:func:`wait_for` polls until a state is reached; :func:`retrying` runs a step again after the
errors it names. Both are tenacity underneath (the Router's own retry policy, tuned for
latency, is in :mod:`shardctl.db.faults`); tenacity, which brings asyncio along, is imported
when something waits or retries, not by every command that merely can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState
    from tenacity.stop import stop_base

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a probe to say "not ready yet"; the message says what it saw."""


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    on_timeout: Callable[[str], Exception],
    interval: float = 0.2,
    max_interval: float = 2.0,
) -> T:
    """Call ``probe`` until it returns; after ``timeout`` seconds raise ``on_timeout(detail)``.

    The probe raises :class:`NotYet` while the awaited state is not reached; any other
    exception ends the wait at once. ``detail`` names what was awaited and the last thing seen.
    """
    from tenacity import (
        RetryError,
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential,
    )

    retrying = Retrying(
        retry=retry_if_exception_type(NotYet),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=interval, max=max_interval),
        reraise=False,
    )
    try:
        return retrying(probe)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise on_timeout(
            f"timed out after {timeout:g}s waiting for {what} (last: {last})"
        ) from None


def retrying(
    step: Callable[[], T],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    attempts: int | None = None,
    patience: float | None = None,
    pause: float = 0.0,
    after_failure: Callable[[], None] | None = None,
    on_give_up: Callable[[BaseException], Exception] | None = None,
) -> T:
    """Run ``step``; after a ``retry_on`` error run it again, ``pause`` seconds later.

    Tries stop after ``attempts`` tries or ``patience`` seconds, whichever comes first; then the
    last error is raised, or ``on_give_up(last error)`` when given. ``after_failure`` runs after
    every retried error, the last one included (e.g. to drop broken connections). Any other
    error ends it at once.
    """
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_attempt,
        stop_after_delay,
        stop_any,
        stop_never,
        wait_fixed,
    )

    def after_each(state: RetryCallState) -> None:
        if after_failure is not None:
            after_failure()

    stops: list[stop_base] = []
    if attempts is not None:
        stops.append(stop_after_attempt(attempts))
    if patience is not None:
        stops.append(stop_after_delay(patience))
    retrier = Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_any(*stops) if stops else stop_never,
        wait=wait_fixed(pause),
        after=after_each,
        reraise=True,
    )
    try:
        return retrier(step)
    except retry_on as exc:
        if on_give_up is None:
            raise
        raise on_give_up(exc) from None
