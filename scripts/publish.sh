#!/usr/bin/env bash
# Publishes the proxy-wasm plugin for Istio: a reproducible release build, an upload to Cloudflare
# R2 (S3 API), and the istio/ manifests rendered with the public URL and sha256 into dist/istio/.
#
# Usage: scripts/publish.sh [all|build|upload|render]     (default: all = build, upload, render)
#
# build   reproducible `wasm-release` build (scripts/build-wasm.sh with locked dependencies,
#         --remap-path-prefix for every machine path, SOURCE_DATE_EPOCH from the last commit, no
#         incremental state, its own target dir) -> $DIST_DIR/filter_wasm.wasm (+ .sha256).
#         Two builds of the same commit give the same sha256.
# upload  puts it at <prefix>/filter-wasm/<version>/<sha256>/filter_wasm.wasm (a new URL for every
#         build: Istio caches modules by URL) with the AWS CLI, installed on first use into a venv in
#         the cache folder; then downloads the public URL and checks its sha256.
# render  copies istio/ to $DIST_DIR/istio/ with __WASM_URL__, __WASM_SHA256__, __WASM_HOST__ (and
#         __SOFTPROBE_API_KEY__ when SOFTPROBE_API_KEY is set) filled in.
#
# Environment (upload):
#   R2_ACCOUNT_ID, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET   the bucket and an R2 API token
#   R2_PUBLIC_BASE_URL   public https base of the bucket (r2.dev subdomain or custom domain)
#   R2_ENDPOINT_URL      S3 endpoint override (default https://$R2_ACCOUNT_ID.r2.cloudflarestorage.com)
#   R2_KEY_PREFIX        key prefix (default transparent-cache)
#   PUBLISH_VERSION      version in the key (default: the workspace version)
#   PUBLISH_ALLOW_HTTP=1 accept an http:// public URL (local tests only)
#   PUBLISH_SKIP_PUBLIC_CHECK=1  don't download the public URL after the upload
# Other: DIST_DIR (default <repo>/dist), PUBLISH_TARGET_DIR (default $CARGO_TARGET_DIR/publish),
#   TRANSPARENT_CACHE_HOME (the cache folder, as for scripts/ensure-envoy.sh).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dist="${DIST_DIR:-${repo_root}/dist}"
awscli_version="1.46.2"

if [[ -n "${TRANSPARENT_CACHE_HOME:-}" ]]; then
  cache="${TRANSPARENT_CACHE_HOME}"
else
  cache="${XDG_CACHE_HOME:-${HOME}/.cache}/transparent-cache"
fi

log() { echo "publish: $*" >&2; }
die() { log "$*"; exit 1; }
need() { [[ -n "${!1:-}" ]] || die "environment variable $1 is not set"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "${repo_root}/Cargo.toml" | head -n1
}

build() {
  mkdir -p "${dist}"
  local target_dir="${PUBLISH_TARGET_DIR:-${CARGO_TARGET_DIR:-${repo_root}/target}/publish}"
  mkdir -p "${target_dir}"
  target_dir="$(cd "${target_dir}" && pwd)"
  local epoch="${SOURCE_DATE_EPOCH:-}"
  if [[ -z "${epoch}" ]]; then
    epoch="$(git -C "${repo_root}" log -1 --format=%ct 2>/dev/null || echo 0)"
  fi
  local cargo_home="${CARGO_HOME:-${HOME}/.cargo}"
  local rustup_home="${RUSTUP_HOME:-${HOME}/.rustup}"
  # Every machine-specific path the compiler could embed is mapped to a fixed one; the longest
  # prefixes come first because rustc applies the last matching mapping.
  local flags=(
    "--remap-path-prefix=${rustup_home}=/rustup"
    "--remap-path-prefix=${cargo_home}=/cargo"
    "--remap-path-prefix=${repo_root}=/transparent-cache"
    "--remap-path-prefix=${target_dir}=/target"
    "-Cdebuginfo=0"
  )
  local encoded
  encoded="$(printf '%s\x1f' "${flags[@]}")"
  encoded="${encoded%$'\x1f'}"
  log "reproducible build (SOURCE_DATE_EPOCH=${epoch}, target dir ${target_dir})"
  local artifact
  artifact="$(env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS \
    CARGO_TARGET_DIR="${target_dir}" \
    CARGO_ENCODED_RUSTFLAGS="${encoded}" \
    CARGO_INCREMENTAL=0 \
    SOURCE_DATE_EPOCH="${epoch}" \
    TZ=UTC LC_ALL=C \
    "${repo_root}/scripts/build-wasm.sh" --quiet --locked)"
  cp "${artifact}" "${dist}/filter_wasm.wasm"
  local sha
  sha="$(sha256_of "${dist}/filter_wasm.wasm")"
  echo "${sha}  filter_wasm.wasm" > "${dist}/filter_wasm.wasm.sha256"
  log "built ${dist}/filter_wasm.wasm sha256 ${sha}"
}

