#!/usr/bin/env python3
"""Speed and faithfulness of a MongoDB wire-protocol server, on the command shapes Herald sends.

Usage:
    python3 scripts/mongo_servers_bench.py mongodb://127.0.0.1:PORT [--pid PID] [--json FILE]

Needs PyMongo (e.g. a venv: python3 -m venv ~/.cache/herald/bench-venv &&
~/.cache/herald/bench-venv/bin/pip install pymongo). Every run works in a fresh database
(herald_bench_<random>, dropped at the end unless --keep), single client, one request at a time,
so the figures are the server's per-request cost as Herald's single writer sees it.

Timed phases (the shapes of src/adapters/mongo/docs.rs and mongo/transitions.rs):
  ping                  `ping` commands
  users_replace         multi-statement `update` (ordered:false, --batch statements a command) of
                        full `users` replacements with upsert:true, over --users distinct _ids
                        (the first pass inserts, the later ones replace)
  users_set             `$set` + `$setOnInsert` upserts, half on existing users, half new
  messages_insert       `$setOnInsert` upserts of new `messages` (insert-if-absent)
  messages_replay       the same statements again with other contents: must change nothing
  find_in               `find` of {_id: {$in: [--in-size ids]}} over users
  versioned_upsert      version-checked replacements {q:{_id, version:v}, upsert:true} in `update`
                        commands of --group (500); some deliberately stale: those must fail with
                        duplicate key (11000) and leave the document as it was
  versioned_noupsert    the same with upsert:false, as the group-commit writer sends them: stale
                        ones match nothing (n counts only the applied ones)
  transition_alone      find_one + replace_one({_id, version}) round trips, one message at a time

Each timed phase stops early past --phase-seconds (default 120 s; the rate is then over what was
done, and the count printed says how much). Servers that cannot take Herald's batch sizes get
smaller ones with --batch/--group: FerretDB 1.24 hangs for good once one `update` command has more
statements matching existing documents than its connection pool (100 SQLite, 50 PostgreSQL), so
give it --batch 50 --group 50. --version-index creates a unique index {_id: 1, version: 1} on
`messages` first (mongo-java-server otherwise scans the collection for each {_id, version}).

Then untimed checks: document count, a sample of documents compared field by field with strict
BSON types (bool stays bool, int32 stays int32, int64 stays int64 even past 2^53, double stays
double, dates to the millisecond, null, nested and empty documents and arrays, unicode), query
semantics Herald relies on, the reply shapes (n, nModified, upserted[], writeErrors[]) and the
error codes. Each failed check prints FAIL; the exit status is 1 when any check failed.
"""

import argparse
import datetime as dt
import json
import random
import re
import sys
import time
import uuid
from collections import Counter

try:
    from bson.int64 import Int64
    from bson.objectid import ObjectId
    from pymongo import MongoClient
    from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
except ImportError:  # pragma: no cover
    sys.exit("needs pymongo: pip install pymongo (into a venv)")

EPOCH = dt.datetime(2026, 1, 1)
BIG = 2**62 + 7  # an int64 that a double cannot hold exactly


