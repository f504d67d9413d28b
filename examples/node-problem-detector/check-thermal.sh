#!/bin/sh
# node-problem-detector custom plugin: is any thermal zone at or above the limit?
# Usage: check-thermal.sh [LIMIT_CELSIUS]   (default 95)
# Exit 0: all zones below the limit; 1: at least one at or above it (condition True);
# 2: no readable thermal zone (condition Unknown). The first output line is the message.
# THERMAL_ROOT overrides /sys/class/thermal (for testing the script).
limit="${1:-95}"
root="${THERMAL_ROOT:-/sys/class/thermal}"
hottest=""
hottest_zone=""
for zone in "$root"/thermal_zone*; do
    [ -r "$zone/temp" ] || continue
    milli=$(cat "$zone/temp" 2>/dev/null) || continue
    case "$milli" in ''|*[!0-9-]*) continue ;; esac
    celsius=$((milli / 1000))
    if [ -z "$hottest" ] || [ "$celsius" -gt "$hottest" ]; then
        hottest="$celsius"
        hottest_zone="$(cat "$zone/type" 2>/dev/null || basename "$zone")"
    fi
done
if [ -z "$hottest" ]; then
    echo "no readable thermal zone under $root"
    exit 2
fi
if [ "$hottest" -ge "$limit" ]; then
    echo "$hottest_zone at ${hottest}C, limit ${limit}C"
    exit 1
fi
echo "hottest zone $hottest_zone at ${hottest}C, below ${limit}C"
exit 0
