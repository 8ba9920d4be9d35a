#!/usr/bin/env bash
# Runs a sluice-stress chain and samples the process's RssAnon and RssFile every 50 ms.
# Prints each workload's ops/s and peak RSS, then the sample with the largest anon + file.
# usage: [FLAGS="more sluice-stress flags"] rss-sample.sh BIN WORKLOADS DIR [NAME=VALUE ...]
# (extra args: environment of the run)
set -euo pipefail
bin=$1 workloads=$2 dir=$3
shift 3
rm -rf "$dir"
out=$(mktemp) samples=$(mktemp)
# shellcheck disable=SC2086 # FLAGS is a list of flags
env "$@" "$bin" "$workloads" --num 1000000 --dir "$dir" ${FLAGS:-} >"$out" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  grep -E "RssAnon|RssFile" "/proc/$pid/status" 2>/dev/null | awk '{printf "%s ", $2} END {print ""}' >>"$samples" || true
  sleep 0.05
done
wait "$pid"
grep -E "^(fill|over|read|seek|batch)" "$out" | awk '{print $1, $4 " ops/s", "peak RSS " $11 " MB"}'
awk 'NF == 2 && $1 + $2 > m {m = $1 + $2; a = $1; f = $2} END {print "max sample: anon " a / 1024 " MB, file " f / 1024 " MB"}' "$samples"
rm -rf "$dir" "$out" "$samples"
