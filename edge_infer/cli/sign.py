"""``edge-infer sign SPEC --key PREFIX.key``: sign a model bundle (the spec and its model) for the boards.

Writes ``SPEC.sig`` beside the spec. A board started with ``--trusted-key
PREFIX.pub`` then runs the bundle, and refuses it if the spec or the model
changes afterwards. ``--version`` is the bundle's release number: a service
refuses a version older than one it has accepted (docs/security.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.signing import VERSION, TrustedKey, key_id_of, load_private_key, sign_bundle, verify_bundle
from ..settings.argtypes import of


def add_parser(sub: "argparse._SubParsersAction") -> None:
    parser = sub.add_parser("sign", help="sign a model bundle (spec + model) with a private key",
                            description="Sign a model spec and the model it names with an Ed25519 private key "
                                        "(from 'edge-infer keygen'); writes SPEC.sig beside the spec.")
    parser.add_argument("spec", help="the model spec (.toml); its model file is signed with it")
    parser.add_argument("--key", required=True, metavar="PREFIX.key", help="the private key")
    parser.add_argument("--version", type=of(VERSION), default=1, metavar="N",
                        help="the bundle's release number, a whole number (default 1); raise it with every "
                             "release: a service refuses a version older than one it accepted")
    parser.add_argument("--replace", action="store_true", help="replace an existing SPEC.sig")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    out = sign_bundle(args.spec, args.key, args.version, replace=args.replace)
    public = load_private_key(args.key).public_key()
    signer = TrustedKey(key_id=key_id_of(public), path=Path(args.key), key=public)
    bundle = verify_bundle(args.spec, [signer])  # read back what was written, as a board will
    print(f"signed {bundle.signature.name!r} version {bundle.signature.version} with key "
          f"{bundle.signature.key_id}: {out}")
    return 0
