#!/usr/bin/env bash
# Install voxd as a systemd service on Debian / Raspberry Pi OS (and other
# apt-based systems such as Jetson's Ubuntu).
#
# Safe to run again: every step checks what is already there. It never
# overwrites /etc/voxd/voxd.toml, and re-running rebuilds the package and
# restarts the service, which is how to upgrade from a newer checkout.
set -euo pipefail
# The service user must be able to read everything installed here, whatever
# umask the caller's shell (or sudo) passed on.
umask 022

PREFIX=/opt/voxd
CONF_DIR=/etc/voxd
STATE_DIR=/var/lib/voxd
UNIT_DIR=/etc/systemd/system
SERVICE=voxd
SERVICE_USER=voxd
DEFAULT_PREFIX=/opt/voxd

MODEL_FROM=""
MODEL_URL=""
WITH_MODEL=1
WITH_BROKER=0
WITH_VAD=0
START=1
DRY_RUN=0
PYTHON=""

SRC_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
ORIG_ARGS=("$@")
DONE=()

usage() {
    cat <<EOF
Usage: sudo ./install.sh [options]

Installs voxd from this checkout into PREFIX/venv, creates the system user
'$SERVICE_USER', installs $CONF_DIR/voxd.toml (only if absent) and the systemd unit,
fetches the model into $STATE_DIR/model and starts the service.

Options:
  --prefix DIR       install the virtual environment under DIR (default: $DEFAULT_PREFIX)
  --model-dir DIR    copy the model from a local directory instead of downloading it
  --model-url URL    download the model from another base URL
  --no-model         do not fetch the model (the service is then enabled, not started)
  --with-broker      also install the mosquitto MQTT broker on this machine
  --with-vad         also install onnxruntime for the optional Silero VAD
  --python PATH      interpreter for the venv (default: /usr/bin/python3)
  --no-start         enable the service but do not (re)start it
  --dry-run          print what would be done, change nothing
  -h, --help         show this help

A model download that needs a Hugging Face login reads HF_TOKEN:
  sudo HF_TOKEN=hf_... ./install.sh
EOF
}

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

