# p256.py - ECDSA P-256 / SHA-256 signature verification in pure
# MicroPython (the ESP32 port has no signature API): big-int arithmetic in
# Jacobian coordinates, u1*G + u2*Q in one pass (Shamir's trick), one
# modular inverse (s^-1 mod n, extended Euclid: no 3-argument pow needed)
# and no affine conversion (x(R) == r is checked as X == r*Z^2 mod p).
#
# Only the OTA update imports this module (lazily): nothing here runs at
# import but the curve constants. Verification needs only public data, so
# it need not be constant-time.

import binascii

# The curve (SEC 2 / FIPS 186-4 P-256): y^2 = x^3 - 3x + b over GF(P).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# DER SubjectPublicKeyInfo of a P-256 key up to the point: SEQUENCE,
# SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, 0 unused bits).
SPKI_PREFIX = b"0Y0\x13\x06\x07*\x86H\xce=\x02\x01\x06\x08*\x86H\xce=\x03\x01\x07\x03B\x00"


def public_key(pem):
    """The 65-byte uncompressed point of a PEM SubjectPublicKeyInfo
    (`openssl ec -pubout`); ValueError when it is not a P-256 public key."""
    if not isinstance(pem, str):
        pem = bytes(pem).decode()
    body = []
    inside = False
    for line in pem.split("\n"):
        line = line.strip()
        if line.startswith("-----BEGIN PUBLIC KEY"):
            inside = True
        elif line.startswith("-----END"):
            break
        elif inside and line:
            body.append(line)
    try:
        der = binascii.a2b_base64("".join(body).encode())
    except Exception:
        raise ValueError("release key is not valid PEM")
    if len(der) != 91 or der[:26] != SPKI_PREFIX or der[26] != 4:
        raise ValueError("release key is not a P-256 public key (PEM SubjectPublicKeyInfo)")
    point = der[26:]
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    if x >= P or y >= P or (y * y - x * x * x + 3 * x - B) % P:
        raise ValueError("release key is not a point on P-256")
    return point


def _inv(a, m):
    # a^-1 mod m by the extended Euclidean algorithm (m prime, 0 < a < m).
    lo, hi = 1, 0
    low, high = a % m, m
    while low > 1:
        q = high // low
        lo, hi = hi - lo * q, lo
        low, high = high - low * q, low
    return lo % m


def _double(x, y, z):
    # dbl-2001-b (a = -3). The point at infinity has z == 0.
    if not z or not y:
        return 0, 1, 0
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return x3, y3, z3


def _add(x1, y1, z1, x2, y2, z2):
    # add-2007-bl; falls back to doubling for equal points.
    if not z1:
        return x2, y2, z2
    if not z2:
        return x1, y1, z1
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - u1) % P
    r = 2 * (s2 - s1) % P
    if not h:
        if not r:
            return _double(x1, y1, z1)
        return 0, 1, 0
    i = 4 * h * h % P
    j = h * i % P
    v = u1 * i % P
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * s1 * j) % P
    z3 = ((z1 + z2) * (z1 + z2) - z1z1 - z2z2) * h % P
    return x3, y3, z3


def verify(point, digest, sig):
    """True if `sig` (64 bytes r || s) is a valid ECDSA P-256 signature of
    the SHA-256 `digest` (32 bytes) by the public key `point` (65 bytes,
    from public_key())."""
    if len(sig) != 64 or len(digest) != 32 or len(point) != 65:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = _inv(s, N)
    x, z = _mul2(int.from_bytes(digest, "big") * w % N, r * w % N, point)
    if not z:
        return False
    # x(R) mod N == r, without leaving Jacobian coordinates: x(R) = X/Z^2
    # lies in [0, P), so it is r or (when r + N < P) r + N.
    zz = z * z % P
    if (r * zz - x) % P == 0:
        return True
    return r + N < P and ((r + N) * zz - x) % P == 0


def _mul2(u1, u2, point):
    # u1*G + u2*Q (Jacobian X and Z): one double-and-add pass over both
    # scalars with G, Q and G + Q as the addends (Shamir's trick).
    qx = int.from_bytes(point[1:33], "big")
    qy = int.from_bytes(point[33:], "big")
    gq = _add(GX, GY, 1, qx, qy, 1)
    x, y, z = 0, 1, 0
    i = 255
    while i >= 0:
        x, y, z = _double(x, y, z)
        k = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if k == 1:
            x, y, z = _add(x, y, z, GX, GY, 1)
        elif k == 2:
            x, y, z = _add(x, y, z, qx, qy, 1)
        elif k == 3:
            x, y, z = _add(x, y, z, gq[0], gq[1], gq[2])
        i -= 1
    return x, z