def when(ms):
    """A naive UTC datetime at millisecond precision (what BSON dates hold)."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def uid(i):
    return f"user-{i:06d}"


def mid(i):
    return f"msg-{i:06d}"


def user_doc(i, rev):
    """A `users` document shaped like mongo::docs::user_document, with `_id` (as Herald sends)."""
    return {
        "_id": uid(i),
        "traits": {
            "plan": ("free", "pro", "team")[(i + rev) % 3],
            "vip": (i + rev) % 2 == 0,  # bool: must not come back as 0/1
            "age": 20 + i % 50,  # int32
            "score": Int64(BIG + i),  # int64 beyond 2^53
            "ratio": 3.0 if i % 4 == 0 else 0.1 * (rev + 1),  # double, also integral ones
            "name": f"usér {i} ☃ 𝄞",
            "address": {"city": "Zürich", "geo": {"lat": 47.37, "lon": 8.54}},
            "nothing": None,
            "empty_doc": {},
            "empty_list": [],
        },
        "tags": [f"t{i % 7}", f"rev{rev}"],
        "event_count": Int64(rev * 10 + i),
        "events": {
            "signup": {"count": Int64(1), "first_at": when(i), "last_at": when(i)},
            "open": {"count": Int64(rev), "first_at": when(i + 1), "last_at": when(i + rev * 1000 + 1)},
        },
        "first_seen": when(i),
        "last_seen": None if i % 5 == 0 else when(i + rev * 1000 + 1),
        "updated_at": when(10_000_000 + rev * 1000 + i % 1000),
    }


def message_doc(i, version, rev=0, token=None):
    """A `messages` document shaped like mongo::docs::message_document."""
    statuses = ("queued", "sent", "delivered", "failed")
    history = [
        {"status": statuses[k % 4], "at": when(i + k), "provider": None if k == 0 else "sim-sms",
         "detail": None}
        for k in range(rev % 4 + 1)
    ]
    doc = {
        "_id": mid(i),
        "user_id": uid(i % 1000),
        "campaign": f"camp-{i % 13}",
        "channel": "sms",
        "to": "+41000000000",
        "body": f"hello {i} rev {rev} ✉",
        "provider": None if rev == 0 else "sim-sms",
        "status": statuses[rev % 4],
        "attempts": Int64(rev),
        "provider_message_id": None if rev == 0 else f"pm-{i}-{rev}",
        "error": None,
        "created_at": when(i),
        "updated_at": when(i + rev),
        "history": history,
        "version": Int64(version),
    }
    if token is not None:
        doc["w"] = Int64(token)
    return doc


def type_diffs(expected, got, path="", out=None, limit=50):
    """Differences between two decoded documents, strict on types (bool vs int, int vs Int64).

    Returns (path, kind, detail) triples; `kind` leaves the values out (e.g. "Int64 -> int"), so
    the differences of many documents can be counted by kind (see `summarize`)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            out.append((path or "/", f"document -> {type(got).__name__}", f"got {got!r:.60}"))
            return out
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing:
            out.append((path or "/", f"missing {missing}", ""))
        if extra:
            out.append((path or "/", f"extra {extra}", ""))
        for k in expected:
            if k in got:
                type_diffs(expected[k], got[k], f"{path}.{k}" if path else k, out, limit)
    elif isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            out.append((path, "list differs", f"expected {expected!r:.60}, got {got!r:.60}"))
            return out
        for n, (e, g) in enumerate(zip(expected, got)):
            type_diffs(e, g, f"{path}[{n}]", out, limit)
    elif type(expected) is not type(got):
        out.append((path, f"{type(expected).__name__} -> {type(got).__name__}",
                    f"{expected!r:.40} -> {got!r:.40}"))
    elif expected != got:
        out.append((path, "value differs", f"{expected!r:.40} -> {got!r:.40}"))
    return out


def fmt(diffs, n=3):
    return [f"{p}: {k} ({d})" if d else f"{p}: {k}" for p, k, d in diffs[:n]]


def summarize(all_diffs):
    """Counts differences by (path with array indexes elided, kind), most frequent first."""
    counts = Counter((re.sub(r"\[\d+\]", "[]", p), k) for p, k, _ in all_diffs)
    return [f"{p}: {k} (x{c})" for (p, k), c in counts.most_common(12)]


