"""Request bodies: read within the size limit, parsed as a JSON object, fields checked by type.

Unknown fields are ignored; a known field of the wrong type or outside its range is a 400 naming it.
"""
from __future__ import annotations

import json
import math
from typing import Any, List, Optional

from .errors import APIError, bad_request

_MISSING = object()


async def read_json(request, max_bytes: int) -> dict:
    """The request's JSON object; 413 beyond ``max_bytes`` (declared or sent), 400 when not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise bad_request("the Content-Length header is not a number") from None
        if n > max_bytes:
            raise APIError(413, f"the request body has {n} bytes, more than the limit of {max_bytes}",
                           code="request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise APIError(413, f"the request body is larger than the limit of {max_bytes} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _type_error(name: str, want: str, v: Any) -> APIError:
    return bad_request(f"'{name}' must be {want}, got {json.dumps(v)[:60] if _jsonable(v) else type(v).__name__}",
                       param=name, code="invalid_type")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def number(body: dict, name: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
           default: Any = None, src: str = "") -> Optional[float]:
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    label = src + name
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _type_error(label, "a number", v)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise bad_request(f"'{label}' must be in [{lo}, {hi}], got {v}", param=label, code="invalid_value")
    return float(v)


def integer(body: dict, name: str, *, lo: Optional[int] = None, hi: Optional[int] = None,
            default: Any = None, src: str = "") -> Optional[int]:
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    label = src + name
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(label, "an integer", v)
    if lo is not None and v < lo or hi is not None and v > hi:
        lo_s = "" if lo is None else lo
        hi_s = "" if hi is None else hi
        raise bad_request(f"'{label}' must be in [{lo_s}, {hi_s}], got {v}", param=label, code="invalid_value")
    return v


def boolean(body: dict, name: str, *, default: Any = None, src: str = "") -> Optional[bool]:
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    if not isinstance(v, bool):
        raise _type_error(src + name, "true or false", v)
    return v


def string(body: dict, name: str, *, default: Any = None, src: str = "") -> Optional[str]:
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    if not isinstance(v, str):
        raise _type_error(src + name, "a string", v)
    return v


def obj(body: dict, name: str, *, src: str = "") -> dict:
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return {}
    if not isinstance(v, dict):
        raise _type_error(src + name, "an object", v)
    return v


def stop_list(body: dict, name: str = "stop", *, src: str = "", most: int = 16) -> List[str]:
    """``stop``: a string or a list of strings."""
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _type_error(src + name, "a string or a list of strings", v)
    if len(v) > most:
        raise bad_request(f"'{src + name}' has {len(v)} strings, more than {most}", param=src + name,
                          code="invalid_value")
    return [s for s in v if s]
