"""Slurm: the sbatch script as a pure function of a typed spec, the remote commands that talk to Slurm
and read a job's files, and pure parsers of their output. Every value put into shell text is quoted.

A job keeps its files in ``~/.hpcllm/jobs/<job id>/`` (mode 0700): ``server.json`` (the address, written
atomically once the engine starts), ``key`` (the API key, 0600), ``engine.log`` (redacted) and
``exit_code`` (when the engine has exited). Slurm's own output goes to ``~/.hpcllm/jobs/slurm-<id>.out``.
"""

from __future__ import annotations

import enum
import json
import re
import shlex
from dataclasses import dataclass, field

from .engines import EngineCommand, ShellVar
from .errors import ConfigError

__all__ = [
    "JOBS_DIR",
    "JobRow",
    "JobSpec",
    "JobState",
    "Probe",
    "parse_probe",
    "parse_queue",
    "parse_sbatch",
    "render_script",
]

JOBS_DIR = ".hpcllm/jobs"  # relative to the user's home on the cluster
JOB_NAME_PREFIX = "hpcllm-"
QUEUE_FORMAT = "%i|%j|%T|%N|%L|%r|%S|%k|%b|%M"


class JobState(enum.Enum):
    """Slurm job states. ``parse`` tolerates suffixes such as ``CANCELLED by 1001`` or ``CANCELLED+``."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # not (or no longer) known to squeue

    @classmethod
    def parse(cls, text: str) -> JobState:
        word = text.strip().split(" ")[0].rstrip("+").upper()
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_active(self) -> bool:
        """Holds, or waits for, an allocation."""
        return self in _ACTIVE

    @property
    def is_finished(self) -> bool:
        return not self.is_active and self is not JobState.UNKNOWN


_ACTIVE = {
    JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.COMPLETING,
    JobState.SUSPENDED, JobState.REQUEUED, JobState.RESIZING,
}

# --- validation of values that go into #SBATCH lines (sbatch does not parse shell quoting there) ----------

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^[1-9]\d*[KMGT]?$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")


def check_time(value: str) -> str:
    match = _TIME.match(value.strip())
    ok = bool(match) and all(int(part) < 60 for part in (match.group(3), match.group(4)) if part)  # type: ignore[union-attr]
    if not ok or value.strip() in ("0", ""):
        raise ConfigError(
            f"{value!r} is not a Slurm time limit.",
            "Use minutes (90), HH:MM:SS (4:00:00) or D-HH:MM:SS (1-12:00:00).",
        )
    return value.strip()


def check_mem(value: str) -> str:
    if not _MEM.match(value.strip()):
        raise ConfigError(
            f"{value!r} is not a Slurm memory size.",
            "Use a whole number with an optional unit K, M, G or T, e.g. 32G or 64000M.",
        )
    return value.strip()


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise ConfigError(
            f"{what} {value!r} has characters Slurm does not allow here.",
            "Use letters, digits, '.', '_', '+' and '-' only.",
        )
    return value


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

# --- remote commands ----------------------------------------------------------------------------------


def submit_command() -> str:
    """sbatch reading the script on stdin, from the home directory (the relative --output needs it)."""
    return f"cd && mkdir -p {JOBS_DIR} && chmod 700 .hpcllm {JOBS_DIR} && sbatch --parsable"


def cancel_command(job_id: str) -> str:
    return f"scancel {shlex.quote(job_id)}"


def queue_command(name: str | None = None, active_only: bool = True) -> str:
    """The user's jobs (optionally one job name) in QUEUE_FORMAT."""
    parts = ["squeue", "-h", "-u", '"$USER"', "-o", shlex.quote(QUEUE_FORMAT)]
    if name:
        parts += ["-n", shlex.quote(name)]
    if active_only:
        parts += ["-t", "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED"]
    return " ".join(parts)


_MARK = "@@hpcllm:"


