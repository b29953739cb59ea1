"""Keep SciPy's OpenBLAS on one thread around many tiny optimiser calls.

Each L-BFGS-B step on 5 parameters makes a few tiny BLAS calls; OpenBLAS wakes its worker
threads for them, and when the cores are busy (a training run beside the fit) those
wake-ups made the Chinchilla grid ~20x slower in our measurements (setulb 30 s vs 0.16 s
for 625 starts on 2 busy cores). threadpoolctl would do this; it is not a dependency, so
this calls OpenBLAS's own setter on SciPy's bundled copy, and does nothing if there is none.
"""

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import scipy


@cache
def _scipy_openblas() -> ctypes.CDLL | None:
    """SciPy's bundled OpenBLAS (wheels ship it beside the package), if it can be found."""
    root = Path(scipy.__file__).resolve().parent
    for lib in sorted(
        [*root.parent.glob("scipy.libs/*openblas*"), *root.glob(".dylibs/*openblas*")]
    ):
        try:
            blas = ctypes.CDLL(str(lib))
            blas.scipy_openblas_get_num_threads.restype = ctypes.c_int
            blas.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            continue
        return blas
    return None


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with SciPy's OpenBLAS on one thread, restoring the count afterwards."""
    blas = _scipy_openblas()
    if blas is None:
        yield
        return
    before = blas.scipy_openblas_get_num_threads()
    blas.scipy_openblas_set_num_threads(1)
    try:
        yield
    finally:
        blas.scipy_openblas_set_num_threads(before)
