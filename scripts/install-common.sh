# install-common.sh - what install.sh and uninstall.sh share, sourced by both:
# where voxd lives on the machine, and the helpers that log, fail and make
# (or, with --dry-run, only print) each change. Not a script of its own.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this

PREFIX=/opt/voxd
DEFAULT_PREFIX=/opt/voxd
CONF_DIR=/etc/voxd
STATE_DIR=/var/lib/voxd
UNIT_DIR=/etc/systemd/system
SERVICE=voxd
SERVICE_USER=voxd
SERVICE_GROUP=voxd # its own group (useradd --user-group)
BIN_DIR=/usr/local/bin
# The drop-ins install.sh adds for an NVIDIA GPU (uninstall.sh removes them;
# other drop-ins are the user's).
GPU_DROPINS=(gpu.conf jetson.conf)

DRY_RUN=0
DONE=() # what was done, for the summary at the end

log() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
did() { DONE+=("$*"); }

# Run a command, or only show it with --dry-run. Every change goes through here.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    "$@"
}
