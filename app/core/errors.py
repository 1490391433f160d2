"""Error bodies: {"detail": message} on the native routes, the OpenAI error object on /v1."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse

ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorResponse(JSONResponse):
    """ASCII JSON: a message that quotes the client's input stays encodable whatever that input held
    (a lone surrogate, say)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True).encode("ascii")


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_response(path: str, status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    if not is_openai(path):
        return ErrorResponse(status_code=status, content={"detail": message}, headers=headers)
    kind = "server_error" if status >= 500 else ERROR_TYPES.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return ErrorResponse(status_code=status, content=body, headers=headers)
