#!/usr/bin/env bash
# ARM, checked with nothing but this repository, Debian's packages and the Python package index:
#
#  1. Userlands: Debian's own python3 for arm64 (bookworm, 3.11) and armhf (bookworm 3.11, trixie 3.13),
#     with pip, and python3-numpy on armhf as a 32-bit Raspberry Pi OS has it from apt; unpacked from the
#     .debs into sysroots and run by qemu-user-static (no chroot, no binfmt_misc; the host's dpkg and apt
#     state untouched).
#  2. `pip install .` resolves: pip itself, running on each emulated target, resolves this checkout
#     (environment markers and manylinux tags are the target's, not this x86 host's), binary wheels only
#     (`--dry-run`; the resolver reports are kept).
#  3. The same decisions: the exact wheels that resolution chose (ai-edge-litert and numpy on aarch64,
#     tflite-runtime on armv7l), and tflite-runtime 2.14 with numpy<2 on aarch64, go into site dirs; the
#     bundled replay runs under emulation on Raspberry Pi 4 / Pi 5 CPU models (64-bit) and a Pi 4 in 32-bit
#     mode, and every decision is compared with the same backend run natively on x86 in the project's venv
#     (outputs within one quantization step).
#  4. Where no interpreter has a wheel (armv7l, Python 3.13): edge-infer installs, and says in one line
#     which interpreter to get.
#
# usage: scripts/check_aarch64.sh [WORKDIR]   (default: $EDGE_INFER_ARM_CACHE, else ~/.cache/edge-infer/arm,
#                                              shared by every clone on the machine: downloads are made once)
# needs: the project's venv active (python -m edge_infer runs the x86 reference), qemu-user-static,
#        apt-get and dpkg-deb (Debian/Ubuntu host), and the network to Debian and PyPI on the first run.
# The budget is lifted to 10 s: this compares what the model decides, not how fast emulation is.
# Run by .ci/run; the result is recorded in docs/aarch64.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-${EDGE_INFER_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-infer/arm}}
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
sysroot() {  # NAME ARCH CODENAME PACKAGES...   (CODENAME: a Debian release; the host's mirrors are used)
  local name=$1 arch=$2 codename=$3; shift 3
  local A=$WORK/apt-$name R=$WORK/root-$name host_codename
  host_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/sources" "$WORK/debs"
  : > "$A/sources.list"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -qi debian "$f" || continue
    sed -e '/^Architectures:/d' -e "/^Types:/a Architectures: $arch" -e "s/\b$host_codename\b/$codename/g" "$f" \
      > "$A/sources/$(basename "$f")"
  done
  if [ -f /etc/apt/sources.list ]; then
    sed -n "s/^deb \(\[[^]]*\] \)\{0,1\}/deb [arch=$arch] /p" /etc/apt/sources.list | grep -i debian \
      | sed "s/\b$host_codename\b/$codename/g" > "$A/sources.list" || :
  fi
  local apt=(apt-get -q -o APT::Architecture="$arch" -o APT::Architectures="$arch"
             -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache" -o Dir::Etc::SourceList="$A/sources.list"
             -o Dir::Etc::SourceParts="$A/sources" -o Dir::State::status=/dev/null -o Debug::NoLocking=1
             -o APT::Sandbox::User=root)
  # Lists are fetched once and reused (REFRESH_APT=1 fetches them again). A mirror caught mid-sync fails
  # an index now and then: try up to three times, then go on with what came in (and try again next run).
  local try
  for try in 1 2 3; do
    ls "$A/lists/"*_Packages* >/dev/null 2>&1 && [ ! -s "$A/update.failed" ] && [ "${REFRESH_APT:-0}" != 1 ] && break
    if "${apt[@]}" update >"$A/update.log" 2>&1; then : > "$A/update.failed"; break; fi
    cp "$A/update.log" "$A/update.failed"
    ls "$A/lists/"*_Packages* >/dev/null 2>&1 && break  # enough to go on with
    sleep 5
  done
  ls "$A/lists/"*_Packages* >/dev/null 2>&1 || die "apt-get update for $arch failed, see $A/update.log"
  [ ! -s "$A/update.failed" ] || say "warning: some $arch package lists did not update (see $A/update.log)"
  local closure
  closure=$("${apt[@]}" -s --no-install-recommends install "$@" 2>"$A/resolve.log" \
    | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([^]]*\)\]).*$/\1 \2 \3/p' | sort) \
    || die "apt could not resolve $* for $arch, see $A/resolve.log"
  [ -n "$closure" ] || die "apt resolved nothing for $arch: $*"
  local stamp="layout 2 $closure"  # bump the layout number when the unpacking below changes
  if [ -f "$R/.closure" ] && [ "$(cat "$R/.closure")" = "$stamp" ]; then return; fi
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
  rm -f "$R.tmp"/usr/lib/python3.*/EXTERNALLY-MANAGED
  # What maintainer scripts would do: the BLAS/LAPACK alternatives Debian's numpy links against.
  for f in "$R.tmp"/usr/lib/*/blas/libblas.so.3 "$R.tmp"/usr/lib/*/lapack/liblapack.so.3; do
    [ -e "$f" ] && ln -sfn "$(basename "$(dirname "$f")")/$(basename "$f")" "$(dirname "$(dirname "$f")")/$(basename "$f")"
  done
  # Merged /usr (trixie): the ELF interpreter is /lib/ld-linux-*.so.*; base-files would make these links.
  for f in bin lib sbin; do [ -e "$R.tmp/$f" ] || [ ! -d "$R.tmp/usr/$f" ] || ln -s "usr/$f" "$R.tmp/$f"; done
  echo "$arch" > "$R.tmp/.arch"
  echo "$stamp" > "$R.tmp/.closure"
  rm -rf "$R" && mv "$R.tmp" "$R"
  say "$name sysroot ($codename $arch): $(wc -l <<<"$closure") packages, $(du -sh "$R" | cut -f1)"
}

