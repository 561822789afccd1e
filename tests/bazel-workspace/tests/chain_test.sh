#!/bin/bash
# Passes when the chain and the C++ binary produced the expected content.
set -euo pipefail

chain_c="$1"
hello="$2"
manifest="$3"

expected_chain="$(printf 'stage=b\nGAMMA\nBETA\nALPHA\n4')"
if [[ "$(cat "$chain_c")" != "$expected_chain" ]]; then
  echo "chain_c.txt has unexpected content:" >&2
  cat "$chain_c" >&2
  exit 1
fi

if ! grep -q '^hello, memobuild (checksum ' "$hello"; then
  echo "hello_output.txt has unexpected content:" >&2
  cat "$hello" >&2
  exit 1
fi

# The manifest of the tree artifact lists its 4 files, nested ones included.
if [[ "$(grep -c '  \./' "$manifest")" != 4 ]] || ! grep -q '  \./sub/deeper/d\.txt$' "$manifest"; then
  echo "tree_manifest.txt has unexpected content:" >&2
  cat "$manifest" >&2
  exit 1
fi

echo "chain_test: PASS"
