"""Print the installed Debian packages that nothing in the image needs: everything outside the dependency
closure (Depends, Pre-Depends) of the Essential packages and the packages named on the command line.

    python3 prune.py python3 ca-certificates   -> names to purge, one a line

Computed from the dpkg status file the same way in both builds (image/build.sh's mmdebstrap root, which
picks up usrmerge and perl, and operator/Dockerfile's debian:bookworm-slim, which has apt), so both end
with the same package set. Standard library only: the image's own python3 runs it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def installed(status: str) -> dict[str, dict[str, str]]:
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, flags=re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields
    return found


def alternatives(field: str) -> list[list[str]]:
    """'a (>= 1) | b, c:any' -> [['a', 'b'], ['c']]"""
    return [[re.split(r"[\s(:]", alt.strip())[0] for alt in dep.split("|")] for dep in field.split(",") if dep.strip()]


def needed(packages: dict[str, dict[str, str]], roots: list[str]) -> set[str]:
    provides: dict[str, list[str]] = {}
    for name, fields in packages.items():
        for group in alternatives(fields.get("Provides", "")):
            provides.setdefault(group[0], []).append(name)
    keep: set[str] = set()
    todo = [name for name, fields in packages.items() if fields.get("Essential") == "yes"] + roots
    while todo:
        name = todo.pop()
        if name in keep or name not in packages:
            continue
        keep.add(name)
        fields = packages[name]
        for group in alternatives(fields.get("Pre-Depends", "")) + alternatives(fields.get("Depends", "")):
            candidates = [p for alt in group for p in ([alt] if alt in packages else provides.get(alt, []))]
            todo.extend(candidates[:1])  # the first alternative that is installed satisfies it
    return keep


def main() -> None:
    packages = installed(Path("/var/lib/dpkg/status").read_text())
    print("\n".join(sorted(set(packages) - needed(packages, sys.argv[1:]))))


if __name__ == "__main__":
    main()
