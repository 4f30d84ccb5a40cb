#!/usr/bin/env python3
"""An independent sbdm-box-v1 implementation (SPEC Appendix A) on libsodium, through PyNaCl.

Used by tests/client_cli.rs to prove that dmrelay's boxes interoperate with libsodium's:

  sbdm_box.py check VECTORS_JSON
      libsodium reproduces the `payload` vectors (so this script is right before it judges).
  sbdm_box.py seal SENDER_SEED_HEX RECIPIENT_PUBLIC_HEX SENT_AT TEXT
      prints base64(nonce || crypto_box_easy(padded plaintext)), with a random nonce.
  sbdm_box.py open RECIPIENT_SEED_HEX SENDER_PUBLIC_HEX CIPHERTEXT_BASE64
      prints the plaintext JSON object; exits 1 if the box does not open or is malformed.

Needs PyNaCl: python3 -m pip install pynacl
"""

import base64
import json
import sys

from nacl import bindings as sodium
from nacl.exceptions import CryptoError
import nacl.utils

PAD_BLOCK = 256


def x25519_keys(seed_hex):
    """(x25519 public, x25519 secret) of an Ed25519 seed, as libsodium derives them."""
    ed_public, ed_secret = sodium.crypto_sign_seed_keypair(bytes.fromhex(seed_hex))
    return (
        sodium.crypto_sign_ed25519_pk_to_curve25519(ed_public),
        sodium.crypto_sign_ed25519_sk_to_curve25519(ed_secret),
    )


def x25519_public(public_hex):
    return sodium.crypto_sign_ed25519_pk_to_curve25519(bytes.fromhex(public_hex))


def plaintext(text, sent_at):
    body = json.dumps({"v": 1, "text": text, "sent_at": sent_at},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = body + b"\x80"
    return padded + b"\x00" * (-len(padded) % PAD_BLOCK)


def unpad(padded):
    if not padded or len(padded) % PAD_BLOCK:
        raise ValueError("padded length is not a multiple of 256")
    body = padded.rstrip(b"\x00")
    if not body.endswith(b"\x80"):
        raise ValueError("no 0x80 before the zeros")
    return body[:-1]


def seal(sender_seed_hex, recipient_public_hex, sent_at, text, nonce=None):
    _, sender_secret = x25519_keys(sender_seed_hex)
    nonce = nonce if nonce is not None else nacl.utils.random(sodium.crypto_box_NONCEBYTES)
    boxed = sodium.crypto_box(plaintext(text, sent_at), nonce,
                              x25519_public(recipient_public_hex), sender_secret)
    return nonce + boxed


def open_box(recipient_seed_hex, sender_public_hex, data):
    _, recipient_secret = x25519_keys(recipient_seed_hex)
    nonce, boxed = data[:sodium.crypto_box_NONCEBYTES], data[sodium.crypto_box_NONCEBYTES:]
    padded = sodium.crypto_box_open(boxed, nonce, x25519_public(sender_public_hex),
                                    recipient_secret)
    message = json.loads(unpad(padded).decode("utf-8"))
    if message.get("v") != 1 or not isinstance(message.get("text"), str) \
            or not isinstance(message.get("sent_at"), int):
        raise ValueError("not a v1 plaintext object")
    return message


def check(path):
    with open(path, encoding="utf-8") as f:
        v = json.load(f)
    p, keys = v["payload"], v["keys"]
    for who in ("alice", "bob"):
        public, secret = x25519_keys(keys[who]["seed"])
        assert public.hex() == p[f"{who}_x25519_public_hex"], who
        assert secret.hex() == p[f"{who}_x25519_secret_hex"], who
    message = json.loads(p["plaintext_json"])
    assert plaintext(message["text"], message["sent_at"]).hex() == p["padded_plaintext_hex"]
    sealed = seal(keys["alice"]["seed"], keys["bob"]["public"], message["sent_at"],
                  message["text"], bytes.fromhex(p["nonce_hex"]))
    assert sealed.hex() == p["ciphertext_bytes_hex"]
    assert base64.b64encode(sealed).decode() == p["envelope"]["ciphertext"]
    assert open_box(keys["bob"]["seed"], keys["alice"]["public"], sealed) == message
    try:
        open_box(keys["bob"]["seed"], p["must_not_open"]["wrong_sender_public"], sealed)
    except CryptoError:
        pass
    else:
        raise AssertionError("opened with the wrong sender key")
    print("vectors ok")


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "check" and len(argv) == 3:
        check(argv[2])
    elif command == "seal" and len(argv) == 6:
        sealed = seal(argv[2], argv[3], int(argv[4]), argv[5])
        print(base64.b64encode(sealed).decode())
    elif command == "open" and len(argv) == 5:
        try:
            message = open_box(argv[2], argv[3], base64.b64decode(argv[4], validate=True))
        except (CryptoError, ValueError) as e:
            print(f"undecryptable: {e}", file=sys.stderr)
            return 1
        print(json.dumps(message, ensure_ascii=False))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
