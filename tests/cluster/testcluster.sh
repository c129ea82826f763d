#!/usr/bin/env bash
# The local test cluster: a Slurm controller and two slurmd nodes with fake GPUs (gpu01: 4×a100 +
# 8×h200, gpu02: 4×a100), munge, and OpenSSH on 127.0.0.1:2222 with key-only login for `hpcuser`.
# A second sshd, the bastion (jump host), on 127.0.0.1:2223: same user and key, its host key known only
# through a certificate from a test CA ($STATE/known_hosts_ca, $STATE/ssh_config's tc-* hosts). A third,
# the login node with MFA, on 127.0.0.1:2224: the key, then a one-time code by keyboard-interactive.
# All from Debian packages, started by hand (no systemd), as root. Settings and pitfalls:
# shared/notes/test-cluster.md (the "pitfall N" comments below refer to its section 5).
#
#   bash tests/cluster/testcluster.sh up       install if needed, configure, start (idempotent)
#   bash tests/cluster/testcluster.sh down     cancel jobs, stop the daemons (fine when nothing runs)
#   bash tests/cluster/testcluster.sh status   which daemons run, sinfo (exit 0 only when all run)
#   bash tests/cluster/testcluster.sh packages [PACKAGE...]
#                                              only install what dpkg lacks (default: the cluster's
#                                              packages; scripts/test and scripts/demo: python3-venv)
#
# Clients: export HPCLLM_CONFIG=$STATE/config.toml (profiles testcluster, -twohop, -mfa), or
# ssh -F $STATE/ssh_config tc-login|tc-bastion|tc-twohop|tc-mfa. STATE is /tmp/hpcllm-testcluster unless
# HPCLLM_TESTCLUSTER_DIR says otherwise.
#
# Sourced (`source testcluster.sh`), it only defines the functions and settings below: that is how
# tests/test_setup_from_nothing.py runs single steps without root, with stub commands early on PATH and
# the paths below pointed into a temporary directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${HPCLLM_TESTCLUSTER_DIR:-/tmp/hpcllm-testcluster}
STATE=${STATE%/}
OPT=/opt/hpcllm-testcluster               # what jobs run (hpcuser cannot read a checkout under /root)
MODEL_ROOT=/srv/hpcllm/models
HPC_USER=hpcuser
SSH_PORT=2222
NODES=(gpu01 gpu02)
PACKAGES=(slurmctld slurmd slurm-client munge openssh-server openssh-client python3 ca-certificates iproute2 bsdutils
    libpam-modules util-linux procps)  # pam_exec for the MFA sshd; setpriv, runuser (required in Debian, named
    # anyway); ps, with which the tests look for the API key on command lines (a minimal Debian has none)
SLURM_LOGS=/var/log/slurm
SSHD_CONFIG=$STATE/sshd/sshd_config
SSHD_PID=$STATE/pids/sshd
SSHD_LOG=$STATE/logs/sshd.log
# The bastion: an sshd of its own whose host key is trusted only through the test CA's certificate.
BASTION_PORT=2223
BASTION_KEY=$STATE/bastion/ssh_host_ed25519_key
BASTION_CERT=$STATE/bastion/ssh_host_ed25519_key-cert.pub
BASTION_CONFIG=$STATE/bastion/sshd_config
BASTION_PID=$STATE/pids/bastion
BASTION_LOG=$STATE/logs/bastion.log
BASTION_PRINCIPALS=127.0.0.1,bastion
HOST_CA=$STATE/ca/host_ca
# The login node with MFA: its host key, then publickey + a one-time code (keyboard-interactive, PAM).
# OpenSSH names its PAM service after the program: sshd run as sshd-mfa (a symlink) reads pam.d/sshd-mfa.
MFA_PORT=2224
MFA_SSHD=$OPT/bin/sshd-mfa
MFA_CHECK=$OPT/bin/mfa-check
MFA_PAM=/etc/pam.d/sshd-mfa
MFA_CONFIG=$STATE/mfa/sshd_config
MFA_CODE=$STATE/mfa/code                  # the code (root's, 0600), made once
MFA_ATTEMPTS=$STATE/logs/mfa-attempts.log # a line per code answered: EPOCH USER ok|wrong
MFA_PID=$STATE/pids/mfa
MFA_LOG=$STATE/logs/mfa.log
MUNGED_PID=/run/munge/munged.pid
MUNGED_LOG=/var/log/munge/munged.log
CTLD_PID=/run/slurmctld.pid
POLICY_RC_D=/usr/sbin/policy-rc.d
# Marks the policy-rc.d this script writes: one that a killed run left behind is ours to remove.
POLICY_MARK="# written by hpcllm testcluster.sh while it runs apt-get (pitfall 1)"
ETC_HOSTS=/etc/hosts

# --- output and timing --------------------------------------------------------------------------------

log() { printf '[testcluster] %s\n' "$*"; }
warn() { printf '[testcluster] WARNING: %s\n' "$*" >&2; }
die() { printf '[testcluster] ERROR: %s\n' "$*" >&2; exit 1; }

