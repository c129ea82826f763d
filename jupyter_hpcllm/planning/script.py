"""The sbatch script as a pure function of a typed spec (checked against golden files).

A job keeps its files in ``~/.hpcllm/jobs/<job id>/`` (mode 0700): ``server.json`` (the address, written
atomically once the engine starts), ``key`` (the API key, 0600), ``engine.log`` (redacted) and
``exit_code`` (when the engine has exited). Slurm's own output goes to ``~/.hpcllm/jobs/slurm-<id>.out``.
Every value put into shell text is quoted.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from ..config.checks import (
    MAX_CPUS,
    MAX_IDLE_MINUTES,
    check_extra_sbatch,
    check_gres,
    check_mem,
    check_name,
    check_number,
    check_text,
    check_time,
    home_relative,
)
from ..errors import ConfigError
from .engines import EngineCommand, HomePath, Joined, ShellVar

__all__ = ["JOBS_DIR", "JOB_NAME_PREFIX", "JobSpec", "render_script", "shell_path"]

JOBS_DIR = ".hpcllm/jobs"  # relative to the user's home on the cluster
JOB_NAME_PREFIX = "hpcllm-"


def shell_path(path: str) -> str:
    """Quote a path for the shell. A leading ``~``, ``$HOME`` or ``${HOME}`` still means the home
    directory (``"$HOME"/'rest'``); any other ``$``, and everything after the home, stays literal."""
    rest = home_relative(path)
    if rest is None:
        return shlex.quote(path)
    return '"$HOME"' + ("/" + shlex.quote(rest) if rest else "")


def _word(value: str) -> str:
    """One argv element as shell text: a run-time variable double-quoted, a home path with its home
    expanded, anything else single-quoted (literal)."""
    if isinstance(value, ShellVar):
        return f'"{value}"'
    if isinstance(value, HomePath):
        return shell_path(value)
    if isinstance(value, Joined):
        return "".join(_word(part) for part in value.parts)
    return shlex.quote(value)


# --- the script ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything the sbatch script depends on. The script is a pure function of this."""

    name: str
    model: str
    engine: str
    command: EngineCommand
    gres: str
    cpus: int
    mem: str
    time: str
    runtime: str  # singularity | apptainer | none
    runtime_command: str
    image: str
    runtime_args: tuple[str, ...] = ("--nv",)
    binds: tuple[str, ...] = ()
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    prologue: str = ""
    comment: str = ""
    idle_timeout: float = 60.0  # minutes with no request and no client attached before the job ends itself
    header: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # The last gate before shell text: whatever built the spec (a profile, options, the Python API),
        # no value here may carry a line break or another control character into the script.
        check_time(self.time)
        check_mem(self.mem)
        check_name("Job name", self.name)
        for what, value in (("Partition", self.partition), ("Account", self.account), ("QOS", self.qos)):
            if value is not None:
                check_name(what, value)
        check_gres(self.gres)
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"--cpus must be a whole number from 1 to {MAX_CPUS}, not {self.cpus!r}.")
        check_number("The idle timeout", self.idle_timeout, 0, MAX_IDLE_MINUTES, unit=" minutes")
        for what, text in (("The model name", self.model), ("The engine", self.engine),
                           ("The runtime", self.runtime), ("The runtime command", self.runtime_command),
                           ("The image", self.image), ("The job comment", self.comment),
                           ("The script header", self.header)):
            check_text(what, text)
        for what, items in (("The runtime argument", self.runtime_args), ("The bind path", self.binds),
                            ("The engine command's argument", self.command.argv)):
            for item in items:
                check_text(what, item)
        for entry in self.extra_sbatch:
            check_extra_sbatch(entry)
        check_text("The prologue", self.prologue, multiline=True)


_REDACT_PY = '''\
import os, sys
key = open(sys.argv[1], "rb").read().strip()
pending = b""
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    data = (pending + chunk).replace(key, b"[api key]")
    # Hold back a tail that may be the start of the key, so a key split across two reads is caught too.
    hold = next((n for n in range(min(len(data), len(key) - 1), 0, -1) if key.startswith(data[-n:])), 0)
    pending = data[len(data) - hold:]
    os.write(1, data[:len(data) - hold])
os.write(1, pending)'''


def relay_source() -> str:
    """The relay the job runs on its node (``node/relay.py``, stdlib only), embedded in the script."""
    from importlib.resources import files

    return files("jupyter_hpcllm.node").joinpath("relay.py").read_text(encoding="utf-8").rstrip("\n")


