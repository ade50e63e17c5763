"""Write the image's SBOM (SPDX 2.3 JSON): every Debian package in the dpkg status file and every Python
distribution the interpreter running this script sees (the operator's venv). Standard library only: it
runs with the image's own interpreter, inside the image's root, before the dpkg tools are removed.

    python sbom.py OUT.json NAME VERSION SOURCE_URL
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import quote

STATUS = Path("/var/lib/dpkg/status")


def debian_packages() -> list[dict[str, str]]:
    """Installed packages from the dpkg status file (RFC 822 stanzas)."""
    found = []
    for stanza in STATUS.read_text().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, flags=re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            found.append(fields)
    return sorted(found, key=lambda f: f["Package"])


def spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def main() -> None:
    out, name, version, source = sys.argv[1:5]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = datetime.datetime.now(datetime.UTC)
    created = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else now
    packages = []
    for deb in debian_packages():
        arch = deb.get("Architecture", "all")
        packages.append({
            "SPDXID": spdx_id("deb", deb["Package"]), "name": deb["Package"], "versionInfo": deb["Version"],
            "supplier": "Organization: Debian", "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": f"pkg:deb/debian/{deb['Package']}@{quote(deb['Version'])}"
                                                  f"?arch={arch}&distro=debian-12"}],
        })
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        pname = dist.metadata["Name"]
        declared = (dist.metadata.get_all("License-Expression") or ["NOASSERTION"])[0]
        packages.append({
            "SPDXID": spdx_id("pypi", pname), "name": pname, "versionInfo": dist.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared, "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": f"pkg:pypi/{pname.lower()}@{dist.version}"}],
        })
    document = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}-{version}", "documentNamespace": f"{source}/sbom/{name}-{version}-{created:%Y%m%dT%H%M%SZ}",
        "creationInfo": {"created": f"{created:%Y-%m-%dT%H:%M:%SZ}", "creators": ["Tool: stockade-image/sbom.py"]},
        "documentDescribes": [spdx_id("pypi", name)],
        "packages": packages,
    }
    Path(out).write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
