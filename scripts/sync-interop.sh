#!/usr/bin/env bash
# Refreshes interop/corpus from the shared interop corpus beside the repository (../shared/interop),
# the frozen payloads the real Softprobe agents sent. The test `the_corpus_copy_matches_the_shared_corpus`
# fails when the two differ.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/interop}
[ -d "$src" ] || { echo "sync-interop: $src is not a folder" >&2; exit 1; }
rm -rf interop/corpus
cp -r "$src" interop/corpus
chmod -R u+w interop/corpus
echo "sync-interop: interop/corpus now matches $src"
