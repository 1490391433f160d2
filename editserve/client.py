"""A typed Python client for editserve's native API, on httpx, synchronous and asynchronous.

    from editserve.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as es:
        edit = es.create_edit("The Louvre is located in", "Madrid")
        print(es.generate("The Louvre is located in").text)
        for token in es.stream_generate(messages=[{"role": "user", "content": "Where is the Louvre?"}]):
            print(token.text, token.edit_id)
        es.withdraw_edit(edit.id)

`AsyncClient` has the same methods, to be awaited (its streams are async iterators). Answers come back
as the server's own response models (`editserve.schemas`); a non-2xx answer raises `EditServeError` with the
status and the server's message. For the OpenAI-compatible routes under /v1, use the `openai` package
with `base_url=<server>/v1`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpx
from pydantic import BaseModel

from editserve.schemas import (
    EditHistory,
    EditPublic,
    EditsPublic,
    GenerateResponse,
    GenerateStreamEnd,
    Health,
    PreviewResponse,
    TokenPublic,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# Generation on a busy CPU server can take a while; an import or export of many edits longer still.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class EditServeError(Exception):
    """The server answered with an error status; `message` is its explanation (the `detail`, or the
    OpenAI error's `message`), `body` the whole decoded answer."""

    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.body = status, message, body


class Call:
    """One request and what its answer decodes to; the sync and async clients only differ in sending it."""

    def __init__(self, method: str, path: str, model: type[BaseModel] | None, json=None, params=None, content=None):
        self.method, self.path, self.model = method, path, model
        self.json, self.params, self.content = json, params, content

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        headers = {"Content-Type": "application/x-ndjson"} if self.content is not None else None
        return http.build_request(
            self.method, self.path, json=self.json, params=params, content=self.content, headers=headers
        )


def _raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = body.decode(errors="replace")
    message = decoded
    if isinstance(decoded, dict):
        message = decoded.get("detail") or (decoded.get("error") or {}).get("message") or decoded
    raise EditServeError(response.status_code, message if isinstance(message, str) else json.dumps(message), decoded)


def _decode(call: Call, response: httpx.Response):
    _raise_for_status(response, response.content)
    return call.model.model_validate_json(response.content) if call.model else response.json()


def _stream_item(data: str) -> TokenPublic | GenerateStreamEnd | None:
    """One server-sent event of /generate: a token, the end, or None for [DONE]."""
    if data == "[DONE]":
        return None
    item = json.loads(data)
    if "error" in item:  # the answer had begun (status 200) when generation failed
        raise EditServeError(500, item["error"].get("message", "generation failed"), item)
    return GenerateStreamEnd.model_validate(item) if "finish_reason" in item else TokenPublic.model_validate(item)


def _generate_body(prompt, messages, max_new_tokens, stream, options) -> dict:
    body = {"max_new_tokens": max_new_tokens, "stream": stream, **options}
    body.update({"prompt": prompt} if messages is None else {"messages": list(messages)})
    return body


def _bundle(edits: bytes | str | Iterable[dict]) -> bytes:
    if isinstance(edits, bytes):
        return edits
    if isinstance(edits, str):
        return edits.encode()
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in edits).encode()


