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


def error_response(error: Exception) -> Response:
    status, headers = STATUS[type(error)]
    if isinstance(error, FeatureError):
        detail: object = [{"loc": list(error.loc), "msg": error.message, "type": error.kind}]
    elif isinstance(error, BadRequestBodyError):
        detail = error.detail
    else:
        detail = str(error)
    return json_response({"detail": detail}, status, headers)


async def handle(request: Request, error: Exception) -> Response:
    return error_response(error)


def handlers() -> dict[type[Exception], object]:
    return dict.fromkeys(STATUS, handle)
