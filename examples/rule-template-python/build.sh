#!/bin/sh
# Builds rule-small-order-fee.wasm, a component of the `rule` world, from app.py with
# componentize-py (requirements.txt).
set -eu
cd "$(dirname "$0")"
exec componentize-py -d wit -w rule componentize app -o rule-small-order-fee.wasm
