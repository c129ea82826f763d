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

from ..config.checks import check_mem, check_name, check_time
from ..errors import ConfigError
from .engines import EngineCommand, ShellVar

__all__ = ["JOBS_DIR", "JOB_NAME_PREFIX", "JobSpec", "render_script", "shell_path"]

JOBS_DIR = ".hpcllm/jobs"  # relative to the user's home on the cluster
JOB_NAME_PREFIX = "hpcllm-"


def shell_path(path: str) -> str:
    """Quote a path for the shell, keeping a leading ``~/`` meaning the home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _word(value: str) -> str:
    return f'"{value}"' if isinstance(value, ShellVar) else shlex.quote(value)


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
    header: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_time(self.time)
        check_mem(self.mem)
        check_name("Job name", self.name)
        for what, value in (("Partition", self.partition), ("Account", self.account), ("QOS", self.qos)):
            if value is not None:
                check_name(what, value)
        if self.cpus < 1:
            raise ConfigError(f"--cpus must be at least 1, not {self.cpus}.")


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


def render_script(spec: JobSpec) -> str:
    """The sbatch script for a spec. Pure: same spec, same text (checked against golden files)."""
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
        _BODY_REDACT,
        "# Start the engine in the background, its output through the redactor into the log.",
        key_env + _render_exec(spec) + ' > >(redact > "$JOB_DIR/engine.log") 2>&1 &',
        "ENGINE_PID=$!",
        "",
        "# scancel and the time limit send TERM: pass it on so the engine frees the GPUs cleanly.",
        "trap 'kill -TERM \"$ENGINE_PID\" 2>/dev/null || true' TERM INT",
        "",
        "# The address, written atomically (a reader never sees half a file).",
        "printf '{\"job_id\": \"%s\", \"node\": \"%s\", \"port\": %s, \"model\": %s, \"engine\": %s, "
        "\"started\": \"%s\"}\\n' \\",
        '    "$SLURM_JOB_ID" "${SLURMD_NODENAME:-$(hostname -s)}" "$PORT" '
        f"{shlex.quote(json.dumps(spec.model))} {shlex.quote(json.dumps(spec.engine))} \"$(date -Iseconds)\" \\",
        '    > "$JOB_DIR/server.json.tmp"',
        'mv -f "$JOB_DIR/server.json.tmp" "$JOB_DIR/server.json"',
        _BODY_END,
    ]
    return "\n".join(part for part in parts if part is not None)


def _render_exec(spec: JobSpec) -> str:
    words: list[str] = []
    if spec.runtime != "none":
        words += [shlex.quote(spec.runtime_command), "exec", *map(shlex.quote, spec.runtime_args)]
        for bind in spec.binds:
            words += ["--bind", shell_path(bind)]
        words.append(shlex.quote(spec.image))
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
"""

_BODY_KEY_PORT = """\
# A fresh API key for this job: 256 random bits in a 0600 file. It reaches the engine through its
# environment (vLLM) or that file (SGLang): never a command line, this script or the log.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > "$JOB_DIR/key"
[ -s "$JOB_DIR/key" ] || { echo "hpcllm: could not make an API key" >&2; exit 1; }

# A free port on this node, chosen now: the node is only known at run time.
PORT=""
for _ in $(seq 1 50); do
    candidate=$(( 20000 + RANDOM % 40000 ))
    if ! (: <"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then PORT=$candidate; break; fi
done
[ -n "$PORT" ] || { echo "hpcllm: no free port on $(hostname)" >&2; exit 1; }
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

_BODY_END = """
# Wait for the engine; a trapped TERM interrupts `wait`, so wait again until it has really exited.
set +e
wait "$ENGINE_PID"; status=$?
while kill -0 "$ENGINE_PID" 2>/dev/null; do wait "$ENGINE_PID"; status=$?; done
echo "$status" > "$JOB_DIR/exit_code"
exit "$status"
"""
