"""Fetch the management UI's third-party assets from the npm registry, pinned and checked.

A maintenance script, not used at run time: the files it writes under
node/management/ui/vendor/ are committed, so that the node (and CI) serve the UI with no network.
Run it after changing a pin below, and commit what it wrote:

    python tools/fetch_ui_assets.py            # fetch, check, write
    python tools/fetch_ui_assets.py --check    # only verify the committed files match the pins

Each package is fetched with `npm pack NAME@VERSION` (the registry's own tarball), its sha512 is
compared with the pinned `integrity` (npm's SRI form, as package-lock.json records it), and only
the listed files are copied out, with the package's licence beside them. VENDOR.json records what
came from where.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "node" / "management" / "ui" / "vendor"

# name, version, integrity (sha512 of the tarball), files to copy (paths inside the package)
PINS: list[dict[str, object]] = [
    {
        "name": "uplot",
        "version": "1.6.32",
        "integrity": "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        "files": ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"],
        "licence": "MIT",
    },
]


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(pin: dict[str, object], workdir: Path) -> bytes:
    spec = f"{pin['name']}@{pin['version']}"
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    filename = json.loads(out.stdout)[0]["filename"]
    data = (workdir / filename).read_bytes()
    got = _integrity(data)
    if got != pin["integrity"]:
        raise SystemExit(f"{spec}: integrity {got} is not the pinned {pin['integrity']}")
    return data


def extract(pin: dict[str, object], tarball: Path) -> dict[str, bytes]:
    wanted = {f"package/{f}": str(f) for f in pin["files"]}  # type: ignore[attr-defined]
    found: dict[str, bytes] = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                found[wanted[member.name]] = f.read()
    missing = set(wanted.values()) - set(found)
    if missing:
        raise SystemExit(f"{pin['name']}: not in the package: {sorted(missing)}")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="verify the committed files only")
    args = p.parse_args()
    record = []
    with tempfile.TemporaryDirectory() as tmp:
        for pin in PINS:
            data = fetch(pin, Path(tmp))
            tarball = Path(tmp) / f"{pin['name']}.tgz"
            tarball.write_bytes(data)
            files = extract(pin, tarball)
            dest = VENDOR / str(pin["name"])
            for rel, content in files.items():
                target = dest / Path(rel).name
                if args.check:
                    if not target.exists() or target.read_bytes() != content:
                        print(f"{target} differs from {pin['name']}@{pin['version']}")
                        return 1
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
            record.append(
                {
                    "name": pin["name"],
                    "version": pin["version"],
                    "integrity": pin["integrity"],
                    "licence": pin["licence"],
                    "files": {Path(r).name: r for r in files},
                }
            )
    if not args.check:
        (VENDOR / "VENDOR.json").write_text(json.dumps(record, indent=2) + "\n")
    print("ok:", ", ".join(f"{r['name']}@{r['version']}" for r in record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
