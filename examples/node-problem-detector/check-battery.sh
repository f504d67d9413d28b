#!/bin/sh
# node-problem-detector custom plugin: is the node running on a nearly empty battery?
# Usage: check-battery.sh [LIMIT_PERCENT]   (default 2)
# Exit 1 (condition True) when a battery or UPS is discharging at or below the limit;
# 0 when on mains power or above it; 2 when no battery is found (condition Unknown).
# Reads /sys/class/power_supply (laptops, blade BMCs exposing a battery); POWER_SUPPLY_ROOT
# overrides it. With NUT installed, UPS=name@host is asked through upsc instead.
limit="${1:-2}"
discharging=no
where=battery
if [ -n "$UPS" ] && command -v upsc >/dev/null 2>&1; then
    charge=$(upsc "$UPS" battery.charge 2>/dev/null)
    status=$(upsc "$UPS" ups.status 2>/dev/null)
    case "$status" in *OB*) discharging=yes ;; *) discharging=no ;; esac
    where="UPS $UPS"
else
    root="${POWER_SUPPLY_ROOT:-/sys/class/power_supply}"
    charge=""
    for supply in "$root"/*; do
        [ "$(cat "$supply/type" 2>/dev/null)" = "Battery" ] || continue
        charge=$(cat "$supply/capacity" 2>/dev/null)
        state=$(cat "$supply/status" 2>/dev/null)
        [ "$state" = "Discharging" ] && discharging=yes || discharging=no
        where="$(basename "$supply")"
        break
    done
fi
case "$charge" in
    ''|*[!0-9.]*) echo "no battery or UPS reading found"; exit 2 ;;
esac
charge=${charge%.*}
if [ "$discharging" = yes ] && [ "$charge" -le "$limit" ]; then
    echo "$where discharging at ${charge}%, limit ${limit}%"
    exit 1
fi
echo "$where at ${charge}% (discharging: $discharging)"
exit 0
