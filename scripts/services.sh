#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with a database `test`, Redis on
# 127.0.0.1:6379 and an S3-compatible server (moto) on 127.0.0.1:9455, for the
# tests that use the real one: the machine's own if it is running, else Debian's,
# installed and started here (with password "postgres" for the postgres role).
set -euo pipefail

start_postgres() {
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
}
pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || start_postgres

# Redis on 127.0.0.1:6379, the CAS's hot existence index in tests.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing Redis" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
  for _ in $(seq 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# moto, the S3-compatible server of the CAS tests, on 127.0.0.1:9455
# (MEMOBUILD_TEST_S3), installed by scripts/install-deps.sh. In memory: a
# restart starts empty, and every test makes its own bucket.
moto=/opt/memobuild-moto/bin/moto_server
if ! curl -s -o /dev/null http://127.0.0.1:9455/; then
  [ -x "$moto" ] || { echo "services.sh: $moto is missing; run scripts/install-deps.sh" >&2; exit 1; }
  setsid "$moto" -H 127.0.0.1 -p 9455 >/var/tmp/memobuild-moto.log 2>&1 </dev/null &
  for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:9455/ && break
    sleep 0.1
  done
  curl -s -o /dev/null http://127.0.0.1:9455/ || { echo "services.sh: moto did not start (see /var/tmp/memobuild-moto.log)" >&2; exit 1; }
fi
