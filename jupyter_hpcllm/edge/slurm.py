"""Slurm from the outside: the remote commands that talk to Slurm and read a job's files, and pure
parsers of their output. Every value put into shell text is quoted. Job states are an enum.
"""

from __future__ import annotations

import enum
import json
import re
import shlex
from dataclasses import dataclass

from ..errors import ConfigError, SlurmOutputError
from ..planning.script import JOB_NAME_PREFIX, JOBS_DIR

__all__ = [
    "REUSED_PREFIX",
    "SUBMIT_INCOMPLETE",
    "SUBMIT_UNFINISHED",
    "JobRow",
    "JobState",
    "Probe",
    "cancel_command",
    "check_job_id",
    "commit_renewal_command",
    "extend_command",
    "image_mtime_command",
    "image_python_command",
    "job_script_command",
    "key_command",
    "log_command",
    "parse_probe",
    "parse_queue",
    "parse_sbatch",
    "parse_submission",
    "probe_command",
    "queue_command",
    "recorded_successor_command",
    "renewal_command",
    "submit_command",
    "successor_command",
]

QUEUE_FORMAT = "%i|%j|%T|%N|%L|%r|%S|%k|%b|%M"
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "١٢٣"

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

# --- remote commands ----------------------------------------------------------------------------------


SUBMIT_UNFINISHED = 75  # exit status: an earlier run of the same submission never said how sbatch ended
SUBMIT_INCOMPLETE = 76  # exit status: the script did not arrive whole; nothing was submitted


REUSED_PREFIX = "hpcllm-reuse:"  # what a locked submission prints instead of a new job id when a twin runs


def submit_command(token: str, comment: str, script_bytes: int, *, unique_name: str | None = None,
                   key_from: str | None = None) -> str:
    """sbatch of the script given on stdin, from the home directory (the relative --output needs it), at
    most once per ``token``: the first run claims ``.submit-TOKEN`` (mkdir is atomic), keeps the script
    there (``head -c``: it never waits for an end of input that a dead connection may deliver hours
    later), submits it only if all ``script_bytes`` arrived (a connection that dies while sending it must
    not submit half a script: the claim is then given up, exit 76), and keeps sbatch's output and status.
    Another run of the same command (its connection died, the id never came back) submits nothing and
    answers what the first got; if the first gave its claim up, it claims it in turn. So a lost answer
    is never a second job. sbatch ignores SIGHUP, so a connection that dies under it does not stop it
    half way. ``comment`` replaces the script's ``--comment`` (it carries the token, for people looking at
    the queue). Claims older than a day are removed.

    With ``unique_name``, looking for a pending or running job of that name and submitting happen under a
    lock on the login node (``.lock-NAME``, mkdir again; one older than two minutes was left by a killed
    run and is broken), so notebooks starting the same plan at the same moment end with one job: the
    others print ``hpcllm-reuse:ID``. ``key_from`` (a successor of that job) gives the new job the old
    one's API key, through sbatch's environment, never a command line the key is on."""
    if not re.fullmatch(r"[0-9a-f]{8,32}", token):
        raise ValueError(f"a submission token is 8-32 hex digits, not {token!r}")
    claim = f"{JOBS_DIR}/.submit-{token}"
    incomplete = "jupyter-hpcllm: the job script arrived incomplete; nothing was submitted"
    export = f" --export=ALL,HPCLLM_KEY_FROM={check_job_id(key_from)}" if key_from is not None else ""
    sbatch = (f"sbatch --parsable{export} --comment={shlex.quote(_check_comment(comment))} {claim}/script "
              f">{claim}/out 2>{claim}/err; echo $? >{claim}/status.new")
    if unique_name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,120}", unique_name):
            raise ValueError(f"a job name to lock on is letters, digits and ._+-, not {unique_name!r}")
        lock = f"{JOBS_DIR}/.lock-{unique_name}"
        states = "PENDING,CONFIGURING,RUNNING,SUSPENDED,REQUEUED"
        # The holder touches the lock every 20 s while it works (a slow sbatch must not look abandoned), and
        # removes it only if it is still its own; a lock untouched for two minutes is moved aside (mv is
        # atomic: one waiter wins) and removed.
        sbatch = (
            f"j=0; until mkdir {lock} 2>/dev/null; do "
            f"if [ -n \"$(find {lock} -maxdepth 0 -mmin +2 2>/dev/null)\" ]; then "
            f"mv {lock} {lock}.stale-{token} 2>/dev/null && rm -rf {lock}.stale-{token}; fi; "
            f"[ $j -ge 300 ] && {{ echo 'jupyter-hpcllm: another launch of this plan holds its lock' >{claim}/err; "
            f"echo 1 >{claim}/status.new; break; }}; sleep 0.2; j=$((j+1)); done; "
            f"if [ ! -e {claim}/status.new ]; then echo {token} >{lock}/owner; "
            # (No output of its own: a command's channel stays open while anything holds its stdout.)
            f"( while sleep 20; do touch {lock} || exit; done ) </dev/null >/dev/null 2>&1 & keeper=$!; "
            f"if twin=$(squeue -h -u \"$USER\" -n {unique_name} -t {states} -o %i 2>{claim}/err); then "
            f"twin=${{twin%%[!0-9_]*}}; "
            f"if [ -n \"$twin\" ]; then echo \"{REUSED_PREFIX}$twin\" >{claim}/out; echo 0 >{claim}/status.new; "
            f"else {sbatch}; fi; else echo 1 >{claim}/status.new; fi; kill $keeper 2>/dev/null; "
            f"[ \"$(cat {lock}/owner 2>/dev/null)\" = {token} ] && rm -rf {lock}; fi"
        )
    submit = (
        f"head -c {int(script_bytes)} >{claim}/script; "
        f"if [ \"$(wc -c <{claim}/script)\" -ne {int(script_bytes)} ]; then rm -rf {claim}; "
        f"echo '{incomplete}' >&2; exit {SUBMIT_INCOMPLETE}; fi; "
        f"{sbatch}; mv {claim}/status.new {claim}/status; break"
    )
    return (
        f"cd && mkdir -p {JOBS_DIR} && chmod 700 .hpcllm {JOBS_DIR} || exit 1; trap '' HUP; "
        f"find {JOBS_DIR} -maxdepth 1 -name '.submit-*' -mmin +1440 -exec rm -rf {{}} + 2>/dev/null; "
        f"i=0; while :; do if mkdir {claim} 2>/dev/null; then {submit}; fi; "
        f"[ -e {claim}/status ] || [ $i -ge 45 ] && break; sleep 1; i=$((i+1)); done; "
        f"cat {claim}/out; cat {claim}/err >&2; "
        f"exit $(cat {claim}/status 2>/dev/null || echo {SUBMIT_UNFINISHED})"
    )


