"""Incremental detokenization with stop strings: the text of a request grows token by token, as a stream
shows it, and ends before the first stop string.

Decoding token by token is not decoding each token alone: a character can span several byte-level tokens,
and a tokenizer's decoder joins pieces with context (spaces, "##" suffixes). The text is therefore taken
as the difference between two decodes of a short window (the method of vLLM and Hugging Face TGI):
``decode(ids[prefix:read])`` and ``decode(ids[prefix:])``; the new text is what the second adds, and it is
held back while it ends in an incomplete UTF-8 sequence ("\\ufffd").

Stop strings: the released text never shrinks. An end of the text that may be the beginning of a stop
string is held back until the next tokens settle it; when a stop string appears, the text ends just before
it. The generated tokens are decoded alone (no prompt context), so the finished text equals
``tokenizer.decode(token_ids, skip_special_tokens=True)`` up to any stop string.
"""

from __future__ import annotations

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """The text of one request's generated tokens (a ``tokenizers.Tokenizer``), with stop strings."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] were decoded last time: the context for the next piece
        self._read = 0
        self._text = ""  # everything decoded so far
        self.text = ""  # released: _text less an end that may begin a stop string
        self.stop_reason: str | None = None  # the stop string found, if any

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> bool:
        """Appends one generated token; returns True when a stop string has appeared (text ends before it)."""
        self._ids.append(token_id)
        piece = self._new_text()
        if piece and not piece.endswith("\ufffd"):
            self._append(piece)
            self._prefix, self._read = self._read, len(self._ids)
        return self.stop_reason is not None

    def finish(self) -> str:
        """The request ended (not by a stop string): releases everything, an unfinished character too."""
        self._append(self._new_text())
        if self.stop_reason is None:
            self.text = self._text
        return self.text

    def _new_text(self) -> str:
        """What the tokens after ids[read] add to the text."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        return after[len(before) :] if len(after) > len(before) else ""

    def _append(self, piece: str) -> None:
        if self.stop_reason is not None or not piece:
            return
        self._text += piece
        if not self._stop:
            self.text = self._text
            return
        # A stop string can only begin in the unreleased end (see the module docstring).
        found = [(i, s) for s in self._stop if (i := self._text.find(s, len(self.text))) >= 0]
        if found:
            end, self.stop_reason = min(found)
            self.text = self._text = self._text[:end]
            return
        hold = 0
        for k in range(min(len(self._text), max(map(len, self._stop)) - 1), 0, -1):
            if any(s.startswith(self._text[-k:]) for s in self._stop):
                hold = k
                break
        self.text = self._text[: len(self._text) - hold]
