"""Where the train state and the batches live: one device, data parallel, or FSDP.

All modes use one mesh axis, `data`, over every visible device. `dp` replicates parameters and
optimizer state and splits each batch along its first axis; XLA all-reduces the gradients.
`fsdp` (ZeRO-3) also splits every weight matrix and embedding, and its Adam moments, along the
d_model axis, chosen by name (FSDP_RULES); XLA gathers a weight where a matmul needs it and
reduce-scatters its gradient. `none` leaves placement to JAX's default device, as a plain
single-device run. The jitted step is the same in every mode: it follows its inputs' shardings.

Across processes (`scaling.distributed`) the mesh spans every process's devices, and each
process puts only its own shards on them: its rows of each batch, its part of the state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling.config import ConfigError

DATA_AXIS = "data"

# FSDP: the axis (counted from the end, so that scanned layers keep their leading layer axis
# whole) that each weight splits along: d_model, for every matrix and both embeddings. Paths
# are matched at their end, so the same rule covers params and the optimizer's copies of them.
FSDP_RULES: tuple[tuple[str, int], ...] = (
    (r"(wte|wpe)/embedding$", -1),  # [rows, d_model]
    (r"(c_attn|c_fc)/kernel$", -2),  # [d_model, out]
    (r"attn/c_proj/kernel$", -1),  # [d_model, d_model]
    (r"mlp/c_proj/kernel$", -1),  # [d_ff, d_model]
)


def _path(key_path) -> str:
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def fsdp_spec(path: str, ndim: int) -> PartitionSpec:
    """The FSDP partition of the array at `path` (biases, LayerNorms and counters: replicated)."""
    for pattern, axis in FSDP_RULES:
        if re.search(pattern, path):
            spec = [None] * ndim
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


@dataclass(frozen=True)
class Placement:
    """Puts the train state and batches on the devices of `mode` (train.parallel)."""

    mode: str
    mesh: Mesh | None

    @classmethod
    def create(cls, mode: str, micro_batch_size: int) -> Placement:
        """A placement over the devices of every process; each micro-batch must split evenly
        over them. Raises ConfigError where it does not, or for `none` across processes."""
        processes = jax.process_count()
        if mode == "none":
            if processes > 1:
                raise ConfigError(f"train.parallel=none trains on one device, but this run has "
                                  f"{processes} processes: use train.parallel=dp or fsdp")
            return cls(mode, None)
        devices = jax.devices()
        if micro_batch_size % len(devices):
            of_processes = f" of {processes} processes" if processes > 1 else ""
            raise ConfigError(
                f"train.batch_size / train.grad_accum = {micro_batch_size} sequences must split "
                f"evenly over the {len(devices)} devices{of_processes} of train.parallel={mode}."
            )
        return cls(mode, Mesh(np.array(devices), (DATA_AXIS,)))

    @property
    def devices(self) -> list[jax.Device]:
        return list(self.mesh.devices.flat) if self.mesh is not None else jax.devices()[:1]

    def _sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @staticmethod
    def _put(x: Any, sharding: NamedSharding) -> jax.Array:
        """`x`, the same value in every process, placed by `sharding`. Across processes each
        process puts only the shards of its own devices (device_put would first check, in a
        collective, that every process passed the same value)."""
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def _fsdp_sharding(self, path: str, shape: tuple[int, ...]) -> NamedSharding:
        spec = fsdp_spec(path, len(shape))
        n = self.mesh.shape[DATA_AXIS]
        for axis, axis_name in enumerate(spec):
            if axis_name is not None and shape[axis] % n:
                raise ConfigError(
                    f"{path} has {shape[axis]} entries along the axis that train.parallel=fsdp "
                    f"splits over {n} devices; model.d_model must be a multiple of {n}."
                )
        return self._sharding(spec)

    def _state_shardings(self, state: Any) -> Any:
        """The sharding of every array in `state`, on the mesh."""
        if self.mode == "dp":
            return jax.tree_util.tree_map(lambda _: self._sharding(PartitionSpec()), state)
        return jax.tree_util.tree_map_with_path(
            lambda path, x: self._fsdp_sharding(_path(path), np.shape(x)), state
        )

    def keep_state_sharding(self, train_step: Callable, state: Any) -> Callable:
        """`train_step` (the trainer's jitted step, traced inside this one) compiled to return
        the state placed as `state` is.

        Left to itself, XLA may lay out some outputs differently from the inputs (it shards
        LayerNorm scales under FSDP, for one), which would recompile the next step and defeat
        the donation of the state's buffers.
        """
        if self.mesh is None:
            return train_step
        return jax.jit(train_step, donate_argnums=0,
                       out_shardings=(self._state_shardings(state), None))

    def state(self, state: Any) -> Any:
        """`state` moved onto the mesh: replicated (dp) or split by FSDP_RULES (fsdp)."""
        if self.mesh is None:
            return state
        return jax.tree_util.tree_map(self._put, state, self._state_shardings(state))

    def batch(self, batch: Any, axis: int = 0) -> Any:
        """A batch (a pytree of arrays) split over the data axis along `axis` of every leaf
        (the batch axis)."""
        if self.mesh is None:
            return batch

        def place(x: np.ndarray) -> jax.Array:
            spec = [None] * np.ndim(x)
            spec[axis] = DATA_AXIS
            return self._put(x, self._sharding(PartitionSpec(*spec)))

        return jax.tree_util.tree_map(place, batch)
