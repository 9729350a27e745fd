"""Errors as types: each maps to one HTTP status and one error type in either wire protocol."""

from __future__ import annotations


class ConfigError(Exception):
    """The config file is invalid; the message names the file and the key path."""


class RouterError(Exception):
    """An error returned to the client in its own protocol's error shape.

    A subclass names its HTTP status and its error type in each protocol as class keywords:
    ``class AuthenticationError(RouterError, status=401, anthropic_type=..., openai_type=...)``.
    """

    status = 500
    anthropic_type = "api_error"
    openai_type = "server_error"

    def __init_subclass__(cls, *, status: int | None = None, anthropic_type: str | None = None,
                          openai_type: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if anthropic_type is not None:
            cls.anthropic_type = anthropic_type
        if openai_type is not None:
            cls.openai_type = openai_type

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class AuthenticationError(RouterError, status=401, anthropic_type="authentication_error",
                          openai_type="invalid_api_key"):
    """A missing key, or one that is not among the router's client keys."""


class InvalidRequestError(RouterError, status=400, anthropic_type="invalid_request_error",
                          openai_type="invalid_request_error"):
    """The request is malformed; the message names the field."""


class PermissionDeniedError(RouterError, status=403, anthropic_type="permission_error",
                            openai_type="permission_denied"):
    """The client is known but may not do this (e.g. choose a target outside its ``targets``)."""


class RequestTooLargeError(RouterError, status=413, anthropic_type="request_too_large",
                           openai_type="request_too_large"):
    """The body is larger than ``server.max_body_bytes``."""


class RequestTimeoutError(RouterError, status=408, anthropic_type="invalid_request_error",
                          openai_type="request_timeout"):
    """The client did not send its body in time (``server.body_timeout_s``)."""


class OverloadedError(RouterError, status=503, anthropic_type="overloaded_error",
                      openai_type="server_overloaded"):
    """More requests in flight than ``server.max_concurrent_requests``; retrying later can help."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers={"retry-after": "1", **(headers or {})})


class NotFoundError(RouterError, status=404, anthropic_type="not_found_error", openai_type="not_found"):
    """No such endpoint."""


class MethodNotAllowedError(RouterError, status=405, anthropic_type="invalid_request_error",
                            openai_type="method_not_allowed"):
    """The endpoint exists, but not for this HTTP method."""


class BudgetExhaustedError(RouterError, status=400, anthropic_type="invalid_request_error",
                           openai_type="insufficient_quota"):
    """The cloud is cut off or the budget is spent and there is no local fallback.

    Sent as 400 with ``x-should-retry: false``: Claude Code and the SDKs retry 429 and 5xx,
    and retrying cannot help until the day rolls over or an operator releases the cutoff.
    """

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers={"x-should-retry": "false", **(headers or {})})


class UpstreamError(RouterError, status=502, anthropic_type="api_error", openai_type="server_error"):
    """A backend failed (connection refused, timeout, 5xx) and no fallback could answer."""


class UpstreamStatusError(RouterError):
    """A backend answered with an HTTP error that is the client's to see (4xx), passed on as-is."""

    def __init__(self, status: int, message: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers)
        self.status = status
        self.body = body
        if status == 401 or status == 403:
            self.anthropic_type = "authentication_error" if status == 401 else "permission_error"
        elif status == 404:
            self.anthropic_type = "not_found_error"
        elif status == 429:
            self.anthropic_type = "rate_limit_error"
        elif status == 529:
            self.anthropic_type = "overloaded_error"
        elif 400 <= status < 500:
            self.anthropic_type = "invalid_request_error"
        self.openai_type = self.anthropic_type


class PromptTooLongError(InvalidRequestError):
    """No target can hold the prompt. Worded as the Anthropic API words it ("prompt is too long:
    N tokens > M maximum"), which Claude Code recognises and answers by offering to compact; the
    OpenAI protocol gets its own ``context_length_exceeded`` code and wording."""

    openai_code = "context_length_exceeded"

    def __init__(self, tokens: int, maximum: int, detail: str = "", *, headers: dict[str, str] | None = None):
        super().__init__(f"prompt is too long: {tokens} tokens > {maximum} maximum",
                         headers={"x-should-retry": "false", **(headers or {})})
        self.tokens = tokens
        self.maximum = maximum
        self.detail = detail
        self.openai_message = (f"This model's maximum context length is {maximum} tokens. However, your "
                               f"messages resulted in {tokens} tokens. Please reduce the length of the messages.")


class StreamLimitError(UpstreamError):
    """A local stream ran past its output cap or its wall-time limit and was ended by the router."""
