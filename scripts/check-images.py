#!/usr/bin/env python3
"""Checks the images `scripts/build-images.sh` saved (`make images` runs it after the build).

For each OCI archive in dist/images/: the image config (non-root user 65532, the entrypoint), the
layers (the binary, CA certificates, no shell), then the entrypoint itself: `--version` for both,
and the backend's default command serving `/healthz`. It runs them in a container when the machine
allows it (podman or docker), else from the image's root filesystem unpacked here (under chroot as
that user when run as root), which is what a container would execute.
"""
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "dist", "images")
USER = "65532:65532"


def fail(msg):
    print(f"check-images: {msg}", file=sys.stderr)
    sys.exit(1)


def blob(archive, digest):
    algo, hexd = digest.split(":", 1)
    member = archive.extractfile(f"blobs/{algo}/{hexd}")
    if member is None:
        fail(f"{archive.name}: blob {digest} missing")
    return member.read()


def unpack(path, rootfs):
    """The image's config, with its layers extracted into `rootfs` in order."""
    with tarfile.open(path) as archive:
        index = json.loads(archive.extractfile("index.json").read())
        manifest = json.loads(blob(archive, index["manifests"][0]["digest"]))
        config = json.loads(blob(archive, manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            data = blob(archive, layer["digest"])
            if layer["mediaType"].endswith("gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                t.extractall(rootfs, filter="tar")
    name = index["manifests"][0].get("annotations", {}).get("io.containerd.image.name")
    return config, name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def container_tool():
    """podman (our storage, as the build used) or docker, if it can run a container here."""
    storage = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "images")
    tools = []
    if subprocess.run(["which", "podman"], capture_output=True).returncode == 0:
        tools.append(["podman", "--storage-driver", "vfs", "--root", f"{storage}/storage",
                      "--runroot", f"{storage}/run"])
    if subprocess.run(["which", "docker"], capture_output=True).returncode == 0:
        tools.append(["docker"])
    return tools


class Runner:
    """Runs an image's command: in a container if one starts, else from the unpacked rootfs."""

    def __init__(self, ref, rootfs):
        self.ref, self.rootfs, self.tool = ref, rootfs, None
        for tool in container_tool():
            probe = subprocess.run(tool + ["run", "--rm", "--network", "host", ref, "--version"],
                                   capture_output=True, text=True, timeout=120)
            if probe.returncode == 0:
                self.tool = tool
                break
        self.how = "in a container" if self.tool else (
            "from the unpacked root filesystem, under chroot" if os.geteuid() == 0
            else "from the unpacked root filesystem")

    def argv(self, entrypoint, args):
        if self.tool:
            return self.tool + ["run", "--rm", "--network", "host", "--user", USER, self.ref] + args
        if os.geteuid() == 0:
            return ["chroot", f"--userspec={USER}", self.rootfs] + entrypoint + args
        return [os.path.join(self.rootfs, entrypoint[0].lstrip("/"))] + entrypoint[1:] + args


def check(path):
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        os.mkdir(rootfs)
        config, ref = unpack(path, rootfs)
        c = config.get("config", {})
        entrypoint = c.get("Entrypoint") or fail(f"{path}: no entrypoint")
        if c.get("User") != USER:
            fail(f"{path}: runs as {c.get('User')!r}, expected the non-root {USER}")
        binary = os.path.join(rootfs, entrypoint[0].lstrip("/"))
        for must in [binary, os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt")]:
            if not os.path.isfile(must):
                fail(f"{path}: {must[len(rootfs):]} missing from the image")
        if os.path.exists(os.path.join(rootfs, "bin/sh")):
            fail(f"{path}: the image has a shell; it should hold the binary only")
        run = Runner(ref, rootfs)
        out = subprocess.run(run.argv(entrypoint, ["--version"]), capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            fail(f"{path}: `{entrypoint[0]} --version` failed: {out.stderr.strip()}")
        print(f"check-images: {os.path.basename(path)}: {ref}: `--version` -> "
              f"{out.stdout.strip()} ({run.how})")
        if entrypoint[0].endswith("/backend"):
            serve_healthz(path, run, entrypoint, c.get("Cmd") or [])


def serve_healthz(path, run, entrypoint, cmd):
    """The default command, on a free loopback port, with both secrets (it listens on all
    addresses by default and refuses to start without them)."""
    port = free_port()
    args = [f"127.0.0.1:{port}" if a.startswith("0.0.0.0:") else a for a in cmd]
    env = dict(os.environ, BACKEND_ADMIN_TOKEN="check-images-admin-token-0123456789",
               BACKEND_INGEST_KEY="check-images-ingest-key-0123456789")
    argv = run.argv(entrypoint, args)
    if run.tool:
        argv[argv.index("--user"):argv.index("--user")] = [
            "-e", "BACKEND_ADMIN_TOKEN", "-e", "BACKEND_INGEST_KEY"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = r.read().decode()
                    print(f"check-images: {os.path.basename(path)}: `{' '.join(cmd)}` serves "
                          f"/healthz -> {r.status} {body.strip()}")
                    return
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out = proc.stdout.read() if proc.poll() is not None else ""
                    fail(f"{path}: the backend did not serve /healthz: {out.strip()}")
                time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    archives = sorted(os.path.join(OUT, f) for f in os.listdir(OUT) if f.endswith(".oci.tar")) \
        if os.path.isdir(OUT) else []
    if not archives:
        fail("no images in dist/images: run `make images` first")
    for a in archives:
        check(a)


if __name__ == "__main__":
    main()
