"""One table from failure to HTTP status, so every route answers the same way for the same failure."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.batching import DeadlineExceededError, OverloadedError
from service.holder import LoadFailedError, LoadInProgressError
from service.validation import FeatureError


class NotReadyError(Exception):
    pass


class BodyTooLargeError(Exception):
    pass


class UnsupportedMediaTypeError(Exception):
    pass


class BadRequestBodyError(Exception):
    """A body that is not the JSON the schema asks for; `detail` is pydantic's list of errors."""

    def __init__(self, detail: list[dict[str, object]]) -> None:
        super().__init__("invalid request body")
        self.detail = detail


STATUS: dict[type[Exception], tuple[int, dict[str, str]]] = {
    FeatureError: (422, {}),
    BadRequestBodyError: (422, {}),
    BodyTooLargeError: (413, {}),
    UnsupportedMediaTypeError: (415, {}),
    OverloadedError: (429, {"Retry-After": "1"}),
    DeadlineExceededError: (503, {"Retry-After": "1"}),
    NotReadyError: (503, {"Retry-After": "1"}),
    LoadInProgressError: (409, {}),
    LoadFailedError: (422, {}),
}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def error_detail(error: Exception) -> object:
    if isinstance(error, FeatureError):
        return [{"loc": list(error.loc), "msg": error.message, "type": error.kind}]
    if isinstance(error, BadRequestBodyError):
        return error.detail
    return str(error)


def error_response(error: Exception) -> Response:
    status, headers = STATUS[type(error)]
    return json_response({"detail": error_detail(error)}, status, headers)


def error_parts(error: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body and headers (without content length) of the answer to a failure in STATUS."""
    status, headers = STATUS[type(error)]
    encoded = [(b"content-type", b"application/json")]
    encoded += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return status, orjson.dumps({"detail": error_detail(error)}), encoded


async def handle(request: Request, error: Exception) -> Response:
    return error_response(error)


def handlers() -> dict[type[Exception], object]:
    return dict.fromkeys(STATUS, handle)