parse_args() {
    while (($#)); do
        case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --model-dir) MODEL_FROM="${2:?--model-dir needs a directory}"; shift ;;
        --model-dir=*) MODEL_FROM="${1#*=}" ;;
        --model-url) MODEL_URL="${2:?--model-url needs a URL}"; shift ;;
        --model-url=*) MODEL_URL="${1#*=}" ;;
        --no-model) WITH_MODEL=0 ;;
        --with-broker) WITH_BROKER=1 ;;
        --with-vad) WITH_VAD=1 ;;
        --python) PYTHON="${2:?--python needs a path}"; shift ;;
        --python=*) PYTHON="${1#*=}" ;;
        --no-start) START=0 ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; printf '\nerror: unknown option %s\n' "$1" >&2; exit 2 ;;
        esac
        shift
    done
    [[ $PREFIX == /* && $PREFIX != / ]] || die "--prefix must be an absolute directory other than /"
    PREFIX="${PREFIX%/}"
    VENV="$PREFIX/venv"
    if [[ -n $MODEL_FROM ]]; then
        MODEL_FROM="$(cd -- "$MODEL_FROM" 2>/dev/null && pwd)" || die "--model-dir: no such directory"
    fi
}

require_root() {
    ((EUID == 0 || DRY_RUN)) && return 0
    if command -v sudo >/dev/null; then
        log "re-running with sudo"
        exec sudo -- bash "$SRC_DIR/install.sh" "${ORIG_ARGS[@]}"
    fi
    die "run as root (or install sudo)"
}

systemd_running() {
    # The test sd_booted(3) uses: this directory exists only when systemd is PID 1.
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

package_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

install_packages() {
    # Build deps for the native engine (compiler, cmake, ninja) and PyAudio
    # (portaudio headers, which pull in libasound2 under whatever name this
    # release gives it), plus mosquitto_sub/pub for checking the output.
    local pkgs=(python3 python3-venv python3-dev build-essential cmake ninja-build
        portaudio19-dev mosquitto-clients)
    ((WITH_BROKER)) && pkgs+=(mosquitto)
    if ! command -v apt-get >/dev/null; then
        warn "apt-get not found: install the equivalents of: ${pkgs[*]}"
        return 0
    fi
    local missing=() p
    for p in "${pkgs[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "system packages already installed"
        return 0
    fi
    log "installing packages: ${missing[*]}"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    did "installed packages: ${missing[*]}"
}

check_python() {
    # The distribution's interpreter by default: it matches python3-dev, and
    # one under /home or /root (pyenv, conda) is hidden from the service by
    # ProtectHome=yes.
    if [[ -z $PYTHON ]]; then
        PYTHON=/usr/bin/python3
        [[ -x $PYTHON ]] || PYTHON="$(command -v python3 || true)"
    fi
    if [[ -z $PYTHON || ! -x $PYTHON ]]; then
        ((DRY_RUN)) && PYTHON=python3 && return 0
        die "python3 not found (install python3, or pass --python PATH)"
    fi
    local real
    real="$(readlink -f -- "$PYTHON")"
    case "$real" in
    /home/* | /root/*)
        local why="$PYTHON is under /home or /root, which the service cannot see; use --python"
        if ((DRY_RUN)); then warn "$why"; else die "$why"; fi
        ;;
    esac
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "voxd needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1)"
}

create_user() {
    if ! getent group audio >/dev/null; then
        run groupadd --system audio
        did "created group audio"
    fi
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --user-group --groups audio --home-dir "$STATE_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "voxd speech-to-text" \
            "$SERVICE_USER"
        did "created system user $SERVICE_USER (group audio)"
    elif ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx audio; then
        run usermod -a -G audio "$SERVICE_USER"
        did "added $SERVICE_USER to group audio"
    else
        log "user $SERVICE_USER exists"
    fi
}

install_venv() {
    # A venv whose interpreter is gone (e.g. after a Python upgrade by a
    # release upgrade) is rebuilt rather than patched.
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        run install -d -m 0755 "$PREFIX"
        run "$PYTHON" -m venv --clear "$VENV"
        did "created $VENV"
    fi
    local spec="$SRC_DIR"
    ((WITH_VAD)) && spec="${SRC_DIR}[vad]"
    log "building and installing voxd into $VENV (the native engine compiles here)"
    # Build under PREFIX, not in the checkout: a root-owned build/ would get in
    # the way of the checkout's owner, and keeping it makes a reinstall
    # an incremental rebuild.
    run "$VENV/bin/pip" install --disable-pip-version-check --no-input \
        --config-settings="build-dir=$PREFIX/build/{wheel_tag}" "$spec"
    did "installed voxd into $VENV"
}

install_config() {
    run install -d -m 0755 "$CONF_DIR"
    if [[ -e $CONF_DIR/voxd.toml ]]; then
        log "keeping existing $CONF_DIR/voxd.toml"
    elif [[ -f $SRC_DIR/config/voxd.toml ]]; then
        # Readable by the service's group only: it may hold the MQTT password.
        run install -m 0640 -o root -g "$SERVICE_USER" "$SRC_DIR/config/voxd.toml" "$CONF_DIR/voxd.toml"
        did "installed $CONF_DIR/voxd.toml (edit it, then: systemctl restart $SERVICE)"
    else
        warn "no config/voxd.toml in $SRC_DIR; create $CONF_DIR/voxd.toml yourself"
    fi
}

install_unit() {
    local unit="$UNIT_DIR/$SERVICE.service" tmp
    tmp="$(mktemp)"
    # The unit names the default prefix; point it at this install's venv.
    sed "s#^ExecStart=$DEFAULT_PREFIX/#ExecStart=$PREFIX/#" "$SRC_DIR/systemd/$SERVICE.service" >"$tmp"
    if [[ -f $unit ]] && cmp -s "$tmp" "$unit"; then
        log "unit $unit is up to date"
    else
        run install -D -m 0644 "$tmp" "$unit"
        did "installed $unit"
    fi
    rm -f "$tmp"
}

install_model() {
    ((WITH_MODEL)) || {
        log "skipping the model (--no-model)"
        return 0
    }
    local target="$STATE_DIR/model"
    local fetch=("$VENV/bin/python" -m voxd.modelfetch model download --dir "$target")
    if [[ -n $MODEL_FROM ]]; then
        fetch+=(--from "$MODEL_FROM")
    elif [[ -n $MODEL_URL ]]; then
        fetch+=(--url "$MODEL_URL")
    fi
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    log "fetching the model into $target (about 9 GB; an interrupted download resumes)"
    run "${fetch[@]}"
    # Fetched as root; the service reads it as $SERVICE_USER.
    run chown -R "$SERVICE_USER:$SERVICE_USER" "$target"
    did "model ready in $target"
}

model_present() {
    [[ -f $STATE_DIR/model/consolidated.safetensors ]]
}

start_service() {
    if ! systemd_running; then
        warn "systemd is not running (a container?): unit installed, not enabled or started"
        warn "start it by hand: $VENV/bin/voxd run --config $CONF_DIR/voxd.toml"
        return 0
    fi
    run systemctl daemon-reload
    run systemctl enable "$SERVICE.service"
    did "enabled $SERVICE.service"
    if ((!START)); then
        log "not starting (--no-start)"
    elif ! model_present && ((!DRY_RUN)); then
        warn "no model in $STATE_DIR/model: not starting; fetch it with"
        warn "  $VENV/bin/voxd model download --dir $STATE_DIR/model && systemctl start $SERVICE"
    else
        # restart, not start: a reinstall must load the new code.
        run systemctl restart "$SERVICE.service"
        did "(re)started $SERVICE.service"
    fi
}

summary() {
    printf '\nvoxd install %s\n' "$( ((DRY_RUN)) && echo '(dry run, nothing changed)' || echo 'done')"
    if ((${#DONE[@]})); then
        printf '  - %s\n' "${DONE[@]}"
    else
        printf '  - nothing to change\n'
    fi
    cat <<EOF

  config:  $CONF_DIR/voxd.toml   (then: sudo systemctl restart $SERVICE)
  status:  systemctl status $SERVICE
  logs:    journalctl -u $SERVICE -f
  model:   $VENV/bin/voxd model check --dir $STATE_DIR/model
  remove:  sudo $SRC_DIR/uninstall.sh   (--purge also deletes config and model)
EOF
}

main() {
    parse_args "$@"
    require_root
    [[ -f $SRC_DIR/pyproject.toml && -f $SRC_DIR/systemd/$SERVICE.service ]] ||
        die "run install.sh from a voxd checkout ($SRC_DIR has no pyproject.toml or unit)"
    install_packages
    check_python
    create_user
    install_venv
    install_config
    install_unit
    install_model
    start_service
    summary
}

main "$@"
