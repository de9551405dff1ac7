"""The serving engine decodes streams at different cache lengths in one forward pass per step, and each
stream gets what it would get decoded alone: the same tokens and the same logits (fp32, within 1e-5 of the
largest logit's size)."""

import pytest
import torch

from lmgolf.config import ModelConfig
from lmgolf.data.tokenizers import ByteTokenizer
from lmgolf.model.gpt import GPT
from lmgolf.serve.engine import Engine, Finish, Request, Token
from lmgolf.serve.generate import _Cached, generate

TOK = ByteTokenizer()
BOS = TOK.bos_id
TOLERANCE = 1e-5  # relative, in fp32: a batch's kernels may add the same terms in another order (float64: 0 here)

SHAPES = {"rope-gqa-doc-mask": dict(n_kv_head=1, doc_mask=True, bos_id=BOS),
          "learned-value-residual": dict(positions="learned", value_residual=True),
          "ssm-smear-bigram": dict(ssm_layers="0", smear_gate=True, bigram_buckets=64, bos_id=BOS),
          "partial-rope-softcap-exclusive": dict(rope_dims=8, attn_softcap=20.0, exclusive_attn=True),
          "differential-qk-norm": dict(diff_attn=True, qk_norm=True, n_kv_head=1),
          "recurrence-unet": dict(depth_pattern="0,1,0,1", unet_skips=True, doc_mask=True, bos_id=BOS),
          "mlp-window-family": dict(family="mlp", window=4, bos_id=BOS)}
PROMPTS = ([BOS] + TOK.encode("ab"),  # three lengths; the last holds a second document (doc masking)
           [BOS] + TOK.encode("hello"),
           [BOS] + TOK.encode("a b") + [BOS] + TOK.encode("cd e"))


def tiny(context: int, **options) -> GPT:
    torch.manual_seed(0)  # a large init: varied greedy continuations
    return GPT(ModelConfig(vocab_size=257, n_layer=2, d_model=32, n_head=2, context=context, mlp="gelu", init_std=0.3,
                           embed_init_std=0.3, **options)).eval()


class Recording(Engine):
    """An engine that records each stream's next-token logits and each step's forward passes (batch, cache lengths)."""

    def __init__(self, model):
        super().__init__(model, TOK)
        self.logits, self.forwards = {}, []
        forward = model.forward

        def counted(x, cache=None, **k):
            lengths = None if cache is None else (cache.lengths.tolist() if cache.lengths is not None else cache.length)
            self.forwards.append((self.step_count, x.size(0), lengths))
            return forward(x, cache, **k)
        model.forward = counted

    def _advance(self, s, logits):
        self.logits.setdefault(s.request.seed, []).append(logits[-1].clone())
        super()._advance(s, logits)

    def run(self, requests: dict[int, Request], join_at: dict[int, int] = {}) -> dict[int, list[int]]:
        """Decodes the requests (keyed by seed), request k joining at step join_at.get(k, 1); their new token ids."""
        got = {k: [] for k in requests}
        while self.streams or any(self.step_count < join_at.get(k, 1) for k in requests):
            for k, request in requests.items():
                if join_at.get(k, 1) == self.step_count + 1:
                    self.submit(request, got[k].append)
            self.step()
        del self.model.forward  # back to the class's forward
        return {k: [e.id for e in events if isinstance(e, Token)] for k, events in got.items()}


