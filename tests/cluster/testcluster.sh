#!/usr/bin/env bash
# The local test cluster: a Slurm controller, two slurmd nodes with fake GPUs (gpu01: 4×a100 + 8×h200,
# gpu02: 4×a100), munge, and OpenSSH on 127.0.0.1:2222 with key-only login for `hpcuser`. All from
# Debian packages, started by hand (no systemd), as root. See shared notes "test-cluster.md".
#
#   bash tests/cluster/testcluster.sh up       install (if needed), configure, start; idempotent
#   bash tests/cluster/testcluster.sh down     cancel jobs, stop the daemons
#   bash tests/cluster/testcluster.sh status
#
# Clients use $STATE/config.toml (export HPCLLM_CONFIG=$STATE/config.toml); STATE defaults to
# /tmp/hpcllm-testcluster (HPCLLM_TESTCLUSTER_DIR overrides).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
STATE=${HPCLLM_TESTCLUSTER_DIR:-/tmp/hpcllm-testcluster}
OPT=/opt/hpcllm-testcluster
MODELS=/srv/hpcllm/models
USER_NAME=hpcuser
SSH_PORT=2222
PACKAGES=(slurmctld slurmd slurm-client munge openssh-server openssh-client python3 ca-certificates procps)

log() { printf '[testcluster] %s\n' "$*"; }
die() { printf '[testcluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"; }

# --- processes ----------------------------------------------------------------------------------------

# A daemon that died lingers as a zombie for a while and `kill -0` still succeeds: read its state.
alive() {
    local pid=$1
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] && ! grep -q '^State:.*Z' "/proc/$pid/status"
}

pid_of() { [ -s "$1" ] && cat "$1" || true; }

