"""``edge-infer keygen PREFIX``: an Ed25519 key pair for signing model bundles (docs/security.md).

The private key (``PREFIX.key``, mode 0600) stays on the release machine; the
public key (``PREFIX.pub``) goes to every board, named by ``--trusted-key``
or ``[trust].keys``. Neither file is ever overwritten.
"""

from __future__ import annotations

import argparse

from ..model.signing import generate_keypair


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("keygen", help="make a key pair for signing model bundles",
                            description="Write PREFIX.key (the private key, mode 0600: keep it off the boards) "
                                        "and PREFIX.pub (the public key the boards trust). Refuses to overwrite.")
    parser.add_argument("prefix", help="path and name of the key files, without suffix (e.g. keys/release)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    key_path, pub_path, key_id = generate_keypair(args.prefix)
    print(f"wrote {key_path} (private, keep it secret) and {pub_path} (public, give it to the boards); "
          f"key id {key_id}")
    return 0
