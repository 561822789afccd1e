#!/bin/bash
# Share of a perf recording's samples (perf record --call-graph ...) whose call
# stack passes through a function matching an extended regular expression, by
# symbol name: the time spent in those functions and everything they call.
#   loadtest/perf-share.sh FILE.data REGEX
# e.g. the metrics' share (loadtest/telemetry-bench.sh with PERF=DIR):
#   loadtest/perf-share.sh DIR/text-1.data 'prometheus::|memobuild_cas::metered::'
set -eu
[ $# = 2 ] || { echo "usage: $0 FILE.data REGEX" >&2; exit 2; }
perf script -i "$1" -F comm,sym 2>/dev/null | awk -v re="$2" '
  BEGIN { RS = "" }
  { samples++; if ($0 ~ re) matched++ }
  END { printf "%d of %d samples (%.2f%%) pass through /%s/\n", matched, samples, 100 * matched / (samples ? samples : 1), re }'
