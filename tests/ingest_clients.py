"""Sends a list of Segment calls through an official client library, for tests/ingest_it.rs.

    ingest_clients.py segment|rudder HOST WRITE_KEY CALLS.json

CALLS.json is a list of {"type", "userId"?, "anonymousId"?, "messageId", "timestamp",
"event"?, "properties"?, "traits"?, "name"?, "groupId"?, "previousId"?}. Each is made with the
library's own call (identify, track, page, screen, group, alias) and the library batches, compresses, authenticates
and retries them its way. Exit 0 once flushed with no error the library gave up on; 1 otherwise.
INGEST_PACE_MS (optional) waits that long between calls, so a test can act while it sends.
"""

import json
import os
import sys
import time
from datetime import datetime


def main():
    lib, host, write_key, path = sys.argv[1:5]
    if lib == "segment":
        from segment.analytics import Client
    elif lib == "rudder":
        from rudderstack.analytics import Client
    else:
        raise SystemExit(f"unknown library {lib}")
    errors = []
    client = Client(
        write_key,
        host=host,
        on_error=lambda e, batch: errors.append(f"{e} ({len(batch)} messages)"),
        max_retries=10,
        upload_size=100,
    )
    with open(path) as f:
        calls = json.load(f)
    pace = float(os.environ.get("INGEST_PACE_MS", "0")) / 1000.0
    for c in calls:
        if pace:
            time.sleep(pace)
        common = dict(
            user_id=c.get("userId"),
            anonymous_id=c.get("anonymousId"),
            message_id=c["messageId"],
            timestamp=datetime.fromisoformat(c["timestamp"].replace("Z", "+00:00")),
        )
        kind = c["type"]
        if kind == "identify":
            client.identify(traits=c.get("traits") or {}, **common)
        elif kind == "track":
            client.track(event=c["event"], properties=c.get("properties") or {}, **common)
        elif kind == "page":
            client.page(name=c.get("name"), properties=c.get("properties") or {}, **common)
        elif kind == "screen":
            client.screen(name=c.get("name"), properties=c.get("properties") or {}, **common)
        elif kind == "group":
            client.group(group_id=c["groupId"], traits=c.get("traits") or {}, **common)
        elif kind == "alias":
            client.alias(
                previous_id=c["previousId"],
                user_id=c["userId"],
                message_id=c["messageId"],
                timestamp=common["timestamp"],
            )
        else:
            raise SystemExit(f"unknown call type {kind}")
    client.flush()
    client.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print(f"sent {len(calls)}")


if __name__ == "__main__":
    main()
