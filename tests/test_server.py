"""lmgolf serve: OpenAI shapes, streaming, batched decoding, limits, bad requests, disconnects, the model card."""

import json
import threading
import time

import pytest
import torch

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'lmgolf[test]')")
pytest.importorskip("uvicorn", reason="lmgolf serve needs uvicorn (pip install 'lmgolf[serve]')")
TestClient = pytest.importorskip("starlette.testclient", reason="lmgolf serve needs starlette").TestClient

from lmgolf import api
from lmgolf.config import ModelConfig
from lmgolf.data.tokenizers import ByteTokenizer
from lmgolf.model.gpt import GPT
from lmgolf.serve.card import model_card
from lmgolf.serve.chat import render
from lmgolf.serve.engine import Engine, Request, Token
from lmgolf.serve.generate import generate
from lmgolf.serve.protocol import Limits, render_messages
from lmgolf.serve.server import create_app, serving_in_background

from conftest import TINY_RUN, assert_one_line_error, cli

TOK = ByteTokenizer()
CARD = {"name": "tiny", "shape": {"vocab_size": 257}}


def tiny(context: int = 64) -> GPT:
    torch.manual_seed(0)  # a large init: varied greedy continuations
    cfg = ModelConfig(vocab_size=257, n_layer=1, d_model=32, n_head=2, context=context, mlp="gelu", init_std=0.3,
                      embed_init_std=0.3)
    return GPT(cfg).double().eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture
def client(model):
    with TestClient(create_app(model, TOK, CARD, Limits(max_prompt_bytes=200, max_new_tokens=64))) as c:
        yield c


def ids(text: str) -> list[int]:
    return [TOK.bos_id] + TOK.encode(text)


def events(lines) -> list:
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_a_greedy_completion_is_generate_with_every_token_scored(client, model):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "The king", "max_tokens": 20, "temperature": 0,
                                            "echo": True, "logprobs": 2})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    new = generate(model, ids("The king"), 20, temperature=0, stop_id=TOK.bos_id)
    assert choice["text"] == "The king" + TOK.decode(new) and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["tokens"]) == 8 + 20
    assert all(isinstance(x, float) and x < 0 for x in lp["token_logprobs"])  # every prompt token after BOS too
    with torch.no_grad():
        logits = model(torch.tensor([ids("The king") + new]))[0].log_softmax(-1)
    expected = [float(logits[i, t]) for i, t in enumerate((ids("The king") + new)[1:])]
    assert lp["token_logprobs"] == pytest.approx(expected, abs=1e-9)
    tops = lp["top_logprobs"][8:]  # greedy: the chosen token is the most likely (texts of other ids may coincide)
    assert all(0 < len(top) <= 2 and max(top.values()) == pytest.approx(x) for top, x in zip(tops, lp["token_logprobs"][8:]))
    assert lp["text_offset"][:3] == [0, 1, 2]


def test_a_streamed_completion_joins_to_the_whole_one_and_ends_with_done(client):
    ask = {"prompt": "Once", "max_tokens": 12, "temperature": 0.9, "seed": 4}
    whole = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={**ask, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = events(r.iter_lines())
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def test_chat_uses_the_documented_template_and_streams_a_role_first(client, model):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"}]
    assert render_messages(messages) == render([("hi", "hello")], "and?")
    assert render_messages([{"role": "system", "content": "be kind"}] + messages).startswith("System: be kind\nUser: hi")
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0,
                                                 "logprobs": True, "top_logprobs": 3}).json()
    new = TOK.decode(generate(model, ids(render_messages(messages)), 10, temperature=0, stop_id=TOK.bos_id))
    choice = r["choices"][0]
    assert r["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == new.split("\nUser:")[0].lstrip(" ")
    assert all(len(e["top_logprobs"]) == 3 and e["logprob"] < 0 for e in choice["logprobs"]["content"])
    with client.stream("POST", "/v1/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0,
                                                            "stream": True}) as s:
        chunks = events(s.iter_lines())
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == choice["message"]["content"]


