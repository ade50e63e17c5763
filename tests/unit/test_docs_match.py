"""The docs say what the code does (issue 11, "docs match the code"): the Falcosidekick address in
docs/detection.md is the chart's signal Service, the chart README's peering note names settings that exist,
the cached helm renders the chart without --kube-version, and the README's install order names the flag the
e2e install uses."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from .helm_support import ROOT, helm
from .test_chart import CHART, env, one, render


def test_the_falcosidekick_address_in_the_docs_is_the_charts_signal_service() -> None:
    docs = render()
    service = one(docs, "Service", "stockade-signal")
    port = service["spec"]["ports"][0]["port"]
    scheme = "https" if env(docs).get("STOCKADE_SIGNAL_CERT_DIR") else "http"
    address = f"{scheme}://stockade-signal.stockade-system.svc:{port}/falco"
    detection = (ROOT / "docs/detection.md").read_text()
    assert f"address: {address}" in detection, address
    assert f"`{scheme}://<release fullname>-signal.<namespace>.svc:{port}`" in detection


def test_the_charts_peering_note_names_settings_that_exist() -> None:
    note = (ROOT / "charts/stockade/README.md").read_text()
    assert "STOCKADE_PEERING_PRIORITY" in note and "`--priority`" in note
    usage = subprocess.run([sys.executable, "-m", "stockade.cli", "run", "--help"], capture_output=True, text=True,
                           check=True, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    assert "--priority" in usage and "STOCKADE_PEERING_PRIORITY" in usage


def test_the_cached_helm_renders_the_chart_without_a_kube_version() -> None:
    done = subprocess.run([helm(), "template", "stockade", str(CHART), "--namespace", "stockade-system"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert any(doc and doc.get("kind") == "Deployment" for doc in yaml.safe_load_all(done.stdout))
    pinned = re.search(r"HELM_VERSION=\$\{HELM_VERSION:-(v[0-9.]+)\}", (ROOT / "e2e/cluster.sh").read_text())
    assert pinned is not None
    version = subprocess.run([helm(), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(pinned.group(1)), version


def test_the_readme_install_order_names_take_ownership_as_the_e2e_install_uses_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "add `--take-ownership` to both commands the first time" in readme
    assert '"--take-ownership"' in (ROOT / "e2e/conftest.py").read_text()
