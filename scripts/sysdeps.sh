#!/usr/bin/env sh
# Installs the Debian packages listed in scripts/system-packages.txt that are missing.
# As root with apt-get (CI, a fresh machine): installs them. Otherwise: says which
# are missing and the command that installs them, and exits 0 (the tests that need
# them skip with the package's name; under CI=true they fail instead).
set -eu
here=$(dirname "$0")
list="$here/system-packages.txt"
missing=""
for pkg in $(sed -e 's/#.*//' "$list" | tr -s ' \t' '\n' | grep -v '^$' || true); do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "edgetl: installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "edgetl: system packages missing:$missing"
    echo "edgetl: install them with: sudo apt-get install$missing  (tests that need them are skipped)"
fi