def test_a_stop_string_cuts_the_text_before_it(client):
    ask = {"prompt": "The ", "max_tokens": 30, "temperature": 0}
    text = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
    stop = text[10:13]
    r = client.post("/v1/completions", json={**ask, "stop": [stop]}).json()["choices"][0]
    assert r["text"] == text[:text.index(stop)] and r["finish_reason"] == "stop"
    with client.stream("POST", "/v1/completions", json={**ask, "stop": stop, "stream": True}) as s:
        assert "".join(c["choices"][0]["text"] for c in events(s.iter_lines())) == r["text"]


def test_two_concurrent_streams_advance_in_the_same_engine_steps(model):
    engine = Engine(model, TOK, max_streams=4)
    got = {0: [], 1: []}
    streams = [engine.submit(Request(ids(p), 25, temperature=0), got[i].append) for i, p in enumerate(["ab", "xyz"])]
    while engine.streams:
        engine.step()
    assert streams[0].steps == streams[1].steps == list(range(1, 26))  # one token each, every step
    for i, p in enumerate(["ab", "xyz"]):
        assert [e.id for e in got[i] if isinstance(e, Token)] == generate(model, ids(p), 25, temperature=0)


def test_streams_at_the_same_length_share_one_forward_pass_per_step(model, monkeypatch):
    engine, calls = Engine(model, TOK, max_streams=4), []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, cache=None, **k: calls.append(x.shape) or forward(x, cache, **k))
    got = {i: [] for i in range(3)}
    prompts = ["cat", "dog", "owl"]  # the same length: they stay in step
    for i, p in enumerate(prompts):
        engine.submit(Request(ids(p), 30, temperature=1.0, seed=i), got[i].append)
    while engine.streams:
        engine.step()
    assert len(calls) == 3 + 29 and all(shape == (3, 1) for shape in calls[3:])  # 3 prefills, then batched steps
    monkeypatch.undo()
    for i, p in enumerate(prompts):
        assert [e.id for e in got[i] if isinstance(e, Token)] == generate(model, ids(p), 30, temperature=1.0, seed=i)


SHAPES = {"rope-gqa-doc-mask": dict(n_kv_head=1, doc_mask=True, bos_id=256),
          "learned-value-residual": dict(positions="learned", value_residual=True),
          "ssm-smear-bigram": dict(ssm_layers="0", smear_gate=True, bigram_buckets=64, bos_id=256)}


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_steps_give_what_each_stream_alone_gives(shape, monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, n_layer=2, d_model=32, n_head=2, context=16, mlp="gelu", init_std=0.3,
                            embed_init_std=0.3, **SHAPES[shape])).double().eval()
    engine, got, prompts, batches = Engine(model, TOK), {0: [], 1: []}, ["ab", "cd"], []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, cache=None, **k: batches.append(x.size(0)) or forward(x, cache, **k))
    for i, p in enumerate(prompts):  # 30 tokens: past the context, through cache rebuilds
        engine.submit(Request(ids(p), 30, temperature=0), got[i].append)
    while engine.streams:
        engine.step()
    monkeypatch.undo()
    assert batches.count(2) > 20  # the two streams shared most steps' forward pass
    for i, p in enumerate(prompts):
        assert [e.id for e in got[i] if isinstance(e, Token)] == generate(model, ids(p), 30, temperature=0)


def test_concurrent_http_requests_are_decoded_together(model):
    class Gated(Engine):  # the first step waits until both requests are in
        def step(self):
            deadline = time.monotonic() + 10
            while len(self.streams) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            super().step()

    engine, streams = Gated(model, TOK, 4), []
    submit = engine.submit
    engine.submit = lambda request, sink: streams.append(submit(request, sink)) or streams[-1]
    with TestClient(create_app(model, TOK, CARD, engine=engine)) as c:
        out = [None, None]

        def ask(i):
            out[i] = c.post("/v1/completions", json={"prompt": "ab"[i] * 3, "max_tokens": 20, "temperature": 0})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert [r.status_code for r in out] == [200, 200]
    assert len(streams) == 2 and streams[0].steps == streams[1].steps and len(streams[0].steps) == 20


