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

SRC_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=scripts/install-common.sh
source "$SRC_DIR/scripts/install-common.sh" # paths, log/warn/die/did/run
# apt and dpkg hold these while they run; on a first boot the automatic
# updates often do, for minutes.
DPKG_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
    /var/cache/apt/archives/lock)
LOCK_WAIT_S=600
LOCK_POLL_S=5
# Nodes that only an NVIDIA driver creates: a desktop/server GPU's control
# device, a Jetson's host1x control device and memory manager. Any of them
# present: the service gets the GPU drop-in. JETSON_DEVICES: also jetson.conf.
GPU_DEVICES=(/dev/nvidiactl /dev/nvhost-ctrl /dev/nvmap)
JETSON_DEVICES=(/dev/nvhost-ctrl /dev/nvmap)
GPU_GROUP=video

MODEL_FROM=""
MODEL_REPO=""
MODEL_FORMAT=""
MODEL_STATE="" # ready, skipped, failed (empty: not reached)
WITH_MODEL=1
WITH_BROKER=0
WITH_VAD=0
WITH_WAKEWORD=0
WITH_GPU=auto # auto (by GPU_DEVICES), 1 (--with-gpu), 0 (--without-gpu)
START=1
PYTHON=""

ORIG_ARGS=("$@")

usage() {
    cat <<EOF
Usage: sudo ./install.sh [options]

Installs voxd from this checkout into PREFIX/venv, creates the system user
'$SERVICE_USER', installs $CONF_DIR/voxd.toml (only if absent) and the systemd unit,
links $BIN_DIR/voxd, downloads the model from the Hugging Face Hub into
$STATE_DIR/model (quantized to what this machine's memory holds, as the
service user) and starts the service.

Options:
  --prefix DIR       install the virtual environment under DIR (default: $DEFAULT_PREFIX)
  --model-dir DIR    install the model from a local directory instead of downloading it
  --model-repo ID    download the model from another Hub repository
  --model-format F   auto (default: from this machine's memory), q8, q4 or bf16
  --no-model         do not fetch the model (the service is then enabled, not started)
  --with-broker      also install the mosquitto MQTT broker on this machine
  --with-vad         also install onnxruntime for the optional Silero VAD
  --with-wakeword    also install pymicro-wakeword for the optional wake-word gate
  --with-gpu         let the service use an NVIDIA GPU (default: when one is found)
  --without-gpu      keep the service's sandbox closed to the GPU, even if there is one
  --python PATH      interpreter for the venv (default: /usr/bin/python3)
  --no-start         enable the service but do not (re)start it
  --dry-run          print what would be done, change nothing
  -h, --help         show this help

A model download that needs a Hugging Face login reads HF_TOKEN (HF_ENDPOINT
for a mirror):
  sudo HF_TOKEN=hf_... ./install.sh
EOF
}

parse_args() {
    while (($#)); do
        case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --model-dir) MODEL_FROM="${2:?--model-dir needs a directory}"; shift ;;
        --model-dir=*) MODEL_FROM="${1#*=}" ;;
        --model-repo) MODEL_REPO="${2:?--model-repo needs a repository id}"; shift ;;
        --model-repo=*) MODEL_REPO="${1#*=}" ;;
        --model-format) MODEL_FORMAT="${2:?--model-format needs auto, q8, q4 or bf16}"; shift ;;
        --model-format=*) MODEL_FORMAT="${1#*=}" ;;
        --no-model) WITH_MODEL=0 ;;
        --with-broker) WITH_BROKER=1 ;;
        --with-vad) WITH_VAD=1 ;;
        --with-wakeword) WITH_WAKEWORD=1 ;;
        --with-gpu) WITH_GPU=1 ;;
        --without-gpu) WITH_GPU=0 ;;
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
    case "$MODEL_FORMAT" in
    "" | auto | q8 | q4 | bf16) ;;
    *) die "--model-format must be auto, q8, q4 or bf16, not $MODEL_FORMAT" ;;
    esac
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
        # sudo clears the environment: hand on what the model download reads.
        local keep=() var
        for var in HF_TOKEN HF_ENDPOINT HTTPS_PROXY https_proxy; do
            [[ -n ${!var:-} ]] && keep+=("$var=${!var}")
        done
        exec sudo -- env "${keep[@]}" bash "$SRC_DIR/install.sh" "${ORIG_ARGS[@]}"
    fi
    die "run as root (or install sudo)"
}

