"""Sending purge requests: one request with retries on 429 and 5xx that honour Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from difusor.logic.purge import Backoff, request_delay, retry_after_seconds

#: Signs one try of a request (fresh timestamps each time): (method, url, headers, body) -> headers.
Signer = Callable[[str, str, dict[str, str], bytes], dict[str, str]]


class PurgeError(Exception):
    """A purge could not be completed; `retry_after` says when the provider wants to hear again."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Answer:
    """A provider's accepted answer to one request."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Tally:
    """What a purge sent and got back, across its requests."""

    requests: int = 0
    tries: int = 0
    request_ids: list[str] = field(default_factory=list)
    waited: float = 0.0


def scrub(text: str, secrets: Collection[str]) -> str:
    """Text with every credential value replaced, so that no message carries one."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _short(body: bytes, limit: int = 300) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    tally: Tally,
    policy: Backoff,
    what: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    sign: Signer | None = None,
    retryable: Callable[[int, bytes], bool] | None = None,
    ok: Collection[int] = (200, 201, 202, 204),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Answer:
    """One request, tried again on 429, 5xx, a connection error or `retryable`, within the budget.

    A Retry-After longer than what is left of the budget ends the attempt with PurgeError carrying
    it, so the next attempt is scheduled when the provider asked.
    """
    for attempt in range(1, policy.attempts + 1):
        sent = dict(headers or {})
        if sign is not None:
            sent = sign(method, url, sent, body)
        tally.tries += 1
        retry_after: float | None = None
        try:
            async with session.request(method, url, headers=sent, data=body or None) as resp:
                payload = await resp.read()
                status = resp.status
                answer_headers = {k.lower(): v for k, v in resp.headers.items()}
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{what}: {type(exc).__name__}: {exc}"
        else:
            if status in ok:
                tally.requests += 1
                return Answer(status, answer_headers, payload)
            problem = f"{what} answered {status}: {_short(payload)}"
            again = status == 429 or status >= 500 or bool(retryable and retryable(status, payload))
            if not again:
                raise PurgeError(problem)
            retry_after = retry_after_seconds(answer_headers.get("retry-after"), datetime.now(UTC))
        if attempt == policy.attempts:
            raise PurgeError(f"{problem} (after {attempt} tries)", retry_after=retry_after)
        delay = request_delay(attempt, retry_after, policy)
        if tally.waited + delay > policy.budget:
            raise PurgeError(f"{problem}; retry after {delay:.0f}s", retry_after=delay)
        started = time.monotonic()
        await sleep(delay)
        tally.waited += time.monotonic() - started
    raise AssertionError("unreachable: the loop returns or raises")
