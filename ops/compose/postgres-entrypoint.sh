#!/bin/sh
# Test-only PostgreSQL entrypoint with the official image's contract: POSTGRES_USER and
# POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, and /docker-entrypoint-initdb.d/*.sh run once on a fresh data directory.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then cat "$POSTGRES_PASSWORD_FILE" > /tmp/pwfile
  else printf '%s' "$POSTGRES_PASSWORD" > /tmp/pwfile; fi
  initdb --encoding=UTF8 --locale=C.UTF-8 --username="${POSTGRES_USER:-postgres}" --pwfile=/tmp/pwfile --auth-host=scram-sha-256 --auth-local=trust >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  for script in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$script" ] && POSTGRES_USER="${POSTGRES_USER:-postgres}" sh "$script"
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -c listen_addresses='*'
