#!/usr/bin/env bash
# Fault injection under load against `steward run` (embedded engines): wrk for 30 s on the
# todo list (20 connections) while a probe writes a todo every second; a fault from t=10 s for
# FREEZE seconds (default 8). Usage: bench/faults.sh redis-freeze|pg-freeze|redis-kill
# Output in bench/out/faults/: <kind>.wrk, <kind>.probe (second, status, seconds), <kind>.log
set -u
kind=$1
cd "$(dirname "$0")/.."; OUT=bench/out/faults; mkdir -p $OUT
D=$PWD/$OUT/data-$kind; rm -rf $D
PORT=8911
DATA_DIR=$D LOG_FORMAT=json RATE_LIMIT_AUTHENTICATED=100000000/minute RATE_LIMIT_REGISTER=1000/minute \
  .venv/bin/steward run --port $PORT > $OUT/$kind.log 2>&1 &
SUP=$!
for i in $(seq 1 120); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 0.5; done
sleep 3
B=http://127.0.0.1:$PORT
curl -s $B/api/v1/auth/register -H 'content-type: application/json' -d '{"email":"load@example.com","password":"correct-horse-42"}' >/dev/null
T=$(curl -s $B/api/v1/auth/token -d username=load@example.com -d password=correct-horse-42 | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for i in 1 2 3; do curl -s $B/api/v1/todos -H "Authorization: Bearer $T" -H 'content-type: application/json' -d "{\"title\":\"t$i\"}" >/dev/null; done
wrk -t1 -c20 -d30s --latency -H "Authorization: Bearer $T" "$B/api/v1/todos?limit=20" > $OUT/$kind.wrk &
W=$!
# per-second probe of /health and a write, to see what a client sees during the fault
( for s in $(seq 1 30); do
    t0=$(date +%s.%N); code=$(curl -s -o /dev/null -w '%{http_code}' -m 20 -X POST $B/api/v1/todos -H "Authorization: Bearer $T" -H 'content-type: application/json' -d "{\"title\":\"probe$s\"}"); t1=$(date +%s.%N)
    echo "$s $code $(python3 -c "print(round($t1-$t0,3))")"; sleep 1; done ) > $OUT/$kind.probe &
P=$!
sleep 10
VK=$(cat $D/valkey/valkey.pid); PG=$(head -1 $D/postgres/postmaster.pid)
case $kind in
  redis-freeze) kill -STOP $VK; sleep ${FREEZE:-8}; kill -CONT $VK;;
  pg-freeze) PIDS="$PG $(pgrep -P $PG | tr '\n' ' ')"; kill -STOP $PIDS; sleep ${FREEZE:-8}; kill -CONT $PIDS;;
  redis-kill) kill -KILL $VK;;
esac
wait $W; wait $P
echo "acknowledged probes: $(awk '$2==201' $OUT/$kind.probe | wc -l)"
stored=$(curl -s "$B/api/v1/todos?limit=100&q=probe" -H "Authorization: Bearer $T" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
echo "stored probes: $stored"
kill -TERM $SUP; wait $SUP
