"""Both tokenizers round-trip text (Japanese included); BPE training is deterministic."""

import numpy as np
import pytest

from scaling.data import DataError
from scaling.data.sources import Document
from scaling.data.tokenizer import EOS_TOKEN, BPETokenizer, BytesTokenizer, train_bpe

JAPANESE = "国境の長いトンネルを抜けると雪国であった。夜の底が白くなった。\n"
SAMPLES = [
    "def f(x):\n    return x + 1\n",
    JAPANESE,
    "  leading spaces, trailing\ttabs\t\n\n",
    "mixed: naïve café — 🐍 ok",
    "",
]


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document(f"d{i}", (s + "\n") * 30) for i, s in enumerate(SAMPLES)]


@pytest.fixture(scope="module")
def bpe(docs) -> BPETokenizer:
    return train_bpe(docs, 320)


@pytest.mark.parametrize("text", SAMPLES)
def test_bytes_round_trip(text):
    tok = BytesTokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 256
    assert tok.eos_id == 0


def test_decode_accepts_a_numpy_row(bpe):
    for tok in (BytesTokenizer(), bpe):
        row = np.array(tok.encode(JAPANESE), dtype=np.int32)
        assert tok.decode(row) == JAPANESE


def test_bytes_documents_end_with_nul_and_reject_nul_inside():
    tok = BytesTokenizer()
    ids = tok.encode_documents([Document("a", "hé"), Document("b", "x")])
    assert ids.dtype == np.uint16
    assert ids.tolist() == [*"hé".encode(), 0, ord("x"), 0]
    with pytest.raises(DataError, match=r"bad\.txt contains a NUL byte"):
        tok.encode_documents([Document("bad.txt", "a\0b")])


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_and_reserves_eos(bpe):
    assert bpe.vocab_size == 320
    assert bpe.eos_id == 0
    text = SAMPLES[0] * 5
    assert len(bpe.encode(text)) < 0.8 * len(text.encode())
    assert bpe.eos_id not in bpe.encode(text)
    # The eos string inside a document is ordinary text, not a document boundary.
    ids = bpe.encode(f"a{EOS_TOKEN}b")
    assert bpe.eos_id not in ids
    assert bpe.decode(ids) == f"a{EOS_TOKEN}b"


def test_bpe_documents_are_separated_by_eos(bpe, docs):
    ids = bpe.encode_documents(docs)
    pieces = np.split(ids, np.flatnonzero(ids == bpe.eos_id) + 1)[:-1]
    assert [bpe.decode(p[:-1].tolist()) for p in pieces] == [d.text for d in docs]


def test_bpe_training_is_deterministic(bpe, docs, tmp_path):
    again = train_bpe(docs, 320)
    bpe.save(tmp_path / "a.json")
    again.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = BPETokenizer.load(tmp_path / "a.json")
    assert loaded.encode(JAPANESE) == bpe.encode(JAPANESE)
    assert loaded.eos_id not in loaded.encode(EOS_TOKEN)
