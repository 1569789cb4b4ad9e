#!/usr/bin/env bash
# Restart Steward's API instances one at a time, failing no request: nginx stops sending to
# an instance before it is stopped (an upstream marked `down`, then a graceful `nginx -s
# reload`, which also forgets instances it had marked failed), and gets it back once it
# answers /ready. Run after `systemctl start steward-migrate` when deploying new code.
#
#   deploy/systemd/rolling-restart.sh            # instances 8001 and 8002
#   deploy/systemd/rolling-restart.sh 8001 8002 8003
#
# STEWARD_UPSTREAM (the upstream file nginx includes), STEWARD_RESTART (a command; %s is
# the port) and STEWARD_NGINX (the nginx command) change where and how.
set -euo pipefail

upstream=${STEWARD_UPSTREAM:-/etc/nginx/steward-upstream.conf}
restart=${STEWARD_RESTART:-systemctl restart steward-api@%s}
nginx=${STEWARD_NGINX:-nginx}
drain_s=${STEWARD_DRAIN_S:-2}
ports=("$@")
[ ${#ports[@]} -gt 0 ] || ports=(8001 8002)
original=$(cat "$upstream")
trap 'printf "%s\n" "$original" > "$upstream"; $nginx -s reload' EXIT

wait_ready() {
    for _ in $(seq 1 240); do
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/ready" && return 0
        sleep 0.5
    done
    echo "instance $1 did not become ready" >&2
    return 1
}

for port in "${ports[@]}"; do
    # nginx: this instance is down (the others take everything), then wait for what it holds.
    printf "%s\n" "$original" | sed -E "s/^(server [^ ;]*:$port)( |;)/\1 down\2/" > "$upstream"
    $nginx -s reload
    sleep "$drain_s"
    # shellcheck disable=SC2059
    $(printf "$restart" "$port")
    wait_ready "$port"
    printf "%s\n" "$original" > "$upstream"
    $nginx -s reload
    echo "instance $port restarted"
done