# A board view is what qemu gets as -L: the sysroot plus a fake /proc/cpuinfo and CPU topology of the
# board (qemu passes the host's x86 /proc/cpuinfo through, on which LiteRT's cpuinfo library segfaults).
view() {  # NAME ROOT ARCHITECTURE PART VARIANT REVISION FEATURES MODEL
  local V=$WORK/$1 root=$2 e i c
  rm -rf "$V" && mkdir -p "$V/proc" "$V/sys/devices/system/cpu"
  for e in bin etc lib sbin usr var; do [ -e "$WORK/root-$root/$e" ] && ln -s "../root-$root/$e" "$V/$e"; done
  c=$V/sys/devices/system/cpu
  for e in possible present online; do echo 0-3 > "$c/$e"; done
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: %s\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
      "$i" "$7" "$3" "$5" "$4" "$6" >> "$V/proc/cpuinfo"
    mkdir -p "$c/cpu$i/topology"
    echo 0 > "$c/cpu$i/topology/physical_package_id"
    echo "$i" > "$c/cpu$i/topology/core_id"
  done
  printf 'Model\t\t: %s\n' "$8" >> "$V/proc/cpuinfo"
}

emulate() {  # ROOT VIEW PYTHONPATH CPU -- python args (the guest must not see the host's Python setup)
  local root=$WORK/root-$1 v=$2 pp=$3 cpu=$4 q=qemu-aarch64-static; shift 4
  [ "$(cat "$root/.arch")" = armhf ] && q=qemu-arm-static
  env -u LD_LIBRARY_PATH -u LD_PRELOAD -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV PYTHONNOUSERSITE=1 \
    PYTHONPATH="$pp" "$q" -L "$v" -cpu "$cpu" "$root/usr/bin/$(readlink "$root/usr/bin/python3")" "$@"
}

step "sysroots (Debian bookworm arm64 and armhf python3.11, trixie armhf python3.13)"
sysroot aarch64 arm64 bookworm python3.11-minimal libpython3.11-stdlib libstdc++6 libgcc-s1 python3-pip
sysroot armv7l armhf bookworm python3.11-minimal libpython3.11-stdlib libstdc++6 python3-numpy python3-pip
sysroot armv7l-trixie armhf trixie python3.13-minimal libpython3.13-stdlib python3-numpy python3-pip
view pi4 aarch64 8 0xd08 0x0 3 "fp asimd evtstrm crc32 cpuid" "Raspberry Pi 4 Model B Rev 1.5"
view pi5 aarch64 8 0xd0b 0x4 1 \
  "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
  "Raspberry Pi 5 Model B Rev 1.0"
view pi4-32 armv7l 7 0xd08 0x0 3 "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32" \
  "Raspberry Pi 4 Model B Rev 1.5"

