"""The developer's private Valkey, kept running between commands.

`make invoke` without `REDIS_URL` starts it (or reuses it), so what an invoke
wrote can be read afterwards with any Redis client (`make cli`).
`make stop` stops it.

    python -m devkit.localredis start|stop|url
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import redis

from devkit.sam import ROOT
from devkit.servers import free_port, is_free, valkey_binary

STATE = ROOT / ".local"
PORT_FILE = STATE / "valkey.port"
PID_FILE = STATE / "valkey.pid"
DEFAULT_PORT = 6379


def running_url() -> str | None:
    try:
        port = int(PORT_FILE.read_text())
    except (OSError, ValueError):
        return None
    url = f"redis://127.0.0.1:{port}/0"
    try:
        redis.Redis.from_url(url, socket_timeout=0.5).ping()
    except redis.exceptions.RedisError:
        return None
    return url


def ensure() -> str:
    """The URL of the private Valkey, started in the background if it is not running."""
    url = running_url()
    if url:
        return url
    STATE.mkdir(exist_ok=True)
    port = DEFAULT_PORT if is_free(DEFAULT_PORT) else free_port()
    log = open(STATE / "valkey.log", "ab")  # noqa: SIM115 - handed to the server process
    process = subprocess.Popen(
        [
            valkey_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(STATE),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # survives this command; `make stop` ends it
    )
    PID_FILE.write_text(str(process.pid))
    PORT_FILE.write_text(str(port))
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            redis.Redis.from_url(url, socket_timeout=0.5).ping()
            print(f"started a private Valkey at {url} (stop it with `make stop`)", file=sys.stderr)
            return url
        except redis.exceptions.ConnectionError:
            time.sleep(0.025)
    raise SystemExit(f"the private Valkey did not start; see {STATE / 'valkey.log'}")


def stop() -> bool:
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    PID_FILE.unlink(missing_ok=True)
    PORT_FILE.unlink(missing_ok=True)
    return True


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "url"
    if command == "start":
        print(ensure())
    elif command == "stop":
        print("stopped the private Valkey" if stop() else "no private Valkey was running")
    elif command == "url":
        print(running_url() or "")
    else:
        raise SystemExit("usage: python -m devkit.localredis start|stop|url")


if __name__ == "__main__":
    main()