stop_pidfile() {
    local file=$1 pid
    pid=$(pid_of "$file")
    if alive "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

# --- install ------------------------------------------------------------------------------------------

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

setup_user() {
    id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/bash "$USER_NAME"
    # useradd locks the account ('!'), and a locked account cannot log in with a key when UsePAM is off.
    usermod -p '*' "$USER_NAME"
}

setup_keys() {
    install -d -m 755 "$STATE" "$STATE/pids" "$STATE/logs" "$STATE/sshd"
    [ -f "$STATE/sshd/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE/sshd/ssh_host_ed25519_key"
    [ -f "$STATE/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C hpcllm-test -f "$STATE/client_key"
    chmod 600 "$STATE/client_key"
    local home
    home=$(getent passwd "$USER_NAME" | cut -d: -f6)
    install -d -m 700 -o "$USER_NAME" -g "$USER_NAME" "$home/.ssh"
    install -m 600 -o "$USER_NAME" -g "$USER_NAME" "$STATE/client_key.pub" "$home/.ssh/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$STATE/sshd/ssh_host_ed25519_key.pub")" \
        > "$STATE/known_hosts"
}

setup_hosts() {
    # Slurm's node names are not the host name; sshd on the "login node" resolves them for the forward.
    grep -qE '^127\.0\.0\.1[[:space:]].*\bgpu01\b' /etc/hosts || echo "127.0.0.1 gpu01 gpu02" >> /etc/hosts
}

setup_slurm_config() {
    install -d -m 755 /etc/slurm /var/lib/slurm/fakegpu
    install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    # Slurm 22.05 drops GPUs without File= (the node goes INVAL): fake devices, symlinks to /dev/null.
    for i in $(seq 0 11); do ln -sfn /dev/null "/var/lib/slurm/fakegpu/gpu01-nvidia$i"; done
    for i in $(seq 0 3); do ln -sfn /dev/null "/var/lib/slurm/fakegpu/gpu02-nvidia$i"; done
    cp "$HERE/slurm.conf" /etc/slurm/slurm.conf
    cp "$HERE/gres.conf" /etc/slurm/gres.conf
}

install_runtime() {
    # Jobs run as hpcuser, who cannot read a checkout under /root: install the stand-ins where it can.
    install -d -m 755 "$OPT" "$OPT/bin" "$OPT/images"
    install -m 755 "$HERE/singularity" "$OPT/bin/singularity"
    rm -rf "$OPT/engine_double"
    cp -r "$HERE/../engine_double" "$OPT/engine_double"
    find "$OPT/engine_double" -name __pycache__ -prune -exec rm -rf {} +
    chmod -R a+rX "$OPT/engine_double"
    printf 'engine=vllm\nversion=0.11.0\ndelay=1.0\n' > "$OPT/images/vllm.sif"
    printf 'engine=sglang\nversion=0.5.4\ndelay=1.0\n' > "$OPT/images/sglang.sif"
    chmod 644 "$OPT/images/"*.sif
    python3 "$HERE/make_models.py" "$MODELS"
}

write_client_config() {
    cat > "$STATE/config.toml" <<TOML
# Written by tests/cluster/testcluster.sh: the local test cluster
default_profile = "testcluster"

[profiles.testcluster]
host = "127.0.0.1"
port = $SSH_PORT
user = "$USER_NAME"
identity_file = "$STATE/client_key"
known_hosts = "$STATE/known_hosts"
partition = "gpu"
time = "1:00:00"
cpus = 4
mem = "8G"
model_root = "$MODELS"
runtime = "singularity"
runtime_path = "$OPT/bin/singularity"
default_engine = "vllm"
default_gpu_type = "a100"

[profiles.testcluster.images]
vllm = "$OPT/images/vllm.sif"
sglang = "$OPT/images/sglang.sif"

[profiles.testcluster.gpu_types.a100]
max_count = 4
memory_gb = 80

[profiles.testcluster.gpu_types.h200]
max_count = 8
memory_gb = 141
TOML
    chmod 644 "$STATE/config.toml"
}

# --- daemons ------------------------------------------------------------------------------------------

start_munge() {
    if ! alive "$(pid_of /run/munge/munged.pid)"; then
        install -d -o munge -g munge -m 755 /run/munge
        runuser -u munge -- /usr/sbin/munged
    fi
    wait_for 10 munge bash -c 'munge -n | unmunge' || die "munged did not start"
}

all_idle() {
    local states
    states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
    [ -n "$states" ] && ! grep -qv '^idle$' <<<"$states"
}

start_slurm() {
    if alive "$(pid_of /run/slurmctld.pid)" && all_idle; then
        return 0
    fi
    stop_slurm
    # Fresh state every start: a DRAIN/INVAL state would otherwise survive restarts. Job ids restart at 1,
    # so the job directories of the previous run go too.
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
    rm -rf "$(getent passwd "$USER_NAME" | cut -d: -f6)/.hpcllm/jobs"
    slurmctld -i || die "slurmctld did not start: $(tail -5 /var/log/slurm/slurmctld.log)"
    slurmd -N gpu01 || die "slurmd gpu01 did not start: $(tail -5 /var/log/slurm/slurmd-gpu01.log)"
    slurmd -N gpu02 || die "slurmd gpu02 did not start: $(tail -5 /var/log/slurm/slurmd-gpu02.log)"
    if ! wait_for 30 "idle nodes" all_idle; then
        sinfo -N -l >&2 || true
        tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-gpu0*.log >&2 || true
        die "the Slurm nodes did not become idle"
    fi
}

start_sshd() {
    if alive "$(pid_of "$STATE/pids/sshd")"; then
        return 0
    fi
    cat > "$STATE/sshd/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $STATE/sshd/ssh_host_ed25519_key
PidFile $STATE/pids/sshd
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $USER_NAME
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
CONF
    install -d -m 755 /run/sshd
    /usr/sbin/sshd -t -f "$STATE/sshd/sshd_config" || die "sshd config is invalid"
    /usr/sbin/sshd -f "$STATE/sshd/sshd_config" -E "$STATE/logs/sshd.log"
    wait_for 10 sshd bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_PORT" || die "sshd did not listen: $(tail -5 "$STATE/logs/sshd.log")"
}

stop_slurm() {
    if alive "$(pid_of /run/slurmctld.pid)"; then
        # Killing slurmd does not kill jobs: cancel them first and wait for the queue to empty.
        scancel -u "$USER_NAME" 2>/dev/null || true
        wait_for 15 "empty queue" bash -c '[ -z "$(squeue -h 2>/dev/null)" ]' || log "jobs still in the queue"
    fi
    stop_pidfile /run/slurmd-gpu01.pid
    stop_pidfile /run/slurmd-gpu02.pid
    stop_pidfile /run/slurmctld.pid
    pkill -u "$USER_NAME" -f hpcllm 2>/dev/null || true
}

# --- commands -----------------------------------------------------------------------------------------

up() {
    need_root
    local started=$SECONDS
    install_packages
    setup_user
    setup_keys
    setup_hosts
    setup_slurm_config
    install_runtime
    write_client_config
    start_munge
    start_slurm
    start_sshd
    log "up in $((SECONDS - started)) s: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
    log "ssh: ssh -i $STATE/client_key -o UserKnownHostsFile=$STATE/known_hosts -p $SSH_PORT $USER_NAME@127.0.0.1"
    log "client config: export HPCLLM_CONFIG=$STATE/config.toml"
}

down() {
    need_root
    stop_slurm
    stop_pidfile "$STATE/pids/sshd"
    stop_pidfile /run/munge/munged.pid
    log "down"
}

status() {
    for pair in "munged:/run/munge/munged.pid" "slurmctld:/run/slurmctld.pid" "slurmd gpu01:/run/slurmd-gpu01.pid" \
                "slurmd gpu02:/run/slurmd-gpu02.pid" "sshd:$STATE/pids/sshd"; do
        local name=${pair%%:*} file=${pair#*:}
        if alive "$(pid_of "$file")"; then log "$name: running"; else log "$name: stopped"; fi
    done
    sinfo 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