class Bench:
    def __init__(self, args):
        self.args = args
        self.client = MongoClient(args.uri, serverSelectionTimeoutMS=10_000,
                                  connectTimeoutMS=5_000, socketTimeoutMS=600_000)
        self.db = self.client[args.db]
        self.rates = {}  # phase -> {count, seconds, rate}
        self.failures = []  # (check, detail)
        self.passes = []
        self.notes = {}  # reply shapes and quirks
        self.rng = random.Random(args.seed)

    # -- bookkeeping -------------------------------------------------------------------
    def check(self, name, ok, detail=""):
        if ok:
            self.passes.append(name)
        else:
            self.failures.append((name, str(detail)[:400]))
            print(f"  FAIL {name}: {str(detail)[:400]}", flush=True)
        return ok

    def rate(self, name, count, seconds):
        r = count / seconds if seconds > 0 else float("inf")
        self.rates[name] = {"count": count, "seconds": round(seconds, 3), "rate": round(r, 1)}
        print(f"  {name:<20} {count:>8} in {seconds:8.2f}s  {r:>10,.0f}/s", flush=True)

    def note(self, key, value):
        self.notes[key] = value

    def update(self, coll, statements, ordered=False):
        """The `update` command exactly as Herald sends it."""
        return self.db.command("update", coll, updates=statements, ordered=ordered)

    def phase(self, fn):
        """Runs one phase; a command the server refuses fails that phase only."""
        self.deadline = time.perf_counter() + self.args.phase_seconds
        try:
            fn()
        except PyMongoError as e:
            self.check(fn.__name__, False, f"{type(e).__name__}: {e}")

    def over(self):
        """Past the phase's time budget (--phase-seconds): a timed loop then stops early."""
        return time.perf_counter() > self.deadline

    # -- timed phases ------------------------------------------------------------------
    def ping(self):
        t, n = time.perf_counter(), 0
        while n < self.args.pings and not self.over():
            self.db.command("ping")
            n += 1
        self.rate("ping", n, time.perf_counter() - t)

    def users_replace(self):
        a = self.args
        self.user_rev = {}
        ids = list(range(a.users))
        spent, done, upserted, modified, errors = 0.0, 0, 0, 0, []
        first_reply = second_reply = None
        passes = max(1, a.upserts // a.users)
        for rev in range(passes):
            self.rng.shuffle(ids)
            for s in range(0, len(ids), a.batch):
                if rev > 0 and self.over():  # the first pass (the inserts) always completes
                    break
                chunk = ids[s:s + a.batch]
                stmts = [{"q": {"_id": uid(i)}, "u": user_doc(i, rev), "upsert": True} for i in chunk]
                t = time.perf_counter()
                r = self.update("users", stmts)
                spent += time.perf_counter() - t
                done += len(stmts)
                for i in chunk:
                    self.user_rev[i] = rev
                if first_reply is None:
                    first_reply = r
                    ups = r.get("upserted", [])
                    self.note("upsert_reply_keys", sorted(r))
                    self.note("upsert_reply_first_batch", {k: r.get(k) for k in ("n", "nModified", "nUpserted")}
                              | {"len(upserted)": len(ups), "upserted[0]": repr(ups[0]) if ups else None})
                    want = [(n, uid(i)) for n, i in enumerate(chunk)]
                    got = [(u.get("index"), u.get("_id")) for u in ups]
                    self.check("upsert reply: upserted[] lists each new _id with its index", got == want,
                               f"first entries {got[:3]} vs {want[:3]} (len {len(got)} vs {len(want)})")
                    self.check("upsert reply: n counts upserted statements", r.get("n") == len(chunk),
                               f"n={r.get('n')} for {len(chunk)} new documents")
                    self.check("upsert reply: nModified 0 for pure inserts", r.get("nModified") == 0,
                               f"nModified={r.get('nModified')}")
                elif rev == 1 and second_reply is None:
                    second_reply = r
                    self.note("replace_reply_existing", {k: r.get(k) for k in ("n", "nModified", "nUpserted")}
                              | {"len(upserted)": len(r.get("upserted", []))})
                    self.check("replace reply: n and nModified count replaced documents",
                               r.get("n") == len(chunk) and r.get("nModified") == len(chunk)
                               and not r.get("upserted"), {k: r.get(k) for k in ("n", "nModified", "upserted")})
                upserted += len(r.get("upserted", []))
                modified += r.get("nModified", 0)
                errors += r.get("writeErrors", [])
        self.rate("users_replace", done, spent)
        self.check("users_replace: no write errors", not errors, errors[:2])
        self.check("users_replace: upserted total equals distinct _ids", upserted == a.users,
                   f"{upserted} upserted for {a.users} ids")
        self.check("users_replace: nModified total equals replacements of existing",
                   modified == done - a.users, f"nModified {modified}, expected {done - a.users}")

    def users_set(self):
        """`$set` + `$setOnInsert` upserts: ids [users/2, 3*users/2): half exist, half new."""
        a = self.args
        lo, hi = a.users // 2, a.users + a.users // 2
        ids = list(range(lo, hi))
        spent, upserted, errors = 0.0, 0, []
        for s in range(0, len(ids), a.batch):
            chunk = ids[s:s + a.batch]
            stmts = [{
                "q": {"_id": uid(i)},
                "u": {"$set": {"traits.plan": "set", "last_seen": when(i + 5), "events.click.count": Int64(i)},
                      "$setOnInsert": {"first_seen": when(i), "created_by_set": True}},
                "upsert": True,
            } for i in chunk]
            t = time.perf_counter()
            r = self.update("users", stmts)
            spent += time.perf_counter() - t
            upserted += len(r.get("upserted", []))
            errors += r.get("writeErrors", [])
        self.rate("users_set", len(ids), spent)
        self.check("users_set: no write errors", not errors, errors[:2])
        self.check("users_set: upserted count", upserted == hi - a.users, f"{upserted} vs {hi - a.users}")
        old = self.db.users.find_one({"_id": uid(lo)})
        new = self.db.users.find_one({"_id": uid(hi - 1)})
        exp_old = user_doc(lo, self.user_rev[lo])
        exp_old["traits"]["plan"] = "set"
        exp_old["last_seen"] = when(lo + 5)
        exp_old["events"]["click"] = {"count": Int64(lo)}
        self.check("$set on existing: dotted paths set, $setOnInsert not applied",
                   not type_diffs(exp_old, old), fmt(type_diffs(exp_old, old), 6))
        exp_new = {"_id": uid(hi - 1), "traits": {"plan": "set"}, "last_seen": when(hi - 1 + 5),
                   "events": {"click": {"count": Int64(hi - 1)}}, "first_seen": when(hi - 1),
                   "created_by_set": True}
        self.check("$set+$setOnInsert upsert: new document with query _id, nested paths",
                   not type_diffs(exp_new, new), fmt(type_diffs(exp_new, new), 6) or new)

    def messages_insert(self):
        a = self.args
        if a.version_index:
            # mongo-java-server uses an index only when the query's fields are exactly the
            # index's: {_id, version} scans the collection unless this index exists.
            self.db.command("createIndexes", "messages",
                            indexes=[{"key": {"_id": 1, "version": 1}, "name": "_id_version", "unique": True}])
        self.msg_version = {i: 0 for i in range(a.messages)}
        self.msg_rev = {i: 0 for i in range(a.messages)}
        self.msg_token = {i: None for i in range(a.messages)}
        spent, upserted, errors, first = 0.0, 0, [], None
        for s in range(0, a.messages, a.batch):
            chunk = range(s, min(s + a.batch, a.messages))
            stmts = [{"q": {"_id": mid(i)}, "u": {"$setOnInsert": message_doc(i, 0)}, "upsert": True}
                     for i in chunk]
            t = time.perf_counter()
            r = self.update("messages", stmts)
            spent += time.perf_counter() - t
            if first is None:
                first = r
                self.note("setOnInsert_reply_new", {k: r.get(k) for k in ("n", "nModified", "nUpserted")}
                          | {"len(upserted)": len(r.get("upserted", []))})
            upserted += len(r.get("upserted", []))
            errors += r.get("writeErrors", [])
        self.rate("messages_insert", a.messages, spent)
        self.check("messages_insert: no write errors", not errors, errors[:2])
        self.check("messages_insert: every message upserted", upserted == a.messages, upserted)

    def messages_replay(self):
        a = self.args
        spent, n, modified, upserted, errors, first, done = 0.0, 0, 0, 0, [], None, 0
        for s in range(0, a.messages, a.batch):
            if self.over():
                break
            chunk = range(s, min(s + a.batch, a.messages))
            done += len(chunk)
            stmts = [{"q": {"_id": mid(i)}, "u": {"$setOnInsert": message_doc(i, 0, rev=3)}, "upsert": True}
                     for i in chunk]
            t = time.perf_counter()
            r = self.update("messages", stmts)
            spent += time.perf_counter() - t
            if first is None:
                first = r
                self.note("setOnInsert_reply_existing", {k: r.get(k) for k in ("n", "nModified", "nUpserted")}
                          | {"len(upserted)": len(r.get("upserted", []))})
            n += r.get("n", 0)
            modified += r.get("nModified", 0)
            upserted += len(r.get("upserted", []))
            errors += r.get("writeErrors", [])
        self.rate("messages_replay", done, spent)
        self.check("messages_replay: no write errors", not errors, errors[:2])
        self.check("messages_replay: matched all, modified none, upserted none",
                   (n, modified, upserted) == (done, 0, 0),
                   f"n={n} nModified={modified} upserted={upserted}")
        sample = self.db.messages.find_one({"_id": mid(7)})
        self.check("$setOnInsert on existing document leaves it unchanged",
                   not type_diffs(message_doc(7, 0), sample), fmt(type_diffs(message_doc(7, 0), sample), 6))

    def find_in(self):
        a = self.args
        spent, bad, k = 0.0, [], 0
        while k < a.finds and not self.over():
            k += 1
            ids = [uid(i) for i in self.rng.sample(range(a.users), a.in_size)]
            t = time.perf_counter()
            docs = list(self.db.users.find({"_id": {"$in": ids}}))
            spent += time.perf_counter() - t
            if len(docs) != a.in_size and len(bad) < 3:
                bad.append(f"find #{k}: {len(docs)} of {a.in_size}")
        self.rate("find_in", k, spent)
        self.check("find_in: every $in returns all its existing documents", not bad, bad)

    def _versioned(self, name, upsert):
        """Version-checked replacements, as the group-commit writer sends them; ~stale_pct% stale."""
        a = self.args
        ids = list(range(a.messages))
        spent, done, problems, diffs, wrong = 0.0, 0, [], [], 0
        refused_codes = set()
        first_err = None
        while done < a.versioned and not self.over():
            self.rng.shuffle(ids)
            for s in range(0, len(ids), a.group):
                if done >= a.versioned or self.over():
                    break
                chunk = ids[s:s + a.group][: a.versioned - done]
                token = self.rng.getrandbits(62)
                stmts, stale = [], set()
                for n, i in enumerate(chunk):
                    v = self.msg_version[i]
                    is_stale = self.rng.random() * 100 < a.stale_pct
                    claimed = (v - 1 if v > 0 else v + 7) if is_stale else v
                    if is_stale:
                        stale.add(n)
                    stmts.append({"q": {"_id": mid(i), "version": Int64(claimed)},
                                  "u": message_doc(i, v + 1, self.msg_rev[i] + 1, token),
                                  "upsert": upsert})
                t = time.perf_counter()
                try:
                    r = self.update("messages", stmts)
                except OperationFailure as e:
                    # The whole command refused (a server that stops at the first error even
                    # with ordered:false): note it, learn what was written, go on.
                    spent += time.perf_counter() - t
                    done += len(stmts)
                    if len(problems) < 3:
                        problems.append(f"whole command failed (code {e.code}): {str(e)[:160]}")
                    self.notes.setdefault(f"{name}_command_error", f"code {e.code}: {str(e)[:200]}")
                    for d in self.db.messages.find({"_id": {"$in": [mid(i) for i in chunk]}}):
                        i = int(d["_id"].split("-")[1])
                        self.msg_version[i], self.msg_rev[i] = int(d["version"]), int(d["attempts"])
                        self.msg_token[i] = d.get("w")
                    continue
                spent += time.perf_counter() - t
                done += len(stmts)
                applied = len(chunk) - len(stale)
                errs = r.get("writeErrors", [])
                if errs and first_err is None:
                    first_err = errs[0]
                err_idx = {e.get("index") for e in errs}
                refused_codes |= {e.get("code") for e in errs}
                if upsert:
                    if err_idx != stale and len(problems) < 3:
                        problems.append(f"writeErrors at {sorted(err_idx)[:5]}, stale at {sorted(stale)[:5]}")
                    if any(e.get("code") != 11000 for e in errs) and len(problems) < 3:
                        problems.append(f"codes {sorted(map(str, refused_codes))}")
                elif errs and len(problems) < 3:
                    problems.append(f"write errors with upsert:false: {errs[:1]}")
                if (r.get("n"), r.get("nModified")) != (applied, applied) and len(problems) < 3:
                    problems.append(f"n={r.get('n')} nModified={r.get('nModified')} for {applied} applied")
                if r.get("upserted") and len(problems) < 3:
                    problems.append(f"stale statements upserted: {r.get('upserted')[:2]}")
                # Untimed: what the documents hold now.
                got = {d["_id"]: d for d in self.db.messages.find({"_id": {"$in": [mid(i) for i in chunk]}})}
                for n, i in enumerate(chunk):
                    if n not in stale:
                        self.msg_version[i] += 1
                        self.msg_rev[i] += 1
                        self.msg_token[i] = token
                    want = message_doc(i, self.msg_version[i], self.msg_rev[i], self.msg_token[i])
                    have = got.get(mid(i), {})
                    # The outcome (numeric compare: a server may narrow int64 to int32) ...
                    if (have.get("version"), have.get("w"), have.get("body")) != (
                            want["version"], want.get("w"), want["body"]):
                        if len(problems) < 3:
                            problems.append(f"{mid(i)} ({'stale' if n in stale else 'applied'}): version "
                                            f"{have.get('version')!r} w {have.get('w')!r}, expected "
                                            f"{want['version']!r} w {want.get('w')!r}")
                        wrong += 1
                        # Go on from what the server holds, so each command is judged on its own.
                        self.msg_version[i] = int(have.get("version", 0))
                        self.msg_rev[i] = int(have.get("attempts", 0))
                        self.msg_token[i] = have.get("w")
                        continue
                    # ... and the stored document, strict on types.
                    diffs += type_diffs(want, have)
        self.rate(name, done, spent)
        if upsert:
            self.note("stale_upsert_writeError", first_err)
        self.check(f"{name}: stale refused ({'11000' if upsert else 'no match'}), others applied, "
                   f"the right documents changed", not problems,
                   [f"{wrong} of {done} documents not as expected"] + problems)
        self.check(f"{name}: replaced documents equal, strict BSON types", not diffs, summarize(diffs))

    def versioned_upsert(self):
        self._versioned("versioned_upsert", True)

    def versioned_noupsert(self):
        self._versioned("versioned_noupsert", False)

    def transition_alone(self):
        a = self.args
        coll = self.db.messages
        spent, problems, k = 0.0, [], 0
        while k < a.alone and not self.over():
            k += 1
            i = self.rng.randrange(a.messages)
            t = time.perf_counter()
            found = coll.find_one({"_id": mid(i)})
            v = found["version"]
            r = coll.replace_one({"_id": mid(i), "version": v},
                                 message_doc(i, v + 1, self.msg_rev[i] + 1))
            spent += time.perf_counter() - t
            if r.matched_count != 1 and len(problems) < 3:
                problems.append(f"{mid(i)}: matched {r.matched_count}")
            self.msg_version[i] = v + 1
            self.msg_rev[i] += 1
            self.msg_token[i] = None
        self.rate("transition_alone", k, spent)
        stale = coll.replace_one({"_id": mid(0), "version": Int64(self.msg_version[0] + 100)},
                                 message_doc(0, 999, 0))
        self.check("transition_alone: each fresh replace matched, a stale one matched 0",
                   not problems and stale.matched_count == 0, problems or stale.raw_result)

    # -- untimed checks ----------------------------------------------------------------
    def verify_users(self):
        a = self.args
        total = a.users + a.users // 2
        self.check("users: count_documents", self.db.users.count_documents({}) == total,
                   self.db.users.count_documents({}))
        self.check("users: estimated_document_count (count command)",
                   self.db.users.estimated_document_count() == total,
                   self.db.users.estimated_document_count())
        # A sample of documents untouched by users_set, compared with strict types.
        diffs = []
        for i in self.rng.sample(range(a.users // 2), min(300, a.users // 2)):
            diffs += type_diffs(user_doc(i, self.user_rev[i]), self.db.users.find_one({"_id": uid(i)}) or {})
        self.check("users: sampled documents equal, strict BSON types", not diffs, summarize(diffs))
        order = list((self.db.users.find_one({"_id": uid(1)}) or {}).keys())
        self.note("field_order_preserved", order == list(user_doc(1, 0).keys()))
        self.check("users: field order preserved (_id first)", order == list(user_doc(1, 0).keys()), order)

    def semantics(self):
        """Query and update semantics Herald relies on, and the error codes it reads."""
        db, users = self.db, self.db.users
        n_vip = sum(1 for i in range(self.args.users // 2, self.args.users)
                    if (i + self.user_rev[i]) % 2 == 0)
        lo, hi = self.args.users // 2, self.args.users
        rng = {"_id": {"$gte": uid(lo), "$lt": uid(hi)}}
        self.check("query: {vip: true} matches the booleans", users.count_documents(
            {**rng, "traits.vip": True}) == n_vip, users.count_documents({**rng, "traits.vip": True}))
        self.check("query: {vip: 1} does not match booleans (bool is not a number)",
                   users.count_documents({**rng, "traits.vip": 1}) == 0,
                   users.count_documents({**rng, "traits.vip": 1}))
        i = 3
        want = Int64(self.user_rev[i] * 10 + i)
        self.check("query: int32 value matches stored int64 (numeric comparison)",
                   users.count_documents({"_id": uid(i), "event_count": int(want)}) == 1)
        self.check("query: int64 beyond 2^53 matches exactly, not its neighbour",
                   users.count_documents({"_id": uid(i), "traits.score": Int64(BIG + i)}) == 1
                   and users.count_documents({"_id": uid(i), "traits.score": Int64(BIG + i + 1)}) == 0)
        self.check("query: null matches a null field", users.count_documents(
            {"_id": uid(0), "last_seen": None}) == 1)
        # Replacement without `_id`: MongoDB gives the upserted document the query's `_id`.
        r = self.update("users", [{"q": {"_id": "no-id-in-u"}, "u": {"x": 1}, "upsert": True}])
        got = users.find_one({"x": 1, "_id": "no-id-in-u"})
        self.note("upsert_without_id_in_replacement", {"reply_upserted": r.get("upserted"),
                                                        "stored": repr(users.find_one({"x": 1}))})
        self.check("upsert: replacement without _id takes the query's _id", got is not None,
                   f"stored: {users.find_one({'x': 1})!r}")
        # upserted[].index is the statement's index in the command, not a running count.
        r = self.update("users", [{"q": {"_id": uid(4)}, "u": {"$set": {"seen": True}}, "upsert": True},
                                  {"q": {"_id": "idx-1"}, "u": {"$set": {"seen": True}}, "upsert": True}])
        self.check("upsert reply: upserted[].index is the statement's index",
                   r.get("upserted") == [{"index": 1, "_id": "idx-1"}], r.get("upserted"))
        # $addToSet: upsert, no-op repeat, $each.
        r1 = self.update("users", [{"q": {"_id": "ats"}, "u": {"$addToSet": {"tags": "a"}}, "upsert": True}])
        r2 = self.update("users", [{"q": {"_id": "ats"}, "u": {"$addToSet": {"tags": "a"}}, "upsert": True}])
        r3 = self.update("users", [{"q": {"_id": "ats"},
                                    "u": {"$addToSet": {"tags": {"$each": ["a", "b", "b"]}}}, "upsert": True}])
        doc = users.find_one({"_id": "ats"})
        shape = lambda r: {k: r.get(k) for k in ("n", "nModified")} | {"upserted": r.get("upserted")}
        self.note("addToSet_replies", {"upsert_new": shape(r1), "repeat_noop": shape(r2),
                                       "each": shape(r3), "doc": repr(doc)})
        self.check("$addToSet: upsert creates [a], repeat is a no-op (nModified 0), $each adds b once",
                   doc == {"_id": "ats", "tags": ["a", "b"]} and r2.get("nModified") == 0
                   and r1.get("upserted") == [{"index": 0, "_id": "ats"}] and r3.get("nModified") == 1,
                   self.notes["addToSet_replies"])
        # ordered:false goes on after a refused statement; the error names its index and code.
        stmts = [
            {"q": {"_id": "ord-0"}, "u": {"$set": {"a": 1}}, "upsert": True},
            {"q": {"_id": uid(1)}, "u": {"$set": {"_id": "changed"}}, "upsert": True},  # 66
            {"q": {"_id": "ord-2"}, "u": {"$set": {"a": 1}}, "upsert": True},
            {"q": {"_id": uid(2)}, "u": {"$inc": {"traits.plan": 1}}, "upsert": True},  # 14
            {"q": {"_id": "ord-4"}, "u": {"$set": {"a": 1}}, "upsert": True},
        ]
        try:
            r = self.update("users", stmts)
            errs = [(e.get("index"), e.get("code")) for e in r.get("writeErrors", [])]
            self.note("ordered_false_errors", {"writeErrors": [(e.get("index"), e.get("code"), e.get("errmsg"))
                                                               for e in r.get("writeErrors", [])],
                                               "n": r.get("n"), "upserted": r.get("upserted")})
            ok = users.count_documents({"_id": {"$in": ["ord-0", "ord-2", "ord-4"]}}) == 3
            self.check("ordered:false: the good statements are applied past refused ones", ok)
            self.check("ordered:false: writeErrors index 1 (code 66 ImmutableField), 3 (code 14 TypeMismatch)",
                       errs == [(1, 66), (3, 14)], self.notes["ordered_false_errors"])
            self.check("refused updates changed nothing", users.find_one({"_id": uid(2)})["traits"]["plan"]
                       == user_doc(2, self.user_rev[2])["traits"]["plan"]
                       and users.count_documents({"_id": "changed"}) == 0)
        except PyMongoError as e:
            self.check("ordered:false with refused statements", False, e)
        # insert_one of an existing _id: duplicate key.
        try:
            users.insert_one({"_id": uid(5)})
            self.check("insert_one of an existing _id raises duplicate key 11000", False, "accepted")
        except DuplicateKeyError as e:
            self.check("insert_one of an existing _id raises duplicate key 11000", e.code == 11000, e.code)
        except PyMongoError as e:
            self.check("insert_one of an existing _id raises duplicate key 11000", False, e)
        # Indexes as ensure_indexes creates them, twice (idempotent).
        for _ in range(2):
            try:
                db.command("createIndexes", "messages", indexes=[{"key": {"status": 1}, "name": "status_1"}])
                db.command("createIndexes", "early_callbacks",
                           indexes=[{"key": {"message_id": 1}, "name": "message_id_1"}])
            except PyMongoError as e:
                self.check("createIndexes (idempotent)", False, e)
                break
        names = [ix["name"] for ix in db.messages.list_indexes()]
        self.check("createIndexes: listIndexes shows status_1", "status_1" in names, names)
        # Early callbacks: insert_one (ObjectId), find by $in, delete_one by _id.
        ec = db.early_callbacks
        ins = ec.insert_one({"message_id": mid(1), "event": "delivered", "at": when(1), "attempt": None})
        found = list(ec.find({"message_id": {"$in": [mid(1), "nope"]}}))
        self.check("early_callbacks: ObjectId _id round-trips, found by $in",
                   len(found) == 1 and isinstance(found[0]["_id"], ObjectId) and found[0]["_id"] == ins.inserted_id,
                   found)
        dr = ec.delete_one({"_id": ins.inserted_id})
        self.check("early_callbacks: delete_one by _id", dr.deleted_count == 1 and ec.count_documents({}) == 0)
        # $in with missing ids returns only the existing ones.
        got = list(users.find({"_id": {"$in": [uid(1), "missing-1", uid(2), "missing-2"]}}, {"_id": 1}))
        self.check("find: $in with missing ids returns the existing ones only",
                   sorted(d["_id"] for d in got) == [uid(1), uid(2)], got)
        # Projection as the writer uses it: {_id: 1} only.
        self.check("find: projection {_id: 1} returns only _id", all(list(d) == ["_id"] for d in got), got)

    def queued(self):
        """queued_messages: find {status: queued} with a limit, right after the inserts."""
        docs = list(self.db.messages.find({"status": "queued"}).limit(50))
        self.check("find {status: queued}.limit(50)", len(docs) == 50 and all(d["status"] == "queued" for d in docs),
                   len(docs))

    def verify_messages(self):
        a = self.args
        self.check("messages: count unchanged by stale upserts",
                   self.db.messages.count_documents({}) == a.messages, self.db.messages.count_documents({}))
        diffs = []
        for i in self.rng.sample(range(a.messages), min(200, a.messages)):
            want = message_doc(i, self.msg_version[i], self.msg_rev[i], self.msg_token[i])
            diffs += type_diffs(want, self.db.messages.find_one({"_id": mid(i)}) or {})
        self.check("messages: sampled documents equal, strict BSON types", not diffs, summarize(diffs))

    # -- driver ------------------------------------------------------------------------
    def run(self):
        hello = self.db.command("hello") if self._has_hello() else self.db.command("isMaster")
        build = self.client.admin.command("buildInfo")
        self.note("server", {"version": build.get("version"), "maxWireVersion": hello.get("maxWireVersion"),
                             "maxWriteBatchSize": hello.get("maxWriteBatchSize"),
                             "ferretdb": build.get("ferretdbVersion") or build.get("ferretdb")})
        print(f"server {self.args.uri}: version {build.get('version')}, wire {hello.get('maxWireVersion')}, "
              f"maxWriteBatchSize {hello.get('maxWriteBatchSize')}; database {self.args.db}", flush=True)
        self.client.drop_database(self.args.db)
        t0 = time.perf_counter()
        for fn in (self.ping, self.users_replace, self.users_set, self.messages_insert, self.queued,
                   self.messages_replay, self.find_in, self.versioned_upsert, self.versioned_noupsert,
                   self.transition_alone, self.verify_users, self.verify_messages, self.semantics):
            self.phase(fn)
        self.note("total_seconds", round(time.perf_counter() - t0, 1))
        if not self.args.keep:
            self.client.drop_database(self.args.db)

    def _has_hello(self):
        try:
            self.db.command("hello")
            return True
        except OperationFailure:
            return False


def rss(pid):
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kv = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: round(int(kv[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}
    except OSError as e:
        return {"error": str(e)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("uri", help="e.g. mongodb://127.0.0.1:27018")
    p.add_argument("--db", default=f"herald_bench_{uuid.uuid4().hex[:8]}", help="database (dropped at the end)")
    p.add_argument("--users", type=int, default=20_000, help="distinct user _ids")
    p.add_argument("--upserts", type=int, default=100_000, help="replacement upserts (a multiple of --users)")
    p.add_argument("--batch", type=int, default=1000, help="statements per update command (Herald: 1000)")
    p.add_argument("--messages", type=int, default=20_000, help="messages inserted with $setOnInsert")
    p.add_argument("--finds", type=int, default=20_000, help="find commands with $in")
    p.add_argument("--in-size", type=int, default=100, help="ids per $in")
    p.add_argument("--versioned", type=int, default=20_000, help="version-checked replacements per variant")
    p.add_argument("--group", type=int, default=500, help="statements per versioned update (Herald: 500)")
    p.add_argument("--stale-pct", type=float, default=10.0, help="share of deliberately stale ones, %%")
    p.add_argument("--alone", type=int, default=2000, help="find_one + replace_one transitions")
    p.add_argument("--pings", type=int, default=1000)
    p.add_argument("--version-index", action="store_true",
                   help="create a unique index {_id: 1, version: 1} on messages first")
    p.add_argument("--seed", type=int, default=27017)
    p.add_argument("--phase-seconds", type=float, default=120.0,
                   help="time budget of each timed phase: a slow server does fewer operations")
    p.add_argument("--pid", type=int, help="server process id: report its RSS after the run")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the database")
    a = p.parse_args()
    if a.upserts % a.users or a.users % 2 or a.in_size > a.users:
        p.error("--upserts must be a multiple of --users, --users even, --in-size <= --users")

    b = Bench(a)
    try:
        b.run()
    except PyMongoError as e:
        b.check("connect", False, e)
    out = {"uri": a.uri, "rates": b.rates, "notes": b.notes, "passed": len(b.passes),
           "failures": b.failures}
    if a.pid:
        out["rss_mib"] = rss(a.pid)
    print("\nreply shapes and quirks:")
    for k, v in b.notes.items():
        print(f"  {k}: {v}")
    if a.pid:
        print(f"  server RSS MiB: {out['rss_mib']}")
    print(f"\n{len(b.passes)} passed, {len(b.failures)} failed")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    sys.exit(1 if b.failures else 0)


if __name__ == "__main__":
    main()
