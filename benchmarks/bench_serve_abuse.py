"""What hostile clients cost ``clipkit serve`` (issue #37 D4, D5): the real console script on a
loopback port over a small clipkit-tiny index, same run for each comparison.

- Pixel bombs: a 10 KB PNG of 9400 x 9400 one-bit pixels (under the 89.5-megapixel limit),
  sent by 8 clients at once, then 16 in one request. With the default limits, and with the
  decode budgets lifted (``--max-decode-mb 1000000``: every upload decoded as soon as it
  comes, as before #37): the answers, their time, and the server's peak RSS (VmHWM).
- Slow clients: CONNECTIONS connections that send nothing. How many the server holds and how
  many it answers 503 at once, how long until it has closed the idle ones, and whether a
  normal request is answered after that.

Writes JSON to benchmarks/results/.

    python benchmarks/bench_serve_abuse.py
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from bench_runtime import build
from bench_serve import free_port, peak_rss_mb
from common import machine, write_results

BOMB_SIDE = 9400


def bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(buffer, format="PNG")
    return buffer.getvalue()


def start(index_dir: Path, *options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    script = Path(sys.executable).parent / "clipkit"
    server = subprocess.Popen(
        [str(script), "serve", "--index", str(index_dir), "--port", str(port), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return server, port
        except OSError:
            if server.poll() is not None:
                raise SystemExit(server.communicate()[1]) from None
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def upload(port: int, images: list[bytes]) -> tuple[int, float]:
    """POST /api/search/images with ``images``; (status, seconds)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="b{n}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for n, data in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/api/search/images", body,
                       {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    status = connection.getresponse().status
    connection.close()
    return status, time.perf_counter() - started


def bombs(index_dir: Path, *options: str) -> dict:
    server, port = start(index_dir, *options)
    try:
        baseline = peak_rss_mb(server.pid)
        data = bomb()
        answers: list[tuple[int, float]] = []
        clients = [threading.Thread(target=lambda: answers.append(upload(port, [data])))
                   for _ in range(8)]  # fmt: skip
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        eight_peak = peak_rss_mb(server.pid)
        status, seconds = upload(port, [data] * 16)
        return {
            "file_bytes": len(data),
            "rss_at_start_mb": baseline,
            "eight_at_once": {
                "statuses": sorted(a[0] for a in answers),
                "slowest_s": round(max(a[1] for a in answers), 2),
                "peak_rss_mb": eight_peak,
            },
            "sixteen_in_one_request": {"status": status, "seconds": round(seconds, 2)},
            "peak_rss_mb": peak_rss_mb(server.pid),
        }
    finally:
        server.terminate()
        server.wait(60)


def slow_clients(index_dir: Path, connections: int) -> dict:
    server, port = start(index_dir)
    try:
        opened = time.perf_counter()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=120)
                for _ in range(connections)]  # fmt: skip
        ends: list[tuple[bytes, float]] = []
        for client in idle:  # each ends when the server closes it
            received = b""
            while chunk := client.recv(4096):
                received += chunk
            ends.append((received, time.perf_counter() - opened))
            client.close()
        refused = [t for data, t in ends if data.startswith(b"HTTP/1.1 503")]
        dropped = [t for data, t in ends if not data]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=a+cat", timeout=30) as r:
            answered = r.status
        return {
            "connections": connections,
            "answered_503_at_once": len(refused),
            "held_then_closed": len(dropped),
            "last_closed_after_s": round(max(dropped), 1) if dropped else None,
            "a_request_after_that": answered,
        }
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = build(Path(tmp), "clipkit-tiny:random", 1000)
        results = {
            "machine": machine(),
            "bombs_with_limits": bombs(index_dir, "--runtime", "onnx"),
            "bombs_without_budgets": bombs(
                index_dir, "--runtime", "onnx", "--max-decode-mb", "1000000"
            ),
            "slow_clients": slow_clients(index_dir, args.connections),
        }
    print(json.dumps(results, indent=2))
    write_results(Path(__file__).parent / "results" / "serve_abuse.json", results)


if __name__ == "__main__":
    main()