def _headers(api_key: str | None) -> dict:
    api_key = api_key if api_key is not None else os.environ.get("EDITSERVE_API_KEY")
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _Operations:
    """The API's operations, written once: each builds a `Call` and hands it to `_send`, which the
    sync client runs at once and the async client returns as a coroutine."""

    def _send(self, call: Call):
        raise NotImplementedError

    def create_edit(
        self,
        prompt: str,
        target: str,
        method: str = "ireva",
        subject: str | None = None,
        retrofit: bool = False,
        aliases: list[str] | None = None,
    ) -> EditPublic:
        body = {"prompt": prompt, "target": target, "method": method, "retrofit": retrofit, "subject": subject}
        return self._send(Call("POST", "/edits", EditPublic, json={**body, "aliases": aliases or []}))

    def list_edits(
        self,
        status: str | None = None,
        q: str | None = None,
        created_by: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> EditsPublic:
        params = {"status": status, "q": q, "created_by": created_by, "limit": limit, "offset": offset}
        return self._send(Call("GET", "/edits", EditsPublic, params=params))

    def get_edit(self, edit_id: str) -> EditPublic:
        return self._send(Call("GET", f"/edits/{edit_id}", EditPublic))

    def edit_history(self, edit_id: str) -> EditHistory:
        return self._send(Call("GET", f"/edits/{edit_id}/history", EditHistory))

    def update_edit(
        self, edit_id: str, prompt: str | None = None, target: str | None = None, aliases: list[str] | None = None
    ) -> EditPublic:
        """`aliases`: the subject's other names from now on (None: as they are; []: none)."""
        changed = {"prompt": prompt, "target": target, "aliases": aliases}
        body = {k: v for k, v in changed.items() if v is not None}
        return self._send(Call("PUT", f"/edits/{edit_id}", EditPublic, json=body))

    def withdraw_edit(self, edit_id: str) -> EditPublic:
        return self._send(Call("DELETE", f"/edits/{edit_id}", EditPublic))

    def preview_edit(
        self,
        prompt: str,
        target: str,
        method: str = "ireva",
        queries: Iterable[str] = (),
        questions: Iterable[str] = (),
        max_new_tokens: int = 16,
    ) -> PreviewResponse:
        body = {"prompt": prompt, "target": target, "method": method, "max_new_tokens": max_new_tokens}
        body.update(queries=list(queries), questions=list(questions))
        return self._send(Call("POST", "/edits/preview", PreviewResponse, json=body))

    def generate(
        self,
        prompt: str | None = None,
        messages: Iterable[dict] | None = None,
        max_new_tokens: int = 16,
        **options,
    ) -> GenerateResponse:
        """`prompt` continued, or the assistant's answer to `messages`. `options`: temperature, top_p,
        seed, stop, edits ("all" or "none")."""
        body = _generate_body(prompt, messages, max_new_tokens, False, options)
        return self._send(Call("POST", "/generate", GenerateResponse, json=body))

    def health(self) -> Health:
        return self._send(Call("GET", "/health", Health))

    def ready(self) -> Health:
        """The model and the edits are loaded (raises EditServeError 503 while the server loads)."""
        return self._send(Call("GET", "/health/ready", Health))


class Client(_Operations):
    """Synchronous. `http`: an httpx.Client of your own (e.g. a FastAPI TestClient) instead of one made
    here; `api_key` defaults to $EDITSERVE_API_KEY."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ):
        self._own = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.http.headers.update(_headers(api_key))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _send(self, call: Call):
        return _decode(call, self.http.send(call.request(self.http)))

    def _lines(self, call: Call) -> Iterator[str]:
        response = self.http.send(call.request(self.http), stream=True)
        try:
            if response.status_code >= 400:
                _raise_for_status(response, response.read())
            yield from response.iter_lines()
        finally:
            response.close()

    def stream_generate(
        self, prompt: str | None = None, messages: Iterable[dict] | None = None, max_new_tokens: int = 16, **options
    ) -> Iterator[TokenPublic | GenerateStreamEnd]:
        """Each token as it is made (`TokenPublic`), then a `GenerateStreamEnd` with the whole text."""
        body = _generate_body(prompt, messages, max_new_tokens, True, options)
        for line in self._lines(Call("POST", "/generate", None, json=body)):
            if line.startswith("data: ") and (item := _stream_item(line[6:])) is not None:
                yield item

    def export_edits(self, status: str | None = None) -> Iterator[dict]:
        """Every edit (or those of one status) as a bundle line, oldest first, as the server streams them."""
        for line in self._lines(Call("GET", "/edits/export", None, params={"status": status})):
            if line.strip():
                yield json.loads(line)

    def import_edits(self, edits: bytes | str | Iterable[dict]) -> Iterator[dict]:
        """Insert a bundle (JSON lines, a JSON list, or dicts); yields each line's result as the server
        reports it — {"line", "result", "id"|"detail"} — then {"summary": {...}}."""
        for line in self._lines(Call("POST", "/edits/import", None, content=_bundle(edits))):
            if line.strip():
                yield json.loads(line)


class AsyncClient(_Operations):
    """Asynchronous: the same methods as `Client`, awaited; `stream_generate`, `export_edits` and
    `import_edits` are async iterators."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ):
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.http.headers.update(_headers(api_key))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _send(self, call: Call):
        return _decode(call, await self.http.send(call.request(self.http)))

    async def _lines(self, call: Call) -> AsyncIterator[str]:
        response = await self.http.send(call.request(self.http), stream=True)
        try:
            if response.status_code >= 400:
                _raise_for_status(response, await response.aread())
            async for line in response.aiter_lines():
                yield line
        finally:
            await response.aclose()

    async def stream_generate(
        self, prompt: str | None = None, messages: Iterable[dict] | None = None, max_new_tokens: int = 16, **options
    ) -> AsyncIterator[TokenPublic | GenerateStreamEnd]:
        body = _generate_body(prompt, messages, max_new_tokens, True, options)
        async for line in self._lines(Call("POST", "/generate", None, json=body)):
            if line.startswith("data: ") and (item := _stream_item(line[6:])) is not None:
                yield item

    async def export_edits(self, status: str | None = None) -> AsyncIterator[dict]:
        async for line in self._lines(Call("GET", "/edits/export", None, params={"status": status})):
            if line.strip():
                yield json.loads(line)

    async def import_edits(self, edits: bytes | str | Iterable[dict]) -> AsyncIterator[dict]:
        async for line in self._lines(Call("POST", "/edits/import", None, content=_bundle(edits))):
            if line.strip():
                yield json.loads(line)
