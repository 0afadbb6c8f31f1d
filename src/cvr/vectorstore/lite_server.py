"""Milvus Lite in its own process: a small managed server on 127.0.0.1 for one data directory.

    with LiteServer("outputs/vectors.db") as server:       # starts, waits until it answers
        predictor = Predictor.load(bundle, embeddings=server.uri)   # http://127.0.0.1:PORT

milvus-lite 3.x is a pure-Python gRPC server that pymilvus starts in threads *inside* the calling
process for a `.db` URI: the whole collection then sits in the caller's memory, and every `get`
competes with the caller for the GIL. Here it runs as `python -m milvus_lite server` in a child
process instead (its own memory and interpreter), reached over a `http://` URI like any Milvus
server. A data directory locked by another process is a StoreError that says so, before the
child starts; `stop` interrupts the child (Lite then closes its data directory and lock) and
kills it if it does not exit.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cvr.vectorstore.client import StoreError, check_lite_dir, close

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0  # closing a large collection can take Lite tens of seconds


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LiteServer:
    """A Milvus Lite server process for the data directory `path` (see the module docstring)."""

    def __init__(self, path: str | Path, host: str = "127.0.0.1", port: int | None = None):
        self.path = Path(path).resolve()
        self.host = host
        self.port = self._requested_port = port
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise StoreError(f"Milvus Lite server for {self.path}: not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LiteServer:
        """Start the child and wait until it answers a request; returns self.

        Raises StoreError if the directory is locked by another process, or if the child exits
        or does not answer within `timeout_s` (the message ends with its last output lines).
        """
        if self.process is not None:
            return self
        check_lite_dir(self.path)  # a locked directory: a clear message before any child runs
        self.port = self.port or free_port(self.host)
        self._log_file = tempfile.TemporaryFile(mode="w+b")
        cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.path)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        self.process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                output = self._output()
                self._reap()
                raise StoreError(
                    f"Milvus Lite server for {self.path}: exited with code "
                    f"{self.process.returncode} before answering{_reason(output)}"
                )
            if _answers(self.uri):
                break
            if time.monotonic() > deadline:
                output = self._output()
                self.stop()
                raise StoreError(
                    f"Milvus Lite server for {self.path}: no answer on {self.uri} within "
                    f"{timeout_s:.0f} s{_reason(output)}"
                )
            time.sleep(0.2)
        log.info("Milvus Lite server for %s: pid %d on %s", self.path, self.pid, self.uri)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the child: SIGINT (Lite closes its data and lock), SIGKILL after `timeout_s`."""
        if self.process is None:
            return
        if self.port is not None:
            close(self.uri)  # this process's cached client of the server
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Milvus Lite server pid %d did not stop; killing it", self.pid)
                self.process.kill()
                self.process.wait()
        self._reap()
        self.process = None  # a later start() starts a new child
        self.port = self._requested_port

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def rss_mb(self) -> float:
        """Resident memory of the server process in MB (-1 when not running)."""
        return _status_kb(self.pid, "VmRSS") / 1024 if self.running else -1.0

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the server process in MB (-1 when not running)."""
        return _status_kb(self.pid, "VmHWM") / 1024 if self.running else -1.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _output(self) -> str:
        if self._log_file is None:
            return ""
        self._log_file.seek(0)
        return self._log_file.read().decode("utf-8", "replace")

    def _reap(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LiteServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(uri: str) -> bool:
    """True once the server answers a gRPC request (a bound port alone is not enough)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    try:
        client = MilvusClient(uri, timeout=2.0)
    except (MilvusException, OSError):
        return False
    try:
        client.list_collections()
        return True
    except MilvusException:
        return False
    finally:
        client.close()


def _reason(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return (": " + " | ".join(lines[-3:])[-600:]) if lines else ""


def _status_kb(pid: int | None, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def main(argv: list[str] | None = None) -> int:
    """`python -m cvr.vectorstore.lite_server PATH [--port N]`: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a Milvus Lite directory on 127.0.0.1")
    parser.add_argument("path", help="the Lite data directory (ends in .db)")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    server = LiteServer(args.path, port=args.port).start()
    print(f"{server.uri} (pid {server.pid}, data {server.path}); Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