@torch.no_grad()
def alone(model, request: Request) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding of one request through its own KV cache, without the engine: new ids, next-token logits."""
    decoder, ids, tokens, logits = _Cached(model, model.cfg.context), list(request.prompt_ids), [], []
    for _ in range(request.max_new_tokens):
        logits.append(decoder.logits(ids))
        token = int(logits[-1].argmax())
        if token == BOS:
            break
        ids.append(token)
        tokens.append(token)
    return tokens, logits


def assert_close(batched: list[torch.Tensor], own: list[torch.Tensor]) -> None:
    assert len(batched) == len(own)
    for a, b in zip(batched, own):
        assert float((a - b).abs().max()) <= TOLERANCE * float(b.abs().max())


def requests(n_new: int) -> dict[int, Request]:
    return {i: Request(list(p), n_new, temperature=0, seed=i) for i, p in enumerate(PROMPTS)}


def test_streams_at_different_lengths_advance_in_one_forward_per_step():
    model = tiny(context=64)
    engine = Recording(model)
    got = engine.run(requests(20))
    after_prefill = [f for f in engine.forwards if f[0] > 1]
    assert [f[0] for f in engine.forwards if f[0] == 1] == [1, 1, 1]  # three prefills, each its own pass
    assert [f[0] for f in after_prefill] == list(range(2, 21))  # then exactly one forward pass a step
    assert all(batch == 3 for _, batch, _ in after_prefill)
    assert after_prefill[0][2] == [len(p) for p in PROMPTS]  # each row at its own length
    for i, p in enumerate(PROMPTS):
        assert got[i] == generate(model, list(p), 20, temperature=0, stop_id=BOS)


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_decoding_gives_each_stream_the_tokens_and_logits_it_gets_alone(shape):
    model = tiny(context=16, **SHAPES[shape])  # 30 tokens: past the context, through each stream's cache rebuilds
    engine = Recording(model)
    got = engine.run(requests(30))
    at_three_lengths = [lengths for _, batch, lengths in engine.forwards if batch == 3 and len(set(lengths)) == 3]
    assert len(at_three_lengths) > 10  # one pass for three streams at three different cache lengths
    for seed, request in requests(30).items():
        tokens, logits = alone(model, request)
        assert got[seed] == tokens and len(tokens) > 0
        assert_close(engine.logits[seed], logits)


def test_a_stream_joining_mid_decode_shares_the_others_forward_pass_from_its_second_step():
    model = tiny(context=64, **SHAPES["ssm-smear-bigram"])
    engine = Recording(model)
    got = engine.run(requests(16), join_at={1: 6, 2: 9})
    per_step = {}
    for step, batch, _ in engine.forwards:
        per_step.setdefault(step, []).append(batch)
    assert per_step[6] == [1, 1] and per_step[9] == [2, 1]  # the decoding batch, then the newcomer's prefill
    assert per_step[7] == [2] and per_step[10] == [3]
    for seed, request in requests(16).items():
        tokens, logits = alone(model, request)
        assert got[seed] == tokens
        assert_close(engine.logits[seed], logits)


def test_finished_and_cancelled_streams_leave_the_batch_at_once_and_the_rest_decode_as_alone():
    model = tiny(context=64, **SHAPES["rope-gqa-doc-mask"])
    engine, reqs = Recording(model), requests(20)
    reqs[1].max_new_tokens = 5
    got = {k: [] for k in reqs}
    streams = [engine.submit(r, got[k].append) for k, r in reqs.items()]
    for _ in range(4):
        engine.step()
    streams[2].cancel()  # the longest row
    engine.step()  # stream 1 takes its 5th and last token
    assert engine.batch.streams == [streams[0]] and streams[2].decoder.cache is None
    assert engine.batch.cache.lengths.tolist() == [len(PROMPTS[0]) + 4] == [engine.batch.cache.length]  # no padding left
    while engine.streams:
        engine.step()
    del model.forward
    assert engine.batch.streams == [] and engine.batch.cache is None
    for k in (0, 1):
        tokens, logits = alone(model, reqs[k])
        assert [e.id for e in got[k] if isinstance(e, Token)] == tokens and len(tokens) == reqs[k].max_new_tokens
        assert_close(engine.logits[k], logits)


def two_streams_past_their_prefill():
    """A model, an engine decoding requests 0 and 1 (their prefills done), the requests, and each one's events."""
    model = tiny(context=64)
    engine, reqs, got = Engine(model, TOK), requests(10), {k: [] for k in range(3)}
    for k in (0, 1):
        engine.submit(reqs[k], got[k].append)
    engine.step()
    return model, engine, reqs, got


def test_a_failed_batched_pass_sends_its_streams_on_alone_and_they_get_the_tokens_they_would_have_got():
    model, engine, reqs, got = two_streams_past_their_prefill()
    forward, calls = model.forward, []

    def batch_fails(x, cache=None, **k):  # the decoding batch's pass (two rows) runs out of memory, once
        calls.append(x.shape)
        if x.size(0) > 1 and len(calls) == 1:
            raise RuntimeError("out of memory")
        return forward(x, cache, **k)
    model.forward = batch_fails
    engine.step()
    assert engine.batch.streams == [] and [s.decoder.cache for s in engine.streams] == [None, None]
    while engine.streams:
        engine.step()
    del model.forward
    assert [tuple(shape) for shape in calls[1:3]] == [(1, len(PROMPTS[0]) + 1), (1, len(PROMPTS[1]) + 1)]  # rebuilds
    assert all(shape[0] == 2 for shape in calls[3:])  # then one batch again
    for k in (0, 1):
        assert [e.reason for e in got[k] if isinstance(e, Finish)] == ["length"]
        assert [e.id for e in got[k] if isinstance(e, Token)] == alone(model, reqs[k])[0]


def test_passes_that_keep_failing_end_each_stream_with_an_error_and_the_next_streams_decode_as_alone():
    model, engine, reqs, got = two_streams_past_their_prefill()

    def failing(x, cache=None, **k):
        raise RuntimeError("out of memory")
    model.forward = failing
    engine.step()  # the batch fails: no stream ends yet
    assert len(engine.streams) == 2 and not any(isinstance(e, Finish) for k in (0, 1) for e in got[k])
    engine.step()  # each stream's own pass fails: each ends
    del model.forward
    ends = [e for k in (0, 1) for e in got[k] if isinstance(e, Finish)]
    assert [(e.reason, e.message) for e in ends] == [("error", "RuntimeError: out of memory")] * 2
    assert engine.streams == [] and engine.batch.streams == [] and engine.batch.cache is None
    engine.submit(reqs[2], got[2].append)
    while engine.streams:
        engine.step()
    assert [e.id for e in got[2] if isinstance(e, Token)] == alone(model, reqs[2])[0]


def test_a_stream_whose_token_handling_raises_ends_alone_and_its_batch_mates_go_on():
    model = tiny(context=64)
    engine, reqs, got = Engine(model, TOK), requests(10), {k: [] for k in range(2)}

    def breaks_at_the_third_event(event):
        got[0].append(event)
        if len(got[0]) == 3:
            raise BrokenPipeError("client went away")
    engine.submit(reqs[0], breaks_at_the_third_event)
    engine.submit(reqs[1], got[1].append)
    while engine.streams:
        engine.step()
    assert [(e.reason, e.message) for e in got[0] if isinstance(e, Finish)] == [("error", "BrokenPipeError: client went away")]
    assert [e.reason for e in got[1] if isinstance(e, Finish)] == ["length"]
    assert [e.id for e in got[1] if isinstance(e, Token)] == alone(model, reqs[1])[0]