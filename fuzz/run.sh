#!/usr/bin/env bash
# Runs fuzz targets for a fixed time each, two at a time, and prints libFuzzer's final figures.
# Usage: fuzz/run.sh [seconds per target, default 600] [target...]   (all six by default)
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# the unstable flags cargo-fuzz passes. Logs go to fuzz/logs/<target>.log (not committed).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope poll ack peer_batch feed_page body_reader)
# The same build flags for build and run, or cargo-fuzz rebuilds: no sanitizer (safe Rust: a
# panic, an overflow or a hang is what we look for), 16 codegen units (a much quicker build).
flags=(-s none --codegen-units 16)
export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR
cargo fuzz build "${flags[@]}"
mkdir -p logs
run() {
  local target=$1
  mkdir -p "corpus/$target"
  cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"logs/$target.log" 2>&1 || echo "$target: FAILED (see fuzz/logs/$target.log and fuzz/artifacts/$target)"
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" &
  if ((i + 1 < ${#targets[@]})); then run "${targets[i + 1]}" & fi
  wait
done
for target in "${targets[@]}"; do
  echo "== $target"
  grep -E '^#[0-9]+ +DONE|^Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|panicked' "logs/$target.log" || true
done
