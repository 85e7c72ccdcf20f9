#!/usr/bin/env bash
# Coverage-guided fuzzing of culvert-proto and culvert-transport's WebSocket framer,
# TLS record layer and connection driver with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [seconds]    # each target for that long (default 30)
#
# Runs every target in fuzz/fuzz_targets (frame_decoder, control_decoder, connection,
# wsframe, mux_driver, record_layer), starting from the committed seeds in
# fuzz/corpus/<target> and the known-issue inputs in fuzz/regressions/<target>. Both
# are copied to a temporary directory first, so the inputs libFuzzer finds never land
# in the repository. A crash stops that target, leaves its input in
# fuzz/artifacts/<target>/ (git-ignored) and makes the script exit non-zero once every
# target has run. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and print it as a value with `cargo fuzz fmt <target> <file>`.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets it accept the -Z sanitizer flags
# cargo-fuzz passes. Builds are release with debug assertions on (cargo-fuzz's
# defaults) in fuzz/target, apart from the main workspace's target directory.
# CULVERT_FUZZ_STRICT=1 also checks properties that reported issues still violate
# (see fuzz/README.md).
set -euo pipefail

secs="${1:-30}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [seconds per target, default 30]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export RUSTC_BOOTSTRAP=1

# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v "${CXX:-c++}" >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    echo "no C++ compiler found (libfuzzer-sys builds libFuzzer from C++): install g++" >&2
    exit 1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found: installing it" >&2
    cargo install cargo-fuzz --locked
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/culvert-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

echo "building ${targets[*]}" >&2
cargo fuzz build

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    mkdir -p "$corpus"
    for seeds in "fuzz/corpus/$t" "fuzz/regressions/$t"; do
        if [ -d "$seeds" ]; then
            cp -R "$seeds/." "$corpus/"
        fi
    done
    log="$work/$t.log"
    echo "== $t: ${secs}s" >&2
    status=0
    cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$secs" -timeout=60 -print_final_stats=1 >"$log" 2>&1 || status=$?
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)"
    if [ -z "$execs" ]; then
        execs="$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)"
    fi
    if [ "$status" -eq 0 ] && [ -n "$done_line" ]; then
        echo "$done_line"
        summary+=("$(printf '%-16s %12s execs  ok' "$t" "${execs:-?}")")
    else
        failed+=("$t")
        # The panic (or sanitizer report), the input written, and how it ended.
        grep -E -A 3 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -n 40 || true
        grep -E "Test unit written|^Base64:" "$log" || true
        tail -n 5 "$log"
        summary+=("$(printf '%-16s %12s execs  FAILED (exit %s)' "$t" "${execs:-?}" "$status")")
    fi
done

echo
echo "fuzzing summary (${secs}s per target):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
