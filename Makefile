# quotad — see README.md. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
export QUOTAD_ADMIN_KEY ?= dev-admin-key

.PHONY: help run stop test lint build fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/quotad
	$(GO) build -o bin/quotad ./cmd/quotad

run: build ## install what is missing, start Postgres and Redis under .data/, serve on 127.0.0.1:8080 (dev mode)
	@scripts/stack.sh install
	@scripts/stack.sh start
	@eval "$$(scripts/stack.sh env)"; \
	  bin/quotad migrate >/dev/null && \
	  echo "" && \
	  echo "quotad on http://localhost:8080   dev admin key: $$QUOTAD_ADMIN_KEY" && \
	  echo "console: http://localhost:8080/console (sign in with the dev admin key)" && \
	  echo "try:  curl -s localhost:8080/v1/check -H 'Authorization: Bearer $$QUOTAD_ADMIN_KEY' -H 'Content-Type: application/json' -d '{\"subject\":\"user:42\"}'" && \
	  echo "Ctrl-C stops quotad; make stop stops Postgres and Redis." && echo "" && \
	  QUOTAD_DEV=1 exec bin/quotad serve

stop: ## stop the Postgres and Redis that make run started
	@scripts/stack.sh stop

# The fuzz budgets are counts of runs (5-12 s each here), not durations:
# a -fuzztime duration can fail with "context deadline exceeded" and no
# crasher when its deadline races a starved worker (golang/go#75804).
test: ## install what is missing, then run every test with the race detector and short fuzzing
	@scripts/stack.sh install
	$(GO) test -race -count=1 ./...
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubject$$' -fuzztime 500000x ./quota
	$(GO) test -run '^$$' -fuzz '^FuzzParseDecimal$$' -fuzztime 250000x ./quota
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60000x ./api
	$(GO) test -run '^$$' -fuzz '^FuzzFastDecode$$' -fuzztime 60000x ./api
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime 60000x ./cache
	$(GO) test -run '^$$' -fuzz '^FuzzHTTP$$' -fuzztime 20000x ./cmd/quotad

lint: ## go vet, gofmt, staticcheck (pinned, fetched by go run), govulncheck when installed
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	@if command -v govulncheck >/dev/null; then govulncheck ./...; fi

clean: ## remove bin/ (make stop first to keep .data/ consistent)
	rm -rf bin

.PHONY: soak
SOAK_DURATION ?= 3m
SOAK_TIMEOUT ?= 30m
soak: ## the fault-injection soak: 3 quotads, a fault every few seconds, exact totals checked at the end (SOAK_DURATION, default 3m)
	@scripts/stack.sh install
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -count=1 -v -run '^TestSoak$$' -timeout $(SOAK_TIMEOUT) ./internal/soak

.PHONY: bench
bench: ## the benchmark suite: full vs postgres tiers, pinned; writes bench/results/<date>/
	@scripts/bench.sh
