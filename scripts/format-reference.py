#!/usr/bin/env python3
"""An independent reader of lazyblock's manifest format, written from docs/format.md alone.

It decodes a manifest (hex or raw bytes), checks the SHA-256 trailer, opens the key table with a
tenant key given in hex, and prints what it found as JSON. The Rust test
`format_matches_independent_python_reader` runs it on the pinned manifest, so docs/format.md and
the code cannot drift apart. Needs the `cryptography` package (installed with moto by
scripts/test-env.sh).
"""
import hashlib, json, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def decode(b: bytes, tenant_key: bytes):
    body, trailer = b[:-32], b[-32:]
    assert hashlib.sha256(body).digest() == trailer, "trailer mismatch"
    assert b[:4] == b"LZBM", "magic"
    version, flags = struct.unpack_from("<HH", b, 4)
    assert (version, flags) == (1, 0)
    p = 8
    def take(n):
        nonlocal p
        v = b[p:p + n]
        assert len(v) == n, "truncated"
        p += n
        return v
    tenant = take(take(1)[0]).decode()
    root = take(take(1)[0]).decode()
    image_size, = struct.unpack("<Q", take(8))
    chunk_size = 1 << take(1)[0]
    created, = struct.unpack("<Q", take(8))
    source = take(struct.unpack("<H", take(2))[0]).decode()
    n, d = struct.unpack("<II", take(8))
    assert n == -(-image_size // chunk_size)
    bitmap = take((n + 7) // 8)
    zero = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(n)]
    assert n - sum(zero) == d
    names = [take(32).hex() for _ in range(d)]
    config_len, = struct.unpack("<I", take(4))
    key_id = take(8)
    expect_id = hashlib.sha256(b"lazyblock/tenant-key-id/v1\0" + tenant_key).digest()[:8]
    assert key_id == expect_id, "key id"
    wrap_nonce = take(12)
    aad = b[:p]
    data_key = AESGCM(tenant_key).decrypt(wrap_nonce, take(48), aad)
    table_nonce = take(12)
    aad = b[:p]
    plain = AESGCM(data_key).decrypt(table_nonce, take(32 * d + config_len + 16), aad)
    assert p == len(body), "trailing bytes"
    keys = [plain[32 * i:32 * i + 32].hex() for i in range(d)]
    it = iter(zip(names, keys))
    chunks = [None if z else dict(zip(("name", "key"), next(it))) for z in zero]
    return {
        "manifest_id": trailer.hex(), "tenant": tenant, "root": root, "image_size": image_size,
        "chunk_size": chunk_size, "created": created, "source": source, "chunks": chunks,
        "image_config": plain[32 * d:].decode(),
    }


if __name__ == "__main__":
    data = open(sys.argv[1], "rb").read()
    if sys.argv[1].endswith(".hex"):
        data = bytes.fromhex(data.decode().strip())
    print(json.dumps(decode(data, bytes.fromhex(sys.argv[2])), indent=1))
