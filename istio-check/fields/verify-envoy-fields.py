#!/usr/bin/env python3
"""Checks fields/envoy-1.26.txt against Envoy's API protos.

Usage: verify-envoy-fields.py <data-plane-api checkout at the v1.26 commit named in the list>
Each `Message.field type` line must name a field of that message (declared in its own body, not a
nested message's) whose proto type matches. A maintenance tool, not run by `make test` (the
protos are not vendored).
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
SCALARS = {"string", "bool", "uint32", "enum", "duration"}


def unwrap_oneofs(text):
    """Removes `oneof x {` and its closing brace, so oneof members count as the message's own."""
    while True:
        m = re.search(r"\boneof\s+\w+\s*\{", text)
        if not m:
            return text
        i, depth = m.end(), 1
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[m.end():i - 1] + text[i:]


def body_of(text, name):
    """The text of `message name {...}` without its nested messages/enums."""
    m = re.search(r"\bmessage\s+%s\s*\{" % re.escape(name), text)
    if not m:
        return None
    i, depth, out = m.end(), 1, []
    nested = 0
    while depth:
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if depth == 1 and c != "}":
            out.append(c)
        elif depth == 1 and c == "}":
            out.append("\n")
        i += 1
    return "".join(out), text[m.end():i]


def find_message(full):
    parts = full.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        pkg, names = parts[:cut], parts[cut:]
        d = root.joinpath(*pkg)
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.proto")):
            text = unwrap_oneofs(f.read_text())
            scope = text
            ok = True
            for n in names:
                r = body_of(scope, n)
                if r is None:
                    ok = False
                    break
                own, scope = r
            if ok:
                return own
    return None


bad = 0
for line in (pathlib.Path(__file__).parent / "envoy-1.26.txt").read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    parts = line.split()
    if len(parts) == 1:
        if parts[0].startswith("google.protobuf."):
            continue
        if find_message(parts[0]) is None:
            print("no message", parts[0]); bad += 1
        continue
    path, typ = parts
    msg, field = path.rsplit(".", 1)
    if msg.startswith("google.protobuf."):
        continue
    own = find_message(msg)
    if own is None:
        print("no message", msg); bad += 1
        continue
    own = re.sub(r"//[^\n]*", "", own)
    m = re.search(r"(repeated\s+)?(map<\s*string\s*,\s*)?([\w.]+)\s*>?\s+%s\s*=\s*\d+" % re.escape(field), own)
    if not m:
        print("no field", path); bad += 1
        continue
    ptype = m.group(3).split(".")[-1]
    want = typ.replace("[]", "").replace("map<", "").replace(">", "").split(".")[-1]
    if (m.group(1) is not None) != typ.startswith("[]"):
        print("repeated mismatch", path); bad += 1
    if (m.group(2) is not None) != typ.startswith("map<"):
        print("map mismatch", path); bad += 1
    if want in SCALARS:
        if want == "duration" and ptype != "Duration":
            print("type mismatch", path, ptype); bad += 1
    elif want == "Any":
        if ptype != "Any":
            print("type mismatch", path, ptype); bad += 1
    elif ptype != want:
        print("type mismatch", path, ptype, want); bad += 1
print("ok" if not bad else f"{bad} problems")
sys.exit(1 if bad else 0)
