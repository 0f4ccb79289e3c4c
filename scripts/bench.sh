#!/usr/bin/env bash
# Runs deprovd-bench over the matrix (users × engine) and prints one table. Not part of CI.
#
#   scripts/bench.sh                                  # 1k, 10k, 100k users × sqlite, postgres
#   BENCH_USERS="1000 100000" BENCH_ENGINES=sqlite BENCH_SECONDS=5 scripts/bench.sh
#   scripts/bench.sh --concurrency 64                 # extra flags go to every deprovd-bench run
#
# Environment: BENCH_USERS, BENCH_ENGINES, BENCH_SECONDS (per phase), BENCH_CONCURRENCY,
# BENCH_PHASES, BENCH_OUT (the JSON-lines file; default target/bench/results-<time>.jsonl).
# PostgreSQL: the local server on 127.0.0.1:5432 (user postgres, trust), as in CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

USERS=${BENCH_USERS:-"1000 10000 100000"}
ENGINES=${BENCH_ENGINES:-"sqlite postgres"}
SECONDS_PER_PHASE=${BENCH_SECONDS:-10}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
PHASES=${BENCH_PHASES:-lookup,patch,create}
mkdir -p target/bench
OUT=${BENCH_OUT:-target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl}

echo "building release binaries (deprovd, deprovd-bench)"
cargo build --release --bins

if [[ " $ENGINES " == *" postgres "* ]] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "postgres is not answering on 127.0.0.1:5432; start it or set BENCH_ENGINES=sqlite" >&2
    exit 1
fi

for users in $USERS; do
    for engine in $ENGINES; do
        echo
        echo "==== $engine, $users users ===="
        # Bounded: 4 phases × (seconds + warm-up) plus seeding and start-up.
        timeout 1800 target/release/deprovd-bench \
            --users "$users" --engine "$engine" --seconds "$SECONDS_PER_PHASE" \
            --concurrency "$CONCURRENCY" --phases "$PHASES" --json-out "$OUT" "$@"
    done
done

echo
echo "results: $OUT"
python3 - "$OUT" <<'EOF'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
head = ("engine", "users", "op", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "peak RSS MiB",
        "srv cpu s", "gen cpu s")
print("| " + " | ".join(head) + " |")
print("| " + " | ".join("---" if i < 3 else "---:" for i in range(len(head))) + " |")
for r in rows:
    print("| {engine} | {users} | {op} | {rps:.0f} | {p50_ms:.2f} | {p99_ms:.2f} | {max_ms:.1f} | "
          "{errors} | {server_peak_rss_mib:.0f} | {server_cpu_s:.1f} | {client_cpu_s:.1f} |"
          .format(**r))
EOF