def probe_command(job_id: str, *, queue: bool = True, log_bytes: int = 8000) -> str:
    """One round trip for everything `wait` needs: the queue line, address, exit code, log tails."""
    jid = shlex.quote(job_id)
    job_dir = f"{JOBS_DIR}/{jid}"
    sections = []
    if queue:
        sections.append(f"echo {_MARK}queue; squeue -h -t all -j {jid} -o {shlex.quote(QUEUE_FORMAT)} 2>&1")
    sections += [
        f"echo {_MARK}server; cat {job_dir}/server.json 2>/dev/null",
        f"echo; echo {_MARK}exit; cat {job_dir}/exit_code 2>/dev/null",
        f"echo {_MARK}log; tail -c {log_bytes} {job_dir}/engine.log 2>/dev/null",
        f"echo; echo {_MARK}slurm; tail -c 2000 {JOBS_DIR}/slurm-{jid}.out 2>/dev/null",
    ]
    return "cd; " + "; ".join(sections) + "; true"


def key_command(job_id: str) -> str:
    return f"cat {JOBS_DIR}/{shlex.quote(job_id)}/key"


def log_command(job_id: str, *, lines: int | None = None, from_byte: int | None = None) -> str:
    path = f"{JOBS_DIR}/{shlex.quote(job_id)}/engine.log"
    if from_byte is not None:
        return f"cd; tail -c +{from_byte + 1} {path} 2>/dev/null; true"
    return f"cd; tail -n {int(lines or 100)} {path}"


def image_mtime_command(image: str) -> str:
    return f"stat -L -c %Y {shlex.quote(image)}"


def image_help_command(runtime: str, runtime_command: str, image: str, argvs: tuple[tuple[str, ...], ...]) -> str:
    """The first of the engine's help commands that works, run in its image."""
    runs = [" ".join([shlex.quote(runtime_command), "exec", shlex.quote(image), *map(shlex.quote, argv)])
            if runtime != "none" else " ".join(map(shlex.quote, argv)) for argv in argvs]
    return " || ".join(f"{run} 2>&1" for run in runs) + "; true"


# --- parsers ------------------------------------------------------------------------------------------


def parse_sbatch(stdout: str) -> str:
    """The job id from `sbatch --parsable` (which may print `id;cluster`)."""
    for line in reversed(stdout.strip().splitlines()):
        candidate = line.strip().split(";")[0]
        if candidate.isdigit():
            return candidate
    raise ValueError(f"no job id in sbatch output {stdout!r}")


@dataclass(frozen=True)
class JobRow:
    """One line of squeue in QUEUE_FORMAT."""

    job_id: str
    name: str
    state: JobState
    raw_state: str
    node: str
    time_left: str
    reason: str
    start_time: str
    comment: str
    gres: str
    elapsed: str

    @property
    def is_ours(self) -> bool:
        return self.name.startswith(JOB_NAME_PREFIX)

    def comment_field(self, key: str) -> str | None:
        """A value from our `hpcllm;model=...;engine=...` comment."""
        for part in self.comment.split(";"):
            k, _, v = part.partition("=")
            if k == key:
                return v
        return None


def parse_queue(text: str) -> list[JobRow]:
    rows = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 10 or not fields[0].strip().split("_")[0].isdigit():
            continue
        job_id, name, state, node, left, reason, start, comment, gres, elapsed = (f.strip() for f in fields)
        rows.append(JobRow(job_id, name, JobState.parse(state), state, node, left, reason,
                           "" if start in ("N/A", "(null)") else start,
                           "" if comment == "(null)" else comment, gres, elapsed))
    return rows


@dataclass(frozen=True)
class Probe:
    """What `probe_command` saw."""

    row: JobRow | None
    queue_checked: bool
    server: dict[str, object] | None
    exit_code: int | None
    log: str
    slurm_log: str

    @property
    def state(self) -> JobState:
        return self.row.state if self.row else JobState.UNKNOWN


def parse_probe(text: str) -> Probe:
    parts = re.split(rf"^{_MARK}(\w+)\n?", text, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=False))
    rows = parse_queue(sections.get("queue", ""))
    server = None
    raw_server = sections.get("server", "").strip()
    if raw_server:
        try:
            server = json.loads(raw_server)
        except json.JSONDecodeError:
            server = None  # mid-write cannot happen (atomic rename), but never crash on a bad file
    raw_exit = sections.get("exit", "").strip()
    return Probe(
        row=rows[0] if rows else None,
        queue_checked="queue" in sections,
        server=server,
        exit_code=int(raw_exit) if raw_exit.lstrip("-").isdigit() else None,
        log=sections.get("log", ""),
        slurm_log=sections.get("slurm", ""),
    )
