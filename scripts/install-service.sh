#!/usr/bin/env bash
# Install edge-infer as a systemd service on this board (a Raspberry Pi, say):
#
#   1. a virtual environment under /opt/edge-infer/venv with edge-infer (and the metrics extra) in it;
#   2. /etc/edge-infer/config.toml from systemd/config.toml, if there is none yet (an existing one is kept);
#   3. the config checked with `edge-infer check-config` (nothing is enabled if it is invalid);
#   4. /etc/systemd/system/edge-infer.service, then `systemctl enable --now edge-infer`.
#
# Run it as root from the source tree. --dry-run prints every step instead of doing it.
# See docs/operations.md.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/edge-infer
CONFIG=/etc/edge-infer/config.toml
UNIT_DIR=/etc/systemd/system
SOURCE_URI=""
EXTRAS=metrics
PYTHON=${PYTHON:-python3}
DRY_RUN=0
ENABLE=1

usage() {
    cat <<EOF
usage: $0 [--dry-run] [--prefix DIR] [--config FILE] [--unit-dir DIR] [--source URI] [--no-enable]

  --dry-run       print what would be done, change nothing
  --prefix DIR    where the virtual environment goes (default $PREFIX; the venv is DIR/venv)
  --config FILE   the service config (default $CONFIG); written only if it does not exist
  --unit-dir DIR  where the unit goes (default $UNIT_DIR)
  --source URI    the source to write into a new config (default: the template's serial:/dev/ttyACM0)
  --no-enable     install, but do not enable or start the service
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --config) CONFIG=${2:?--config needs a file}; shift ;;
        --unit-dir) UNIT_DIR=${2:?--unit-dir needs a directory}; shift ;;
        --source) SOURCE_URI=${2:?--source needs a URI}; shift ;;
        --no-enable) ENABLE=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-service.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

VENV=$PREFIX/venv
UNIT=$UNIT_DIR/edge-infer.service

# Run a command, or in a dry run only show it.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

# Write stdin to a file with a mode, or in a dry run show what would be written.
write_file() {
    local path=$1 mode=$2
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ write %s (mode %s):\n' "$path" "$mode"
        sed 's/^/    | /'
    else
        local tmp
        tmp=$(mktemp "$path.XXXXXX")
        cat > "$tmp"
        chmod "$mode" "$tmp"
        mv "$tmp" "$path"
    fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install-service.sh: run as root (or with --dry-run to see what it would do)" >&2
    exit 1
fi

echo "# 1. virtual environment $VENV with edge-infer from $REPO"
run mkdir -p "$PREFIX"
run "$PYTHON" -m venv "$VENV"
run "$VENV/bin/pip" install --quiet --upgrade pip
run "$VENV/bin/pip" install --quiet "$REPO[$EXTRAS]"

echo "# 2. config $CONFIG"
if [ -e "$CONFIG" ]; then
    echo "keeping the existing $CONFIG"
else
    run mkdir -p "$(dirname "$CONFIG")"
    if [ -n "$SOURCE_URI" ]; then
        sed "s#^uri = \"[^\"]*\"#uri = \"$SOURCE_URI\"#" "$REPO/systemd/config.toml" | write_file "$CONFIG" 0644
    else
        write_file "$CONFIG" 0644 < "$REPO/systemd/config.toml"
    fi
fi

echo "# 3. check the config"
if [ "$DRY_RUN" = 1 ]; then
    run "$VENV/bin/edge-infer" check-config "$CONFIG"
elif ! "$VENV/bin/edge-infer" check-config "$CONFIG"; then
    echo "install-service.sh: fix $CONFIG (the line above says what is wrong), then run this again" >&2
    exit 1
fi

echo "# 4. unit $UNIT"
run mkdir -p "$UNIT_DIR"
sed "s#/opt/edge-infer/venv/bin/python#$VENV/bin/python#; s#/etc/edge-infer/config.toml#$CONFIG#" \
    "$REPO/systemd/edge-infer.service" | write_file "$UNIT" 0644

if [ "$ENABLE" = 0 ]; then
    echo "installed; start it with: systemctl daemon-reload && systemctl enable --now edge-infer"
elif [ "$DRY_RUN" = 0 ] && [ ! -d /run/systemd/system ]; then
    echo "systemd is not running here; on the board run: systemctl daemon-reload && systemctl enable --now edge-infer"
else
    run systemctl daemon-reload
    run systemctl enable --now edge-infer.service
    echo "follow it with: journalctl -u edge-infer -f    (and: systemctl status edge-infer)"
fi