now_ms() { local t=${EPOCHREALTIME//[^0-9]/}; echo $((10#$t / 1000)); }
secs() { local ms=$1; printf '%d.%03d s' $((ms / 1000)) $((ms % 1000)); }

step() {  # step DESCRIPTION FUNCTION [ARGS...]: run one step and log how long it took
    local what=$1 started; shift
    started=$(now_ms)
    "$@"
    log "$what: $(secs $(($(now_ms) - started)))"
}

tail_logs() {  # tail_logs FILE...: the end of each daemon log, for error messages
    local file
    for file in "$@"; do
        if [ -r "$file" ]; then
            printf -- '----- last lines of %s -----\n' "$file" >&2
            tail -n 25 "$file" >&2
        else
            printf -- '----- %s: no such log -----\n' "$file" >&2
        fi
    done
}

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages, edits /etc and starts daemons)"; }

# One up/down at a time on this machine (the daemons and ports are global, whatever STATE is). The
# daemons are started with fd 9 closed, or they would hold the lock for as long as they run.
take_lock() {
    exec 9>/run/hpcllm-testcluster.lock
    if ! flock -n 9; then
        log "waiting for another testcluster.sh up/down to finish"
        flock -w 120 9 || die "another testcluster.sh still holds /run/hpcllm-testcluster.lock after 120 s"
    fi
}

# --- processes ----------------------------------------------------------------------------------------

# Pitfall 13: a dead daemon lingers as a zombie and `kill -0` still succeeds on it: read its state.
alive() {
    local pid=${1:-} state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

daemon_name() {  # daemon_name PIDFILE: the process name (/proc/PID/comm) of the daemon that writes it
    case "${1##*/}" in
        munged.pid) echo munged ;;
        slurmctld.pid) echo slurmctld ;;
        slurmd-*.pid) echo slurmd ;;
        sshd | bastion) echo sshd ;;
        mfa) echo sshd-mfa ;;
    esac
}