# --------------------------------------------------------------------------- 2. does `pip install .` resolve?
# pip runs on the target interpreter, so platform_machine, python_version and the glibc for manylinux
# tags are the target's. aarch64: a fresh environment (--ignore-installed). armv7l: numpy counts as
# installed from Debian's python3-numpy (PyPI has no armv7l numpy wheel; a Pi gets it from apt or piwheels).
# The project goes in as the wheel `pip install .` builds (same metadata, markers unevaluated): building
# it under emulation would need pip to start the emulated python as a subprocess, which needs binfmt_misc.
resolve() {  # ROOT CPU PIP-ARGS...
  local root=$1 cpu=$2; shift 2
  local report=$WORK/resolve-$root.json
  emulate "$root" "$WORK/root-$root" "" "$cpu" -m pip install --dry-run --break-system-packages --quiet \
    --only-binary=:all: --report "$report" "$@" "$WHEEL" >"$WORK/resolve-$root.log" 2>&1 || {
      tail -5 "$WORK/resolve-$root.log" >&2; die "pip install . does not resolve on $root, see $WORK/resolve-$root.log"; }
  "$PY" -c '
import json, sys
report = json.load(open(sys.argv[1]))
env = report["environment"]
items = sorted(i["metadata"]["name"] + "==" + i["metadata"]["version"] for i in report["install"])
print(env["platform_machine"], "Python", env["python_full_version"] + ": pip install . resolves to", " ".join(items))
' "$report"
}
pinned() {  # ROOT: what `pip install .` resolved there, as name==version (the project itself left out)
  "$PY" -c '
import json, sys
for i in json.load(open(sys.argv[1]))["install"]:
    if i["metadata"]["name"] != "edge-infer":
        print(i["metadata"]["name"] + "==" + i["metadata"]["version"])' "$WORK/resolve-$1.json"
}
step "resolving pip install . under emulation (aarch64 3.11, armv7l 3.11, armv7l 3.13)"
rm -rf "$WORK/dist"
EDGE_INFER_PURE=1 "$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$ROOT" >"$WORK/wheel.log" 2>&1 \
  || die "building the project's wheel failed, see $WORK/wheel.log"
WHEEL=$(ls "$WORK"/dist/edge_infer-*.whl)
resolve aarch64 cortex-a72 --ignore-installed
resolve armv7l cortex-a7
resolve armv7l-trixie cortex-a7
# Python 3.9 on armv7l (Raspberry Pi OS bullseye, glibc 2.31): the interpreter's wheel is on the index.
rm -rf "$WORK/armv7l-py3.9"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_armv7l --python-version 3.9 \
  --implementation cp --abi cp39 -d "$WORK/armv7l-py3.9" "tflite-runtime>=2.13" >"$WORK/armv7l-py3.9.log" 2>&1 \
  && echo "armv7l Python 3.9 (glibc 2.17+): on the index: $(cd "$WORK/armv7l-py3.9" && ls tflite_runtime-*.whl)" \
  || die "no tflite-runtime wheel for armv7l Python 3.9, see $WORK/armv7l-py3.9.log"

# ------------------------------------------------------------------------------------------ 3. site dirs
# Host pip installs the target's wheels (--platform tags; bookworm has glibc 2.36) into one dir per
# backend, cached by the requirement list.
site() {  # NAME ARCH REQUIREMENTS...
  local name=$1 arch=$2; shift 2
  local S=$WORK/site-$name key="$*" v plat=(--only-binary=:all: --python-version 3.11 --implementation cp
    --abi cp311 --abi abi3 --abi none --platform "manylinux2014_$arch")
  for v in $(seq 17 36); do plat+=(--platform "manylinux_2_${v}_$arch"); done
  [ -f "$S/.reqs" ] && [ "$(cat "$S/.reqs")" = "$key" ] && return
  mkdir -p "$WORK/wheels"
  "$PY" -m pip download --quiet --no-deps "${plat[@]}" -d "$WORK/wheels" "$@" >"$WORK/site-$name.log" 2>&1 \
    || die "pip download for $name failed, see $WORK/site-$name.log"
  rm -rf "$S.tmp"
  "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WORK/wheels" --no-compile "${plat[@]}" \
    --target "$S.tmp" "$@" >>"$WORK/site-$name.log" 2>&1 \
    || die "pip install --target for $name failed, see $WORK/site-$name.log"
  rm -rf "$S.tmp/bin"  # console scripts with a host shebang; the guest runs `python -m`
  echo "$key" > "$S.tmp/.reqs"
  rm -rf "$S" && mv "$S.tmp" "$S"
}
step "wheels for the targets"
mapfile -t LITERT_REQS < <(pinned aarch64)   # exactly what `pip install .` resolved for aarch64
# shellcheck disable=SC2086
site litert aarch64 ${LITERT_PIN:-"${LITERT_REQS[@]}"}
# shellcheck disable=SC2086
site tflite aarch64 $TFLITE_REQS pyserial==3.5
mapfile -t ARMV7L_REQS < <(pinned armv7l)     # tflite-runtime (armv7l, cp311) and pyserial; numpy is Debian's
site armv7l armv7l "${ARMV7L_REQS[@]}"
rm -rf "$WORK/site-proj"
"$PY" -m pip install --quiet --no-deps --no-compile --target "$WORK/site-proj" "$WHEEL" \
  >"$WORK/site-proj.log" 2>&1 || die "pip install --target of the project failed, see $WORK/site-proj.log"

