"""Wait until a Kafka broker answers a metadata request (used by scripts/kafka).

Usage: ready.py BOOTSTRAP PID TIMEOUT_S

Exit codes: 0 ready, 1 timed out, 2 the broker process exited, 3 confluent_kafka
is not importable by this interpreter.
"""

from __future__ import annotations

import os
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    bootstrap, pid, timeout = argv[1], int(argv[2]), float(argv[3])
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        print(
            f"ready.py: {sys.executable} cannot import confluent_kafka ({exc}); "
            "set PYTHON to the project's venv interpreter",
            file=sys.stderr,
        )
        return 3
    # Silence librdkafka's connection-refused chatter while the broker boots.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return 2
        try:
            md = admin.list_topics(timeout=2)
        except Exception:  # KafkaException while the broker is not yet up
            time.sleep(0.2)
            continue
        # Answered, and the broker is registered (unfenced) in cluster metadata.
        if md.brokers and md.controller_id >= 0:
            return 0
        time.sleep(0.2)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