def test_beyond_the_stream_slots_a_request_gets_429(model):
    engine = Engine(model, TOK, max_streams=1)
    engine.start = lambda: None  # no decoding: the one slot stays taken
    engine.stop = lambda: None
    with TestClient(create_app(model, TOK, CARD, Limits(max_streams=1), engine=engine)) as c:
        engine.submit(Request(ids("x"), 5), lambda event: None)
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_a_finished_streams_slot_is_free_as_soon_as_its_client_has_the_last_event(model):
    engine, again = Engine(model, TOK, max_streams=1), []

    def sink(event):  # the client asks again from within the step that ended its first request
        if type(event).__name__ == "Finish" and not again:
            again.append(engine.submit(Request(ids("b"), 2), lambda e: None))

    engine.submit(Request(ids("a"), 2), sink)
    while engine.streams:
        engine.step()
    assert len(again) == 1 and again[0].finished == "length"


def test_a_request_past_its_timeout_gets_504(model):
    with TestClient(create_app(model, TOK, CARD, Limits(timeout=1e-9))) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        with c.stream("POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True}) as s:
            assert events(s.iter_lines())[-1]["error"]["code"] == "timeout"
        assert c.get("/health").json()["active_streams"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(model):
    app = create_app(model, TOK, CARD, Limits(max_new_tokens=16_000))
    engine = app.state.engine
    with serving_in_background(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        ask = {"prompt": "go", "max_tokens": 16_000, "stream": True}
        with http.stream("POST", "/v1/completions", json=ask) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ") and engine.active == 1
        deadline = time.monotonic() + 10
        while engine.streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.active == 0 and engine.streams == []
        assert http.get("/health").json()["active_streams"] == 0


BAD = [
    ("prompt", {"max_tokens": 3}), ("prompt", {"prompt": 5}), ("prompt", {"prompt": ["a", "b"]}),
    ("max_tokens", {"prompt": "a", "max_tokens": -1}), ("max_tokens", {"prompt": "a", "max_tokens": 65}),
    ("max_tokens", {"prompt": "a", "max_tokens": "5"}), ("max_tokens", {"prompt": "a", "max_tokens": 1.5}),
    ("temperature", {"prompt": "a", "temperature": -0.1}), ("temperature", {"prompt": "a", "temperature": 2.5}),
    ("temperature", {"prompt": "a", "temperature": "hot"}), ("top_p", {"prompt": "a", "top_p": 0}),
    ("top_p", {"prompt": "a", "top_p": 1.5}), ("top_k", {"prompt": "a", "top_k": -1}),
    ("top_k", {"prompt": "a", "top_k": True}), ("n", {"prompt": "a", "n": 2}), ("stream", {"prompt": "a", "stream": "yes"}),
    ("stop", {"prompt": "a", "stop": 5}), ("stop", {"prompt": "a", "stop": ["a"] * 5}),
    ("logprobs", {"prompt": "a", "logprobs": 6}), ("echo", {"prompt": "a", "echo": 1}),
    ("seed", {"prompt": "a", "seed": "x"}), ("prompt", {"prompt": "a" * 201}),
]
BAD_CHAT = [
    ("messages", {}), ("messages", {"messages": []}), ("messages", {"messages": "hi"}),
    ("messages[0].role", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("messages[1].content", {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 3}]}),
    ("messages", {"messages": [{"role": "user", "content": "é" * 101}]}),
    ("top_logprobs", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21}),
]


@pytest.mark.parametrize("field, body", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_a_bad_completion_field_gets_400_naming_it(client, field, body):
    r = client.post("/v1/completions", json=body)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == field and error["message"].startswith(field)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("field, body", BAD_CHAT, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CHAT)])
