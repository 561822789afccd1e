#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with a database `test` for the
# tests that use the real one: the machine's own if it is running, else Debian's,
# installed and started here (with password "postgres" for the postgres role).
set -euo pipefail

if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  exit 0
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
su postgres -c "createdb test" 2>/dev/null || true
