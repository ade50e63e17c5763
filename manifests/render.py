"""Render everything derived from the chart and the code: ``make manifests`` runs this.

* charts/stockade/templates/_rbac.tpl      the ClusterRole rules, from operator/stockade/rbac.py
* charts/stockade/files/admission-policies.json   the ValidatingAdmissionPolicies and bindings, from
                                           operator/stockade/admission/vap.py (what the operator applies
                                           itself when it runs without the chart), with placeholders that
                                           templates/admission-policy.yaml fills in
* charts/stockade-crds/templates/<crd>.yaml   crds/agentruns.stockade.io.yaml and
                                           crds/agentpolicies.stockade.io.yaml, kept on uninstall
* manifests/crds/, manifests/operator/     `helm template` of both charts (manifests/values.yaml), one file
                                           per chart template, each folder a kustomization

``--check`` writes nothing and exits 1 with a diff when a file differs (tests/unit/test_chart.py runs it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from stockade.admission import vap
from stockade.rbac import helm_rules

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "stockade-system"
RELEASE = "stockade"
# The chart needs >= 1.30 (ValidatingAdmissionPolicy v1); render for the oldest version it supports.
KUBE_VERSION = "1.30.0"
HEADER = "# Rendered from charts/{chart} by `make manifests` (manifests/render.py). Do not edit by hand.\n"

NAMESPACE_YAML = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/name: stockade
    app.kubernetes.io/part-of: stockade
    # The operator's own pod meets the "restricted" Pod Security Standard.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
"""


def helm_binary() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    bindir = subprocess.run([str(ROOT / "e2e" / "cluster.sh"), "bindir"], capture_output=True, text=True,
                            check=True).stdout.strip()
    candidate = Path(bindir) / "helm"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("helm")
    if found is None:
        sys.exit(f"helm not found in {bindir} or on PATH: run e2e/cluster.sh build")
    return found


CRD_FILES = ("agentruns.stockade.io.yaml", "agentpolicies.stockade.io.yaml")


def crd_chart(filename: str) -> str:
    """A CRD for the CRD chart: the generated file plus Helm's labels and the keep policy."""
    crd = yaml.safe_load((ROOT / "crds" / filename).read_text())
    meta = crd["metadata"]
    meta["labels"] = {**meta.get("labels", {}), "app.kubernetes.io/part-of": "stockade"}
    # Deleting the CRD deletes every AgentRun, and so every fence: never as a side effect of uninstall.
    meta["annotations"] = {**meta.get("annotations", {}), "helm.sh/resource-policy": "keep"}
    header = f"# Generated from crds/{filename} by `make manifests`. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


# Placeholders in files/admission-policies.json; templates/admission-policy.yaml replaces them. Each is
# text no CEL expression or name contains, and the values put in their place hold no JSON quote.
OPERATOR_USER = "__STOCKADE_OPERATOR_USER__"
OPERATOR_NAMESPACE = "__STOCKADE_RELEASE_NAMESPACE__"
EXEMPT_GROUP = "__STOCKADE_EXEMPT_GROUP__"
FULLNAME = "__STOCKADE_FULLNAME__"


def admission_policies() -> str:
    """vap.manifests() for the chart: names prefixed by the release's full name instead of "stockade"."""
    # The placeholder stands for the chart's ServiceAccount: it is the identity held to run namespaces.
    objects = vap.manifests([OPERATOR_USER], [OPERATOR_NAMESPACE], [EXEMPT_GROUP], confined=[OPERATOR_USER],
                            prefix=FULLNAME)
    return json.dumps({"_comment": "Generated from operator/stockade/admission/vap.py by `make manifests`. "
                       "Do not edit by hand.", "objects": objects}, indent=1) + "\n"


def helm_template(helm: str, chart: str, values: Path | None) -> str:
    args = [helm, "template", RELEASE, str(ROOT / "charts" / chart), "--namespace", NAMESPACE,
            "--kube-version", KUBE_VERSION]
    if values is not None:
        args += ["--values", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"helm template {chart} failed:\n{result.stderr}")
    return result.stdout


def split_by_source(rendered: str) -> dict[str, list[str]]:
    """helm template output, grouped by the chart template each document came from (in helm's order)."""
    files: dict[str, list[str]] = {}
    for doc in re.split(r"^---\n", rendered, flags=re.MULTILINE):
        match = re.match(r"# Source: [^/]+/templates/(.+)\n", doc)
        if match is None:
            continue
        files.setdefault(Path(match.group(1)).name, []).append(doc[match.end():].rstrip("\n") + "\n")
    return files


def kustomization(resources: list[str]) -> str:
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources:"]
    return "\n".join(lines + [f"  - {name}" for name in resources]) + "\n"


def outputs(helm: str) -> dict[Path, str]:
    out: dict[Path, str] = {
        ROOT / "charts/stockade/templates/_rbac.tpl": helm_rules(),
        **{ROOT / "charts/stockade-crds/templates" / name: crd_chart(name) for name in CRD_FILES},
        ROOT / "charts/stockade/files/admission-policies.json": admission_policies(),
    }
    # The charts must be current before they are rendered: write those first (not in --check).
    for folder, chart, values in (("crds", "stockade-crds", None),
                                  ("operator", "stockade", ROOT / "manifests" / "values.yaml")):
        files = split_by_source(helm_template(helm, chart, values))
        if folder == "operator":
            files = {"namespace.yaml": [NAMESPACE_YAML], **files}
        for name, docs in files.items():
            out[ROOT / "manifests" / folder / name] = HEADER.format(chart=chart) + "---\n".join(docs)
        out[ROOT / "manifests" / folder / "kustomization.yaml"] = kustomization(list(files))
    # kubectl applies both at once but a new CRD takes a moment: apply crds/ first (see README.md).
    out[ROOT / "manifests" / "kustomization.yaml"] = kustomization(["crds", "operator"])
    return out


def stale(produced: dict[Path, str]) -> list[Path]:
    """Rendered files left over from an older chart (a template renamed or removed)."""
    found = [p for folder in ("crds", "operator") for p in (ROOT / "manifests" / folder).glob("*.yaml")]
    return sorted(p for p in found if p not in produced)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    check = parser.parse_args().check
    helm = helm_binary()
    if not check:
        for path, text in list(outputs(helm).items())[:2 + len(CRD_FILES)]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    produced = outputs(helm)
    problems = []
    for path, text in produced.items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if check:
            diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                        f"{path.relative_to(ROOT)} (committed)", "(rendered now)")
            problems.append("".join(list(diff)[:60]))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale(produced):
        if check:
            problems.append(f"{path.relative_to(ROOT)} is no longer rendered from the chart\n")
        else:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")
    if problems:
        sys.stdout.write("".join(problems))
        print("manifests drifted from the chart or the code: run `make manifests` and commit the result")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
