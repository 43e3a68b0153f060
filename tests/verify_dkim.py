#!/usr/bin/env python3
"""Verifies every DKIM signature of a message with dkimpy, an implementation independent of
ours, taking the public keys from the command line instead of DNS.

usage: verify_dkim.py MESSAGE.eml NAME=TXT [NAME=TXT ...]
prints one line per signature: "<algorithm> <True|False> h=<signed headers>"; exit 0 if all
verify, 1 otherwise."""
import sys

import dkim

raw = open(sys.argv[1], "rb").read()
records = {}
for arg in sys.argv[2:]:
    name, _, value = arg.partition("=")
    records[name.rstrip(".") + "."] = value.encode()


def dnsfunc(name, timeout=5):
    return records.get(name.decode() if isinstance(name, bytes) else name)


ok = True
d = dkim.DKIM(raw)
signatures = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
if not signatures:
    print("no DKIM-Signature header")
    sys.exit(1)
for i in range(len(signatures)):
    fields = dict(
        part.strip().split(b"=", 1)
        for part in signatures[i].replace(b"\r\n", b"").split(b";")
        if b"=" in part
    )
    good = d.verify(idx=i, dnsfunc=dnsfunc)
    ok = ok and good
    print(f"{fields[b'a'].decode().strip()} {good} h={fields[b'h'].decode().replace(' ', '')}")
sys.exit(0 if ok else 1)
