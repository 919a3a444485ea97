"""One HTTP and retry policy for both clients: timeouts, retries, redaction, error mapping.

Retries are built on tenacity (``wait=`` reads ``Retry-After`` from the last answer, ``sleep=`` is
injectable so tests run instantly). What is retried depends on whether sending a request twice is
harmless, which is the core of the product's exactly-once guarantee (DESIGN.md section 6):

* *idempotent* requests (GETs, Pendo's read-only aggregation POST, keyed upserts) are retried on
  429, any 5xx and every ``httpx.TransportError``;
* *non-idempotent* writes (Planhat's analytics POSTs) are retried on 429 and 5xx (the service
  answered, so it did not accept the batch) and on transport errors raised before anything was
  sent (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``). Any other transport error may
  come after the body reached Planhat, so it raises `DeliveryUnknownError` at once, never retried.

413 is never retried: the caller splits the batch. No secret reaches a log line, an exception
message, an exception attribute or a ``repr``: known secret values are replaced by ``***``
wherever they appear (the Planhat tenant token sits in analytics URL *paths*), key-like query
parameters are masked, and error bodies are truncated to ``MAX_ERROR_BODY`` characters.
"""

from __future__ import annotations

import email.utils
import html
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Protocol, Self, TypeVar
from urllib.parse import quote, quote_plus

import httpx
import msgspec
import tenacity

from .. import __version__
from ..errors import (
    MAX_ERROR_BODY,
    ApiError,
    ApiStatusError,
    ApiTransportError,
    ConfigError,
    DeliveryUnknownError,
    PayloadShapeError,
    PayloadTooLargeError,
    RateLimitedError,
)
from ..types import SERVICE_NAMES, Service

__all__ = ["AttemptHooks", "PooledClient", "Redactor", "RetryPolicy", "Sleep"]
__all__ += ["build_http_client", "check_max_pages", "parse_retry_after", "send_with_retries"]

logger = logging.getLogger("pendo_assets.clients")
_E = TypeVar("_E", bound=ApiError)

Sleep = Callable[[float], None]

_DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, read=60.0)
_USER_AGENT: Final = f"pendo-assets/{__version__}"

#: Transport errors raised before any byte of the request left this process: always safe to retry.
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport errors that no retry can fix (bad scheme): never retried, never sent.
_NEVER_SENT_FATAL: Final = (httpx.UnsupportedProtocol,)

_MASK: Final = "***"
_KEYLIKE_PARAM = re.compile(r"key|token|secret|passw|auth|signature|credential", re.IGNORECASE)
_KEYLIKE_IN_TEXT = re.compile(
    r"([?&][^=&\s\"'#]*(?:key|token|secret|passw|auth|signature|credential)[^=&\s\"'#]*=)"
    r"[^&\s\"'#]*",
    re.IGNORECASE,
)


