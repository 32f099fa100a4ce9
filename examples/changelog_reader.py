#!/usr/bin/env python3
"""A slow downstream reader of Herald's users' changelog (REFERENCE.md §14).

Reads the changelog topic from the start with Confluent's Kafka client (librdkafka:
`read_committed` by default), at most --rate records per second, and keeps a local SQLite
table with each user's latest state: after it has caught up, the table equals Herald's `users`
collection (without `_herald`). A record whose version is not newer than the stored one is
skipped, so reading again from the start is harmless. Prints, once a second, how far behind
the topic's end it is.

    pip install confluent-kafka
    python3 examples/changelog_reader.py --brokers localhost:9094 \
        --topic herald.users.changelog --db users.sqlite --rate 1000 [--until-caught-up]
"""

import argparse
import json
import sqlite3
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def lag(consumer, topic, partitions):
    """Records between the reader's position and each partition's end, summed."""
    behind = 0
    positions = consumer.position([TopicPartition(topic, p) for p in partitions])
    for tp in positions:
        # The watermarks the last fetch brought (no round trip; -1 before any fetch).
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), cached=True)
        if high < 0:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
        at = tp.offset if tp.offset >= 0 else low
        behind += max(0, high - at)
    return behind


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="localhost:9092")
    ap.add_argument("--topic", default="herald.users.changelog")
    ap.add_argument("--db", default="users.sqlite")
    ap.add_argument("--rate", type=float, default=1000.0, help="records per second at most")
    ap.add_argument("--group", default="changelog-reader")
    ap.add_argument("--until-caught-up", action="store_true",
                    help="exit once nothing is left to read for 2 s")
    args = ap.parse_args()

    db = sqlite3.connect(args.db)
    db.execute("CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, version INTEGER, doc TEXT)")
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    meta = consumer.list_topics(args.topic, timeout=10)
    partitions = sorted(meta.topics[args.topic].partitions)
    # From the start every time: the table is rebuilt idempotently (versions only go forward).
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])

    started = time.monotonic()
    read = applied = 0
    last_report = started
    idle_since = None
    while True:
        msg = consumer.poll(0.2)
        now = time.monotonic()
        if now - last_report >= 1.0:
            behind = lag(consumer, args.topic, partitions)
            print(f"{now - started:6.1f}s  read {read:>8}  applied {applied:>8}  behind {behind:>8}", flush=True)
            last_report = time.monotonic()
            if args.until_caught_up and behind == 0 and idle_since and now - idle_since >= 2.0:
                break
        if msg is None:
            idle_since = idle_since or now
            continue
        if msg.error():
            print(f"error: {msg.error()}", file=sys.stderr)
            continue
        idle_since = None
        read += 1
        doc = json.loads(msg.value())
        version = int(doc.pop("version"))
        cur = db.execute(
            "INSERT INTO users (id, version, doc) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET version = excluded.version, doc = excluded.doc "
            "WHERE excluded.version > users.version",
            (msg.key().decode(), version, json.dumps(doc, sort_keys=True)),
        )
        applied += cur.rowcount
        if read % 500 == 0:
            db.commit()
        # At most --rate records a second: a slow reader, by choice.
        wait = started + read / args.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    db.commit()
    consumer.close()
    print(f"caught up: {read} records read, {applied} applied, "
          f"{db.execute('SELECT COUNT(*) FROM users').fetchone()[0]} users in {args.db}")


if __name__ == "__main__":
    main()
