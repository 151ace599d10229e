"""The gateway's errors: one small hierarchy, each mapped to an HTTP status and
to OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}``.

Anything raised on the request path that is not a ``GatewayError`` is a bug: the
HTTP layer logs it with its stack trace and answers a generic 500 envelope, so a
client never sees a trace.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class: an error the client can be told about."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    @property
    def outcome(self) -> str:
        """Short label recorded in the ledger's ``outcome`` column."""
        return self.code or self.type


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    """Too many requests: from the gateway's own limits or passed on from upstream."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The provider failed: 5xx, refused connection, malformed answer, cut stream."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class UpstreamRejected(GatewayError):
    """The provider refused the request as invalid (its 400/404/422): the client's to fix."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class BudgetExceeded(RateLimited):
    """A budget would be exceeded by this call; the message names the scope, remaining and reset."""

    code = "budget_exceeded"


class RateLimitExceeded(RateLimited):
    """One of the gateway's own rate limits (requests/min, tokens/min, concurrency)."""

    code = "rate_limit_exceeded"


class ModelNotAllowed(PermissionDenied):
    """The key or its team may not use this model."""

    code = "model_not_allowed"


class BudgetStoreUnavailable(ServiceUnavailable):
    """The counter store is unreachable and budgets fail closed."""

    code = "budget_store_unavailable"


class ContextWindowExceeded(UpstreamRejected):
    """The prompt does not fit the model's context window (routing may go to a larger-context model)."""

    code = "context_length_exceeded"


class ContentPolicyViolation(UpstreamRejected):
    """The provider's content filter refused the request (routing may go to a configured fallback)."""

    code = "content_policy_violation"
