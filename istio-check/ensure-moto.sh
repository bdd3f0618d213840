#!/usr/bin/env bash
# Installs the pinned moto S3 server (a real S3-compatible HTTP server, for the publish test only)
# into a venv in the cache folder and prints the path of its Python; run the server with
# `<python> -m moto.server -H 127.0.0.1 -p <port>`. Temp dir + rename, so concurrent runs are safe.
set -euo pipefail

version="5.2.5"
if [[ -n "${TRANSPARENT_CACHE_HOME:-}" ]]; then
  cache="${TRANSPARENT_CACHE_HOME}"
else
  cache="${XDG_CACHE_HOME:-${HOME}/.cache}/transparent-cache"
fi
mkdir -p "${cache}"
cache="$(cd "${cache}" && pwd)"
dir="${cache}/moto-${version}"
if [[ ! -x "${dir}/bin/python" ]] || ! "${dir}/bin/python" -c 'import moto.server' 2>/dev/null; then
  tmp="$(mktemp -d "${cache}/.moto-${version}.tmp.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT
  echo "ensure-moto: installing moto[server]==${version} into ${dir}" >&2
  python3 -m venv "${tmp}/venv" >&2
  PIP_ROOT_USER_ACTION=ignore "${tmp}/venv/bin/python" -m pip install --quiet \
    --disable-pip-version-check "moto[server]==${version}" >&2
  if ! mv -T "${tmp}/venv" "${dir}" 2>/dev/null; then
    [[ -x "${dir}/bin/python" ]] || { echo "ensure-moto: could not install into ${dir}" >&2; exit 1; }
  fi
fi
echo "${dir}/bin/python"
