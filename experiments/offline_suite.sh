#!/usr/bin/env bash
# The whole test suite with the network really off (issue 16; docs/RELIABILITY.md).
# tests/conftest.py blocks non-local sockets inside the pytest process; this covers the rest:
# the subprocesses tests start (`persona fit`, `persona prep`, DDP workers, node, browsers).
# `unshare -rn` runs the suite in a new user + network namespace: only a loopback interface
# (brought up here), no route out, no DNS; no root needed where unprivileged user namespaces are
# allowed (check: `unshare -rn true`).
#   bash experiments/offline_suite.sh               # the whole suite
#   bash experiments/offline_suite.sh tests/export  # any pytest arguments
# Prints pytest's summary and a last line "offline suite: exit N in S s"; exits with pytest's
# status (2 when the namespace cannot be made).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! unshare -rn true 2>/dev/null; then
  echo "offline suite: unshare -rn is not allowed here (unprivileged user namespaces off);" \
       "run the suite on a machine with its network unplugged instead" >&2
  exit 2
fi
started=$(date +%s)
# lo starts down in a new namespace: bring it up (ip, else Python's ioctl) so that localhost
# servers (the web viewer test, DDP's gloo rendezvous) work
unshare -rn bash -c '
  ip link set lo up 2>/dev/null || true
  if ! python3 -c "import socket; socket.create_server((\"127.0.0.1\", 0)).close()" 2>/dev/null; then
    echo "offline suite: loopback is not up in the namespace" >&2
  fi
  exec "$0" -m pytest -q "$@"' "$PY" "$@"
status=$?
echo "offline suite: exit $status in $(( $(date +%s) - started )) s"
exit $status