def _check_comment(comment: str) -> str:
    # squeue prints the comment in a |-separated line: a | or a newline would break the row.
    if any(c in comment for c in "|\n\r") or not comment.isprintable():
        raise ValueError(f"a job comment must be one printable line without '|': {comment!r}")
    return comment


_JOB_ID = re.compile(r"[0-9]{1,12}(?:_[0-9]{1,9})?")


def check_job_id(job_id: str) -> str:
    """A Slurm job id (``123`` or an array task ``123_4``), or ConfigError: anything else (``--me``, ``1 2``)
    must never reach scancel or a path."""
    text = str(job_id).strip()
    if not _JOB_ID.fullmatch(text):
        raise ConfigError(f"{str(job_id)[:40]!r} is not a Slurm job id.",
                          "Job ids are numbers (an array task: 123_4); `hpcllm list` shows yours.")
    return text


def cancel_command(job_id: str) -> str:
    return f"scancel {check_job_id(job_id)}"


def queue_command(name: str | None = None, active_only: bool = True) -> str:
    """The user's jobs (optionally one job name) in QUEUE_FORMAT."""
    parts = ["squeue", "-h", "-u", '"$USER"', "-o", shlex.quote(QUEUE_FORMAT)]
    if name:
        parts += ["-n", shlex.quote(name)]
    if active_only:
        parts += ["-t", "PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED,REQUEUED"]
    return " ".join(parts)


def probe_command(job_id: str, boundary: str, *, queue: bool = True, log_bytes: int = 8000) -> str:
    """One round trip for everything `wait` and `status` need: the queue line, the job's own files (address,
    exit code, idle exit, activity) and log tails. Sections start with ``@@hpcllm:BOUNDARY:name``; the caller
    makes a new random boundary per call, so nothing an engine prints can pose as one of the job's files."""
    jid = check_job_id(job_id)
    if not re.fullmatch(r"[0-9a-f]{8,32}", boundary):
        raise ValueError(f"a probe boundary is 8-32 hex digits, not {boundary!r}")
    job_dir = f"{JOBS_DIR}/{jid}"
    mark = f"echo; echo @@hpcllm:{boundary}:"
    sections = []
    if queue:
        sections.append(f"{mark}queue; squeue -h -t all -j {jid} -o {shlex.quote(QUEUE_FORMAT)} 2>&1")
    sections += [
        f"{mark}server; cat {job_dir}/server.json 2>/dev/null",
        f"{mark}exit; cat {job_dir}/exit_code 2>/dev/null",
        f"{mark}idle; cat {job_dir}/idle_exit 2>/dev/null",
        f"{mark}activity; cat {job_dir}/activity.json 2>/dev/null",
        f"{mark}log; tail -c {int(log_bytes)} {job_dir}/engine.log 2>/dev/null",
        f"{mark}slurm; tail -c 2000 {JOBS_DIR}/slurm-{jid}.out 2>/dev/null",
        f"{mark}now; date +%s",
    ]
    return "cd; " + "; ".join(sections) + "; true"


