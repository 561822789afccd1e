#!/bin/sh
# Creates the cluster on first start (user and database $POSTGRES_USER,
# password $POSTGRES_PASSWORD, and the databases named in
# $POSTGRES_EXTRA_DATABASES), then runs PostgreSQL in the foreground.
set -eu
user="${POSTGRES_USER:-memobuild}"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > /tmp/pwfile
  chown postgres /tmp/pwfile
  su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U '$user' --pwfile=/tmp/pwfile --auth-host=scram-sha-256 --auth-local=trust" >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -s /bin/sh -c "pg_ctl -D '$PGDATA' -o '-c listen_addresses=' -w start" >/dev/null
  for db in "$user" ${POSTGRES_EXTRA_DATABASES:-}; do
    psql -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
  done
  su postgres -s /bin/sh -c "pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -s /bin/sh -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
