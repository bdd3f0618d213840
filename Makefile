# transparent-cache: the two commands of the quick start are `make up` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown
# Crates that build for wasm32 (the engine and the plugin); the rest are host-only.
WASM_CRATES := $(foreach c,filter-core filter-wasm,$(if $(wildcard $(c)/Cargo.toml),-p $(c)))

.PHONY: help test lint fmt fmt-check clippy wasm-target envoy clean up wasm images

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

wasm: wasm-target ## Build the proxy-wasm plugin (size-tuned) and print its path, size and sha256.
	@scripts/build-wasm.sh

up: wasm-target ## Run it all on this machine: backend :4318, demo upstream :8080, Envoy + plugin :15001 (UPSTREAM=host:port to use another upstream; UP_SHAPE=native for the dynamic module, UP_SHAPE=sidecar for the ext_proc sidecar, instead of the wasm plugin).
	$(CARGO) build --locked -q -p backend -p testbed $(if $(filter sidecar,$(UP_SHAPE)),-p filter-sidecar) --bins
	@scripts/ensure-envoy.sh >/dev/null
ifeq ($(UP_SHAPE),sidecar)
	@UP_SHAPE=sidecar exec $(CARGO) run --locked -q -p testbed --bin up
else ifeq ($(UP_SHAPE),native)
	@UP_SHAPE=native exec $(CARGO) run --locked -q -p testbed --bin up
else
	@TRANSPARENT_CACHE_WASM="$$(scripts/build-wasm.sh --quiet --locked -q)" exec $(CARGO) run --locked -q -p testbed --bin up
endif

envoy: ## Install the pinned Envoy (.envoy-version) into the cache folder and print its path.
	@scripts/ensure-envoy.sh

.PHONY: publish
images: ## Container images of backend and filter-sidecar (static musl binaries, non-root, no shell) as OCI archives in dist/images/, then their entrypoints run (podman or docker, and musl-tools).
	scripts/build-images.sh
	python3 scripts/check-images.py

publish: wasm-target ## Reproducible plugin build, upload to Cloudflare R2 (R2_* variables, see docs/istio.md), manifests rendered into dist/istio/.
	@scripts/publish.sh all

# Where cargo builds. `make test` builds every artifact the end-to-end tests run (testbed and
# backend binaries, the sidecar, the dynamic module, the wasm plugin) once, here, and points the
# tests at them, so no test rebuilds a dependency tree of its own.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))

test: wasm-target ## Every test: unit, property, golden (engine), backend, and end-to-end through real Envoy.
	$(CARGO) build --locked --workspace
	@scripts/ensure-envoy.sh >/dev/null
	wasm="$$(scripts/build-wasm.sh --quiet --locked)"; \
	TESTBED_BIN_DIR=$(TARGET_DIR)/debug \
	BACKEND_BIN=$(TARGET_DIR)/debug/backend \
	FILTER_SIDECAR_BIN=$(TARGET_DIR)/debug/filter-sidecar \
	TRANSPARENT_CACHE_NATIVE_DIR=$(TARGET_DIR)/debug \
	TRANSPARENT_CACHE_WASM="$$wasm" \
	$(CARGO) test --locked --workspace
	$(MAKE) --no-print-directory bench-smoke

# Benches (bench/README.md): the full runs write the tables and the plot into bench/README.md;
# bench-smoke runs each for seconds with tiny counts and writes nothing (part of `make test`).
.PHONY: bench bench-engine bench-envoy bench-load bench-smoke bench-soak
bench: bench-engine bench-envoy bench-load ## All three benches, full length (tens of minutes).

bench-engine: wasm-target ## Criterion: one request's engine work natively, as wasm under wasmtime, and the copy+base64 floor.
	$(CARGO) bench --locked -p bench --bench engine

bench-envoy: wasm-target ## Criterion: sequential latency through real Envoy per host versus no filter; draws the plot.
	@scripts/ensure-envoy.sh >/dev/null
	$(CARGO) bench --locked -p bench --bench envoy

bench-load: wasm-target ## Load through real Envoy per host versus no filter: req/s, p50/p99, CPU, RSS; records into the real backend (BENCH_LOAD_ARGS=--help).
	@scripts/ensure-envoy.sh >/dev/null
	$(CARGO) build --locked --release -p backend
	$(CARGO) build --locked --profile bench -p bench --bin load
	@# Envoy on CPU 0, the driver, upstream, backend and sidecar on the others (when there are).
	if command -v taskset >/dev/null && [ "$$(nproc)" -ge 2 ]; then \
	  pin="taskset -c 1-$$(($$(nproc) - 1))"; export TESTBED_ENVOY_CPUS=0; fi; \
	BACKEND_BIN=$(TARGET_DIR)/release/backend $$pin $(TARGET_DIR)/release/load $(BENCH_LOAD_ARGS)

bench-soak: wasm-target ## A million requests through the wasm plugin with the real backend (release), mixed sizes up to 1 MiB, Envoy and backend RSS sampled (tens of minutes; BENCH_SOAK_ARGS=--help). Not part of `make test`.
	@scripts/ensure-envoy.sh >/dev/null
	$(CARGO) build --locked --release -p backend
	wasm="$$(scripts/build-wasm.sh --quiet --locked)"; \
	BACKEND_BIN=$(TARGET_DIR)/release/backend TRANSPARENT_CACHE_WASM="$$wasm" \
	$(CARGO) run --locked --profile bench -p bench --bin soak -- $(BENCH_SOAK_ARGS)

bench-smoke: wasm-target ## Every bench for seconds with tiny counts, debug build, nothing written.
	$(CARGO) build --locked --workspace
	$(CARGO) build --locked --target $(WASM_TARGET) --profile wasm-release -p bench-guest
	@scripts/ensure-envoy.sh >/dev/null
	wasm="$$(scripts/build-wasm.sh --quiet --locked)"; \
	export BENCH_SMOKE=1 \
	BENCH_GUEST_WASM=$(TARGET_DIR)/$(WASM_TARGET)/wasm-release/bench_guest.wasm \
	FILTER_SIDECAR_BIN=$(TARGET_DIR)/debug/filter-sidecar \
	TRANSPARENT_CACHE_NATIVE_DIR=$(TARGET_DIR)/debug \
	TRANSPARENT_CACHE_WASM="$$wasm"; \
	$(CARGO) bench --locked --profile dev -p bench --bench engine --bench envoy; \
	export BACKEND_BIN=$(TARGET_DIR)/debug/backend; \
	$(CARGO) run --locked --profile dev -p bench --bin load; \
	$(CARGO) run --locked --profile dev -p bench --bin soak

# Fuzzing (fuzz/README.md): every target for FUZZ_SECONDS each, on its committed corpus; a crash is
# written to fuzz/artifacts/<target>/ and stops the run. Not part of `make test`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := answer otlp_json config ingest engine import
.PHONY: fuzz
fuzz: ## Fuzz every parser of outside input and the engine for FUZZ_SECONDS each (installs cargo-fuzz on first use).
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO) fuzz run --sanitizer none $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

fmt: ## Format the code.
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

# wasm32 lints the targets that ship (the libraries): their tests use proptest, whose getrandom has
# no entropy source on wasm32-unknown-unknown and so does not build there; they run on the host.
clippy: wasm-target ## Lint, warnings as errors, for the host (all targets) and for wasm32.
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) $(WASM_CRATES) -- -D warnings

lint: fmt-check clippy ## fmt --check and clippy.

clean: ## Remove build output (the backend's data and the Envoy cache are kept).
	$(CARGO) clean