def job_script_command(job_id: str) -> str:
    """The job's copy of its own script (what a successor runs: `renew`)."""
    return f"cat {JOBS_DIR}/{check_job_id(job_id)}/job.sh"


RENEWAL_CLAIMED = "hpcllm-renewal-claimed"


def renewal_command(job_id: str, successor: str | None = None, *, token: str = "") -> str:
    """Without `successor`: claim the renewal of a job for the renewer `token` (mkdir: one renewer wins; it
    prints RENEWAL_CLAIMED; the same renewer asking again, its answer lost, is told so again), else print
    the successor the winner recorded (nothing yet: it is still submitting). With `successor`: record it.
    With successor "": give the claim up (the successor failed)."""
    renewal = f"{JOBS_DIR}/{check_job_id(job_id)}/renewal"
    if successor == "":
        return f"cd; rm -rf {renewal}"
    if successor is not None:
        return f"cd; echo {check_job_id(successor)} > {renewal}/job.new && mv {renewal}/job.new {renewal}/job"
    if not re.fullmatch(r"[0-9a-f]{16,64}", token):
        raise ValueError("a renewal claim needs the renewer's hex token")
    return (f"cd; if mkdir {renewal} 2>/dev/null; then echo {token} > {renewal}/owner; echo {RENEWAL_CLAIMED}; "
            f'elif [ "$(cat {renewal}/owner 2>/dev/null)" = {token} ]; then echo {RENEWAL_CLAIMED}; '
            f"else cat {renewal}/job 2>/dev/null; fi; true")


def commit_renewal_command(job_id: str, successor: str) -> str:
    """Mark a renewal committed: its successor serves and takes over; the job's other holders move to it now.
    Fails if the claim is gone (the renewal was given up)."""
    renewal = f"{JOBS_DIR}/{check_job_id(job_id)}/renewal"
    return f"cd; echo {check_job_id(successor)} > {renewal}/ready.new && mv {renewal}/ready.new {renewal}/ready"


def recorded_successor_command(job_id: str) -> str:
    """Print the successor a job's renewer recorded, committed or not (nothing: no renewal, or given up)."""
    return f"cd; cat {JOBS_DIR}/{check_job_id(job_id)}/renewal/job 2>/dev/null; true"


def successor_command(job_id: str) -> str:
    """Print the successor of a job's committed renewal, if any (read only: claims nothing; a successor still
    starting, which its renewer may yet give up, is not printed)."""
    return f"cd; cat {JOBS_DIR}/{check_job_id(job_id)}/renewal/ready 2>/dev/null; true"


def extend_command(job_id: str, minutes: int) -> str:
    """Ask Slurm to raise the job's time limit by `minutes` (most clusters allow only administrators)."""
    if not 1 <= int(minutes) <= 525600:
        raise ConfigError(f"{minutes} minutes is not a time to add.", "Give 1 to 525600 minutes.")
    return f"scontrol update JobId={check_job_id(job_id)} TimeLimit=+{int(minutes)}"


def key_command(job_id: str) -> str:
    return f"cat {JOBS_DIR}/{check_job_id(job_id)}/key"


def log_command(job_id: str, *, lines: int | None = None, from_byte: int | None = None) -> str:
    path = f"{JOBS_DIR}/{check_job_id(job_id)}/engine.log"
    if from_byte is not None:
        return f"cd; tail -c +{from_byte + 1} {path} 2>/dev/null; true"
    return f"cd; tail -n {int(lines or 100)} {path}"


def image_mtime_command(image: str) -> str:
    return f"stat -L -c %Y {shlex.quote(image)}"


PROBE_EXIT = "@@hpcllm-probe-exit:"
TIMED_OUT = (124, 137)  # what `timeout` exits with when it ended the command (TERM, then KILL)


