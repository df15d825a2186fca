"""Errors as HTTP responses: OpenAI's shape ``{"error": {"message", "type", "code", "param"}}`` on
/v1 and elsewhere, ollama's ``{"error": "message"}`` on /api."""
from __future__ import annotations

from typing import Dict, Optional

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 499: "invalid_request_error", 500: "server_error",
          503: "server_error"}


class APIError(Exception):
    """A request that cannot be answered, with its HTTP status."""

    def __init__(self, status: int, message: str, *, code: Optional[str] = None, param: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def openai_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def ollama_body(self) -> dict:
        return {"error": self.message}


def bad_request(message: str, *, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(e: BaseException) -> APIError:
    """The APIError of an exception raised while starting or running a request."""
    from .. import _core
    from ..image import ImageError
    if isinstance(e, APIError):
        return e
    msg = str(e) or type(e).__name__
    if isinstance(e, _core.ContextOverflowError):
        return APIError(400, msg, code="context_length_exceeded")
    if isinstance(e, ImageError):
        if "more than the limit" in msg or "decompression bomb" in msg:
            return APIError(413, msg, code="image_too_large")
        return APIError(422, msg, code="invalid_image")
    if isinstance(e, (ValueError, TypeError)):
        return APIError(400, msg, code="invalid_value")
    return APIError(500, f"internal error: {type(e).__name__}: {msg}", code="internal_error")


def error_response(err: APIError, path: str):
    """The JSONResponse of an error, in the shape the path's clients expect."""
    from starlette.responses import JSONResponse
    body = err.ollama_body() if path.startswith("/api/") else err.openai_body()
    return JSONResponse(body, status_code=err.status, headers=err.headers or None)
