#!/bin/sh
# Healthy when Redis answers PING with the password (REDISCLI_AUTH keeps it off the command line).
set -eu
REDISCLI_AUTH=$(cat /run/secrets/redis_password)
export REDISCLI_AUTH
[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]
