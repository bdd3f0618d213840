#!/usr/bin/env bash
# Builds the proxy-wasm plugin (crate filter-wasm) for wasm32-unknown-unknown with the size-tuned
# `wasm-release` profile, then prints the artifact's path, size and sha256.
#
# Usage: scripts/build-wasm.sh [--quiet] [extra cargo args...]
#   CARGO_TARGET_DIR is honoured (default: <repo>/target). With --quiet only the path is printed on
#   stdout (for scripts and tests); cargo's output goes to stderr either way.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=wasm32-unknown-unknown
profile=wasm-release
quiet=0
if [[ "${1:-}" == "--quiet" ]]; then
  quiet=1
  shift
fi

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed 2>/dev/null | grep -qx "${target}"; then
    echo "build-wasm: adding the ${target} target" >&2
    rustup target add "${target}" >&2
  fi
fi

cargo_bin="${CARGO:-cargo}"
"${cargo_bin}" build --manifest-path "${repo_root}/Cargo.toml" -p filter-wasm \
  --target "${target}" --profile "${profile}" "$@" >&2

target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
artifact="${target_dir}/${target}/${profile}/filter_wasm.wasm"
if [[ ! -f "${artifact}" ]]; then
  echo "build-wasm: cargo succeeded but ${artifact} is missing" >&2
  exit 1
fi
artifact="$(cd "$(dirname "${artifact}")" && pwd)/$(basename "${artifact}")"

if [[ "${quiet}" == 1 ]]; then
  echo "${artifact}"
else
  size=$(stat -c %s "${artifact}")
  sha=$(sha256sum "${artifact}" | cut -d' ' -f1)
  echo "artifact: ${artifact}"
  echo "size:     ${size} bytes"
  echo "sha256:   ${sha}"
fi
