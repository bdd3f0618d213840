#!/usr/bin/env bash
# Builds the container images of `backend` and `filter-sidecar` (`make images`): static musl
# binaries on an empty base with CA certificates and a non-root user (65532), built with podman
# (or docker) without a daemon, and saved as OCI archives that `microk8s ctr image import` takes:
#
#   dist/images/transparent-cache-backend-<version>.oci.tar
#   dist/images/transparent-cache-sidecar-<version>.oci.tar
#
# Reproducible: file times in the images are 0 (`--timestamp 0`), the binaries are built with
# source paths remapped, so the same commit and toolchain give the same image digests.
#
# Environment: IMAGE_REGISTRY (default `localhost:32000`, MicroK8s' registry add-on: the names the
# istio/ manifests use), CONTAINER_TOOL (podman or docker; default: podman when installed),
# CARGO_TARGET_DIR.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
target=x86_64-unknown-linux-musl
registry="${IMAGE_REGISTRY:-localhost:32000}"
target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
out_dir="${repo_root}/dist/images"
work="${target_dir}/images"
started=$(date +%s)

tool="${CONTAINER_TOOL:-}"
if [[ -z "${tool}" ]]; then
  if command -v podman >/dev/null 2>&1; then tool=podman
  elif command -v docker >/dev/null 2>&1; then tool=docker
  else
    echo "build-images: neither podman nor docker is installed (Debian: apt-get install podman)" >&2
    exit 1
  fi
fi
tool_args=()
if [[ "${tool}" == podman ]]; then
  # Our own storage under the target dir, no daemon, no kernel overlay needed.
  tool_args=(--storage-driver vfs --root "${work}/storage" --runroot "${work}/run")
fi

if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "build-images: musl-gcc is missing, needed for the static build's C parts (Debian: apt-get install musl-tools)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "${target}"; then
  echo "build-images: adding the ${target} target" >&2
  rustup target add "${target}" >&2
fi
certs=/etc/ssl/certs/ca-certificates.crt
if [[ ! -f "${certs}" ]]; then
  echo "build-images: ${certs} is missing (Debian: apt-get install ca-certificates)" >&2
  exit 1
fi

echo "build-images: static binaries (${target}, release)" >&2
CC_x86_64_unknown_linux_musl=musl-gcc \
RUSTFLAGS="--remap-path-prefix=${repo_root}=/src --remap-path-prefix=${CARGO_HOME:-${HOME}/.cargo}=/cargo" \
  "${CARGO:-cargo}" build --locked --release --target "${target}" -p backend -p filter-sidecar >&2

version="$("${target_dir}/${target}/release/backend" --version | awk '{print $2}')"
mkdir -p "${out_dir}"

# name_annotation <archive> <ref>: adds `io.containerd.image.name` to the archive's index.json.
name_annotation() {
  local archive="$1" ref="$2" dir
  dir="$(mktemp -d)"
  tar -xf "${archive}" -C "${dir}"
  python3 - "${dir}/index.json" "${ref}" <<'PY'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = ref
json.dump(index, open(path, "w"), separators=(",", ":"))
PY
  (cd "${dir}" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "${archive}" oci-layout index.json blobs)
  rm -rf "${dir}"
}

# build_image <binary> <image name>
build_image() {
  local bin="$1" name="$2"
  local ctx="${work}/${name}"
  rm -rf "${ctx}"
  mkdir -p "${ctx}/rootfs/usr/local/bin" "${ctx}/rootfs/etc/ssl/certs" "${ctx}/rootfs/tmp" \
    "${ctx}/data"
  cp "${target_dir}/${target}/release/${bin}" "${ctx}/rootfs/usr/local/bin/${bin}"
  strip "${ctx}/rootfs/usr/local/bin/${bin}"
  cp "${certs}" "${ctx}/rootfs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' \
    > "${ctx}/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "${ctx}/rootfs/etc/group"
  chmod 1777 "${ctx}/rootfs/tmp"
  chmod 0755 "${ctx}/data"
  cp "images/${bin}/Containerfile" "${ctx}/Containerfile"
  local ref="${registry}/${name}:${version}"
  echo "build-images: ${ref}" >&2
  "${tool}" "${tool_args[@]}" build --quiet --timestamp 0 --tag "${ref}" "${ctx}" >&2
  local archive="${out_dir}/${name}-${version}.oci.tar"
  rm -f "${archive}"
  "${tool}" "${tool_args[@]}" save --quiet --format oci-archive --output "${archive}" "${ref}" >&2
  # containerd (`microk8s ctr image import`) names an OCI archive's image by this annotation;
  # without it the name would be the tag alone. index.json is the archive's entry point, not a
  # content-addressed blob, so the digests stay as they are.
  name_annotation "${archive}" "${ref}"
  local digest
  digest="$("${tool}" "${tool_args[@]}" image inspect --format '{{.Digest}}' "${ref}")"
  printf '%s\t%s\t%s\t%s\n' "${archive#"${repo_root}"/}" "$(du -k "${archive}" | cut -f1) KiB" \
    "${ref}" "${digest}"
}

build_image backend transparent-cache-backend
build_image filter-sidecar transparent-cache-sidecar
echo "build-images: done in $(( $(date +%s) - started )) s" >&2
