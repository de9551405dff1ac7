"""The OpenAI-style HTTP server (Starlette on uvicorn) over one model, and the chat page at /.

Routes: POST /v1/completions and /v1/chat/completions (OpenAI's request and response shapes; `stream: true`
sends server-sent events ending in `data: [DONE]`), POST /v1/surprisal (the bits of every token of a text),
GET /v1/models, GET /v1/card (the model card), GET /health, and the page's static files. Requests go to
the Engine, which decodes all active ones together; beyond its stream slots a request gets 429.
A client that goes away mid-stream has its stream cancelled, which frees its slot and cache.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lmgolf.serve.engine import Busy, Engine, Finish, Prompt, Token
from lmgolf.serve.protocol import BadRequest, Limits, Parsed, parse_chat, parse_completion, parse_surprisal
from lmgolf.serve.responses import chat_chunk, chat_response, completion_chunk, completion_response

STATIC = Path(__file__).parent / "static"


def create_app(model, tokenizer, card: dict, limits: Limits = Limits(), engine: Engine | None = None) -> Starlette:
    """The app for one model; `card` is its model card (lmgolf.serve.card), whose name is the model's id."""
    engine = engine or Engine(model, tokenizer, limits.max_streams)
    name = card["name"]

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    max_body = 4 * limits.max_prompt_bytes + 65_536  # JSON escapes and the other fields

    async def body_of(request: HttpRequest):
        raw = bytearray()
        async for part in request.stream():  # read no more than the limit allows
            raw += part
            if len(raw) > max_body:
                raise BadRequest(f"the request body is larger than {max_body:,} bytes", None, 413)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    async def completions(request: HttpRequest):
        parsed = parse_completion(await body_of(request), limits, tokenizer, name)
        return await answer(parsed, "completion")

    async def chat(request: HttpRequest):
        parsed = parse_chat(await body_of(request), limits, tokenizer, name)
        return await answer(parsed, "chat")

    async def surprisal(request: HttpRequest):
        parsed = parse_surprisal(await body_of(request), limits, tokenizer)
        prompt, _, _ = await collect(submit(parsed))
        scored = [t for t in prompt.tokens if t.bits is not None]
        bits, nbytes = sum(t.bits for t in scored), sum(len(t.text.encode()) for t in scored)
        return JSONResponse({"model": name, "tokens": [{"id": t.id, "text": t.text, "bits": t.bits} for t in prompt.tokens],
                             "bits": bits, "scored_bytes": nbytes, "bits_per_byte": bits / nbytes if nbytes else None})

    def submit(parsed: Parsed) -> asyncio.Queue:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def sink(event) -> None:  # called in the engine's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop has closed (the server is shutting down)
                queue.stream.cancel()

        try:
            stream = engine.submit(parsed.request, sink)
        except Busy as e:
            raise BadRequest(str(e), None, 429, "rate_limit_error", "too_many_streams") from None
        queue.stream = stream
        return queue

    async def collect(queue: asyncio.Queue) -> tuple[Prompt, list[Token], Finish]:
        try:
            events = []
            while not events or not isinstance(events[-1], Finish):
                events.append(await queue.get())
        finally:
            queue.stream.cancel()
        finish = events[-1]
        if finish.reason in ("timeout", "error"):
            raise _failure(finish, limits)
        prompt = next(e for e in events if isinstance(e, Prompt))
        return prompt, [e for e in events if isinstance(e, Token)], finish

    async def answer(parsed: Parsed, kind: str):
        queue = submit(parsed)
        meta = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": name}
        if not parsed.stream:
            prompt, tokens, finish = await collect(queue)
            shape = chat_response if kind == "chat" else completion_response
            return JSONResponse(shape(meta, parsed, prompt.tokens, tokens, finish.reason))
        chunk = chat_chunk if kind == "chat" else completion_chunk
        return StreamingResponse(sse(queue, meta, parsed, chunk), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def sse(queue, meta, parsed, chunk):
        try:
            while True:
                event = await queue.get()
                if isinstance(event, Finish) and event.reason in ("timeout", "error"):
                    yield f"data: {json.dumps(_failure(event, limits).body())}\n\n"
                    break
                for body in chunk(meta, parsed, event):
                    yield f"data: {json.dumps(body)}\n\n"
                if isinstance(event, Finish):
                    break
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away and the response was cancelled
            queue.stream.cancel()

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                         "owned_by": "lmgolf"}]})

    async def model(request):
        if request.path_params["model"] != name:
            raise BadRequest(f"model: no model named {request.path_params['model']!r} here", "model", 404,
                             code="model_not_found")
        return JSONResponse({"id": name, "object": "model", "created": 0, "owned_by": "lmgolf"})

    async def health(request):
        return JSONResponse({"status": "ok", "model": name, "active_streams": engine.active,
                             "max_streams": limits.max_streams, "steps": engine.step_count})

    async def card_route(request):
        return JSONResponse({**card, "limits": limits.__dict__})

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def bad_request(request, exc: BadRequest):
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request, exc: HTTPException):
        return JSONResponse(BadRequest(exc.detail, None, exc.status_code).body(), status_code=exc.status_code)

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/surprisal", surprisal, methods=["POST"]),
              Route("/v1/models", models), Route("/v1/models/{model:path}", model),
              Route("/v1/card", card_route), Route("/health", health), Route("/", index),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={BadRequest: bad_request, HTTPException: http_error})
    app.state.engine = engine
    return app


def _failure(finish: Finish, limits: Limits) -> BadRequest:
    if finish.reason == "timeout":
        return BadRequest(f"the request took longer than the limit of {limits.timeout:g} s", None, 504,
                          "timeout_error", "timeout")
    return BadRequest(f"decoding failed: {finish.message}", None, 500, "server_error")


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextmanager
def serving_in_background(app: Starlette, host: str = "127.0.0.1"):
    """A real uvicorn server on a free port in a thread, for tests and benchmarks: yields its base URL."""
    import socket
    import threading

    import uvicorn
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the server did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
