"""A small chat loop over a base model: the conversation rendered by a plain template, replies streamed.

The models are base models, so a conversation is just text they continue:

    User: hello
    Assistant: hi there
    User: how are you?
    Assistant:

The reply is what the model samples after the last "Assistant:", up to a newline followed by "User:"
(the model starting the user's next turn), a document end (BOS) or max_new_tokens. The prompt
is [bos] + the rendered text; when it does not fit in the model's context less `reserve` tokens
(min(max_new_tokens, context // 4)) the oldest turns are dropped, and then, if the last message alone
is still too long, its tokens are cut from the left. Each reply is sampled with seed + the number of
earlier replies, so a conversation replays exactly for a seed. Commands: /reset forgets the
conversation, /quit (or the end of the input) ends it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from lmgolf.serve.generate import _check_args, stream, text_pieces

USER, ASSISTANT = "User:", "Assistant:"
STOP = "\n" + USER
PROMPT = "> "


def render(turns: list[tuple[str, str]], message: str) -> str:
    """The template: every earlier (user, reply) turn, then the new message and an open "Assistant:"."""
    done = "".join(f"{USER} {user}\n{ASSISTANT} {reply}\n" for user, reply in turns)
    return f"{done}{USER} {message}\n{ASSISTANT}"


def prompt_ids(tokenizer, turns: list[tuple[str, str]], message: str, budget: int) -> tuple[list[int], int]:
    """[bos] + the rendered conversation in at most `budget` tokens, and how many earlier turns it kept:
    the oldest turns dropped first, then the text's tokens cut from the left."""
    for first in range(len(turns) + 1):
        ids = [tokenizer.bos_id] + tokenizer.encode(render(turns[first:], message))
        if len(ids) <= budget:
            return ids, len(turns) - first
    return [tokenizer.bos_id] + ids[len(ids) - max(budget - 1, 1):], 0


@dataclass
class Chat:
    """A conversation with a model: reply(message) streams the reply's text and remembers the turn."""
    model: object
    tokenizer: object
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = 0
    turns: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):  # a bad sampling argument is refused before the first message
        _check_args([self.tokenizer.bos_id], self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    @property
    def budget(self) -> int:
        context = self.model.cfg.context
        return context - min(self.max_new_tokens, context // 4)

    def reset(self) -> None:
        self.turns.clear()

    def reply(self, message: str) -> Iterator[str]:
        ids, _ = prompt_ids(self.tokenizer, self.turns, message, self.budget)
        seed = None if self.seed is None else self.seed + len(self.turns)
        new = stream(self.model, ids, self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                     top_p=self.top_p, seed=seed, stop_id=self.tokenizer.bos_id)
        shown = []
        for piece in until_stop(text_pieces(self.tokenizer, new), STOP):
            if not shown:
                piece = piece.lstrip(" ")  # the space after "Assistant:"
            if piece:
                shown.append(piece)
                yield piece
        self.turns.append((message, "".join(shown).strip()))


def until_stop(pieces: Iterable[str], stop: str) -> Iterator[str]:
    """The pieces up to the first occurrence of `stop` in their text (excluded); text that may be the
    start of `stop` is held back until it is known not to be."""
    pending = ""
    for piece in pieces:
        pending += piece
        at = pending.find(stop)
        if at >= 0:
            if at:
                yield pending[:at]
            return
        keep = next((n for n in range(min(len(stop) - 1, len(pending)), 0, -1) if stop.startswith(pending[-n:])), 0)
        if len(pending) > keep:
            yield pending[:len(pending) - keep]
            pending = pending[len(pending) - keep:]
    if pending:
        yield pending


def chat_loop(chat: Chat, lines: Iterable[str], write: Callable[[str], object]) -> int:
    """The REPL: writes the prompt "> ", reads a line, streams the reply; /reset, /quit; the end of
    `lines` ends it too. Returns the exit code, 0."""
    lines = iter(lines)
    while True:
        write(PROMPT)
        line = next(lines, None)
        if line is None:
            write("\n")
            return 0
        message = line.rstrip("\r\n").strip()
        if message == "/quit":
            return 0
        if message == "/reset":
            chat.reset()
            write("(conversation reset)\n")
        elif message.startswith("/"):
            write(f"(unknown command {message.split()[0]}; the commands are /reset and /quit)\n")
        elif message:
            for piece in chat.reply(message):
                write(piece)
            write("\n")