class PooledClient:
    """Base of the API clients: a pooled ``httpx.Client`` closed on ``close()`` or ``with`` exit,
    requests sent under one retry policy, and the errors about an answer with their fields.

    Args (shared by every client): ``timeout`` defaults to 10 s connect and 60 s read; ``retry``
    to `RetryPolicy()`; ``transport`` is an ``httpx.MockTransport`` in tests; ``sleep`` is called
    with each retry wait in seconds.
    """

    _service: ClassVar[Service]
    _hint_statuses: ClassVar[tuple[int, ...]]  # the refusals the client's hint explains
    _base_url: str  # the host that paths in errors are relative to

    def __init__(
        self,
        *,
        secrets: Iterable[str],
        timeout: httpx.Timeout | float | None,
        retry: RetryPolicy | None,
        transport: httpx.BaseTransport | None,
        sleep: Sleep,
    ) -> None:
        self._redactor = Redactor(secrets)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = build_http_client(timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def _request(
        self,
        method: str,
        url: str,
        *,
        auth: Mapping[str, str],
        hint: str | None,
        idempotent: bool = True,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        hooks: AttemptHooks | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json", **auth}
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(
            method, url, params=params, content=content, headers=headers
        )
        return send_with_retries(
            request,
            client=self._http,
            service=self._service,
            redactor=self._redactor,
            policy=self._retry,
            idempotent=idempotent,
            sleep=self._sleep,
            hint=hint,
            hint_statuses=self._hint_statuses,
            hooks=hooks,
        )

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            raise self._shape(method, path, f"not JSON ({exc})") from None

    def _shape(
        self, method: str, path: str, problem: str, cls: type[ApiError] = PayloadShapeError
    ) -> ApiError:
        """``cls`` (`PayloadShapeError` by default) for ``problem`` at ``method path``."""
        return cls(
            problem,
            service=self._service,
            method=method,
            url=self._redactor.url(self._base_url + path),
        )


def check_max_pages(max_pages: int) -> None:
    """Refuse paging without a hard stop rule.

    Raises:
        ConfigError: ``max_pages`` is below 1.
    """
    if max_pages < 1:
        raise ConfigError(f"max_pages must be 1 or more (a hard stop rule), got {max_pages}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request that may succeed on a later attempt.

    Attributes:
        attempts: Total attempts including the first (1 disables retries).
        backoff_factor: First exponential wait in seconds; it doubles per attempt.
        max_delay: Cap on any single wait, including a server's ``Retry-After``.
        jitter: Add up to ``backoff_factor`` random seconds to exponential waits.
    """

    attempts: int = 5
    backoff_factor: float = 1.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be 1 or more, got {self.attempts}")
        for name in ("backoff_factor", "max_delay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"RetryPolicy.{name} must be a finite number >= 0, got {value}")

    def delay(self, *, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Returns:
            The server's ``retry_after`` when given, else ``backoff_factor * 2 ** (attempt - 1)``
            plus jitter; never more than ``max_delay``.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        delay = self.backoff_factor * 2.0 ** min(max(attempt - 1, 0), 64)
        if self.jitter:
            delay += random.uniform(0.0, self.backoff_factor)
        return min(delay, self.max_delay)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay seconds or an HTTP date, relative to ``now``).

    Returns:
        Seconds to wait (never negative), or None when absent or unparseable.
    """
    text = (value or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None  # also absent or empty
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


_registry_lock = threading.Lock()
_registered_secrets: tuple[str, ...] = ()


def _register_secrets(values: Iterable[str]) -> None:
    global _registered_secrets
    with _registry_lock:
        merged = set(_registered_secrets).union(values)
        _registered_secrets = tuple(sorted(merged, key=len, reverse=True))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _KEYLIKE_IN_TEXT.sub(rf"\1{_MASK}", text)


class Redactor:
    """Removes known secret values (and key-like query parameters) from text and URLs.

    Each secret is matched as given and in its percent-encoded forms. Creating a Redactor also
    registers its secrets with the filter on httpx's and httpcore's own loggers.
    """

    __slots__ = ("_longest", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if secret:
                variants.update({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)})
        self._secrets = tuple(sorted(variants, key=len, reverse=True))
        self._longest = len(self._secrets[0]) if self._secrets else 0
        _register_secrets(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._secrets)} secret forms>)"

    def text(self, value: str) -> str:
        """Return ``value`` with every known secret and key-like query value replaced by ``***``."""
        return _scrub(value, self._secrets)

    def url(self, url: httpx.URL | str) -> str:
        """Return the URL as text with secrets in the path and key-like query values masked."""
        parsed = httpx.URL(str(url))
        if parsed.query:
            params = [
                (name, _MASK if _KEYLIKE_PARAM.search(name) else value)
                for name, value in parsed.params.multi_items()
            ]
            parsed = parsed.copy_with(params=params)
        return self.text(str(parsed))

    def path(self, url: httpx.URL | str) -> str:
        """Return only the (redacted) path of the URL, for messages like ``GET /api/v1/feature``."""
        return self.text(httpx.URL(str(url)).path)

    def body(self, content: bytes | str) -> str:
        """Return the start of a body, decoded, with secrets masked, at most ``MAX_ERROR_BODY`` long."""
        # Redact a window wide enough to hold any secret that starts inside the kept part.
        window = MAX_ERROR_BODY + self._longest
        raw = content[:window] if isinstance(content, str) else content[: window * 4]
        text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
        return self.text(text[:window])[:MAX_ERROR_BODY]


class _ScrubLogFilter(logging.Filter):
    """Masks registered secrets in records of loggers we do not own (httpx, httpcore)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _registered_secrets
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: logging reports it itself
            return True
        cleaned = _scrub(message, secrets)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


# httpx logs every request's full URL at INFO and httpcore traces connections at DEBUG. Planhat's
# tenant token is part of the analytics URL path, so an application that turns on INFO logging
# globally would write the token to its logs. These loggers are raised to WARNING here, and a
# scrubbing filter masks registered secrets should someone lower them again on purpose.
# A logger's filters do not see its children's records, so each httpcore logger gets one.
_LIBRARY_LOGGERS: Final = (
    "httpx",
    "httpcore",
    *(f"httpcore.{name}" for name in ("connection", "http11", "http2", "proxy", "socks")),
)


def _quiet_library_loggers() -> None:
    for name in _LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        if name in ("httpx", "httpcore"):
            library_logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _ScrubLogFilter) for f in library_logger.filters):
            library_logger.addFilter(_ScrubLogFilter())


_quiet_library_loggers()


def build_http_client(
    *, timeout: httpx.Timeout | float | None = None, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """Build the ``httpx.Client`` both API clients use.

    Idle pooled connections expire after 5 s, well before common server idle timeouts, so a write
    is never sent on a connection the server is closing (a retry would become an unknown outcome).

    Args:
        timeout: Defaults to ``httpx.Timeout(10.0, read=60.0)``; a number sets every timeout.
        transport: An ``httpx.MockTransport`` in tests.

    Returns:
        A client with the ``pendo-assets/<version>`` User-Agent and no redirect following.
    """
    return httpx.Client(
        timeout=_DEFAULT_TIMEOUT if timeout is None else timeout,
        headers={"User-Agent": _USER_AGENT},  # secrets go per request, never in a client's repr
        limits=httpx.Limits(max_connections=10, max_keepalive_connections=5, keepalive_expiry=5.0),
        transport=transport,
        follow_redirects=False,
    )


def _unlinked(response: httpx.Response) -> httpx.Response:
    """The response, freed as soon as the caller drops it.

    httpx links a response and its read stream both ways, so a dropped response (tens of MB of
    body) waits for the cyclic GC. Replacing the spent stream breaks the cycle; ``content`` stays.
    """
    response.stream = httpx.ByteStream(b"")
    return response


class AttemptHooks(Protocol):
    """Callbacks around the attempts of one write (see `send_with_retries`)."""

    def before_send(self) -> None:
        """The request is about to be sent (again)."""

    def refused(self) -> None:
        """The last attempt certainly did not land (429, 5xx, no connection); a retry follows."""


@dataclass
class _Attempts:
    count: int = 0
    retryable: bool = False
    retry_after: float | None = None


def send_with_retries(
    request: httpx.Request,
    *,
    client: httpx.Client,
    service: Service,
    redactor: Redactor,
    policy: RetryPolicy,
    idempotent: bool,
    sleep: Sleep = time.sleep,
    hint: str | None = None,
    hint_statuses: tuple[int, ...] = (400, 403),
    hooks: AttemptHooks | None = None,
) -> httpx.Response:
    """Send ``request`` under ``policy`` and return a 2xx response, or raise a mapped error.

    Args:
        request: A fully built request; its body must be bytes so it can be sent again.
        client: The pooled client that sends it.
        service: Names the service in errors and logs.
        redactor: Knows the secrets to keep out of messages and logs.
        policy: Attempts and waits.
        idempotent: True when sending the request twice is harmless (see the module docstring).
        sleep: Called with each wait in seconds.
        hint: Appended to the message of a refusal whose status is in ``hint_statuses``.
        hint_statuses: The statuses ``hint`` explains.
        hooks: Told before each attempt, and when one certainly did not land and another follows.

    Returns:
        The response, body read, status 2xx.

    Raises:
        RateLimitedError: 429 after the last attempt.
        PayloadTooLargeError: 413 (never retried).
        ApiStatusError: Any other non-2xx status (4xx at once, 5xx after the last attempt).
        DeliveryUnknownError: A non-idempotent request may have been sent but got no answer.
        ApiTransportError: The request could not be completed after the last attempt.
    """
    call = _Call(service, request.method, request.url, redactor)
    state = _Attempts()

    def attempt() -> httpx.Response:
        if hooks is not None:
            hooks.before_send()
        state.count += 1
        state.retryable = False
        state.retry_after = None
        after = f" after {state.count} attempts" if state.count > 1 else ""
        started = time.monotonic()
        error: ApiError | None = None
        cause: BaseException | None = None
        try:
            response = _unlinked(client.send(request))
        except httpx.RequestError as exc:  # transport errors, and a body that fails to decode
            # Chain a scrubbed copy: the original holds the request and its URL with secrets.
            cause = type(exc)(redactor.text(str(exc)))
            error, state.retryable = call.transport_error(exc, after, idempotent)
        if error is not None:
            logger.info("%s -> %s", call.logged, type(cause).__name__)
            raise error from cause
        elapsed = time.monotonic() - started
        logger.info("%s -> %s (%.2f s)", call.logged, response.status_code, elapsed)
        if response.is_success:
            return response
        status = response.status_code
        state.retryable = status == 429 or status >= 500
        state.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise call.status_error(response, after, hint if status in hint_statuses else None)

    def wait(retry_state: tenacity.RetryCallState) -> float:
        return policy.delay(attempt=retry_state.attempt_number, retry_after=state.retry_after)

    def should_retry(exc: BaseException) -> bool:
        return isinstance(exc, ApiError) and state.retryable

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        if hooks is not None:
            hooks.refused()  # only retryable outcomes get here: this attempt did not land
        outcome = retry_state.outcome
        reason = outcome.exception() if outcome is not None else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.warning(
            "%s failed (%s); retrying in %.1f s (attempt %d of %d)",
            call.endpoint,
            _short_reason(reason),
            delay,
            retry_state.attempt_number,
            policy.attempts,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(should_retry),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt)


def _short_reason(exc: BaseException | None) -> str:
    if isinstance(exc, ApiStatusError):
        return f"status {exc.status_code}"
    if isinstance(exc, ApiError) and exc.__cause__ is not None:
        return type(exc.__cause__).__name__
    return type(exc).__name__


class _Call:
    """One request's names for logs and errors: ``Pendo GET /api/v1/feature``, redacted URL."""

    def __init__(self, service: Service, method: str, url: httpx.URL, redactor: Redactor) -> None:
        self.service = service
        self.name = SERVICE_NAMES[service]
        self.method = method
        self.safe_url = redactor.url(url)
        self.redactor = redactor
        self.endpoint = f"{self.name} {method} {redactor.path(url)}"
        self.logged = f"{self.name} {method} {self.safe_url}"

    def error(self, cls: type[_E], problem: str, sep: str = " ", **fields: Any) -> _E:
        return cls(
            problem, service=self.service, method=self.method, url=self.safe_url, sep=sep, **fields
        )

    def transport_error(
        self, exc: httpx.RequestError, after: str, idempotent: bool
    ) -> tuple[ApiError, bool]:
        """The error and whether another attempt may be made.

        A write whose answer could not be decoded (``httpx.DecodingError``) may have been applied.
        """
        detail = f"{type(exc).__name__}: {self.redactor.text(str(exc)) or 'no detail'}"
        if isinstance(exc, _NEVER_SENT_FATAL):
            return self.error(ApiTransportError, f"could not be sent ({detail})"), False
        if idempotent or isinstance(exc, _NOT_SENT_ERRORS):
            return self.error(ApiTransportError, f"failed{after} ({detail})"), True
        problem = (
            f"the request may have been sent but no answer came ({detail}); whether "
            f"{self.name} applied it is unknown, so it is not retried"
        )
        return self.error(DeliveryUnknownError, problem, sep=": "), False

    def status_error(self, response: httpx.Response, after: str, hint: str | None) -> ApiError:
        status = response.status_code
        body = self.redactor.body(response.content)
        problem = f"answered {status}{after}"
        # Scrubbed again: unescaping HTML entities could spell out a secret the body hid.
        content_type = response.headers.get("Content-Type", "")
        excerpt = self.redactor.text(_readable(body, content_type))[:200]
        if excerpt:
            problem += f": {excerpt}"
        if hint:
            problem += f" ({hint})"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return self.error(RateLimitedError, problem, body=body, retry_after=retry_after)
        cls = PayloadTooLargeError if status == 413 else ApiStatusError
        return self.error(cls, problem, status_code=status, body=body)


_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HTML_DROP = re.compile(r"<(script|style)\b.*?(</\1>|$)", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>?")


def _readable(body: str, content_type: str) -> str:
    """The error body as one line; a gateway's HTML error page becomes its title or its text."""
    if "html" in content_type.lower() or body.lstrip().startswith("<"):
        title = _HTML_TITLE.search(body)
        text = title.group(1) if title else _HTML_TAG.sub(" ", _HTML_DROP.sub(" ", body))
        text = html.unescape(text)
    else:
        text = body
    return " ".join(text.split())
