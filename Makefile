# enclave.llm — the two commands a newcomer needs are `make lab` and `make test`.
# Everything else is a narrower slice of those for daily work.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

# Molecule scenarios, in dependency order; `make molecule ROLE=pki` runs one.
# A scenario that is not green yet carries molecule/<name>/WIP (one line: why); `make test`
# leaves it out and says so, `make molecule ROLE=<name>` still runs it.
WIP_SCENARIOS := $(sort $(patsubst molecule/%/WIP,%,$(wildcard molecule/*/WIP)))
SCENARIOS ?= $(filter-out $(WIP_SCENARIOS),$(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
ROLE      ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the pinned controller and test tools

# ---------------------------------------------------------------- the lab --
.PHONY: lab-prereqs lab-image lab-assets lab-up lab-down lab-status lab
lab-prereqs: ## install podman, runc, debootstrap from Debian's packages (root)
	bash lab/lab.sh prereqs

lab-image: lab-prereqs ## build the Debian 12 base image once (reused afterwards)
	bash lab/lab.sh image

lab-up: lab-image $(STAMP) ## start the lab's containers from inventories/lab
	bash lab/lab.sh hostfiles >/dev/null
	$(BIN)/ansible-playbook lab/up.yml -i inventories/lab

lab-down: $(STAMP) ## remove the lab's containers and networks
	$(BIN)/ansible-playbook lab/down.yml -i inventories/lab

lab-status: ## show the lab's containers
	podman ps --filter label=enclave.llm.lab=lab --format '{{.Names}}\t{{.Status}}\t{{.Networks}}'

lab-assets: $(STAMP) ## build (once) the wheelhouse, tiny model and oauth2-proxy stand-in the lab mounts
	bash lab/lab.sh assets

lab: lab-assets lab-up ## bring up the lab and run site.yml against it; prints the URL, a curl line and the audit log's place
	$(BIN)/ansible-playbook lab/prepare.yml -i inventories/lab
	@start=$$(date +%s); $(BIN)/ansible-playbook site.yml -i inventories/lab; \
	  echo "site.yml on the lab: $$(( $$(date +%s) - start )) s"
	$(BIN)/ansible-playbook lab/summary.yml -i inventories/lab

# The whole platform on the lab, after `make lab`: the front door, its refusals and
# their audit records, the access logs on the log host, a second site.yml
# (changed=0), rolling updates, a restart without drain and a killed engine under
# load through the front door (molecule/shared/loadgen.py on the controller).
# Reuses the Molecule verifiers' helpers, pointed at inventories/lab; prints the
# figures. ENCLAVE_LAB_SLOW=1 adds the failed-smoke and rollback tests.
.PHONY: lab-test
lab-test: $(STAMP) ## after `make lab`: front door, refusals + audit, access logs, second site.yml changed=0, rolling update and failover under front-door load
	MOLECULE_EPHEMERAL_DIRECTORY=$(CURDIR)/tests/output/lab MOLECULE_INVENTORY_FILE=$(CURDIR)/inventories/lab \
	  MOLECULE_SCENARIO_DIRECTORY=$(CURDIR) MOLECULE_PROJECT_DIRECTORY=$(CURDIR) \
	  $(BIN)/pytest -s -v -p no:cacheprovider tests/lab

# The stack stage of `make test`: the lab from nothing (fresh containers and PKI),
# site.yml, then every lab test through the front door. The lab is removed when
# it passes and kept for inspection when it fails (make lab-down removes it).
STACK_OUT := tests/output/stack
.PHONY: stack-test
stack-test: lab-assets lab-image $(STAMP) ## the composed platform from nothing: make lab on fresh hosts, then make lab-test
	mkdir -p $(STACK_OUT)
	@start=$$(date +%s); \
	  $(MAKE) --no-print-directory lab-down >/dev/null; rm -rf .pki/lab; \
	  $(MAKE) --no-print-directory lab; lab_s=$$(( $$(date +%s) - start )); \
	  $(MAKE) --no-print-directory lab-test; \
	  echo "stack-test: make lab $$lab_s s, make lab-test $$(( $$(date +%s) - start - lab_s )) s"
	$(MAKE) --no-print-directory lab-down >/dev/null

# ------------------------------------------------------------------ tests --
.PHONY: test lint yamllint ansible-lint sanity unit molecule docs-check promtool ee-context
test: lint docs-check sanity unit common-venv-test promtool molecule ## everything CI runs: lint, sanity, unit, promtool, every Molecule scenario

lint: yamllint ansible-lint ## yamllint and ansible-lint (production profile)

yamllint: $(STAMP)
	$(BIN)/yamllint --strict .

ansible-lint: $(STAMP)
	$(BIN)/ansible-lint --profile production --strict

docs-check: $(STAMP) ## role READMEs' variable tables match meta/argument_specs.yml
	$(PY) tools/role_docs.py --check

sanity: $(STAMP) ## ansible-test sanity on the plugins
	bash tools/sanity.sh

unit: $(STAMP) ## pytest unit tests
	$(BIN)/pytest -q tests/unit

PROMTOOL_OUT := tests/output/promtool
promtool: $(STAMP) ## alert rules: promtool check rules and every promtool unit test (promtool from Debian's package)
	bash tools/prometheus_tools.sh
	$(BIN)/ansible-playbook tests/promtool/render.yml
	$(PY) tools/promtool_tests.py $(PROMTOOL_OUT)/enclave.rules.yml tests/promtool $(PROMTOOL_OUT) >/dev/null
	.cache/prometheus-tools/promtool check rules $(PROMTOOL_OUT)/enclave.rules.yml
	cd $(PROMTOOL_OUT) && $(CURDIR)/.cache/prometheus-tools/promtool test rules *.test.yml

EE_CONTEXT := tests/output/ee-context
ee-context: $(STAMP) ## AWX execution environment: collection tarball and ansible-builder build context
	rm -f dist/enclave-llm-*.tar.gz
	$(BIN)/ansible-galaxy collection build --force --output-path dist .
	$(BIN)/ansible-builder create -f execution-environment.yml -c $(EE_CONTEXT)

molecule: $(STAMP) lab-image ## every Molecule scenario (or ROLE=<name> for one; MOLECULE_JOBS=n in parallel)
	bash lab/lab.sh hostfiles >/dev/null
	@$(if $(ROLE),true,for s in $(WIP_SCENARIOS); do echo "=== $$s: NOT RUN, work in progress: $$(cat molecule/$$s/WIP)"; done)
	bash tools/molecule_all.sh $(if $(ROLE),$(ROLE),$(SCENARIOS))

.PHONY: changelog
changelog: $(STAMP) ## lint the changelog fragments
	$(BIN)/antsibull-changelog lint

# ------------------------------------------------------------ bench-edge --
BENCH_EDGE_OUT := tests/output/bench-edge
BENCH_SECONDS ?= 5
.PHONY: bench-edge
bench-edge: $(STAMP) lab-image ## benchmark: latency nginx + HAProxy add over direct, and the highest 100%-success rate
	rm -rf $(BENCH_EDGE_OUT) && mkdir -p $(BENCH_EDGE_OUT)
	$(PY) tools/bench_edge.py render $(CURDIR)/$(BENCH_EDGE_OUT)
	bash lab/lab.sh hostfiles >/dev/null
	podman run --rm --network host \
	  -v /var/lib/enclave-llm-lab/host-ca-bundle.crt:/etc/ssl/lab/host-ca-bundle.crt:ro \
	  -v $(CURDIR):$(CURDIR) -w $(CURDIR) localhost/enclave-llm-lab/debian12:latest \
	  bash -c 'apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx haproxy openssl >/dev/null && python3 tools/bench_edge.py run $(CURDIR)/$(BENCH_EDGE_OUT) --seconds $(BENCH_SECONDS)'

.PHONY: common-venv-test
common-venv-test: $(STAMP) ## common venv entry point: offline wheelhouse install, idempotence, refusals (controller only)
	$(BIN)/ansible-playbook tests/common_venv/venv.yml

# ------------------------------------------------------ the audit gateway --
.PHONY: gateway-test gateway-wheel bench-gateway
gateway-test: $(STAMP) ## the audit gateway's unit and integration tests (part of make unit too)
	$(BIN)/pytest -q tests/unit/gateway

gateway-wheel: $(STAMP) ## build the gateway wheel into dist/ (reproducible; the gateway role builds the same way)
	rm -rf .cache/gateway-src && mkdir -p .cache dist && cp -r gateway .cache/gateway-src
	SOURCE_DATE_EPOCH=315532800 $(BIN)/pip wheel --no-deps --no-build-isolation -q -w dist .cache/gateway-src

bench-gateway: $(STAMP) ## gateway's added latency p50/p99 at 1/16/64 streams and highest 100%-success rate, DLP off/on
	mkdir -p tests/output
	$(PY) tools/bench_gateway.py --json tests/output/bench-gateway.json