# Installs the pinned AWS CLI into a venv in the cache folder (temp dir + rename, so concurrent
# runs are safe) and prints the path of `aws`.
ensure_awscli() {
  local dir="${cache}/awscli-${awscli_version}"
  if [[ ! -x "${dir}/bin/aws" ]]; then
    mkdir -p "${cache}"
    local tmp
    tmp="$(mktemp -d "${cache}/.awscli-${awscli_version}.tmp.XXXXXX")"
    log "installing awscli==${awscli_version} into ${dir}"
    # The venv must live at its final path (its scripts name their interpreter), so it is built
    # under the temp name and moved only when complete; a venv is relocatable enough for `aws`
    # because we call it through its python below.
    python3 -m venv "${tmp}/venv" >&2
    PIP_ROOT_USER_ACTION=ignore "${tmp}/venv/bin/python" -m pip install --quiet \
      --disable-pip-version-check "awscli==${awscli_version}" >&2
    if ! mv -T "${tmp}/venv" "${dir}" 2>/dev/null; then
      [[ -x "${dir}/bin/aws" ]] || die "could not move the awscli install into ${dir}"
    fi
    rm -rf "${tmp}"
  fi
  echo "${dir}"
}

upload() {
  local wasm="${dist}/filter_wasm.wasm"
  [[ -f "${wasm}" ]] || die "${wasm} is missing: run 'scripts/publish.sh build' first"
  need R2_ACCESS_KEY_ID
  need R2_SECRET_ACCESS_KEY
  need R2_BUCKET
  need R2_PUBLIC_BASE_URL
  local endpoint="${R2_ENDPOINT_URL:-}"
  if [[ -z "${endpoint}" ]]; then
    need R2_ACCOUNT_ID
    endpoint="https://${R2_ACCOUNT_ID}.r2.cloudflarestorage.com"
  fi
  local base="${R2_PUBLIC_BASE_URL%/}"
  if [[ "${base}" != https://* && "${PUBLISH_ALLOW_HTTP:-0}" != 1 ]]; then
    die "R2_PUBLIC_BASE_URL must be https:// (Istio and Envoy fetch the module from it)"
  fi
  local version="${PUBLISH_VERSION:-$(workspace_version)}"
  [[ -n "${version}" ]] || die "no version (set PUBLISH_VERSION)"
  local sha
  sha="$(sha256_of "${wasm}")"
  local key="${R2_KEY_PREFIX:-transparent-cache}/filter-wasm/${version}/${sha}/filter_wasm.wasm"
  local url="${base}/${key}"

  local venv
  venv="$(ensure_awscli)"
  local conf
  conf="$(mktemp)"
  trap 'rm -f "${conf}"' RETURN
  # R2: region `auto`, path-style addressing; checksums only where the API requires them, plus the
  # explicit SHA-256 below, which R2 and S3 verify on receipt.
  printf '[default]\nregion = auto\ns3 =\n    addressing_style = path\n' > "${conf}"
  local checksum
  checksum="$("${venv}/bin/python" -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha256(open(sys.argv[1],"rb").read()).digest()).decode())' "${wasm}")"
  log "uploading to ${endpoint} bucket ${R2_BUCKET} key ${key}"
  AWS_CONFIG_FILE="${conf}" AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    AWS_ACCESS_KEY_ID="${R2_ACCESS_KEY_ID}" AWS_SECRET_ACCESS_KEY="${R2_SECRET_ACCESS_KEY}" \
    AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required \
    "${venv}/bin/python" "${venv}/bin/aws" s3api put-object \
      --endpoint-url "${endpoint}" --bucket "${R2_BUCKET}" --key "${key}" --body "${wasm}" \
      --content-type application/wasm \
      --cache-control "public, max-age=31536000, immutable" \
      --metadata "sha256=${sha}" \
      --checksum-sha256 "${checksum}" >/dev/null

  if [[ "${PUBLISH_SKIP_PUBLIC_CHECK:-0}" != 1 ]]; then
    local got
    got="$("${venv}/bin/python" - "${url}" <<'PY'
import hashlib, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r:
    print(hashlib.sha256(r.read()).hexdigest())
PY
)"
    [[ "${got}" == "${sha}" ]] || die "the public URL ${url} serves sha256 ${got}, expected ${sha}"
    log "public URL serves the same bytes"
  fi
  {
    echo "WASM_VERSION=${version}"
    echo "WASM_KEY=${key}"
    echo "WASM_URL=${url}"
    echo "WASM_SHA256=${sha}"
  } > "${dist}/release.env"
  log "published ${url}"
}

render() {
  local release="${dist}/release.env"
  [[ -f "${release}" ]] || die "${release} is missing: run 'scripts/publish.sh upload' first"
  local WASM_URL="" WASM_SHA256=""
  WASM_URL="$(sed -n 's/^WASM_URL=//p' "${release}")"
  WASM_SHA256="$(sed -n 's/^WASM_SHA256=//p' "${release}")"
  [[ "${WASM_SHA256}" =~ ^[0-9a-f]{64}$ ]] || die "bad WASM_SHA256 in ${release}"
  local host="${WASM_URL#*://}"
  host="${host%%/*}"
  host="${host%%:*}"
  local out="${dist}/istio"
  rm -rf "${out}"
  cp -R "${repo_root}/istio" "${out}"
  local api_key="${SOFTPROBE_API_KEY:-__SOFTPROBE_API_KEY__}"
  [[ -n "${SOFTPROBE_API_KEY:-}" ]] || log "SOFTPROBE_API_KEY is not set: __SOFTPROBE_API_KEY__ stays in the hosted-backend manifests"
  # The local backend's ingest key: BACKEND_INGEST_KEY when set, else the runbook's sed fills it.
  local ingest_key="${BACKEND_INGEST_KEY:-__BACKEND_INGEST_KEY__}"
  local f
  while IFS= read -r -d '' f; do
    WASM_URL="${WASM_URL}" WASM_SHA256="${WASM_SHA256}" WASM_HOST="${host}" API_KEY="${api_key}" \
      INGEST_KEY="${ingest_key}" \
      python3 - "${f}" <<'PY'
import os, sys
p = sys.argv[1]
s = open(p, encoding="utf-8").read()
for k, v in (("__WASM_URL__", os.environ["WASM_URL"]), ("__WASM_SHA256__", os.environ["WASM_SHA256"]),
             ("__WASM_HOST__", os.environ["WASM_HOST"]), ("__SOFTPROBE_API_KEY__", os.environ["API_KEY"]),
             ("__BACKEND_INGEST_KEY__", os.environ["INGEST_KEY"])):
    s = s.replace(k, v)
open(p, "w", encoding="utf-8").write(s)
PY
  done < <(find "${out}" -type f -name '*.yaml' -print0)
  if grep -rq '__WASM_' "${out}"; then
    die "placeholders left in ${out}"
  fi
  log "rendered ${out} (url ${WASM_URL}, sha256 ${WASM_SHA256})"
}

case "${1:-all}" in
  build) build ;;
  upload) upload ;;
  render) render ;;
  all) build; upload; render ;;
  *) die "usage: $0 [all|build|upload|render]" ;;
esac
