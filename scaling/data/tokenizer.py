"""Text ↔ token ids: byte-level BPE trained on the train split, or plain UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from scaling.data.errors import DataError
from scaling.data.sources import Document

EOS_TOKEN = "<|endoftext|>"
# Text handed to one encode_batch call: enough for the Rust side to use every core, small
# enough that the per-token Encoding objects stay a few hundred MB at most.
_CHARS_PER_CHUNK = 4_000_000


class Tokenizer(Protocol):
    """What the trainer and samplers need; both tokenizers below satisfy it."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray: ...


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned dtype that holds every id: halves the shards for vocab ≤ 65536."""
    return np.uint16 if vocab_size - 1 <= np.iinfo(np.uint16).max else np.uint32


class BytesTokenizer:
    """UTF-8 bytes, vocabulary 256; the NUL byte (id 0) separates documents.

    NUL never occurs in real text (Python refuses it in source code), so a document that
    contains one is rejected rather than silently split.
    """

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # A sampled sequence may cut a multi-byte character; show it rather than fail.
        return bytes(list(ids)).decode("utf-8", errors="replace")

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        """All documents, each followed by eos, as one uint16 array."""
        for d in documents:
            if "\0" in d.text:
                raise DataError(f"{d.name} contains a NUL byte, the bytes tokenizer's separator")
        data = "".join(d.text + "\0" for d in documents).encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8).astype(token_dtype(self.vocab_size))


class BPETokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` whose only special token is the eos."""

    def __init__(self, hf: tokenizers.Tokenizer):
        self._hf = hf
        # Not saved in tokenizer.json: the literal text "<|endoftext|>" inside a document must
        # encode as ordinary text, so eos_id only ever marks a real document boundary.
        self._hf.encode_special_tokens = True
        self.vocab_size = hf.get_vocab_size()
        self.eos_id = hf.token_to_id(EOS_TOKEN)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._hf.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def encode_documents(self, documents: Sequence[Document]) -> np.ndarray:
        """All documents, each followed by eos, as one array; encode_batch runs in parallel."""
        dtype = token_dtype(self.vocab_size)
        eos = np.array([self.eos_id], dtype)
        parts = []
        for chunk in _chunks(documents):
            for encoding in self._hf.encode_batch(chunk, add_special_tokens=False):
                parts += [np.array(encoding.ids, dtype), eos]
        return np.concatenate(parts)


def train_bpe(documents: Sequence[Document], vocab_size: int) -> BPETokenizer:
    """Train byte-level BPE; the result depends only on the documents' texts and vocab_size."""
    hf = tokenizers.Tokenizer(models.BPE())
    # No prefix space: decode(encode(text)) must give back exactly `text`.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator((d.text for d in documents), trainer, length=len(documents))
    return BPETokenizer(hf)


def _chunks(documents: Sequence[Document]) -> Iterator[list[str]]:
    """Consecutive texts in groups of about _CHARS_PER_CHUNK characters."""
    chunk: list[str] = []
    size = 0
    for d in documents:
        chunk.append(d.text)
        size += len(d.text)
        if size >= _CHARS_PER_CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