systemd_running() {
    # The test sd_booted(3) uses: this directory exists only when systemd is PID 1.
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

dpkg_locked() {
    # apt and dpkg take fcntl (POSIX) locks, which flock(1) does not see: try
    # to take each one for an instant. Exit 0 when one is held.
    command -v python3 >/dev/null || return 1
    python3 - "${DPKG_LOCKS[@]}" <<'PY'
import fcntl, sys
for path in sys.argv[1:]:
    try:
        f = open(path, "r+")
    except OSError:
        continue
    with f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit(0)
sys.exit(1)
PY
}

lock_holders() {
    local who
    who="$(pgrep -l -x 'apt|apt-get|aptitude|dpkg|unattended-upgr|packagekitd' | tr '\n' ' ')"
    printf '%s' "${who:-an unknown process}"
}

wait_for_dpkg_lock() {
    dpkg_locked || return 0
    log "another package manager is running ($(lock_holders)); on a first boot that is the automatic updates. Waiting for it, at most $((LOCK_WAIT_S / 60)) min"
    local waited=0
    while dpkg_locked; do
        ((waited < LOCK_WAIT_S)) ||
            die "the package manager is still busy after $waited s ($(lock_holders)); let it finish, then run install.sh again"
        sleep "$LOCK_POLL_S"
        waited=$((waited + LOCK_POLL_S))
        ((waited % 60)) || log "still waiting for the package manager ($waited s)"
    done
    log "the package manager is free (waited $waited s)"
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
    ((DRY_RUN)) || wait_for_dpkg_lock
    # apt waits by itself too, for a lock taken between the check and here.
    local wait_lock=(-o "DPkg::Lock::Timeout=$LOCK_WAIT_S")
    run apt-get "${wait_lock[@]}" update
    run env DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y \
        --no-install-recommends "${missing[@]}"
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
    local extras=()
    ((WITH_VAD)) && extras+=(vad)
    ((WITH_WAKEWORD)) && extras+=(wakeword)
    local spec="$SRC_DIR"
    if ((${#extras[@]})); then
        spec="${SRC_DIR}[$(IFS=,; echo "${extras[*]}")]"
    fi
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
        did "installed $CONF_DIR/voxd.toml (edit it with sudo, then: sudo systemctl restart $SERVICE)"
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

first_present() {
    # The first of the given paths that exists (device nodes, in practice).
    local path
    for path in "$@"; do
        if [[ -e $path ]]; then
            printf '%s' "$path"
            return 0
        fi
    done
    return 1
}

gpu_wanted() {
    # Whether the service gets the GPU drop-ins; GPU_WHY says why, for the log.
    local node
    case "$WITH_GPU" in
    1) GPU_WHY="--with-gpu"; return 0 ;;
    0) GPU_WHY="--without-gpu"; return 1 ;;
    esac
    if node="$(first_present "${GPU_DEVICES[@]}")"; then
        GPU_WHY="found $node"
        return 0
    fi
    GPU_WHY="no NVIDIA GPU found: none of ${GPU_DEVICES[*]}"
    return 1
}

gpu_dropins() {
    # The drop-ins this machine's GPU needs: gpu.conf, and on a Jetson jetson.conf.
    GPU_CONFS=(gpu.conf)
    if first_present "${JETSON_DEVICES[@]}" >/dev/null; then
        GPU_CONFS+=(jetson.conf)
    fi
}

add_gpu_group() {
    # gpu.conf names the group in SupplementaryGroups=, and a unit naming a
    # missing group does not start. Membership also lets `sudo -u voxd voxd
    # bench` reach the GPU as the service does.
    if ! getent group "$GPU_GROUP" >/dev/null; then
        run groupadd --system "$GPU_GROUP"
        did "created group $GPU_GROUP"
    fi
    if id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$GPU_GROUP"; then
        log "user $SERVICE_USER is in group $GPU_GROUP"
    else
        run usermod -a -G "$GPU_GROUP" "$SERVICE_USER"
        did "added $SERVICE_USER to group $GPU_GROUP (GPU device nodes)"
    fi
}

install_gpu() {
    local dir="$UNIT_DIR/$SERVICE.service.d" conf
    if ! gpu_wanted; then
        log "GPU: not opening the service's sandbox to a GPU ($GPU_WHY)"
        # A GPU install before, --without-gpu now (or the GPU is gone): undo it.
        for conf in "${GPU_DROPINS[@]}"; do
            if [[ -e $dir/$conf ]]; then
                run rm -f -- "$dir/$conf"
                did "removed $dir/$conf ($GPU_WHY)"
            fi
        done
        return 0
    fi
    log "GPU: letting the service reach the NVIDIA GPU ($GPU_WHY)"
    add_gpu_group
    gpu_dropins
    for conf in "${GPU_DROPINS[@]}"; do
        if [[ " ${GPU_CONFS[*]} " == *" $conf "* ]]; then
            if [[ -f $dir/$conf ]] && cmp -s "$SRC_DIR/systemd/$SERVICE.service.d/$conf" "$dir/$conf"; then
                log "$dir/$conf is up to date"
            else
                run install -D -m 0644 "$SRC_DIR/systemd/$SERVICE.service.d/$conf" "$dir/$conf"
                did "installed $dir/$conf (GPU access: $GPU_WHY)"
            fi
        elif [[ -e $dir/$conf ]]; then
            run rm -f -- "$dir/$conf"
            did "removed $dir/$conf (not a Jetson)"
        fi
    done
}

link_command() {
    # voxd on PATH (also under sudo's secure_path), pointing into the venv.
    local link="$BIN_DIR/voxd"
    if [[ -e $link && ! -L $link ]]; then
        warn "$link exists and is not a link; leaving it (voxd is $VENV/bin/voxd)"
        return 0
    fi
    if [[ "$(readlink -- "$link" 2>/dev/null)" == "$VENV/bin/voxd" ]]; then
        log "$link is in place"
        return 0
    fi
    run ln -sfn -- "$VENV/bin/voxd" "$link"
    did "linked $link -> $VENV/bin/voxd"
}

model_command() {
    # The download runs as the service user, so that everything in the model
    # directory (and huggingface_hub's cache in its home) is the service's;
    # --model-dir is read as root, as the source may be anywhere.
    MODEL_CMD=()
    [[ -n $MODEL_FROM ]] || MODEL_CMD=(runuser -u "$SERVICE_USER" -- env "HOME=$STATE_DIR")
    MODEL_CMD+=("$VENV/bin/voxd" model download --dir "$STATE_DIR/model")
    MODEL_CMD+=(--config "$CONF_DIR/voxd.toml")
    [[ -z $MODEL_FROM ]] || MODEL_CMD+=(--from "$MODEL_FROM")
    [[ -z $MODEL_REPO ]] || MODEL_CMD+=(--repo "$MODEL_REPO")
    [[ -z $MODEL_FORMAT ]] || MODEL_CMD+=(--format "$MODEL_FORMAT")
}

install_model() {
    if ((!WITH_MODEL)); then
        log "skipping the model (--no-model)"
        MODEL_STATE=skipped
        return 0
    fi
    local target="$STATE_DIR/model"
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_GROUP" "$STATE_DIR" "$target"
    model_command
    if [[ -n $MODEL_FROM ]]; then
        log "installing the model from $MODEL_FROM into $target"
    elif model_present; then # a re-run: the download step only checks it
        log "checking the model in $target (downloaded only if it is missing or not the wanted format)"
    else
        log "fetching the model into $target (an 8.9 GB download, then quantized to fit this machine)"
    fi
    if run "${MODEL_CMD[@]}"; then
        MODEL_STATE=ready
        did "model ready in $target"
    else
        MODEL_STATE=failed
        warn "the model is not installed; the install goes on without it (see the end)"
    fi
    # Whatever happened, leave nothing in it that the service user cannot use.
    run chown -R "$SERVICE_USER:$SERVICE_GROUP" "$target"
}

model_present() {
    [[ -f $STATE_DIR/model/consolidated.safetensors ]]
}

start_service() {
    if ! systemd_running; then
        warn "systemd is not running (a container?): unit installed, not enabled or started"
        warn "start it by hand: voxd run --config $CONF_DIR/voxd.toml"
        return 0
    fi
    run systemctl daemon-reload
    run systemctl enable "$SERVICE.service"
    did "enabled $SERVICE.service"
    if ((!START)); then
        log "not starting (--no-start)"
    elif ! model_present && ((!DRY_RUN)); then
        warn "no model in $STATE_DIR/model: not starting $SERVICE (see the end)"
    else
        # restart, not start: a reinstall must load the new code.
        run systemctl restart "$SERVICE.service"
        did "(re)started $SERVICE.service"
    fi
}

next_steps() {
    # $1: the exit status so far (none: 0).
    local status=${1:-0} target="$STATE_DIR/model"
    if ((status != 0)) && [[ -z $MODEL_STATE ]]; then
        # Stopped before the model step: voxd itself may not be installed, so
        # its commands would only fail; running install.sh again is the step.
        return 0
    fi
    if [[ $MODEL_STATE != ready ]] && ! model_present; then
        case "$MODEL_STATE" in
        failed) printf '\nThe model download failed (the error is above). Next, one of:\n' ;;
        skipped) printf '\nNo model yet (--no-model). Next, one of:\n' ;;
        *) printf '\nThe model is not installed. Next, one of:\n' ;;
        esac
        cat <<EOF
  sudo -u $SERVICE_USER voxd model download --dir $target
      download it (again); if the Hub wants a login, with a read token from
      https://huggingface.co/settings/tokens:
      sudo -u $SERVICE_USER HF_TOKEN=hf_... voxd model download --dir $target
  sudo $SRC_DIR/install.sh --model-dir /path/to/model
      install a model copied from another machine (a directory with
      consolidated.safetensors, params.json and tekken.json)
  sudo $SRC_DIR/install.sh --no-model
      finish the install without a model
then: sudo systemctl start $SERVICE
EOF
    fi
    # The checks run as the service user: the config (it may hold the MQTT
    # password) and the model directory are closed to other users.
    cat <<EOF

  config:  $CONF_DIR/voxd.toml   (check: sudo -u $SERVICE_USER voxd config check; then: sudo systemctl restart $SERVICE)
  status:  systemctl status $SERVICE
  logs:    sudo journalctl -u $SERVICE -f
  GPU:     sudo journalctl -u $SERVICE | grep -i cuda   (which backend runs, and why)
  model:   sudo -u $SERVICE_USER voxd model check --dir $target
  remove:  sudo $SRC_DIR/uninstall.sh   (--purge also deletes config and model)
EOF
}

