#!/bin/sh
# Redis, Airflow's Celery broker, with the password from its secret file: written into a config
# file this container alone reads, so it is in no command line, environment or `inspect` output.
# The append-only file keeps queued tasks across a restart.
set -eu
umask 077
config=/tmp/redis.conf
printf 'requirepass %s\nappendonly yes\ndir /data\nport 6379\n' "$(cat /run/secrets/redis_password)" > "$config"
exec redis-server "$config"
