"""An AudioSource (voxd.pipeline) fed by the test: arrays pushed, the pipeline reads them."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import numpy.typing as npt

from voxd.events import SAMPLE_RATE

FloatArray = npt.NDArray[np.float32]


class ArraySource:
    """An AudioSource fed by the program: ``push`` arrays, the pipeline reads them.

    Pushed audio is cut into ``block_ms`` blocks
    so that the worker stays responsive to commands between them.
    """

    def __init__(self, block_ms: int = 20, sample_rate: int = SAMPLE_RATE) -> None:
        self._block = max(sample_rate * block_ms // 1000, 1)
        self._queue: queue.Queue[FloatArray] = queue.Queue()
        self._stopped = threading.Event()

    def push(self, samples: npt.ArrayLike) -> None:
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        for i in range(0, len(x), self._block):
            self._queue.put(x[i : i + self._block].copy())

    def start(self) -> None:
        self._stopped.clear()

    def stop(self) -> None:
        self._stopped.set()

    def read(self, timeout: float | None = None) -> FloatArray | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.is_set():
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                continue
        return None

    @property
    def pending(self) -> int:
        """Blocks pushed and not read yet."""
        return self._queue.qsize()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def overruns(self) -> int:
        return 0

    @property
    def reconnects(self) -> int:
        return 0
