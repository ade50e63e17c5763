# Stockade. `make run` and `make test` do all set-up on a fresh machine (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
CLUSTER := e2e/cluster.sh
BIN = $(shell $(CLUSTER) bindir)
STAMP := $(VENV)/.installed

help:
	@echo "make run     start the local cluster (unless KUBECONFIG is set), install the CRDs, run the operator"
	@echo "make test    unit tests, lint and typing, then the e2e suite against the local cluster"
	@echo "make bench   speed figures into bench/results/ (not part of make test; BENCH_ARGS=--help for the flags)"
	@echo "make crds    regenerate crds/ from the pydantic models"
	@echo "make docs    regenerate docs/reasons.md from operator/stockade/reasons.py"
	@echo "make image   the operator's OCI image, without a container engine: build/image/stockade:<version>"
	@echo "make cluster / cluster-down   start / stop the local kwok cluster"

$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null || command -v python3 >/dev/null
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian packages the tests use as real peers: dnsmasq (DNS for egress hosts), Prometheus, and for the
# wire tests' dataplane (e2e/dataplane.py) iptables, ipset, conntrack and socat (kube-router's tools, the relay).
deps: image-deps
	@missing=""; for p in dnsmasq prometheus iptables ipset conntrack socat; do \
	  command -v $$p >/dev/null || PATH=$$PATH:/usr/sbin:/sbin command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	  for s in dnsmasq prometheus; do $$SUDO systemctl disable --now $$s >/dev/null 2>&1 || true; done; \
	fi

# The operator's image (image/build.sh, checked by e2e/test_image.py): Debian's mmdebstrap makes the root,
# umoci packs it; no container engine, no base image pulled. Skipped when its inputs are unchanged.
image-deps:
	@missing=""; for p in mmdebstrap umoci; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	fi

image: $(STAMP) image-deps
	PYTHON=$(PY) image/build.sh build/image

cluster:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

crds: $(STAMP)
	$(PY) -m stockade.api.crd > crds/agentruns.stockade.io.yaml
	$(PY) -m stockade.api.crd agentpolicies > crds/agentpolicies.stockade.io.yaml

# docs/ pages rendered from a table in the code (tests/unit fails when one is stale).
docs: $(STAMP)
	$(PY) -m stockade.reasons > docs/reasons.md

run: $(STAMP)
	@if [ -z "$$KUBECONFIG" ]; then \
	  export KUBECONFIG=$$($(CLUSTER) up); KUBECTL=$(BIN)/kubectl; \
	  echo "using the local kwok cluster: export KUBECONFIG=$$KUBECONFIG"; \
	else KUBECTL=$$(command -v kubectl || echo $(BIN)/kubectl); echo "using KUBECONFIG=$$KUBECONFIG"; fi; \
	$$KUBECTL apply --server-side --field-manager=stockade-install -f crds/ && \
	$(CLUSTER) established $$KUBECTL crd/agentruns.stockade.io crd/agentpolicies.stockade.io && \
	echo "applying the chart's default AgentPolicy (closed by default: no policy, no AgentRun)" && \
	$(BIN)/helm template stockade charts/stockade --namespace stockade-system --kube-version 1.30.0 \
	  -s templates/agentpolicy.yaml | \
	  $$KUBECTL apply --server-side --field-manager=stockade-install -f - && \
	exec $(VENV)/bin/stockade run $(RUN_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests e2e bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The chart tests call helm from the build cache: build it first on a fresh machine.
unit: $(STAMP)
	@test -x $(BIN)/helm || $(CLUSTER) build
	@$(CLUSTER) tool fluxhealth >/dev/null  # Flux's health evaluator, for tests/unit/test_flux_health.py
	STOCKADE_BIN=$(BIN) $(VENV)/bin/pytest -q tests

e2e: $(STAMP) deps
	@$(CLUSTER) build  # the control plane and kube-router (e2e/test_wire.py), each only if missing
	@export KUBECONFIG=$$($(CLUSTER) up) STOCKADE_BIN=$(BIN); \
	$(VENV)/bin/pytest -q e2e $(PYTEST_ARGS)

test: unit lint e2e

# The cluster's API server keeps an audit log (bench/audit-policy.yaml) from which the bench counts each
# client's requests per run; a cluster already up without one is used as it is (no request counts).
# It writes bench/results/ (results.json, results.md, latency.png, scaling.png; see README.md, Performance).
bench: $(STAMP) deps
	@export KUBECONFIG=$$(STOCKADE_AUDIT_POLICY=bench/audit-policy.yaml $(CLUSTER) up) STOCKADE_BIN=$(BIN); \
	$(BIN)/kubectl apply --server-side --field-manager=stockade-install -f crds >/dev/null && \
	$(CLUSTER) established $(BIN)/kubectl crd/agentruns.stockade.io crd/agentpolicies.stockade.io && \
	$(PY) bench/run.py $(BENCH_ARGS)

.PHONY: help venv deps cluster cluster-down crds docs run lint unit e2e test bench

# The chart's RBAC rules (from operator/stockade/rbac.py), the CRD chart's AgentRun CRD and the plain
# manifests/ are all rendered from the code and the charts; tests/unit/test_chart.py fails on drift.
manifests: crds
	@test -x $(BIN)/helm || $(CLUSTER) build
	HELM=$(BIN)/helm $(PY) manifests/render.py

helm-lint:
	@test -x $(BIN)/helm || $(CLUSTER) build
	$(BIN)/helm lint --strict --kube-version 1.30.0 charts/stockade charts/stockade-crds

.PHONY: manifests helm-lint image image-deps