def probe_exit(output: str) -> int | None:
    """How a command from `image_python_command` ended (its last line), or None if it did not say."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith(PROBE_EXIT):
            value = line[len(PROBE_EXIT):].strip()
            return int(value) if value.isdigit() else None
    return None


def image_python_command(runtime: str, runtime_command: str, image: str, code: str, args: tuple[str, ...], *,
                         prologue: str = "", timeout: float = 170) -> str:
    """Python `code` run with `args` inside the image (its python3, or python), from the home directory,
    after the profile's prologue (a `module load` may be what puts the runtime on the PATH). `timeout` ends
    it on the login node too: a probe the client gave up on must not keep running there."""
    inner = " ".join(["for py in python3 python; do command -v \"$py\" >/dev/null 2>&1 && exec \"$py\" -c",
                      shlex.quote(code), *map(shlex.quote, args), "; done; echo 'no python in the image' >&2;",
                      "exit 127"])
    limit = f"timeout -k 5 {int(timeout)}"
    run = (f"{limit} sh -c {shlex.quote(inner)}" if runtime == "none" else
           f"{limit} {shlex.quote(runtime_command)} exec {shlex.quote(image)} sh -c {shlex.quote(inner)}")
    setup = f"{prologue.strip()}\n" if prologue.strip() else ""
    # The last line says how it ended: `timeout` exits 124 (or 137 after -k) when it had to end it.
    return f"cd; (\n{setup}{run}\n) 2>&1; echo \"{PROBE_EXIT}$?\""


# --- parsers ------------------------------------------------------------------------------------------


def parse_submission(stdout: str) -> tuple[str, bool]:
    """(job id, reused) from `submit_command`'s output: a new job, or the twin a locked submission found."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith(REUSED_PREFIX) and _JOB_ID.fullmatch(line[len(REUSED_PREFIX):].strip()):
            return line[len(REUSED_PREFIX):].strip(), True
    return parse_sbatch(stdout), False


def parse_sbatch(stdout: str) -> str:
    """The job id from `sbatch --parsable` (which may print `id;cluster`)."""
    for line in reversed(stdout.strip().splitlines()):
        candidate = line.strip().split(";")[0]
        if _DIGITS.fullmatch(candidate):
            return candidate
    raise SlurmOutputError("sbatch", stdout)


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

    @property
    def gpus(self) -> str | None:
        """The GPUs the job asked for, as a person reads them: "4 × a100", "2 GPUs" (None: none)."""
        return describe_gres(self.gres)

    def comment_field(self, key: str) -> str | None:
        """A value from our `hpcllm;model=...;engine=...` comment."""
        for part in self.comment.split(";"):
            k, _, v = part.partition("=")
            if k == key:
                return v
        return None


def describe_gres(gres: str) -> str | None:
    """squeue's %b (``gres:gpu:a100:4``, ``gres/gpu:a100=4``, ``gpu:4``) as "4 × a100" / "4 GPUs"."""
    for item in gres.split(","):
        parts = re.split(r"[:=]", item.strip().removeprefix("gres:").removeprefix("gres/"))
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else "1"
        kind = parts[1] if len(parts) > 2 else None
        return f"{count} × {kind}" if kind else f"{count} GPU" + ("s" if count != "1" else "")
    return None


def parse_queue(text: str) -> list[JobRow]:
    rows = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 10 or not _DIGITS.fullmatch(fields[0].strip().split("_")[0]):
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
    idle_exit: dict[str, object] | None = None  # the job ended itself: nothing used it for idle_timeout
    activity: dict[str, object] | None = None  # the relay's account: last request, leases, idle timeout
    now: float | None = None  # the cluster's clock (the relay's times are on it), seconds since 1970

    @property
    def state(self) -> JobState:
        return self.row.state if self.row else JobState.UNKNOWN


def _json_object(text: str) -> dict[str, object] | None:
    text = text.strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return None  # mid-write cannot happen (atomic rename), but never crash on a bad file
    return parsed if isinstance(parsed, dict) else None


def parse_probe(text: str, boundary: str) -> Probe:
    """Read what `probe_command` printed with this `boundary` (only the first section of each name counts)."""
    parts = re.split(rf"\n?^@@hpcllm:{re.escape(boundary)}:(\w+)\n?", text, flags=re.MULTILINE)
    sections: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=False):
        sections.setdefault(name, body)
    rows = parse_queue(sections.get("queue", ""))
    raw_exit = sections.get("exit", "").strip()
    raw_now = sections.get("now", "").strip()
    return Probe(
        row=rows[0] if rows else None,
        queue_checked="queue" in sections,
        server=_json_object(sections.get("server", "")),
        exit_code=int(raw_exit) if re.fullmatch(r"-?[0-9]{1,6}", raw_exit) else None,
        log=sections.get("log", ""),
        slurm_log=sections.get("slurm", ""),
        idle_exit=_json_object(sections.get("idle", "")),
        activity=_json_object(sections.get("activity", "")),
        now=float(raw_now) if re.fullmatch(r"[0-9]{1,12}", raw_now) else None,
    )
