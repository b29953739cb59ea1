"""Corpus files → tokenizer → cached token shards → batches."""

from scaling.data.batches import Batches, PairBatches, eval_pairs, eval_windows, transfer_windows
from scaling.data.errors import DataError
from scaling.data.shards import Dataset, load_dataset, open_dataset
from scaling.data.tokenizer import Tokenizer

__all__ = [
    "Batches", "DataError", "Dataset", "PairBatches", "Tokenizer", "eval_pairs", "eval_windows",
    "load_dataset", "open_dataset", "transfer_windows",
]
