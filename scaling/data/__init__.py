"""Corpus files → tokenizer → cached token shards → batches; prompt/response pairs for SFT."""

from scaling.data.batches import (
    Batches,
    EpochOrder,
    PairBatches,
    eval_pairs,
    eval_rows,
    eval_windows,
    transfer_windows,
)
from scaling.data.errors import DataError
from scaling.data.pairs import (
    Example,
    PairSplit,
    PairWindows,
    encode_examples,
    read_jsonl_pairs,
    read_pairs,
    sft_stdlib,
    split_pairs,
)
from scaling.data.shards import (
    Dataset,
    describe,
    load_dataset,
    open_dataset,
    vocabulary_shortfall,
)
from scaling.data.tokenizer import Tokenizer

__all__ = [
    "Batches", "DataError", "Dataset", "EpochOrder", "Example", "PairBatches", "PairSplit",
    "PairWindows", "Tokenizer", "describe", "encode_examples", "eval_pairs", "eval_rows",
    "eval_windows", "load_dataset", "open_dataset", "read_jsonl_pairs", "read_pairs",
    "sft_stdlib", "split_pairs", "transfer_windows", "vocabulary_shortfall",
]