summary() {
    local status=$1 how='done'
    if ((DRY_RUN)); then
        how='(dry run, nothing changed)'
    elif ((status != 0)) && [[ $MODEL_STATE == failed ]]; then
        how='done, except the model'
    elif ((status != 0)); then
        how="stopped by the error above (exit $status); fix it and run install.sh again"
    fi
    printf '\nvoxd install %s\n' "$how"
    if ((${#DONE[@]})); then
        printf '  - %s\n' "${DONE[@]}"
    else
        printf '  - nothing changed\n'
    fi
    next_steps "$status"
}

on_exit() {
    local status=$?
    summary "$status"
    exit "$status"
}

main() {
    parse_args "$@"
    require_root
    [[ -f $SRC_DIR/pyproject.toml && -f $SRC_DIR/systemd/$SERVICE.service ]] ||
        die "run install.sh from a voxd checkout ($SRC_DIR has no pyproject.toml or unit)"
    # From here on, also after a failure: say what was done and what to run next.
    trap on_exit EXIT
    install_packages
    check_python
    create_user
    install_venv
    install_config
    install_unit
    install_gpu
    link_command
    install_model
    start_service
    # Exit status 1 when the model is missing: the install is not finished.
    [[ $MODEL_STATE != failed ]]
}

# Sourced (as the tests do), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
