#!/usr/bin/env bash
# Does edge-infer make any system call the unit's SystemCallFilter= would refuse?
#
# Runs `edge-infer run` under strace (all threads), collects the names of the system calls it made,
# and compares them with what systemd/edge-infer.service allows: @system-service minus @privileged.
# Run it after changing the backend, numpy, or the Python version; the unit's filter answers EPERM
# rather than killing, but a refused call is still a failure somewhere. Needs strace and systemd-analyze.
#
#   scripts/check_syscalls.sh [edge-infer run options...]    (default: the bundled model and log)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "check_syscalls.sh: needs strace (apt-get install strace)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The names in a syscall group, nested groups expanded.
expand() {
    systemd-analyze syscall-filter "$1" | sed -n 's/^    \([@a-z0-9_-]*\)$/\1/p' | while read -r name; do
        case $name in @*) expand "$name" ;; *) echo "$name" ;; esac
    done
}

strace -f -qq -o "$work/trace" python -X faulthandler -m edge_infer run --show none \
    --decisions "$work/d.jsonl" --metrics-textfile "$work/m.prom" "$@" >/dev/null
sed -E -n 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' "$work/trace" | sort -u > "$work/used"
expand @system-service | sort -u > "$work/allowed"
expand @privileged | sort -u > "$work/denied"

refused=$( { comm -23 "$work/used" "$work/allowed"; comm -12 "$work/used" "$work/denied"; } | sort -u)
echo "$(wc -l < "$work/used") distinct system calls used"
if [ -n "$refused" ]; then
    echo "refused by the unit's SystemCallFilter=:" $refused
    exit 1
fi
echo "all allowed by SystemCallFilter=@system-service ~@privileged"
