"""`raftune serve`: the assistant behind an OpenAI-compatible API and a web page, on uvicorn.

  POST /v1/chat/completions   the last user message is the question; streamed (server-sent events) or not. The
                              answer's passages travel in an extra `sources` field (and `final_answer`, the text
                              after <ANSWER>:), in the response or in the last streamed chunk. Sampling fields of the
                              request are ignored: answers are greedy, as they were evaluated; `max_tokens` is kept.
  GET  /v1/models             the one model served
  GET  /health                whether the model is generating, how many requests wait
  GET  /                      the web page (static HTML and JavaScript, no build step)

llama.cpp holds one context, so one answer is generated at a time, in a worker thread; at most `queue` requests
wait for it and any further one is answered 503 at once. A client that goes away mid-stream stops its generation at
the next token, which frees the model for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from raftune.serve.assistant import Assistant, Prepared, QuestionError, reply

_DONE = object()


class Gate:
    """Admits one generating request plus `queue` waiting ones; counts generations stopped by a disconnect."""

    def __init__(self, queue: int):
        self.capacity, self.admitted, self.stopped_early = 1 + queue, 0, 0
        self.model = threading.Lock()  # held while llama.cpp generates
        self._count = threading.Lock()

    def enter(self) -> bool:
        with self._count:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            return True

    def leave(self, stopped_early: bool) -> None:
        with self._count:
            self.admitted -= 1
            self.stopped_early += stopped_early


class Generation:
    """One answer generated in a worker thread, read as an async iterator of `Assistant.stream`'s items. The thread
    starts at once and always leaves the gate; `cancel()` (a disconnect) stops it at the next token."""

    def __init__(self, assistant: Assistant, gate: Gate, prepared: Prepared):
        self.loop, self.queue, self.stop = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
        threading.Thread(target=self._work, args=(assistant, gate, prepared), daemon=True).start()

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shut down)
            pass

    def _work(self, assistant: Assistant, gate: Gate, prepared: Prepared) -> None:
        stopped = False
        try:
            with gate.model:
                pieces = assistant.stream(prepared)
                try:
                    while not (stopped := self.stop.is_set()):  # checked before the prompt and each token
                        self._put(next(pieces))
                except StopIteration:
                    pass
                finally:
                    pieces.close()
        except Exception as err:  # noqa: BLE001 - handed to the request, which answers 500 with it
            self._put(err)
        finally:
            gate.leave(stopped)
            self._put(_DONE)

    def cancel(self) -> None:
        self.stop.set()

    async def __aiter__(self):
        try:
            while (item := await self.queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.cancel()  # a no-op after the last piece; on a disconnect, frees the model


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def question_of(body) -> str:
    """The last user message's text (a string, or OpenAI's list of {type: text, text} parts)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise QuestionError("the body needs 'messages': a list of {role, content}")
    users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise QuestionError("'messages' has no message with role 'user'; its last one is the question")
    content = users[-1].get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise QuestionError("the last user message's 'content' must be text")
    return content


def create_app(assistant: Assistant, queue: int = 4) -> FastAPI:
    app = FastAPI(title="raftune assistant", docs_url=None, redoc_url=None)
    gate = app.state.gate = Gate(queue)
    page = resources.files("raftune.serve").joinpath("page.html").read_text(encoding="utf-8")
    created = int(time.time())

    def envelope(kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": assistant.name}

    def extras(result: dict) -> dict:
        return {"sources": result["sources"], "final_answer": result["final_answer"],
                "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                          "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": assistant.name, "object": "model", "created": created,
                                            "owned_by": "raftune"}]}

    @app.get("/health")
    async def health():
        return {"model": assistant.name, "generating": gate.model.locked(), "admitted": gate.admitted,
                "capacity": gate.capacity, "stopped_early": gate.stopped_early}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not JSON")
        try:
            question = question_of(body)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            prepared = await run_in_threadpool(assistant.prepare, question, max_tokens)
        except QuestionError as err:
            return _error(400, str(err))
        if not gate.enter():
            return _error(503, f"busy: one answer is being generated and {gate.capacity - 1} requests wait for the "
                               f"model; retry later", "server_busy")
        generation = Generation(assistant, gate, prepared)
        if body.get("stream"):
            return StreamingResponse(_events(generation, prepared, envelope("chat.completion.chunk"), extras),
                                     media_type="text/event-stream")
        text, finish, tokens = "", None, None
        async for piece, finish, tokens in generation:
            text += piece
        result = reply(prepared, text, finish, tokens)
        return {**envelope("chat.completion"), **extras(result),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["answer"]},
                             "finish_reason": result["finish_reason"]}]}

    return app


async def _events(generation: Generation, prepared: Prepared, head: dict, extras):
    """Server-sent events: the answer's pieces as deltas, then one chunk with the finish reason and the sources."""
    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        yield event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
        text, finish, tokens = "", None, None
        async for piece, finish, tokens in generation:
            text += piece
            if piece:
                yield event({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        result = reply(prepared, text, finish, tokens)
        yield event({**head, **extras(result),
                     "choices": [{"index": 0, "delta": {}, "finish_reason": result["finish_reason"]}]})
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()  # the client went away (or all was sent): stop at the next token


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """`app` (from `create_app`) on uvicorn in a background thread (port 0: a free one) while the block runs; yields
    its URL. For notebooks and tests: `raftune serve` is the command-line way."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited before it started serving")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(assistant: Assistant, host: str = "127.0.0.1", port: int = 8000, queue: int = 4) -> None:
    import uvicorn

    print(f"serve: {assistant.gguf} as '{assistant.name}' on http://{host}:{port}/ (OpenAI API at "
          f"http://{host}:{port}/v1)", flush=True)
    uvicorn.run(create_app(assistant, queue), host=host, port=port, log_level="warning")
