"""The highest bundle version a board has accepted, kept in its state directory: no silent downgrade.

A valid signature says who made a bundle, not that it is current: an old
signed bundle with a known bug stays valid forever. So a service keeps, per
bundle name, the highest version it has run (``accepted-bundles.json`` in
its state directory, ``/var/lib/edge-infer`` under systemd's
``StateDirectory=``), and refuses an older one unless told to
(``--allow-downgrade``, config ``[trust].allow_downgrade``) -- TUF's rollback
rule. A downgrade that is allowed becomes the new floor, so the flag is
needed once, not on every restart.

The file is written whole or not at all (temporary file, fsync, rename). A
file that cannot be read is an error, not a reset: deleting it is the
operator's explicit way back to "accept any version once".
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import TrustError
from ..io.files import replace_atomically
from ..model.signing import BundleSignature

STATE_FILE = "accepted-bundles.json"
FORMAT_VERSION = 1


class AcceptedVersions:
    """The versions accepted so far, by bundle name, in ``state_dir``."""

    def __init__(self, state_dir: "str | Path"):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        if not self.state_dir.is_dir():
            raise TrustError(f"state directory {self.state_dir} does not exist; create it (systemd: "
                             "StateDirectory=edge-infer) or pass another --state-dir")

    def load(self) -> Dict[str, Dict[str, Any]]:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrustError(f"cannot read accepted versions {self.path}: {exc}; if it is damaged, delete it "
                             "(the next bundle of any version is then accepted)") from None
        bundles = document.get("bundles") if isinstance(document, dict) else None
        if not isinstance(bundles, dict) or not all(isinstance(v, dict) and isinstance(v.get("version"), int)
                                                    for v in bundles.values()):
            raise TrustError(f"accepted versions {self.path} is not an edge-infer state file; if it is damaged, "
                             "delete it (the next bundle of any version is then accepted)")
        return bundles

    def highest(self, name: str) -> Optional[int]:
        entry = self.load().get(name)
        return None if entry is None else int(entry["version"])

    def check(self, signature: BundleSignature, allow_downgrade: bool = False) -> None:
        """Refuse a bundle older than the highest version of its name accepted here."""
        highest = self.highest(signature.name)
        if highest is not None and signature.version < highest and not allow_downgrade:
            raise TrustError(f"bundle {signature.name!r} version {signature.version} is older than version "
                             f"{highest}, accepted before on this board ({self.path}); an old signed bundle is "
                             "refused unless you pass --allow-downgrade")

    def record(self, signature: BundleSignature) -> None:
        """Remember ``signature``'s version as this bundle's current one (after it was checked and loaded)."""
        bundles = self.load()
        bundles[signature.name] = {
            "version": signature.version, "spec_sha256": signature.spec_sha256,
            "model_sha256": signature.model_sha256, "key_id": signature.key_id,
            "accepted_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps({"format_version": FORMAT_VERSION, "bundles": bundles}, indent=1, sort_keys=True) + "\n"
        replace_atomically(self.path, text.encode("utf-8"), "accepted versions", 0o600)


def default_state_dir() -> Optional[str]:
    """systemd's ``$STATE_DIRECTORY`` (set by ``StateDirectory=``; the first if several), else None."""
    value = os.environ.get("STATE_DIRECTORY", "")
    return value.split(":")[0] or None
