"""An outbox relay run until the outbox is empty; SIGKILLed by test_outbox.py.

    python -m tests.sinks._relay_child CONFIG.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eoscore.sinks.outbox import OutboxRelay


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    relay = OutboxRelay(
        cfg["database"],
        cfg["bootstrap"],
        name=cfg["name"],
        table=cfg["table"],
        state_topic=cfg["state_topic"],
        batch_size=cfg["batch"],
        producer_config={"transaction.timeout.ms": 10000},
    )
    relay.run(until_idle=True)
    relay.close()
    print("done", relay.published, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
