#!/usr/bin/env bash
# ARM, checked with nothing but this repository, Debian's packages and the Python package index:
#
#  1. Userlands: Debian bookworm's own arm64 and armhf python3.11 (+ pip; + python3-numpy on armhf, as a
#     32-bit Raspberry Pi OS has it from apt), unpacked from the .debs into sysroots and run by
#     qemu-user-static (no chroot, no binfmt_misc, the host's dpkg and apt state untouched).
#  2. `pip install .` resolves: pip itself, running under emulation, resolves this checkout for aarch64 and
#     for armv7l (so environment markers are evaluated on the target, not on this x86 host), binary wheels
#     only (`--dry-run`; the resolver reports are kept).
#  3. The same decisions: the exact aarch64 wheels that resolution chose (ai-edge-litert, numpy, ...) and
#     tflite-runtime 2.14 (+ numpy<2) are installed into site dirs, the bundled replay runs under emulation
#     on a Raspberry Pi 4 (Cortex-A72) and 5 (Cortex-A76) CPU model, and every decision is compared with
#     the same backend run natively on x86 in the project's venv (outputs within one quantization step).
#
# usage: scripts/check_aarch64.sh [WORKDIR]         (default WORKDIR: .cache/arm, gitignored)
# needs: the project's venv active (python -m edge_infer runs the x86 reference), qemu-user-static,
#        apt-get and dpkg-deb (Debian/Ubuntu host), and the network to Debian and PyPI on the first run.
# The budget is lifted to 10 s: this compares what the model decides, not how fast emulation is.
# Run by .ci/run; the result is recorded in docs/aarch64.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$ROOT/.cache/arm}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
SPEC=$ROOT/models/basic_motions/basic_motions.toml
LOG=$ROOT/models/basic_motions/basic_motions_test.csv
PY=${PYTHON:-python}                      # the project's venv (x86 reference, host pip)
LITERT_PIN=${LITERT_PIN:-}                # empty: whatever `pip install .` resolves for aarch64
TFLITE_REQS=${TFLITE_REQS:-tflite-runtime==2.14.0 numpy==1.26.4}
say() { printf 'check_aarch64: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
T0=$SECONDS
step() { say "[$((SECONDS - T0)) s] $*"; }

"$PY" -c 'import edge_infer' 2>/dev/null || die "no edge_infer in '$PY': activate the project's venv first"
for q in qemu-aarch64-static qemu-arm-static; do
  command -v $q >/dev/null || die "$q not found (apt-get install qemu-user-static)"
done

# ------------------------------------------------------------------------------------------- 1. sysroots
# A private apt state per architecture (its own sources list made from the host's Debian sources, lists,
# cache, an empty dpkg status): apt resolves the dependency closure of a few root packages for that
# architecture, downloads it, and dpkg-deb -x unpacks it. Absolute symlinks are made relative (the host
# kernel would resolve them against the host's /).
sysroot() {  # ARCH PACKAGES...
  local arch=$1; shift
  local A=$WORK/apt-$arch R=$WORK/root-$arch
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/sources" "$WORK/debs"
  : > "$A/sources.list"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qi debian "$f" || continue
    sed -e '/^Architectures:/d' -e "/^Types:/a Architectures: $arch" "$f" > "$A/sources/$(basename "$f")"
  done
  if [ -f /etc/apt/sources.list ]; then
    sed -n "s/^deb \(\[[^]]*\] \)\{0,1\}/deb [arch=$arch] /p" /etc/apt/sources.list | grep -i debian \
      > "$A/sources.list" || :
  fi
  local apt=(apt-get -q -o APT::Architecture="$arch" -o APT::Architectures="$arch"
             -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache" -o Dir::Etc::SourceList="$A/sources.list"
             -o Dir::Etc::SourceParts="$A/sources" -o Dir::State::status=/dev/null -o Debug::NoLocking=1
             -o APT::Sandbox::User=root)
  # A mirror caught mid-sync fails one index now and then: try again, then go on with what came in.
  local try
  for try in 1 2 3; do
    ls "$A/lists/"*_Packages* >/dev/null 2>&1 && [ ! -s "$A/update.failed" ] && break
    if "${apt[@]}" update >"$A/update.log" 2>&1; then : > "$A/update.failed"; break; fi
    cp "$A/update.log" "$A/update.failed"; sleep 5
  done
  ls "$A/lists/"*_Packages* >/dev/null 2>&1 || die "apt-get update for $arch failed, see $A/update.log"
  [ ! -s "$A/update.failed" ] || say "warning: some $arch package lists did not update (see $A/update.log)"
  local closure
  closure=$("${apt[@]}" -s --no-install-recommends install "$@" 2>"$A/resolve.log" \
    | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([^]]*\)\]).*$/\1 \2 \3/p' | sort) \
    || die "apt could not resolve $* for $arch, see $A/resolve.log"
  [ -n "$closure" ] || die "apt resolved nothing for $arch: $*"
  if [ -f "$R/.closure" ] && [ "$(cat "$R/.closure")" = "$closure" ]; then return; fi
  local need=() files=() n v a f
  while read -r n v a; do
    f=$WORK/debs/${n}_${v//:/%3a}_${a}.deb
    files+=("$f")
    [ -s "$f" ] || need+=("$n=$v")
  done <<<"$closure"
  if [ ${#need[@]} -gt 0 ]; then
    (cd "$WORK/debs" && "${apt[@]}" download "${need[@]}" >"$A/download.log" 2>&1) \
      || die "downloading $arch .debs failed, see $A/download.log"
  fi
  rm -rf "$R.tmp" && mkdir -p "$R.tmp"
  for f in "${files[@]}"; do dpkg-deb -x "$f" "$R.tmp"; done
  (cd "$R.tmp" && find . -type l -lname '/*' | while read -r l; do
     ln -sfn "$(realpath -m --relative-to="/$(dirname "${l#./}")" "$(readlink "$l")")" "$l"
   done)
  # pip resolves for this interpreter, never installs into it: PEP 668's marker would refuse even a dry run.
  rm -f "$R.tmp"/usr/lib/python3.11/EXTERNALLY-MANAGED
  echo "$closure" > "$R.tmp/.closure"
  rm -rf "$R" && mv "$R.tmp" "$R"
  say "$arch sysroot: $(wc -l <<<"$closure") packages, $(du -sh "$R" | cut -f1)"
}

# A board view is what qemu gets as -L: the sysroot plus a fake /proc/cpuinfo and CPU topology of the
# board (qemu passes the host's x86 /proc/cpuinfo through, on which LiteRT's cpuinfo library segfaults).
view() {  # NAME PART VARIANT REVISION FEATURES MODEL
  local V=$WORK/$1 e i c
  rm -rf "$V" && mkdir -p "$V/proc" "$V/sys/devices/system/cpu"
  for e in bin etc lib sbin usr var; do [ -e "$WORK/root-arm64/$e" ] && ln -s "../root-arm64/$e" "$V/$e"; done
  c=$V/sys/devices/system/cpu
  for e in possible present online; do echo 0-3 > "$c/$e"; done
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
      "$i" "$5" "$3" "$2" "$4" >> "$V/proc/cpuinfo"
    mkdir -p "$c/cpu$i/topology"
    echo 0 > "$c/cpu$i/topology/physical_package_id"
    echo "$i" > "$c/cpu$i/topology/core_id"
  done
  printf 'Model\t\t: %s\n' "$6" >> "$V/proc/cpuinfo"
}

emulate() {  # ARCH VIEW PYTHONPATH CPU -- python args (the guest must not see the host's Python setup)
  local arch=$1 v=$2 pp=$3 cpu=$4; shift 4
  local q=qemu-aarch64-static; [ "$arch" = armhf ] && q=qemu-arm-static
  env -u LD_LIBRARY_PATH -u LD_PRELOAD -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV PYTHONNOUSERSITE=1 \
    PYTHONPATH="$pp" "$q" -L "$v" -cpu "$cpu" "$WORK/root-$arch/usr/bin/python3.11" "$@"
}

step "sysroots (Debian bookworm arm64 and armhf python3.11)"
sysroot arm64 python3.11-minimal libpython3.11-stdlib libstdc++6 libgcc-s1 python3-pip python3-setuptools python3-wheel
sysroot armhf python3.11-minimal libpython3.11-stdlib python3-numpy python3-pip python3-setuptools python3-wheel
view pi4 0xd08 0x0 3 "fp asimd evtstrm crc32 cpuid" "Raspberry Pi 4 Model B Rev 1.5"
view pi5 0xd0b 0x4 1 "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
  "Raspberry Pi 5 Model B Rev 1.0"

# --------------------------------------------------------------------------- 2. does `pip install .` resolve?
# pip runs on the target interpreter, so platform_machine and python_version are the target's. aarch64:
# a fresh environment (--ignore-installed). armv7l: numpy counts as installed from Debian's python3-numpy
# (PyPI has no armv7l numpy wheel; a Pi gets it from apt or piwheels).
# The project goes in as the wheel `pip install .` builds (same metadata, markers unevaluated): building
# it under emulation would need pip to start the emulated python as a subprocess, which needs binfmt_misc.
resolve() {  # ARCH CPU LABEL PIP-ARGS...
  local arch=$1 cpu=$2 label=$3; shift 3
  local report=$WORK/resolve-$label.json
  emulate "$arch" "$WORK/root-$arch" "" "$cpu" -m pip install --dry-run --break-system-packages --quiet \
    --only-binary=:all: --report "$report" "$@" "$WHEEL" >"$WORK/resolve-$label.log" 2>&1 || {
      tail -5 "$WORK/resolve-$label.log" >&2; die "pip install . does not resolve on $label, see $WORK/resolve-$label.log"; }
  "$PY" - "$report" "$label" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
env = report["environment"]
items = sorted(f'{i["metadata"]["name"]}=={i["metadata"]["version"]}' for i in report["install"])
print(f'{sys.argv[2]}: pip install . resolves on {env["platform_machine"]} Python {env["python_full_version"]}: '
      + " ".join(items))
EOF
}
step "resolving pip install . under emulation (aarch64, armv7l)"
rm -rf "$WORK/dist" && mkdir -p "$WORK/tmp"
"$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$ROOT" >"$WORK/wheel.log" 2>&1 \
  || die "building the project's wheel failed, see $WORK/wheel.log"
WHEEL=$(ls "$WORK"/dist/edge_infer-*.whl)
resolve arm64 cortex-a72 aarch64-py3.11 --ignore-installed
resolve armhf cortex-a7 armv7l-py3.11
# Python 3.9 on armv7l (Raspberry Pi OS bullseye): the interpreter's wheel exists on the index.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_armv7l --python-version 3.9 \
  --implementation cp --abi cp39 -d "$WORK/tmp/armv7l-py3.9" "tflite-runtime>=2.13" >"$WORK/armv7l-py3.9.log" 2>&1 \
  && echo "armv7l-py3.9: wheel on the index: $(cd "$WORK/tmp/armv7l-py3.9" && ls tflite_runtime-*.whl)" \
  || die "no tflite-runtime wheel for armv7l Python 3.9, see $WORK/armv7l-py3.9.log"

# ------------------------------------------------------------------------------------- 3. aarch64 site dirs
PLAT=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
      --platform manylinux2014_aarch64)
for v in $(seq 17 36); do PLAT+=(--platform "manylinux_2_${v}_aarch64"); done  # bookworm: glibc 2.36
site() {  # NAME REQUIREMENTS...  (host pip, aarch64 wheels, pinned requirements: cached by their list)
  local name=$1; shift
  local S=$WORK/site-$name key="$*"
  [ -f "$S/.reqs" ] && [ "$(cat "$S/.reqs")" = "$key" ] && return
  mkdir -p "$WORK/wheels"
  "$PY" -m pip download --quiet "${PLAT[@]}" -d "$WORK/wheels" "$@" >"$WORK/site-$name.log" 2>&1 \
    || die "pip download for $name failed, see $WORK/site-$name.log"
  rm -rf "$S.tmp"
  "$PY" -m pip install --quiet --no-index --find-links "$WORK/wheels" --no-compile "${PLAT[@]}" --target "$S.tmp" \
    "$@" >>"$WORK/site-$name.log" 2>&1 || die "pip install --target for $name failed, see $WORK/site-$name.log"
  rm -rf "$S.tmp/bin"  # console scripts with a host shebang; the guest runs `python -m`
  echo "$key" > "$S.tmp/.reqs"
  rm -rf "$S" && mv "$S.tmp" "$S"
}
step "aarch64 wheels"
# The litert site is exactly what `pip install .` resolved for aarch64 (minus the project itself).
mapfile -t LITERT_REQS < <("$PY" -c '
import json, sys
for i in json.load(open(sys.argv[1]))["install"]:
    if i["metadata"]["name"] != "edge-infer":
        print(i["metadata"]["name"] + "==" + i["metadata"]["version"])' "$WORK/resolve-aarch64-py3.11.json")
site litert ${LITERT_PIN:-"${LITERT_REQS[@]}"}
# shellcheck disable=SC2086
site tflite $TFLITE_REQS pyserial
rm -rf "$WORK/site-proj"
"$PY" -m pip install --quiet --no-deps --no-compile --target "$WORK/site-proj" "$WHEEL" \
  >"$WORK/site-proj.log" 2>&1 || die "pip install --target of the project failed, see $WORK/site-proj.log"

# ---------------------------------------------------------------------------------- 4. the same decisions?
OUTPUT_SCALE=$("$PY" -m edge_infer inspect "$SPEC" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["scale"])')
replay() {  # OUT BACKEND COMMAND...
  local out=$1 backend=$2; shift 2
  "$@" -m edge_infer replay "$LOG" --model "$SPEC" --backend "$backend" --budget-ms 10000 \
    --decisions "$out.jsonl" --json > "$out.json" 2>"$out.err" || { tail -3 "$out.err" >&2; die "replay $out failed"; }
}
step "x86 references"
rm -f "$WORK"/x86_*.jsonl "$WORK"/arm_*.jsonl  # decision logs are appended to, never overwritten
replay "$WORK/x86_litert" litert "$PY"
TFLITE_PY=$ROOT/.cache/venv-tflite-runtime/bin/python   # the same venv tests/test_backends.py makes
"$TFLITE_PY" -c 'import tflite_runtime, serial' 2>/dev/null || {
  "$PY" -m venv --clear "$ROOT/.cache/venv-tflite-runtime" && "$TFLITE_PY" -m pip install -q tflite-runtime "numpy<2" pyserial; }
(cd "$ROOT" && PYTHONPATH=$ROOT replay "$WORK/x86_tflite" tflite-runtime "$TFLITE_PY")

status=0
for run in pi4:litert:litert pi5:litert:litert pi4:tflite:tflite-runtime; do
  IFS=: read -r board site backend <<<"$run"
  cpu=cortex-a72; [ "$board" = pi5 ] && cpu=cortex-a76
  step "emulated $board ($cpu) $backend"
  out=$WORK/arm_${board}_$site
  replay "$out" "$backend" emulate arm64 "$WORK/$board" "$WORK/site-proj:$WORK/site-$site" "$cpu"
  summary=$("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("accuracy %(accuracy)s decisions %(decisions)s fallbacks %(fallback_decisions)s backend %(backend)s %(backend_version)s" % s)' "$out.json")
  verdict=$("$PY" "$ROOT/scripts/compare_decisions.py" "$WORK/x86_$site.jsonl" "$out.jsonl" \
    --tolerance "$OUTPUT_SCALE") || status=1
  echo "$board $backend: $summary"
  echo "  vs x86 $backend: $verdict"
done
step "done ($(du -sh "$WORK" | cut -f1) in $WORK)"
exit $status
