"""Seeded random inputs for an importer: mutated valid files, mutated JSON trees, random bytes.

`fuzz` asserts the one thing a parser owes any input: it returns entries or raises
ImportFileError, nothing else (no KeyError, no RecursionError, no stack trace for the user).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from totp_service.imports.entries import ImportedEntry
from totp_service.imports.errors import ImportFileError

ODD_VALUES: tuple[object, ...] = (
    None, True, False, 0, -1, 2**31, 2**70, 1.5, 1e308, -0.0, "", " ", "x" * 300, "ÿ\u0000\u202e", "0",
    "SHA1", "totp", "hotp", "steam", "=====", "AAAAAAAA", [], {}, [1, 2], {"a": None}, [[[[]]]],
)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(buf) + 1)
        if op == 0:
            del buf[at:]
        elif op == 1 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 4:
            buf[at:at] = buf[at : at + rng.randint(1, 32)]
        else:
            buf[at:at] = rng.choice([b"{", b"[", b"]", b"}", b'"', b",", b":", b"\\", b"\n", b"\xff", b"NaN"])
    return bytes(buf)


def mutate_json(data: bytes, rng: random.Random) -> bytes | None:
    try:
        tree = json.loads(data)
    except ValueError:
        return None
    nodes: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                nodes.append((node, key))
                walk(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                nodes.append((node, index))
                walk(value)

    walk(tree)
    for _ in range(rng.randint(1, 3)):
        if not nodes:
            return json.dumps(rng.choice(ODD_VALUES)).encode()
        parent, key = rng.choice(nodes)
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(key, None)
        else:
            parent[key] = rng.choice(ODD_VALUES)  # type: ignore[index]
    return json.dumps(tree).encode()


def inputs(seeds: list[bytes], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = [b"", b"{}", b"[]", b"null", b"[" * 100_000, b'{"a":' * 50_000, b"\xef\xbb\xbf"]
    while len(out) < count:
        base = rng.choice(seeds)
        roll = rng.random()
        if roll < 0.45:
            out.append(mutate_bytes(base, rng))
        elif roll < 0.9:
            out.append(mutate_json(base, rng) or mutate_bytes(base, rng))
        else:
            out.append(rng.randbytes(rng.randint(0, 200)))
    return out


def fuzz(read: Callable[..., list[ImportedEntry]], seeds: list[bytes], *, count: int = 2000, seed: int = 13,
         password: str | None = None) -> dict[str, int]:
    """Run `read` over `count` inputs; returns how many parsed and how many were refused."""
    outcome = {"parsed": 0, "refused": 0}
    for index, data in enumerate(inputs(seeds, count, seed)):
        try:
            entries = read(data, password)
        except ImportFileError:
            outcome["refused"] += 1
            continue
        except Exception as exc:  # pragma: no cover - this is the failure being looked for
            raise AssertionError(f"input {index} (seed {seed}) raised {type(exc).__name__}: {exc!r}; "
                                 f"input starts {data[:80]!r}") from exc
        assert isinstance(entries, list) and all(isinstance(e, ImportedEntry) for e in entries)
        outcome["parsed"] += 1
    return outcome