# ---------------------------------------------------------------------------------- 4. the same decisions?
OUTPUT_SCALE=$("$PY" -m edge_infer inspect "$SPEC" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["scale"])')
# --no-data-ms 0: an emulated process on a busy host can stall for more than three hop periods between two
# frames of the log, and the silence timer would decide no_data there; the check compares model decisions.
replay() {  # OUT BACKEND COMMAND...
  local out=$1 backend=$2; shift 2
  "$@" -m edge_infer replay "$LOG" --model "$SPEC" --backend "$backend" --budget-ms 10000 --no-data-ms 0 \
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
for run in pi4:aarch64:cortex-a72:litert:litert pi5:aarch64:cortex-a76:litert:litert \
           pi4:aarch64:cortex-a72:tflite:tflite-runtime pi4-32:armv7l:cortex-a7:armv7l:tflite-runtime; do
  IFS=: read -r board root cpu site backend <<<"$run"
  step "emulated $board $root ($cpu) $backend"
  out=$WORK/arm_${board}_$site
  replay "$out" "$backend" emulate "$root" "$WORK/$board" "$WORK/site-proj:$WORK/site-$site" "$cpu"
  summary=$("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); print("accuracy %(accuracy)s decisions %(decisions)s fallbacks %(fallback_decisions)s backend %(backend)s %(backend_version)s" % s)' "$out.json")
  reference=$WORK/x86_litert.jsonl; [ "$backend" = tflite-runtime ] && reference=$WORK/x86_tflite.jsonl
  verdict=$("$PY" "$ROOT/scripts/compare_decisions.py" "$reference" "$out.jsonl" --tolerance "$OUTPUT_SCALE") || status=1
  echo "$board $root $backend: $summary"
  echo "  vs x86 $backend: $verdict"
done

# ------------------------------------------------------- 5. where no interpreter wheel exists: one line
# armv7l with Python 3.13 (Raspberry Pi OS trixie, 32-bit): installed without an interpreter, edge-infer
# must say which one is missing and how to get one (exit 2), not fail in the resolver or with a traceback.
step "emulated armv7l Python 3.13, installed without an interpreter"
mapfile -t TRIXIE_REQS < <(pinned armv7l-trixie)   # pyserial (numpy is Debian's)
rm -rf "$WORK/site-trixie"
"$PY" -m pip install --quiet --no-deps --no-compile --target "$WORK/site-trixie" "${TRIXIE_REQS[@]}" \
  >"$WORK/site-trixie.log" 2>&1 || die "pip install --target for trixie failed, see $WORK/site-trixie.log"
code=0
emulate armv7l-trixie "$WORK/root-armv7l-trixie" "$WORK/site-proj:$WORK/site-trixie" cortex-a7 \
  -m edge_infer inspect "$SPEC" >"$WORK/trixie.out" 2>"$WORK/trixie.err" || code=$?
echo "armv7l Python 3.13, no interpreter: exit $code: $(cat "$WORK/trixie.err")"
if [ $code -ne 2 ] || [ "$(wc -l < "$WORK/trixie.err")" -ne 1 ] \
   || ! grep -q "^edge-infer: error: no TFLite interpreter is installed (armv7l with Python 3.13)" "$WORK/trixie.err"; then
  say "FAIL: expected exit 2 and one line naming the interpreter to get"; status=1
fi
step "done ($(du -sh "$WORK" | cut -f1) in $WORK)"
exit $status
