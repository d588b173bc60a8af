# pgcc: see README.md. Every target runs against a real PostgreSQL (PGCC_TEST_DATABASE_URL, else a
# testcontainers PostgreSQL when Docker answers, else postgres@127.0.0.1:5432).

GO      ?= go
# Every module of the repository (go.work ties them together): the library, its migrations, the public test
# kit, the OpenTelemetry adapter and the command, each a module of its own so that importers pay only for what
# they import.
PKGS    ?= ./... ./migrations/... ./pgcctest/... ./cmd/pgcc/... ./otel/...
# One identifier for all test binaries of this run, so that its databases can be swept afterwards.
RUN     := $(shell od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
TIMEOUT ?= 9m

.PHONY: all test lint fmt bench bench-report demo sweep deps fuzz faults

all: lint test

## test: every test, with the race detector, each against its own fresh database.
test:
	@status=0; PGCC_TEST_RUN=$(RUN) $(GO) test -race -count=1 -timeout $(TIMEOUT) $(PKGS) || status=$$?; \
	$(GO) run ./internal/pgtest/sweep -run $(RUN) || true; exit $$status

## lint: gofmt, go vet and staticcheck must all be clean.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	staticcheck $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## fuzz: the SQL builder's fuzz target, briefly (FUZZTIME=10s); its corpus is committed under repo/testdata/fuzz.
FUZZTIME ?= 10s
fuzz:
	@status=0; PGCC_TEST_RUN=$(RUN) $(GO) test -run '^$$' -fuzz '^FuzzBuild$$' -fuzztime $(FUZZTIME) ./repo/ || status=$$?; \
	$(GO) run ./internal/pgtest/sweep -run $(RUN) || true; exit $$status

## faults: the fault suite's long form (integration_test/faults): every strategy under backend kills, network
## faults and a crash-restart, FAULTS_OPS transfers per cell (by fault: 100,000 per strategy; the network cells,
## a fault every 0.2-0.6 s, run at a tenth of the others' pace; a plain N gives every cell N), at most
## FAULTS_DURATION per cell, FAULTS_WORKERS workers on FAULTS_CONNS connections, FAULTS_ACCOUNTS accounts;
## prints the figures docs/reliability.md quotes. Without the race detector (FAULTS_RACE=-race adds it, at
## about a fifth of the throughput): `make test` runs the bounded form with it.
FAULTS_OPS      ?= kills=60000,network=10000,crash=30000
FAULTS_DURATION ?= 30m
FAULTS_WORKERS  ?= 32
FAULTS_CONNS    ?= 8
FAULTS_ACCOUNTS ?= 100
FAULTS_RACE     ?=
# FAULTS_TESTS picks cells by go test -run pattern, e.g. 'TestBackendKills/(lease|pessimistic)$$'.
FAULTS_TESTS    ?= .
faults:
	@status=0; PGCC_TEST_RUN=$(RUN) PGCC_FAULTS_LONG=1 PGCC_FAULTS_DURATION=$(FAULTS_DURATION) \
	PGCC_FAULTS_OPS=$(FAULTS_OPS) PGCC_FAULTS_ACCOUNTS=$(FAULTS_ACCOUNTS) \
	PGCC_FAULTS_WORKERS=$(FAULTS_WORKERS) PGCC_FAULTS_CONNS=$(FAULTS_CONNS) \
	$(GO) test $(FAULTS_RACE) -count=1 -v -timeout 4h -run '$(FAULTS_TESTS)' ./integration_test/faults/ || status=$$?; \
	$(GO) run ./internal/pgtest/sweep -run $(RUN) || true; exit $$status

## deps: what importing pgcc costs a service (modules and go.sum lines), against the floor; fails past the limits.
deps:
	bash .ci/consumer-graph

## bench: the go test benchmarks, pgcc against hand-written pgx on the same statements.
bench:
	@status=0; PGCC_TEST_RUN=$(RUN) $(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 30m $(PKGS) || status=$$?; \
	$(GO) run ./internal/pgtest/sweep -run $(RUN) || true; exit $$status

## demo: the main job: the same concurrent workload naively (lost updates, counted) and with each pgcc
## strategy (none), in under a minute, against DATABASE_URL, else 127.0.0.1:5432, else testcontainers.
demo:
	$(GO) run ./cmd/pgcc demo

## bench-report: regenerate the numbers and plots of docs/README.md (about 20 minutes).
BENCH_FLAGS ?= -workers 1,8,32,64 -rows 1000 -duration 3s -quiet
bench-report:
	mkdir -p docs/bench/think-0 docs/bench/think-2ms
	$(GO) run ./cmd/pgcc bench $(BENCH_FLAGS) -think 0 -json docs/bench/think-0/report.json -plots docs/bench/think-0 > docs/bench/think-0/report.txt && cat docs/bench/think-0/report.txt
	$(GO) run ./cmd/pgcc bench $(BENCH_FLAGS) -think 2ms -json docs/bench/think-2ms/report.json -plots docs/bench/think-2ms > docs/bench/think-2ms/report.txt && cat docs/bench/think-2ms/report.txt

## sweep: drop test databases left by runs that were killed.
sweep:
	$(GO) run ./internal/pgtest/sweep