def render_script(spec: JobSpec) -> str:
    """The sbatch script for a spec. Pure: same spec (and package version), same text (golden files)."""
    directives = [
        f"--job-name={spec.name}",
        "--nodes=1",
        "--ntasks=1",
        f"--gres={spec.gres}",
        f"--cpus-per-task={spec.cpus}",
        f"--mem={spec.mem}",
        f"--time={spec.time}",
        f"--output={JOBS_DIR}/slurm-%j.out",
    ]
    directives += [f"--{key}={value}" for key, value in
                   (("partition", spec.partition), ("account", spec.account), ("qos", spec.qos)) if value]
    if spec.comment:
        directives.append(f"--comment={spec.comment}")
    directives += [line.removeprefix("#SBATCH").strip() for line in spec.extra_sbatch]
    key_env = ""
    if spec.command.key_env:
        key_env = f'export {spec.command.key_env}="$(<"$JOB_DIR/key")"\n'
    parts: list[str | None] = [
        "#!/bin/bash",
        *(f"#SBATCH {d}" for d in directives),
        f"# {spec.header or 'jupyter-hpcllm'}: {spec.model} on {spec.engine}",
        _BODY_START,
        f"# Site set-up (the profile's prologue).\n{spec.prologue.strip()}\n" if spec.prologue.strip() else None,
        _BODY_KEY_PORT,
        f"REDACT_PY=$(cat <<'PY'\n{_REDACT_PY}\nPY\n)\n",
        f"RELAY_PY=$(cat <<'PY'\n{relay_source()}\nPY\n)\n",
        _BODY_REDACT,
        "# Start the engine in the background, its output through the redactor into the log. It listens on",
        "# this node's loopback only: the relay below is its one door.",
        key_env + _render_exec(spec) + ' > >(redact > "$JOB_DIR/engine.log") 2>&1 &',
        "ENGINE_PID=$!",
        "",
        _render_relay(spec),
        _BODY_ADDRESS,
        "printf '{\"job_id\": \"%s\", \"node\": \"%s\", \"port\": %s, \"model\": %s, \"engine\": %s, "
        "\"started\": \"%s\"}\\n' \\",
        '    "$SLURM_JOB_ID" "${SLURMD_NODENAME:-$(hostname -s)}" "$PORT" '
        f"{shlex.quote(json.dumps(spec.model))} {shlex.quote(json.dumps(spec.engine))} \"$(date -Iseconds)\" \\",
        '    > "$JOB_DIR/server.json.tmp"',
        'mv -f "$JOB_DIR/server.json.tmp" "$JOB_DIR/server.json"',
        _BODY_END,
    ]
    return "\n".join(part for part in parts if part is not None)


def _render_relay(spec: JobSpec) -> str:
    """Start the relay: the node's python3, else the image's (every engine image has one)."""
    idle_seconds = max(0, round(spec.idle_timeout * 60))
    container = ""
    if spec.runtime != "none":
        container = " ".join([shell_path(spec.runtime_command), "exec", shell_path(spec.image), "python3"])
    return "\n".join([
        "# The relay: the only listener other nodes reach. It lets nothing through without the job's key but",
        "# /health, and ends the job when nothing has used it for the idle timeout (no request, no lease).",
        "if command -v python3 >/dev/null 2>&1; then RELAY_PYTHON=(python3); "
        + (f"else RELAY_PYTHON=({container}); fi" if container else
           'else echo "hpcllm: the relay needs python3 on the node" >&2; kill -TERM "$ENGINE_PID"; exit 1; fi'),
        '"${RELAY_PYTHON[@]}" -c "$RELAY_PY" --job-dir "$JOB_DIR" --engine-port "$ENGINE_PORT" \\',
        f'    --engine-pid "$ENGINE_PID" --idle-timeout {idle_seconds} &',
        "RELAY_PID=$!",
        "",
        "# scancel and the time limit send TERM: pass it on so the engine frees the GPUs cleanly.",
        "trap 'kill -TERM \"$ENGINE_PID\" \"$RELAY_PID\" 2>/dev/null || true' TERM INT",
    ])


def _render_exec(spec: JobSpec) -> str:
    words: list[str] = []
    if spec.runtime != "none":
        words += [shell_path(spec.runtime_command), "exec", *map(shlex.quote, spec.runtime_args)]
        for bind in spec.binds:
            words += ["--bind", shell_path(bind)]
        words.append(shell_path(spec.image))
    argv = [_word(a) for a in spec.command.argv]
    # One option per line, so a person can read what runs.
    lines = [" ".join(words + argv[:3])]
    for word in argv[3:]:
        if word.startswith("--") or len(lines[-1]) > 100:
            lines.append("    " + word)
        else:
            lines[-1] += " " + word
    return " \\\n".join(lines)


