#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them. README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
# dcmtk's own binaries: pynetdicom installs Python apps with the same names (storescu, echoscu) on PATH
[ -x /usr/bin/storescu ] && [ -x /usr/bin/storescp ] && [ -x /usr/bin/echoscu ] || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v plastimatch >/dev/null || missing+=(plastimatch)
command -v chromium >/dev/null || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# serve's embedded Redis dies with it through util-linux's setpriv --pdeathsig
command -v setpriv >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python -m pip install -q -e '.[test]'

set +e
# two workers, each test file on one of them (module fixtures stay in one process); each process runs
# torch on one thread (tests/conftest.py), so they do not oversubscribe the cores
python -m pytest -n "${CONTOURQA_TEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit $status