def test_a_bad_chat_field_gets_400_naming_it(client, field, body):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == field


def test_bad_json_an_unknown_model_and_unknown_routes_get_json_errors(client):
    for content in (b"{not json", b"\xff\xfe", b"[1, 2]", b"NaN"):
        r = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.post("/v1/completions", content=b'{"prompt": "' + b"a" * 70_000 + b'"}')
    assert r.status_code == 413 and "body" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "a", "model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
    assert client.get("/v1/models/gpt-4").status_code == 404 and client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
    assert client.get("/v1/completions").status_code == 405


def test_models_health_surprisal_and_the_page(client, model):
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").json()["status"] == "ok"
    s = client.post("/v1/surprisal", json={"text": "hello"}).json()
    with torch.no_grad():
        logp = model(torch.tensor([ids("hello")]))[0].log_softmax(-1)
    bits = [-float(logp[i, t]) / 0.6931471805599453 for i, t in enumerate(ids("hello")[1:])]
    assert [t["text"] for t in s["tokens"]] == ["", "h", "e", "l", "l", "o"] and s["tokens"][0]["bits"] is None
    assert [t["bits"] for t in s["tokens"][1:]] == pytest.approx(bits) and s["bits_per_byte"] == pytest.approx(sum(bits) / 5)
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "cdn" not in page.text.lower()
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


@pytest.fixture(scope="module")
def run(byte_data, tmp_path_factory, one_thread):
    return api.train(tmp_path_factory.mktemp("serve") / "run", preset="cpu-demo", data=byte_data, overrides=TINY_RUN,
                     max_steps=2, progress=False)


def test_the_model_card_reads_the_run_folder_and_the_artifact(run):
    packed = api.pack(run.path)
    for target, kind in ((run.path, "run"), (packed.path, "artifact")):
        loaded = api.load(target, device="cpu")
        card = model_card(loaded, "m")
        assert card["kind"] == kind and card["preset"] == "cpu-demo" and card["tokenizer"] == "byte"
        assert card["parameters"] == sum(p.numel() for p in loaded.model.parameters())
        assert card["val_bpb"] == run.summary["val_bpb"] and card["artifact_bytes"] == packed.artifact_bytes
        assert card["training_data"]["train_tokens"] > 0 and card["shape"]["context"] == 32


def test_the_serve_command_checks_its_flags_first(capsys, tmp_path):
    code, out, err = cli(capsys, "serve", tmp_path, "--max-streams", "0")
    assert_one_line_error(code, err, "--max-streams")
    code, out, err = cli(capsys, "serve", tmp_path, "--timeout", "-1")
    assert_one_line_error(code, err, "--timeout")
    code, out, err = cli(capsys, "serve", tmp_path / "missing")
    assert_one_line_error(code, err, "missing")


def test_the_serve_command_serves_a_run_on_loopback(run, capsys, monkeypatch):
    """The command's wiring, with uvicorn.run replaced by a test client over the app it was given."""
    import lmgolf.serve.server as server
    seen = {}

    def serve(app, host, port):
        seen.update(host=host, port=port)
        with TestClient(app) as c:
            seen["health"] = c.get("/health").json()
            seen["card"] = c.get("/v1/card").json()
            seen["too_many"] = c.post("/v1/completions", json={"prompt": "The", "max_tokens": 9}).json()

    monkeypatch.setattr(server, "serve", serve)
    code, out, err = cli(capsys, "serve", run.path, "--port", "8123", "--device", "cpu", "--max-new-tokens", "8")
    assert code == 0 and "at http://127.0.0.1:8123/" in out and seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["health"]["status"] == "ok" and seen["card"]["name"] == run.path.name == seen["health"]["model"]
    assert seen["card"]["limits"]["max_new_tokens"] == 8 and seen["too_many"]["error"]["param"] == "max_tokens"
