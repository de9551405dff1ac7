"""lmgolf chat: the template, trimming to the context, the REPL's commands and the CLI over stdin."""

import io
import subprocess
import sys

import pytest
import torch

from lmgolf import api
from lmgolf.config import ModelConfig
from lmgolf.data.tokenizers import ByteTokenizer
from lmgolf.model.gpt import GPT
from lmgolf.serve.chat import Chat, chat_loop, prompt_ids, render, until_stop

from conftest import assert_one_line_error, cli

TINY = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.context": 32, "train.batch_tokens": 128,
        "train.micro_batch": 4, "train.dtype": "fp32", "train.log_every": 1}


def tiny(context: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=257, n_layer=1, d_model=32, n_head=2, context=context, mlp="gelu")).eval()


def transcript(chat, lines) -> str:
    out = io.StringIO()
    assert chat_loop(chat, lines, out.write) == 0
    return out.getvalue()


def test_the_template_renders_user_and_assistant_lines():
    assert render([], "hi") == "User: hi\nAssistant:"
    assert render([("hi", "hello"), ("and?", "so")], "bye") == (
        "User: hi\nAssistant: hello\nUser: and?\nAssistant: so\nUser: bye\nAssistant:")


def test_the_prompt_drops_the_oldest_turns_then_cuts_from_the_left():
    tok = ByteTokenizer()
    turns = [("one " * 5, "a"), ("two", "b"), ("three", "c")]
    ids, kept = prompt_ids(tok, turns, "now", 1000)
    assert kept == 3 and ids == [tok.bos_id] + tok.encode(render(turns, "now"))
    budget = 1 + len(render(turns[2:], "now").encode())
    ids, kept = prompt_ids(tok, turns, "now", budget)
    assert kept == 1 and ids == [tok.bos_id] + tok.encode(render(turns[2:], "now")) and len(ids) <= budget
    ids, kept = prompt_ids(tok, turns, "x" * 100, 20)
    assert kept == 0 and len(ids) == 20 and ids[0] == tok.bos_id
    assert tok.decode(ids[1:]).endswith("x\nAssistant:")


def test_a_reply_stops_before_the_next_user_turn_holding_back_what_may_start_it():
    assert "".join(until_stop(["hel", "lo\nUs", "er: more"], "\nUser:")) == "hello"
    assert list(until_stop(["a\nU", "b"], "\nUser:")) == ["a", "\nUb"]
    assert "".join(until_stop(["no stop", " here\n"], "\nUser:")) == "no stop here\n"


def test_the_prompt_fits_the_models_context_in_a_long_conversation():
    chat = Chat(tiny(context=32), ByteTokenizer(), max_new_tokens=5, temperature=0)
    for i in range(4):
        "".join(chat.reply(f"message number {i}"))
    ids, kept = prompt_ids(chat.tokenizer, chat.turns, "last", chat.budget)
    assert len(ids) <= 32 - 5 and kept < len(chat.turns) and len(chat.turns) == 4


def test_the_loop_answers_resets_and_quits_and_replays_for_a_seed():
    lines = ["hello\n", "again\n", "/reset\n", "/quit\n", "never read\n"]
    first = transcript(Chat(tiny(), ByteTokenizer(), max_new_tokens=12, seed=3), lines)
    assert first == transcript(Chat(tiny(), ByteTokenizer(), max_new_tokens=12, seed=3), lines)
    assert first.count("> ") == 4 and "(conversation reset)\n" in first and first.endswith("> ")
    chat = Chat(tiny(), ByteTokenizer(), max_new_tokens=12, seed=3)
    transcript(chat, ["hello\n", "again\n"])
    assert [user for user, _ in chat.turns] == ["hello", "again"]
    transcript(chat, ["/reset\n"])
    assert chat.turns == []


def test_the_end_of_the_input_ends_the_loop_and_unknown_commands_are_named():
    chat = Chat(tiny(), ByteTokenizer(), max_new_tokens=4)
    assert transcript(chat, []) == "> \n"
    assert "unknown command /help" in transcript(chat, ["/help me\n", "\n"])
    assert chat.turns == []


def test_bad_sampling_arguments_are_refused_before_the_first_message():
    from lmgolf.errors import LmgolfError
    with pytest.raises(LmgolfError, match="top_p"):
        Chat(tiny(), ByteTokenizer(), top_p=2.0)


@pytest.fixture(scope="module")
def run(byte_data, tmp_path_factory, one_thread):
    return api.train(tmp_path_factory.mktemp("chat") / "run", preset="cpu-demo", data=byte_data, overrides=TINY,
                     max_steps=2, progress=False)


def test_the_chat_command_reads_stdin_from_a_pipe(run):
    args = [sys.executable, "-m", "lmgolf", "chat", str(run.path), "--max-new-tokens", "8", "--seed", "1",
            "--device", "cpu"]
    one = subprocess.run(args, input="hello\n/reset\nhi\n", capture_output=True, text=True, timeout=120)
    two = subprocess.run(args, input="hello\n/reset\nhi\n", capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and one.stderr == "" and one.stdout == two.stdout
    assert one.stdout.startswith("> ") and one.stdout.count("> ") == 4 and "(conversation reset)" in one.stdout


def test_the_chat_command_over_a_monkeypatched_stdin_and_its_errors(run, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/quit\n"))
    code, out, err = cli(capsys, "chat", run.path, "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0 and out.count("> ") == 2 and err == ""
    code, out, err = cli(capsys, "chat", run.path, "--top-k", "0", "--device", "cpu")
    assert_one_line_error(code, err, "top_k")
    code, out, err = cli(capsys, "chat", run.path / "missing")
    assert_one_line_error(code, err, "missing")


def test_generate_prints_the_same_text_with_and_without_stream(run, capsys):
    outs = [cli(capsys, "generate", run.path, "--prompt", "The ", "--max-new-tokens", 20, "--device", "cpu", flag)
            for flag in ("--stream", "--no-stream")]
    assert outs[0] == outs[1] and outs[0][0] == 0 and outs[0][1].startswith("The ")