# A pid file from before a reboot (or from a killed run: /run may outlive both) can hold a pid that now
# belongs to another program: it counts only while /proc names the daemon, or we would signal a stranger.
pid_of() {  # pid_of PIDFILE: the daemon's pid, or nothing
    local pid name
    pid=$({ [ -s "$1" ] && tr -dc '0-9' <"$1"; } || true)
    name=$(daemon_name "$1")
    if [ -n "$pid" ] && [ -n "$name" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        pid=""
    fi
    echo "$pid"
}

wait_until() {  # wait_until SECONDS COMMAND...: poll every 0.1 s
    local deadline=$(($(now_ms) + $1 * 1000)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

gone() { ! alive "$1"; }

port_in_use() {  # port_in_use PORT: something listens on it (IPv4 or IPv6), from /proc/net/tcp*
    local hex
    hex=$(printf '%04X' "$1")
    awk -v port=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == port { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

ports_free() {  # ports_free WHAT PORT...: die when another program holds one of our ports
    local what=$1 port; shift
    for port in "$@"; do
        ! port_in_use "$port" || die "port $port is taken by another program, $what cannot start (see: ss -ltnp)"
    done
}

stop_pidfile() {  # stop_pidfile NAME FILE: TERM, wait until really gone (KILL after 5 s), drop the pid file
    local name=$1 file=$2 pid
    pid=$(pid_of "$file")
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until 5 gone "$pid"; then
            warn "$name ($pid) ignored SIGTERM for 5 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_until 3 gone "$pid" || die "$name ($pid) does not die"
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$file"  # pitfall 14: slurmctld leaves its pid file behind on SIGTERM
}

# --- install and configure ----------------------------------------------------------------------------

missing_packages() {  # missing_packages PACKAGE...: those dpkg does not have fully installed, one query
    # dpkg-query exits 1 as soon as one name is unknown to it (never installed: "no packages found
    # matching X" on stderr), after printing the known ones: its exit status cannot decide, only its
    # output can. A name it prints no "installed" line for is missing.
    local present package
    present=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "$@" 2>/dev/null | sed -n 's/^installed //p' || true)
    for package in "$@"; do
        grep -qxF "$package" <<<"$present" || echo "$package"
    done
}

apt_install() {  # apt_install PACKAGE...: unattended
    # DPkg::Lock::Timeout: a fresh VM's unattended-upgrades may hold the dpkg lock for a while.
    # --force-confold: keep a config file an earlier install left changed instead of asking.
    apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=120 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install "$@"
}

drop_policy() { [ ! -e "$POLICY_RC_D" ] || ! grep -qxF "$POLICY_MARK" "$POLICY_RC_D" || rm -f "$POLICY_RC_D"; }

install_packages() {  # install_packages PACKAGE...: apt-get installs those dpkg lacks, and only those
    local missing
    # Our policy-rc.d (below) that a killed run left behind would keep blocking the machine's services.
    drop_policy
    mapfile -t missing < <(missing_packages "$@")
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed"
        return 0
    fi
    log "installing ${missing[*]}"
    # Without systemd the postinst scripts would try to start the services: forbid it (pitfall 1). It
    # carries our mark and goes afterwards, also on an interrupt; someone else's stays as it is.
    if [ ! -e "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        trap drop_policy EXIT
    fi
    install -d -m 755 "$STATE/logs"
    local apt_log=$STATE/logs/apt.log
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing (fresh image) or stale (404s), and a run killed inside apt-get
    # leaves dpkg half done ("dpkg was interrupted"): then finish dpkg's work, update and try again.
    if ! apt_install "${missing[@]}" >"$apt_log" 2>&1 &&
        ! {
            log "apt-get update"
            {
                dpkg --force-confdef --force-confold --configure -a || true  # (its failure shows in apt-get's)
                apt-get -q -o DPkg::Lock::Timeout=120 update && apt_install "${missing[@]}"
            } >>"$apt_log" 2>&1
        }; then
        drop_policy
        trap - EXIT
        tail_logs "$apt_log"
        die "apt-get failed (full log: $apt_log)"
    fi
    drop_policy
    trap - EXIT
    mapfile -t missing < <(missing_packages "$@")
    [ ${#missing[@]} -eq 0 ] || die "still not installed after apt-get: ${missing[*]} (apt log: $apt_log)"
}

setup_system_users() {
    # The packages make their system users, but slurm-wlm-basic-plugins only on its first install
    # (preinst): make it again as that does. It owns nothing but the directories setup_slurm_config
    # chowns on every run. munge's and openssh-server's postinst make theirs again when configured.
    if ! id slurm >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin slurm
        log "created system user slurm"
    fi
    local user
    for user in munge sshd; do
        id "$user" >/dev/null 2>&1 ||
            die "system user $user is missing although its package is installed: dpkg-reconfigure munge openssh-server"
    done
}

setup_user() {
    if ! id "$HPC_USER" >/dev/null 2>&1; then
        useradd --create-home --home-dir "/home/$HPC_USER" --shell /bin/bash "$HPC_USER"
        log "created user $HPC_USER"
    fi
    # Pitfall 7: useradd locks the account ('!'), which blocks key login when UsePAM is off.
    usermod -p '*' "$HPC_USER"
}

user_home() { getent passwd "$HPC_USER" | cut -d: -f6; }

make_key() {  # make_key FILE COMMENT: an ed25519 key pair, kept when both halves are there and match
    # A half (a run killed inside ssh-keygen, a hand-deleted .pub) is made anew: ssh-keygen would stop
    # at its "Overwrite (y/n)?" and the steps below read both halves. Clients get the new keys anyway:
    # known_hosts and authorized_keys are written on every run.
    local file=$1 comment=$2
    if [ -s "$file" ] && [ -s "$file.pub" ] &&
        [ "$(ssh-keygen -y -f "$file" 2>/dev/null | cut -d' ' -f2)" = "$(cut -d' ' -f2 "$file.pub")" ]; then
        return 0
    fi
    rm -f "$file" "$file.pub"
    ssh-keygen -q -t ed25519 -N '' -C "$comment" -f "$file"
}

setup_keys() {
    install -d -m 755 "$STATE" "$STATE/pids" "$STATE/logs" "$STATE/sshd"
    make_key "$STATE/sshd/ssh_host_ed25519_key" testcluster-host
    make_key "$STATE/client_key" hpcllm-testcluster
    chown root:root "$STATE/client_key" "$STATE/client_key.pub"
    chmod 600 "$STATE/client_key" "$STATE/sshd/ssh_host_ed25519_key"
    chmod 644 "$STATE/client_key.pub"
    local home
    home=$(user_home)
    [ -d "$home" ] || install -d -m 755 -o "$HPC_USER" -g "$HPC_USER" "$home"
    # A home left by an earlier, deleted hpcuser keeps that uid: sshd's StrictModes then refuses the key
    # and jobs cannot write their output there (pitfall 15). Only the directory itself, not recursively.
    chown "$HPC_USER:$HPC_USER" "$home"
    chmod go-w "$home"
    install -d -m 700 -o "$HPC_USER" -g "$HPC_USER" "$home/.ssh"
    install -m 600 -o "$HPC_USER" -g "$HPC_USER" "$STATE/client_key.pub" "$home/.ssh/authorized_keys"
    login_known_host >"$STATE/known_hosts.tmp"
    chmod 644 "$STATE/known_hosts.tmp"
    mv -f "$STATE/known_hosts.tmp" "$STATE/known_hosts"
}

login_known_host() {  # the known_hosts line of the login node's host key
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$STATE/sshd/ssh_host_ed25519_key.pub")"
}

cert_fits() {  # cert_fits: the bastion's certificate is the one setup_bastion_keys would make now
    # A host certificate, for the bastion's current key, from the current CA, for exactly our principals,
    # valid forever. Anything else (a CA or host key made anew, a run killed while signing) is re-signed.
    local listing key_fp ca_fp
    [ -s "$BASTION_CERT" ] || return 1
    listing=$(ssh-keygen -L -f "$BASTION_CERT" 2>/dev/null | sed 's/^[[:space:]]*//; s/[[:space:]]*$//') || return 1
    key_fp=$(ssh-keygen -l -f "$BASTION_KEY.pub" | cut -d' ' -f2) || return 1
    ca_fp=$(ssh-keygen -l -f "$HOST_CA.pub" | cut -d' ' -f2) || return 1
    grep -qxF "Type: ssh-ed25519-cert-v01@openssh.com host certificate" <<<"$listing" &&
        grep -qxF "Public key: ED25519-CERT $key_fp" <<<"$listing" &&
        grep -qxF "Signing CA: ED25519 $ca_fp (using ssh-ed25519)" <<<"$listing" &&
        grep -qxF 'Key ID: "testcluster-bastion"' <<<"$listing" &&
        grep -qxF "Valid: forever" <<<"$listing" &&
        [ "$(sed -n '/^Principals:/,/^Critical Options:/p' <<<"$listing" | sed '1d;$d' | paste -sd, -)" = \
            "$BASTION_PRINCIPALS" ]
}

setup_bastion_keys() {
    # The test CA (made once, kept like the other keys), the bastion's host key, and its certificate. The
    # bastion's plain key goes into no known_hosts: only the CA can make it trusted.
    install -d -m 755 "$STATE" "$STATE/ca" "$STATE/bastion"
    make_key "$HOST_CA" testcluster-host-ca
    make_key "$BASTION_KEY" testcluster-bastion
    chmod 600 "$HOST_CA" "$BASTION_KEY"
    chmod 644 "$HOST_CA.pub" "$BASTION_KEY.pub"
    if ! cert_fits; then
        # ssh-keygen writes KEY-cert.pub beside a copy of the public key, then moved in place: atomic.
        rm -rf "$STATE/bastion/signing"
        install -d -m 700 "$STATE/bastion/signing"
        cp "$BASTION_KEY.pub" "$STATE/bastion/signing/key.pub"
        ssh-keygen -q -s "$HOST_CA" -I testcluster-bastion -h -n "$BASTION_PRINCIPALS" -V always:forever \
            "$STATE/bastion/signing/key.pub"
        chmod 644 "$STATE/bastion/signing/key-cert.pub"
        mv -f "$STATE/bastion/signing/key-cert.pub" "$BASTION_CERT"
        rm -rf "$STATE/bastion/signing"
        cert_fits || die "the bastion's new certificate $BASTION_CERT does not check out: $(ssh-keygen -L -f "$BASTION_CERT")"
        log "signed the bastion's host key with the test CA"
    fi
}

write_ssh_client_files() {
    # known_hosts_ca: the login node's plain key and the CA for the bastion (OpenSSH looks a non-22 port
    # up as [host]:port). ssh_config: tc-login, tc-bastion and tc-twohop (bastion, login node, then the
    # login node again as the target), all checked against known_hosts_ca only.
    write_file 644 "$STATE/known_hosts_ca" "$(login_known_host)
@cert-authority [127.0.0.1]:$BASTION_PORT $(cut -d' ' -f1,2 "$HOST_CA.pub")
[127.0.0.1]:$MFA_PORT $(cut -d' ' -f1,2 "$STATE/sshd/ssh_host_ed25519_key.pub")
"
    local common="    User $HPC_USER
    IdentityFile $STATE/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts_ca
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no"
    write_file 644 "$STATE/ssh_config" "# Written by tests/cluster/testcluster.sh: the local test cluster for OpenSSH clients
#   ssh -F $STATE/ssh_config tc-login|tc-bastion|tc-twohop|tc-mfa
# The bastion's host key is trusted only through the test CA (@cert-authority in known_hosts_ca).
# tc-mfa asks for the one-time code in $STATE/mfa/code after the key (keyboard-interactive).

Host tc-login
    HostName 127.0.0.1
    Port $SSH_PORT
$common

Host tc-bastion
    HostName 127.0.0.1
    Port $BASTION_PORT
$common

# The login node through two jumps: the bastion, then the login node itself.
Host tc-twohop
    HostName 127.0.0.1
    Port $SSH_PORT
$common
    ProxyJump tc-bastion,tc-login

# The login node's MFA door: the key, then a one-time code.
Host tc-mfa
    HostName 127.0.0.1
    Port $MFA_PORT
$common
"
}

setup_hosts() {
    # Pitfall 16: Slurm's node names are not the host name; sshd on the "login node" resolves them
    # when a client forwards to (node, port).
    if ! grep -qsE '^127\.0\.0\.1[[:space:]](.*[[:space:]])?gpu01([[:space:]]|$)' "$ETC_HOSTS" ||
        ! grep -qsE '^127\.0\.0\.1[[:space:]](.*[[:space:]])?gpu02([[:space:]]|$)' "$ETC_HOSTS"; then
        # A last line without its newline (hand-edited, some images) would swallow ours.
        [ ! -s "$ETC_HOSTS" ] || [ -z "$(tail -c 1 "$ETC_HOSTS")" ] || echo >>"$ETC_HOSTS"
        echo "127.0.0.1 gpu01 gpu02" >>"$ETC_HOSTS"
        log "added '127.0.0.1 gpu01 gpu02' to $ETC_HOSTS"
    fi
}

SLURM_CONFIG_CHANGED=0

install_if_changed() {  # install_if_changed SRC DEST: copy when different; sets SLURM_CONFIG_CHANGED
    [ -r "$1" ] || die "$1 is missing"
    if ! cmp -s "$1" "$2"; then
        install -m 644 "$1" "$2"
        SLURM_CONFIG_CHANGED=1
    fi
}

setup_slurm_config() {
    # slurm.conf = section 7 of the notes with AccountingStorageType=accounting_storage/none and
    # SchedulerParameters=bf_interval=5 (pitfall 21); gres.conf = section 7 verbatim.
    install -d -m 755 /etc/slurm /var/lib/slurm /var/lib/slurm/fakegpu
    install -d -o slurm -g slurm -m 755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$SLURM_LOGS"
    install_if_changed "$HERE/slurm.conf" /etc/slurm/slurm.conf
    install_if_changed "$HERE/gres.conf" /etc/slurm/gres.conf
    # Pitfall 2: GPUs need File=; symlinks to /dev/null pass the device check (nothing opens them).
    local i
    for i in $(seq 0 11); do ln -sfn /dev/null "/var/lib/slurm/fakegpu/gpu01-nvidia$i"; done
    for i in $(seq 0 3); do ln -sfn /dev/null "/var/lib/slurm/fakegpu/gpu02-nvidia$i"; done
}

make_world_readable() {  # dirs and executables 755, other files 644
    find "$1" -type d -exec chmod 755 {} +
    find "$1" -type f -perm /111 -exec chmod 755 {} +
    find "$1" -type f ! -perm /111 -exec chmod 644 {} +
}

install_runtime() {
    install -d -m 755 "$OPT" "$OPT/bin" "$OPT/images"
    if [ -f "$HERE/singularity" ]; then
        install -m 755 "$HERE/singularity" "$OPT/bin/singularity.tmp"
        mv -f "$OPT/bin/singularity.tmp" "$OPT/bin/singularity"
    else
        warn "$HERE/singularity does not exist yet: no runtime stand-in installed"
    fi
    local source=$HERE/../engine_double
    if [ -d "$source" ]; then
        # Copy beside, then swap: a job starting meanwhile sees the old or the new tree, never half of one.
        rm -rf "$OPT/engine_double.new" "$OPT/engine_double.old"
        cp -a "$source" "$OPT/engine_double.new"
        find "$OPT/engine_double.new" -name __pycache__ -prune -exec rm -rf {} +
        chown -R root:root "$OPT/engine_double.new"
        make_world_readable "$OPT/engine_double.new"
        [ ! -e "$OPT/engine_double" ] || mv "$OPT/engine_double" "$OPT/engine_double.old"
        mv "$OPT/engine_double.new" "$OPT/engine_double"
        rm -rf "$OPT/engine_double.old"
    else
        warn "$source does not exist yet: no engine double installed"
    fi
    # Fake engine images: key=value text files the singularity stand-in reads.
    write_file 644 "$OPT/images/vllm.sif" $'engine=vllm\nversion=0.11.0\ndelay=1.0\n'
    write_file 644 "$OPT/images/sglang.sif" $'engine=sglang\nversion=0.5.4\ndelay=1.0\n'
}

write_file() {  # write_file MODE PATH TEXT: atomically, and only when the content differs
    local mode=$1 path=$2 text=$3
    if [ "$(cat "$path" 2>/dev/null; echo x)" != "${text}x" ]; then
        printf '%s' "$text" >"$path.tmp"
        chmod "$mode" "$path.tmp"
        mv -f "$path.tmp" "$path"
    else
        chmod "$mode" "$path"
    fi
}

make_models() {
    install -d -m 755 "$(dirname "$MODEL_ROOT")"
    # Debian's python3 (a pyenv shim or venv earlier on root's PATH may be anything).
    local python=/usr/bin/python3
    [ -x "$python" ] || python=python3
    "$python" "$HERE/make_models.py" "$MODEL_ROOT" | sed 's/^/[testcluster]   /'
}

profile_settings() {  # profile_settings NAME: what a profile sets besides how to reach the login node
    local name=$1
    printf '%s\n' "partition = \"gpu\"
time = \"1:00:00\"
cpus = 4
mem = \"8G\"
model_root = \"$MODEL_ROOT\"
runtime = \"singularity\"
runtime_path = \"$OPT/bin/singularity\"
default_engine = \"vllm\"
default_gpu_type = \"a100\"

[profiles.$name.images]
vllm = \"$OPT/images/vllm.sif\"
sglang = \"$OPT/images/sglang.sif\"

[profiles.$name.gpu_types.a100]
max_count = 4
memory_gb = 80

[profiles.$name.gpu_types.h200]
max_count = 8
memory_gb = 141"
}

write_client_config() {
    # testcluster: the login node directly, every SSH setting in the profile. testcluster-twohop: the
    # same cluster through the bastion, every SSH setting (user, port, key, known hosts, ProxyJump) from
    # $STATE/ssh_config's tc-twohop. testcluster-mfa: the login node's MFA door, from tc-mfa.
    write_file 644 "$STATE/config.toml" "# Written by tests/cluster/testcluster.sh: the local test cluster
default_profile = \"testcluster\"

[profiles.testcluster]
host = \"127.0.0.1\"
port = $SSH_PORT
user = \"$HPC_USER\"
identity_file = \"$STATE/client_key\"
known_hosts = \"$STATE/known_hosts\"
$(profile_settings testcluster)

[profiles.testcluster-twohop]
host = \"tc-twohop\"
ssh_config = \"$STATE/ssh_config\"
$(profile_settings testcluster-twohop)

[profiles.testcluster-mfa]
host = \"tc-mfa\"
ssh_config = \"$STATE/ssh_config\"
$(profile_settings testcluster-mfa)
"
    write_ssh_client_files
}

# --- daemons ------------------------------------------------------------------------------------------

munge_works() { munge -n | unmunge; }

start_munge() {
    if alive "$(pid_of "$MUNGED_PID")" && munge_works >/dev/null 2>&1; then
        log "munged already running ($(pid_of "$MUNGED_PID"))"
        return 0
    fi
    stop_pidfile munged "$MUNGED_PID"
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    # /run is a fresh tmpfs after a reboot, and containers may mount /var/log empty: the package's
    # directories are not a given. Modes as munge's postinst sets them.
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge
    install -d -o munge -g munge -m 711 /var/lib/munge
    runuser -u munge -- /usr/sbin/munged 9>&- || { tail_logs "$MUNGED_LOG"; die "munged did not start"; }
    wait_until 10 munge_works || { tail_logs "$MUNGED_LOG"; die "munged started but 'munge -n | unmunge' fails"; }
    log "munged started ($(pid_of "$MUNGED_PID"))"
}

# "NODE STATE" once per node (sinfo -N prints gpu01 once per partition).
# Pitfall 19: with the controller unreachable sinfo blocks 9-18 s before failing: bound it.
node_states() { timeout 3 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

all_idle() {
    local states
    states=$(node_states) || return 1
    [ "$(grep -c ' idle$' <<<"$states")" -eq ${#NODES[@]} ]
}

slurm_healthy() {  # every daemon alive and every node usable (running jobs are fine)
    local node states
    alive "$(pid_of "$CTLD_PID")" || return 1
    for node in "${NODES[@]}"; do alive "$(pid_of "/run/slurmd-$node.pid")" || return 1; done
    states=$(node_states) || return 1
    [ "$(grep -cE ' (idle|mixed|allocated|completing)$' <<<"$states")" -eq ${#NODES[@]} ]
}

start_daemon() {  # start_daemon NAME PIDFILE LOGFILE COMMAND...: it forks; check that it stays up
    local name=$1 pidfile=$2 logfile=$3; shift 3
    rm -f "$pidfile"
    if ! "$@" 9>&-; then  # 9>&-: the daemon must not inherit (and so hold) the lock
        tail_logs "$logfile"
        die "$name did not start ($*)"
    fi
    # (A later death shows up in the next check: nodes not idle, sshd not listening.)
    if ! wait_until 5 alive_from "$pidfile"; then
        tail_logs "$logfile"
        die "$name exited right after starting ($*)"
    fi
}

alive_from() { alive "$(pid_of "$1")"; }

start_slurm() {
    if [ "$SLURM_CONFIG_CHANGED" = 0 ] && slurm_healthy; then
        log "slurmctld and slurmd ${NODES[*]} already running: $(node_states | paste -sd, -)"
        return 0
    fi
    [ "$SLURM_CONFIG_CHANGED" = 0 ] || log "the Slurm configuration changed: restarting Slurm"
    stop_slurm
    # Pitfall 4: a DRAIN/INVAL node state survives restarts, so start from wiped state with -i. Job ids
    # restart at 1 then, so the previous run's job directories go too.
    ports_free Slurm 6817 6818 6820
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
    rm -rf "$(user_home)/.hpcllm/jobs"
    local file
    for file in "$SLURM_LOGS/slurmctld.log" "$SLURM_LOGS"/slurmd-*.log; do
        [ ! -f "$file" ] || mv -f "$file" "$file.prev"  # logs of this start only (the last one stays)
    done
    start_daemon slurmctld "$CTLD_PID" "$SLURM_LOGS/slurmctld.log" slurmctld -i
    local node
    for node in "${NODES[@]}"; do
        start_daemon "slurmd $node" "/run/slurmd-$node.pid" "$SLURM_LOGS/slurmd-$node.log" slurmd -N "$node"
    done
    local deadline=$(($(now_ms) + 30000)) problem=""
    until all_idle; do
        alive_from "$CTLD_PID" || problem="slurmctld died after starting"
        for node in "${NODES[@]}"; do
            alive_from "/run/slurmd-$node.pid" || problem="slurmd $node died after starting"
        done
        [ "$(now_ms)" -lt "$deadline" ] || problem="the Slurm nodes are not all idle after 30 s"
        [ -z "$problem" ] || slurm_failed "$problem"
        sleep 0.1
    done
    # SchedulerParameters from slurm.conf took (an unknown one would only be logged).
    log "slurm up: $(sinfo -h -o '%P=%D×%T' | tr '\n' ' ')($(scontrol show config | sed -n 's/^SchedulerParameters *= *//p'))"
}

slurm_failed() {  # node states and the daemons' log tails, then exit
    local node logs=("$SLURM_LOGS/slurmctld.log")
    for node in "${NODES[@]}"; do logs+=("$SLURM_LOGS/slurmd-$node.log"); done
    if alive_from "$CTLD_PID"; then
        timeout 5 sinfo -N -l >&2 || true
        timeout 5 scontrol show node 2>/dev/null | grep -E 'NodeName|State=|Reason' >&2 || true
    fi
    tail_logs "${logs[@]}"
    die "$1 (node states and daemon logs above)"
}

write_sshd_config() {
    local text
    text="# Written by tests/cluster/testcluster.sh: the login node of the local test cluster
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $STATE/sshd/ssh_host_ed25519_key
PidFile $SSHD_PID
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $HPC_USER
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
# The default, kept on purpose so tests see a real login node's limit (pitfall 23)
MaxSessions 10
Subsystem sftp internal-sftp
"
    SSHD_CONFIG_CHANGED=0
    if [ "$(cat "$SSHD_CONFIG" 2>/dev/null; echo x)" != "${text}x" ]; then
        SSHD_CONFIG_CHANGED=1
        write_file 644 "$SSHD_CONFIG" "$text"
    fi
}

listens() { exec 3<>"/dev/tcp/127.0.0.1/$1"; }  # listens PORT: something accepts connections on it
sshd_listens() { listens "$SSH_PORT"; }

start_sshd() {
    write_sshd_config
    install -d -m 755 /run/sshd
    if ! /usr/sbin/sshd -t -f "$SSHD_CONFIG" 2>"$STATE/logs/sshd-t.log"; then
        cat "$STATE/logs/sshd-t.log" >&2
        die "sshd -t rejects $SSHD_CONFIG"
    fi
    local pid
    pid=$(pid_of "$SSHD_PID")
    if alive "$pid" && [ "$SSHD_CONFIG_CHANGED" = 0 ] && (sshd_listens) 2>/dev/null; then
        log "sshd already running ($pid)"
        return 0
    fi
    stop_pidfile sshd "$SSHD_PID"
    ports_free sshd "$SSH_PORT"
    start_daemon sshd "$SSHD_PID" "$SSHD_LOG" /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG"
    wait_until 10 sshd_listens || { tail_logs "$SSHD_LOG"; die "sshd does not listen on 127.0.0.1:$SSH_PORT"; }
    log "sshd listening on 127.0.0.1:$SSH_PORT ($(pid_of "$SSHD_PID"))"
}

write_bastion_config() {
    write_file 644 "$BASTION_CONFIG" "# Written by tests/cluster/testcluster.sh: the bastion (jump host) of the local test cluster
Port $BASTION_PORT
ListenAddress 127.0.0.1
HostKey $BASTION_KEY
# Clients trust the bastion only through this certificate from the test CA (known_hosts_ca)
HostCertificate $BASTION_CERT
PidFile $BASTION_PID
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $HPC_USER
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
"
}

start_extra_sshd() {  # start_extra_sshd NAME PROGRAM CONFIG PIDFILE LOG PORT FILE...
    # An sshd besides the login node's, restarted whenever a FILE (its config, keys, ...) differs from
    # what the running one started with: the stamp PIDFILE.started holds "PID HASH", so a run killed
    # between writing them and restarting it is caught too.
    local name=$1 program=$2 config=$3 pidfile=$4 logfile=$5 port=$6; shift 6
    local stamp=$pidfile.started pid hash
    install -d -m 755 /run/sshd
    if ! "$program" -t -f "$config" 2>"${logfile%.log}-t.log"; then
        cat "${logfile%.log}-t.log" >&2
        die "sshd -t rejects $config"
    fi
    pid=$(pid_of "$pidfile")
    hash=$(cat "$@" | sha256sum | cut -d' ' -f1)
    if alive "$pid" && [ "$(cat "$stamp" 2>/dev/null)" = "$pid $hash" ] && (listens "$port") 2>/dev/null; then
        log "$name already running ($pid)"
        return 0
    fi
    ! alive "$pid" || log "$name: its config or keys changed (or it does not listen): restarting it"
    stop_extra_sshd "$name" "$pidfile"
    ports_free "$name" "$port"
    start_daemon "$name" "$pidfile" "$logfile" "$program" -f "$config" -E "$logfile"
    wait_until 10 listens "$port" || { tail_logs "$logfile"; die "$name does not listen on 127.0.0.1:$port"; }
    pid=$(pid_of "$pidfile")
    printf '%s %s\n' "$pid" "$hash" >"$stamp.tmp"
    mv -f "$stamp.tmp" "$stamp"
    log "$name listening on 127.0.0.1:$port ($pid)"
}

stop_extra_sshd() {  # stop_extra_sshd NAME PIDFILE
    stop_pidfile "$1" "$2"
    rm -f "$2.started"
}

start_bastion() {
    write_bastion_config
    start_extra_sshd "bastion sshd" /usr/sbin/sshd "$BASTION_CONFIG" "$BASTION_PID" "$BASTION_LOG" "$BASTION_PORT" \
        "$BASTION_CONFIG" "$BASTION_KEY.pub" "$BASTION_CERT"
}

setup_mfa() {
    # The code: six digits, made once (a file that holds anything else is made anew).
    install -d -m 755 "$STATE/mfa" "$STATE/logs" "$OPT/bin"
    if ! grep -qxE '[0-9]{6}' "$MFA_CODE" 2>/dev/null; then
        printf '%06d\n' $((10#$(od -An -N4 -tu4 /dev/urandom | tr -dc 0-9) % 1000000)) >"$MFA_CODE.tmp"
        chmod 600 "$MFA_CODE.tmp"
        mv -f "$MFA_CODE.tmp" "$MFA_CODE"
    fi
    chmod 600 "$MFA_CODE"
    # pam_exec hands the answer over on stdin (expose_authtok) and runs this as root.
    # shellcheck disable=SC2016  # the script's own $ expressions
    write_file 755 "$MFA_CHECK" '#!/bin/sh
# Written by tests/cluster/testcluster.sh: checks the one-time code of the MFA sshd (pam_exec).
# mfa-check CODE_FILE ATTEMPTS_LOG, the answer on stdin
answer=$(head -c 200 | tr -d "\000\n")
expected=$(cat "$1" 2>/dev/null)
if [ -n "$expected" ] && [ "$answer" = "$expected" ]; then result=ok; else result=wrong; fi
printf "%s %s %s\n" "$(date +%s)" "${PAM_USER:-?}" "$result" >>"$2"
[ "$result" = ok ]
'
    ln -sfn /usr/sbin/sshd "$MFA_SSHD"
    # type=auth: pam_exec checks the code only when authenticating (as setcred it would run the check
    # again without an answer, and fail the login); pam_permit gives setcred its success.
    write_file 644 "$MFA_PAM" "# Written by hpcllm tests/cluster/testcluster.sh: the one-time code of the MFA sshd on 127.0.0.1:$MFA_PORT
auth     required pam_exec.so type=auth quiet expose_authtok $MFA_CHECK $MFA_CODE $MFA_ATTEMPTS
auth     required pam_permit.so
account  required pam_permit.so
session  required pam_permit.so
password required pam_deny.so
"
    write_file 644 "$MFA_CONFIG" "# Written by tests/cluster/testcluster.sh: the login node's MFA door (key, then a one-time code)
Port $MFA_PORT
ListenAddress 127.0.0.1
HostKey $STATE/sshd/ssh_host_ed25519_key
PidFile $MFA_PID
AuthenticationMethods publickey,keyboard-interactive
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication yes
# PAM (service sshd-mfa, after the program's name) asks for the code
UsePAM yes
PermitRootLogin no
AllowUsers $HPC_USER
AuthorizedKeysFile .ssh/authorized_keys
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp internal-sftp
"
}

start_mfa() {
    setup_mfa
    start_extra_sshd "MFA sshd" "$MFA_SSHD" "$MFA_CONFIG" "$MFA_PID" "$MFA_LOG" "$MFA_PORT" \
        "$MFA_CONFIG" "$MFA_PAM" "$MFA_CHECK" "$STATE/sshd/ssh_host_ed25519_key.pub"
}

queue_empty() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }

stop_slurm() {
    # Pitfall 12: killing slurmd leaves running jobs behind as orphans: cancel them and wait first.
    if alive "$(pid_of "$CTLD_PID")" && ! queue_empty; then
        log "cancelling the jobs of $HPC_USER"
        scancel -u "$HPC_USER" 2>/dev/null || true
        wait_until 15 queue_empty || warn "jobs still in the queue after 15 s: $(squeue -h -o '%i:%T' | tr '\n' ' ')"
    fi
    local node
    for node in "${NODES[@]}"; do stop_pidfile "slurmd $node" "/run/slurmd-$node.pid"; done
    stop_pidfile slurmctld "$CTLD_PID"
}

leftover_processes() {  # processes of the cluster's user still running (orphaned job steps)
    local dir
    id -u "$HPC_USER" >/dev/null 2>&1 || return 0
    while read -r dir; do
        alive "${dir#/proc/}" || continue
        printf '%s:%s ' "${dir#/proc/}" "$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | cut -c1-60)"
    done < <(find /proc -mindepth 1 -maxdepth 1 -user "$HPC_USER" -regex '/proc/[0-9]+' 2>/dev/null)
}

# --- commands -----------------------------------------------------------------------------------------

up() {
    need_root
    take_lock
    local started
    started=$(now_ms)
    install -d -m 755 "$STATE" "$STATE/pids" "$STATE/logs" "$STATE/sshd" "$STATE/ca" "$STATE/bastion" "$STATE/mfa"
    step "packages" install_packages "${PACKAGES[@]}"
    step "system users slurm, munge, sshd" setup_system_users
    step "user $HPC_USER" setup_user
    step "keys, known_hosts" setup_keys
    step "test CA, bastion host key and certificate" setup_bastion_keys
    step "/etc/hosts" setup_hosts
    step "slurm.conf, gres.conf, fake GPUs" setup_slurm_config
    step "runtime in $OPT" install_runtime
    step "fixture models" make_models
    step "config.toml, ssh_config, known_hosts_ca" write_client_config
    step "munged" start_munge
    step "slurm" start_slurm
    step "sshd" start_sshd
    step "bastion sshd" start_bastion
    step "MFA sshd" start_mfa
    log "up in $(secs $(($(now_ms) - started)))"
    cat <<EOF
[testcluster] ssh in:  ssh -i $STATE/client_key -o UserKnownHostsFile=$STATE/known_hosts -p $SSH_PORT $HPC_USER@127.0.0.1
[testcluster] or:      ssh -F $STATE/ssh_config tc-login|tc-bastion|tc-twohop|tc-mfa   (tc-mfa's code: $MFA_CODE)
[testcluster] clients: export HPCLLM_CONFIG=$STATE/config.toml (profiles testcluster, testcluster-twohop, testcluster-mfa)
[testcluster] logs:    $SLURM_LOGS/slurm{ctld,d-gpu01,d-gpu02}.log $MUNGED_LOG $SSHD_LOG $BASTION_LOG $MFA_LOG
EOF
}

down() {
    need_root
    take_lock
    local started leftover
    started=$(now_ms)
    stop_extra_sshd "MFA sshd" "$MFA_PID"
    stop_extra_sshd "bastion sshd" "$BASTION_PID"
    stop_pidfile sshd "$SSHD_PID"
    stop_slurm
    stop_pidfile munged "$MUNGED_PID"
    leftover=$(leftover_processes)
    [ -z "$leftover" ] || warn "processes of $HPC_USER still running (not killed): $leftover"
    log "down in $(secs $(($(now_ms) - started)))"
}

packages() {  # packages [PACKAGE...]: install only (default: the cluster's PACKAGES)
    need_root
    take_lock
    [ $# -gt 0 ] || set -- "${PACKAGES[@]}"
    step "packages" install_packages "$@"
}

status() {
    local all=0 pair name file pid
    for pair in "munged:$MUNGED_PID" "slurmctld:$CTLD_PID" "slurmd gpu01:/run/slurmd-gpu01.pid" \
        "slurmd gpu02:/run/slurmd-gpu02.pid" "sshd:$SSHD_PID" "bastion sshd:$BASTION_PID" \
        "MFA sshd:$MFA_PID"; do
        name=${pair%%:*} file=${pair#*:}
        pid=$(pid_of "$file")
        if alive "$pid"; then
            log "$name: running ($pid)"
        else
            log "$name: stopped"
            all=1
        fi
    done
    if alive "$(pid_of "$CTLD_PID")"; then
        timeout 10 sinfo || true
        timeout 10 squeue || true
    fi
    [ -f "$STATE/config.toml" ] && log "client config: $STATE/config.toml"
    return $all
}

# Sourced: the functions only (see the top).
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    packages) shift; packages "$@" ;;
    *) echo "usage: $0 up|down|status|packages [PACKAGE...]" >&2; exit 2 ;;
esac
