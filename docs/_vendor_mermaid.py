"""
Refresh the Mermaid that ships with the docs: ``python docs/_vendor_mermaid.py [VERSION]``.

The state diagram must draw without a network connection, so the site
carries Mermaid itself (``docs/assets/vendor/mermaid``: ``mermaid.min.js``
and its MIT ``LICENSE``) instead of Material's run-time CDN fetch. The file
is pinned: :data:`VERSION` and :data:`SHA256` below say which one it is,
and tests/system/test_docs_site.py checks the file against them.

To move to another version: run this with the version (it fetches the
package with ``npm pack``, which checks the registry's integrity hash),
then put the version and the printed SHA-256 here, rebuild the docs and
run the docs-site tests (they open the diagram in Chromium).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: Mermaid 11, the major version Material for MkDocs 9 is written for.
VERSION = "11.17.2"
#: SHA-256 of ``dist/mermaid.min.js`` in that version's npm package.
SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"
TARGET = Path(__file__).parent / "assets" / "vendor" / "mermaid"
FILES = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(version: str = VERSION) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(
            ["npm", "pack", f"mermaid@{version}", "--json", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=True,
        )
        (info,) = json.loads(packed.stdout)
        with tarfile.open(Path(tmp) / info["filename"]) as archive:
            for member, name in FILES.items():
                source = archive.extractfile(member)
                assert source is not None, member
                (TARGET / name).write_bytes(source.read())
    digest = sha256(TARGET / "mermaid.min.js")
    found = info["version"]
    sys.stdout.write(f"mermaid {found}: VERSION = {found!r}, SHA256 = {digest!r}\n")
    if (found, digest) != (VERSION, SHA256):
        sys.stderr.write("update VERSION and SHA256 in docs/_vendor_mermaid.py\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
