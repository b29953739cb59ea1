"""Shared fixtures: a small real corpus (a slice of the standard library) and tiny configs."""

import shutil
import sysconfig
from pathlib import Path

import pytest

from scaling.config import Config, DataConfig, ModelConfig, TrainConfig

CORPUS_PACKAGES = ("json", "email", "asyncio")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """About 1 MB of real Python source, copied so the tests own it."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for package in CORPUS_PACKAGES:
        for path in sorted((stdlib / package).glob("*.py")):
            shutil.copy(path, out / f"{package}_{path.name}")
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_config(corpus_dir, cache_dir):
    """A 2-layer, d=32 model on the small corpus: about a second of training on a CPU."""

    def make(**train_overrides) -> Config:
        train = dict(tokens=40_000, batch_size=8, eval_count=8, eval_batches=2, lr=3e-3)
        return Config(
            model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32),
            data=DataConfig(source="files", paths=[str(corpus_dir / "*.py")], vocab_size=512,
                            cache_dir=str(cache_dir)),
            train=TrainConfig(**{**train, **train_overrides}),
        )

    return make


@pytest.fixture(scope="session")
def rlhf_parent(tmp_path_factory, corpus_dir, cache_dir) -> Path:
    """A tiny model pretrained once per session for the RLHF tests (`train_parent`): read it,
    never write into it."""
    from tests.test_reward import train_parent

    return train_parent(tmp_path_factory.mktemp("parent"), corpus_dir, cache_dir)


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory, rlhf_parent, cache_dir) -> Path:
    """`rlhf_parent` fine-tuned (SFT) once per session: the policy every RLHF test samples,
    scores or starts from (`train_sft_policy`); read it, never write into it."""
    from tests.test_reward import train_sft_policy

    return train_sft_policy(rlhf_parent, tmp_path_factory.mktemp("sft"), cache_dir)
