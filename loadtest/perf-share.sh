#!/bin/bash
# Share of perf recordings' samples (perf record --call-graph dwarf) whose call
# stack passes through a function matching an extended regular expression, by
# symbol name (inlined frames included): the time spent in those functions
# and in everything they call. Slow: perf resolves every inlined frame.
#   loadtest/perf-share.sh REGEX FILE.data...
# e.g. the metrics' share (loadtest/telemetry-bench.sh with PERF=DIR):
#   loadtest/perf-share.sh 'prometheus::|with_label_values' DIR/*.data
set -eu
[ $# -ge 2 ] || { echo "usage: $0 REGEX FILE.data..." >&2; exit 2; }
re=$1
shift
for data in "$@"; do
  perf script -i "$data" -F comm,ip,sym 2>/dev/null | awk -v re="$re" -v name="$data" '
    BEGIN { RS = "" }
    { samples++; if ($0 ~ re) matched++ }
    END { printf "%s: %d of %d samples (%.2f%%)\n", name, matched, samples, 100 * matched / (samples ? samples : 1) }'
done