_BODY_START = """\
set -euo pipefail
umask 077

# Everything about this job lives here (mode 0700): address, API key, engine log, exit code.
JOB_DIR="$HOME/.hpcllm/jobs/$SLURM_JOB_ID"
rm -rf "$JOB_DIR"  # left by an earlier job with this id (ids restart after a controller reset)
mkdir -p "$JOB_DIR"
chmod 700 "$HOME/.hpcllm" "$JOB_DIR"
cd "$JOB_DIR"
# This script, for a successor with the same plan (`hpcllm renew`).
cp -- "$0" "$JOB_DIR/job.sh" 2>/dev/null || true
"""

_BODY_KEY_PORT = """\
# From here on the API key is handled: never traced, even if the prologue turned tracing on.
{ set +xv; } 2>/dev/null

# The API key: 256 random bits in a 0600 file (a successor keeps its predecessor's, so the clients
# already holding it keep working). It reaches the engine and the relay through their environment or
# that file: never a command line, this script or the log.
if [[ "${HPCLLM_KEY_FROM:-}" =~ ^[0-9]+$ ]] && [ -s "$HOME/.hpcllm/jobs/$HPCLLM_KEY_FROM/key" ]; then
    cp "$HOME/.hpcllm/jobs/$HPCLLM_KEY_FROM/key" "$JOB_DIR/key"
else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > "$JOB_DIR/key"
fi
[ -s "$JOB_DIR/key" ] || { echo "hpcllm: could not make an API key" >&2; exit 1; }

# A free loopback port on this node for the engine, chosen now: the node is only known at run time. Below
# the kernel's ephemeral range, which outgoing connections (and the relay's own port) take from: else one
# of them may hold the port by the time the engine, which binds only once loaded, tries to.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[[ "$EPHEMERAL_LOW" =~ ^[0-9]+$ ]] && [ "$EPHEMERAL_LOW" -gt 12000 ] || EPHEMERAL_LOW=32768
ENGINE_PORT=""
for _ in $(seq 1 50); do
    candidate=$(( 10000 + RANDOM % (EPHEMERAL_LOW - 10000) ))
    if ! (: <"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then ENGINE_PORT=$candidate; break; fi
done
[ -n "$ENGINE_PORT" ] || { echo "hpcllm: no free port on $(hostname)" >&2; exit 1; }
"""

_BODY_REDACT = """\
# Engines may print their arguments (SGLang prints its API key): the log keeps a redacted copy.
redact() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -u -c "$REDACT_PY" "$JOB_DIR/key"
    else
        sed -u -f <(printf 's/%s/[api key]/g\\n' "$(<"$JOB_DIR/key")")
    fi
}
"""

_BODY_ADDRESS = """
# The relay's port (it chose a free one), then the address, written atomically (no half file is read).
for _ in $(seq 1 600); do
    [ -s "$JOB_DIR/relay.port" ] && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.1
done
PORT=$(cat "$JOB_DIR/relay.port" 2>/dev/null || true)
if ! [[ "$PORT" =~ ^[0-9]+$ ]]; then
    echo "hpcllm: the relay did not start (see above)" >&2
    kill -TERM "$ENGINE_PID" "$RELAY_PID" 2>/dev/null || true
    wait "$ENGINE_PID" || true
    echo 1 > "$JOB_DIR/exit_code"
    exit 1
fi"""

_BODY_END = """
# Wait for the engine. The relay is its only door: if the relay dies (or ended the job as idle), stop the
# engine rather than hold GPUs nobody can reach, with KILL if TERM has not worked within a minute. A
# trapped TERM interrupts `wait`, so loop until the engine has really exited.
set +e
DOORLESS=0
while kill -0 "$ENGINE_PID" 2>/dev/null; do
    if ! kill -0 "$RELAY_PID" 2>/dev/null; then
        DOORLESS=$((DOORLESS + 2))
        SIGNAL=TERM
        [ "$DOORLESS" -gt 60 ] && SIGNAL=KILL
        kill -"$SIGNAL" "$ENGINE_PID" 2>/dev/null
    fi
    sleep 2 & wait $!
done
wait "$ENGINE_PID"; status=$?
kill -TERM "$RELAY_PID" 2>/dev/null
# Ended by itself after the idle timeout: a normal end, not a failure.
[ -e "$JOB_DIR/idle_exit" ] && status=0
echo "$status" > "$JOB_DIR/exit_code"
exit "$status"
"""
