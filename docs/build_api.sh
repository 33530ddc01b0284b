#!/usr/bin/env bash
# Build the API reference from the docstrings with pdoc into build/api (open build/api/index.html).
# Any warning (a broken cross-reference, a module that fails to import) is an error, so the reference
# cannot rot. pdoc cannot discover the parts mapped from root folders (certun.accountant,
# certun.backends, certun.certificates: setuptools package-dir), so they are named here, with the
# public modules that a package's __all__ does not list (certun.errors, certun.backends.noise, certun.backends.distributed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
"$PY" -W error -m pdoc --docformat google certun certun.errors certun.accountant certun.backends certun.backends.noise certun.backends.distributed \
    certun.certificates -o build/api
