"""Background network load during a workload: a TCP stream from the guest to the host over virtio-net.

With iommu_platform=on, virtio-net maps every packet through swiotlb without
DMA_ATTR_MAY_BLOCK, so it competes with the storage device for the pool and
cannot be throttled (REFERENCE.md §2).  The guest streams /dev/zero with nc;
the host reads as fast as it can on the forwarded loopback port.
"""

from __future__ import annotations

import socket
import threading
import time

from lab.errors import LabTimeout
from lab.vm import Endpoint

GUEST_PORT = 5001


class NetLoad:
    """Reads the guest's stream on a thread until ``stop()``; counts bytes."""

    def __init__(self, endpoint: Endpoint, connect_timeout_s: float = 20.0) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self.bytes = 0
        self.seconds = 0.0
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = self._connect()
        self._thread = threading.Thread(target=self._read, args=(sock,), name="netload", daemon=True)
        self._thread.start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=5)
                sock.settimeout(0.5)
                return sock
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise LabTimeout("the guest's network load stream", self.connect_timeout_s, repr(exc)) from exc
                time.sleep(0.2)

    def _read(self, sock: socket.socket) -> None:
        started = time.monotonic()
        with sock:
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError as exc:
                    self.error = repr(exc)
                    break
                if not chunk:
                    self.error = "the guest closed the stream"
                    break
                self.bytes += len(chunk)
        self.seconds = time.monotonic() - started

    def stop(self) -> tuple[int, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.bytes, self.seconds
