#!/usr/bin/env bash
# Remove the voxd service and its virtual environment.
#
# Keeps /etc/voxd (your config) and /var/lib/voxd (the 9 GB model) unless
# --purge is given, so that uninstall + install does not cost a download.
set -euo pipefail

SRC_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=scripts/install-common.sh
source "$SRC_DIR/scripts/install-common.sh" # paths, log/warn/die/did/run

PURGE=0
ORIG_ARGS=("$@")

usage() {
    cat <<EOF
Usage: sudo ./uninstall.sh [options]

Stops and disables the voxd service, removes its unit, its GPU drop-ins,
PREFIX/venv and the $BIN_DIR/voxd link.
Config ($CONF_DIR), state and model ($STATE_DIR) and the user '$SERVICE_USER' are kept.

Options:
  --prefix DIR   where voxd was installed (default: $PREFIX)
  --purge        also delete $CONF_DIR, $STATE_DIR, your unit drop-ins and the user
  --dry-run      print what would be done, change nothing
  -h, --help     show this help
EOF
}

parse_args() {
    while (($#)); do
        case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --purge) PURGE=1 ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; printf '\nerror: unknown option %s\n' "$1" >&2; exit 2 ;;
        esac
        shift
    done
    # Guard the rm -rf below against an empty or root prefix.
    [[ $PREFIX == /* && $PREFIX != / ]] || die "--prefix must be an absolute directory other than /"
    PREFIX="${PREFIX%/}"
}

require_root() {
    ((EUID == 0 || DRY_RUN)) && return 0
    if command -v sudo >/dev/null; then
        exec sudo -- bash "$SRC_DIR/uninstall.sh" "${ORIG_ARGS[@]}"
    fi
    die "run as root (or install sudo)"
}

systemd_running() {
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

remove_path() {
    if [[ -e $1 || -L $1 ]]; then
        run rm -rf -- "$1"
        did "removed $1"
    fi
}

stop_service() {
    if ! systemd_running; then
        warn "systemd is not running: not stopping or disabling $SERVICE"
        return 0
    fi
    if [[ -f $UNIT_DIR/$SERVICE.service ]]; then
        run systemctl disable --now "$SERVICE.service" || warn "could not stop $SERVICE"
        did "stopped and disabled $SERVICE.service"
    fi
}

remove_link() {
    # Only the link install.sh made: a voxd from elsewhere is not ours.
    local link="$BIN_DIR/voxd"
    if [[ -L $link && "$(readlink -- "$link")" == "$PREFIX/venv/bin/voxd" ]]; then
        run rm -f -- "$link"
        did "removed $link"
    fi
}

remove_gpu_dropins() {
    # Only install.sh's own; the directory goes too once nothing else is in it.
    local dir="$UNIT_DIR/$SERVICE.service.d" conf
    for conf in "${GPU_DROPINS[@]}"; do
        remove_path "$dir/$conf"
    done
    if [[ -d $dir ]] && [[ -z "$(ls -A -- "$dir")" ]]; then
        run rmdir -- "$dir"
    fi
}

remove_files() {
    remove_path "$UNIT_DIR/$SERVICE.service"
    remove_gpu_dropins
    remove_link
    remove_path "$PREFIX/venv"
    remove_path "$PREFIX/build"
    if [[ -d $PREFIX ]] && [[ -z "$(ls -A -- "$PREFIX")" ]]; then
        run rmdir -- "$PREFIX"
    fi
    if ((PURGE)); then
        remove_path "$UNIT_DIR/$SERVICE.service.d"
        remove_path "$CONF_DIR"
        remove_path "$STATE_DIR"
        if id -u "$SERVICE_USER" >/dev/null 2>&1; then
            run userdel "$SERVICE_USER"
            did "deleted user $SERVICE_USER"
        fi
    fi
    if systemd_running; then
        run systemctl daemon-reload
        run systemctl reset-failed "$SERVICE.service" 2>/dev/null || true
    fi
}

summary() {
    printf '\nvoxd uninstall %s\n' "$( ((DRY_RUN)) && echo '(dry run, nothing changed)' || echo 'done')"
    if ((${#DONE[@]})); then
        printf '  - %s\n' "${DONE[@]}"
    else
        printf '  - nothing was installed\n'
    fi
    if ((!PURGE)); then
        printf '  kept: %s, %s and user %s (--purge removes them)\n' \
            "$CONF_DIR" "$STATE_DIR" "$SERVICE_USER"
    fi
}

main() {
    parse_args "$@"
    require_root
    stop_service
    remove_files
    summary
}

# Sourced (as the tests do), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
