#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/seeds/<target>/) from ../shared/vectors.json.

Run from anywhere: python3 fuzz/make_seeds.py. The seeds are committed; libFuzzer grows its
working corpus (fuzz/corpus/, not committed) from them.
"""
import json
import pathlib
import struct

here = pathlib.Path(__file__).resolve().parent
vectors = json.loads((here.parent / ".." / "shared" / "vectors.json").read_text())
envelope = vectors["envelope"]["json"]
payload_envelope = vectors["payload"]["envelope"]
poll = vectors["poll"]["json"]
ack = vectors["ack"]["json"]


def dump(value):
    return json.dumps(value, separators=(",", ":")).encode()


def write(target, name, data):
    directory = here / "seeds" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


write("envelope", "vector", dump(envelope))
write("envelope", "payload_vector", dump(payload_envelope))
write("envelope", "vector_pretty", json.dumps(envelope, indent=1).encode())
write("envelope", "unknown_field", dump({**envelope, "extra": [1, {"x": None}]}))

write("poll", "vector", dump(poll))
write("poll", "no_limit", dump({k: v for k, v in poll.items() if k != "limit"}))
write("poll", "wait_s", dump({**poll, "wait_s": 30}))

write("ack", "vector", dump(ack))
write("ack", "one_id", dump({**ack, "msg_ids": ack["msg_ids"][:1]}))

write("peer_batch", "one_envelope", dump({"envelope": envelope}))
write("peer_batch", "envelopes", dump({"envelopes": [envelope, payload_envelope, {"v": 2}]}))
write("peer_batch", "acks", dump({"acks": [ack, {"v": 1}]}))

changes = [
    {"seq": 1, "envelope": envelope},
    {"seq": 2, "envelope": payload_envelope},
    {"seq": 3, "ack": ack},
    {"seq": 4, "other": {}},
]
write("feed_page", "page", dump({"ok": True, "epoch": "e1", "next": 4, "more": False, "changes": changes}))
write("feed_page", "empty", dump({"ok": True, "epoch": "e1", "next": 0, "changes": []}))


def body_seed(limit, mode, chunk, fail_at, body, header=b""):
    head = struct.pack("<HBBB", limit, mode, chunk, fail_at)
    if mode % 4 == 3:
        head += bytes([len(header)]) + header
    return head + body


body = dump(envelope)
write("body_reader", "fits_declared", body_seed(1024, 1, 64, 255, body))
write("body_reader", "too_large_streamed", body_seed(100, 0, 7, 255, body))
write("body_reader", "too_large_declared", body_seed(100, 1, 200, 255, body))
write("body_reader", "lying_length", body_seed(1024, 2, 3, 255, body))
write("body_reader", "broken_stream", body_seed(1024, 0, 16, 5, body))
write("body_reader", "raw_header", body_seed(1024, 3, 32, 255, body, b"00000512"))
