"""The learner's reader of the sampler stream: a background thread that keeps at most
`depth` received batches at hand, so that the learner takes synthetic data without ever
waiting on generation. While the learner takes nothing (its synthetic table has credit
enough), the reader's queue stays full, the stream is not read, gRPC flow control holds
the sampler, and the sampler stops generating for this stream: generation follows demand.
"""

from __future__ import annotations

import queue
import threading

import grpc

from services.sampler.client import SamplerClient, SamplerError
from services.sampler.security import ClientSecurity
from services.sampler.wire import SyntheticBatch


class SamplerStreamReader:
    def __init__(self, address: str, batch_size: int, guided: bool, *, depth: int = 2,
                 consumer: str = "learner", reconnect_seconds: float = 5.0,
                 security: ClientSecurity | None = None):
        self._client = SamplerClient(address, reconnect_seconds=reconnect_seconds,
                                     security=security)
        self._batches: queue.Queue[SyntheticBatch] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._read, args=(batch_size, guided, consumer), name="sampler-stream",
            daemon=True)
        self._thread.start()

    def _read(self, batch_size: int, guided: bool, consumer: str) -> None:
        try:
            for batch in self._client.stream(batch_size, guided=guided, consumer=consumer):
                while not self._closing.is_set():
                    try:
                        self._batches.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._closing.is_set():
                    return
        except (SamplerError, ValueError) as err:  # ValueError: the channel was closed
            if not self._closing.is_set():
                self.error = err

    def take(self) -> SyntheticBatch | None:
        """A received batch, or None if none is at hand; raises the reader's error if the
        stream failed for good (the sampler refused it, or stayed unreachable for
        `reconnect_seconds`: UNAVAILABLE)."""
        try:
            return self._batches.get_nowait()
        except queue.Empty:
            if self.error is not None:
                code = getattr(self.error, "code", None) or grpc.StatusCode.UNAVAILABLE
                raise SamplerError(f"the sampler stream failed: {self.error}",
                                   code) from self.error
            return None

    def close(self) -> None:
        self._closing.set()
        self._client.close()  # unblocks a read in progress
        self._thread.join(timeout=10)
