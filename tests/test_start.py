"""What a run says before its first step: the corpus it trains on, the devices it runs on, and
warnings where its numbers would mislead (many epochs, a small validation split, a vocabulary
smaller than asked, GPUs that JAX does not use)."""

import dataclasses
import logging
import sysconfig
from pathlib import Path

from scaling.config import DataConfig
from scaling.stages import common
from tests.runs import pretrain

SMALL_TEXT = Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py"


def test_the_start_names_corpus_files_tokens_split_vocabulary_and_devices(tiny_config, tmp_path,
                                                                           caplog):
    config = tiny_config()
    with caplog.at_level(logging.INFO, logger="scaling"):
        summary = pretrain(config, tmp_path)
    corpus = next(r.message for r in caplog.records if r.message.startswith("corpus "))
    files = len(list(Path(config.data.paths[0]).parent.glob("*.py")))
    assert corpus.startswith(f"corpus data=files: {files} files (")
    assert (f"{summary['corpus_train_tokens']:,} train / {summary['corpus_val_tokens']:,} "
            "validation tokens") in corpus
    assert "split by document (a name whose hash falls below data.val_fraction=0.05" in corpus
    assert corpus.endswith(f"BPE vocabulary {summary['vocab_size']}")  # all 512 asked
    assert "on cpu: 1 cpu device(s), train.parallel=none" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_small_corpus_warns_of_epochs_validation_and_vocabulary(tiny_config, tmp_path,
                                                                 monkeypatch, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"part{i}.txt").write_text(SMALL_TEXT.read_text())
    config = tiny_config(tokens=60_000, eval_batches=40)
    config = dataclasses.replace(config, data=DataConfig(
        source="files", paths=[str(corpus / "*.txt")], vocab_size=4096, val_fraction=0.1,
        cache_dir=config.data.cache_dir))
    monkeypatch.setattr(common, "visible_gpus", lambda: ["/dev/nvidia0"])
    with caplog.at_level(logging.INFO, logger="scaling"):
        summary = pretrain(config, tmp_path / "run")
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert summary["epochs"] > 1 and summary["vocab_size"] < 4096
    assert any(f"{summary['epochs']:.1f} epochs of the train split" in w for w in warnings)
    assert any(w.startswith(f"the BPE learned {summary['vocab_size']} tokens, fewer than "
                            "data.vocab_size=4096") for w in warnings)
    assert any("of train.eval_batches=40 batches" in w for w in warnings)
    assert any("NVIDIA GPUs (/dev/nvidia0) but JAX runs on the CPU" in w and "'.[cuda]'" in w
               for w in warnings)
    assert "(data.vocab_size=4,096 asked)" in caplog.text
