"""A cluster made of real shell: `ShellTransport` runs every remote command with `bash -c` in a sandbox HOME,
with stub Slurm and container commands first on PATH. The stubs record their argv, answer plausibly, and
the stub `sbatch` checks what it is given (the script parses with `bash -n`; every `#SBATCH` line of its
header is one `--option=value` directive and none comes after the header) and can run the script itself,
as a compute node would. Whatever reaches a shell unquoted runs: the canary file tells."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from jupyter_hpcllm.config.profiles import Profile
from jupyter_hpcllm.edge.files import FileInfo, LocalFiles
from jupyter_hpcllm.edge.transport import CommandResult, LocalTransport, check_result
from jupyter_hpcllm.errors import CommandTimeout

_LOG = r'''
log_argv() {  # name args...: one record per call, fields NUL-terminated, the count first
    { printf '%s\0' "$#"; printf '%s\0' "$@"; } >> "$FUZZ_STATE/argv.log"
}
violation() { printf '%s\n' "$*" >> "$FUZZ_STATE/violations.log"; }
'''

_STUBS = {
    "sbatch": r'''
log_argv sbatch "$@"
script="${@: -1}"
comment=""
for arg in "$@"; do case "$arg" in --comment=*) comment="${arg#--comment=}";; esac; done
if ! bash -n "$script" 2>"$FUZZ_STATE/bash-n.err"; then
    violation "sbatch: the script does not parse: $(tr '\n' ' ' < "$FUZZ_STATE/bash-n.err")"
    echo "sbatch: error: the script does not parse" >&2; exit 1
fi
problems=$(awk '
    NR == 1 { if ($0 != "#!/bin/bash") print "first line: " $0; next }
    header && /^#SBATCH/ { if ($0 !~ /^#SBATCH --[A-Za-z][A-Za-z0-9-]*=[^[:space:]]+$/) print "directive: " $0; next }
    header && (/^#/ || /^[[:space:]]*$/) { next }
    { header = 0 }
    /^#SBATCH/ { print "directive after the header: " $0 }
    BEGIN { header = 1 }' "$script")
if [ -n "$problems" ]; then
    violation "sbatch: $problems"
    echo "sbatch: error: bad directives" >&2; exit 1
fi
name=""
while IFS= read -r line; do
    case "$line" in "#SBATCH --job-name="*) name="${line#\#SBATCH --job-name=}"; break;; esac
done < "$script"
id=$(( $(<"$FUZZ_STATE/next_id") ))
echo $((id + 1)) > "$FUZZ_STATE/next_id"
printf '%s|%s|RUNNING|node01|3:59:00|None|2030-01-01T00:00:00|%s|gpu:a100:1|0:01\n' "$id" "$name" "$comment" \
    > "$FUZZ_STATE/jobs/$id"
if [ -e "$FUZZ_STATE/run_scripts" ]; then  # run it, as the node would (synchronously: the test waits)
    mkdir -p "$HOME/.hpcllm/jobs"
    SLURM_JOB_ID=$id SLURMD_NODENAME=node01 timeout 20 bash "$script" \
        > "$HOME/.hpcllm/jobs/slurm-$id.out" 2>&1 </dev/null
    echo "$?" >> "$FUZZ_STATE/script_runs"
fi
echo "$id"
''',
    "squeue": r'''
log_argv squeue "$@"
job=""; name=""
while [ $# -gt 0 ]; do
    case "$1" in
        -j) job="$2"; shift;;
        -n) name="$2"; shift;;
        -o|-t|-u) shift;;
    esac
    shift
done
if [ -n "$job" ]; then
    [[ "$job" =~ ^[0-9]+(_[0-9]+)?$ ]] || violation "squeue -j got ${job@Q}"
    if [ -f "$FUZZ_STATE/jobs/$job" ]; then printf '%s\n' "$(<"$FUZZ_STATE/jobs/$job")"; exit 0; fi
    echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
fi
for file in "$FUZZ_STATE"/jobs/*; do
    [ -f "$file" ] || continue
    row=$(<"$file")
    IFS='|' read -r _ row_name _ <<< "$row"
    [ -z "$name" ] || [ "$row_name" = "$name" ] || continue
    case "$row" in *"|RUNNING|"*|*"|PENDING|"*) printf '%s\n' "$row";; esac
done
exit 0
''',
    "scancel": r'''
log_argv scancel "$@"
[ $# -eq 1 ] && [[ "$1" =~ ^[0-9]+(_[0-9]+)?$ ]] || violation "scancel got $# arguments: ${*@Q}"
if [ -f "$FUZZ_STATE/jobs/$1" ]; then
    sed -i 's/|RUNNING|/|CANCELLED|/; s/|PENDING|/|CANCELLED|/' "$FUZZ_STATE/jobs/$1"; exit 0
fi
echo "scancel: error: Kill job error on job id $1: Invalid job id specified" >&2; exit 1
''',
    "scontrol": 'log_argv scontrol "$@"\nexit 0\n',
    "sinfo": 'log_argv sinfo "$@"\necho "gpu* up 4:00:00 gpu:a100:4"\n',
    # The container runtimes and the engines: asked for --help (no --served-model-name: not an engine run,
    # whose own arguments may say --help), they list parsers; otherwise the engine "runs" and exits.
    **{name: r'''
log_argv "$(basename "$0")" "$@"
case " $* " in
    *" --served-model-name "*) ;;
    *" --help "*|*" --help=all "*) printf '%s\n' '--tool-call-parser {hermes,openai,qwen3_coder}' \
        '--reasoning-parser {qwen3,openai_gptoss,deepseek_r1}'; exit 0;;
esac
echo "engine stub: started"
exit 3
''' for name in ("singularity", "apptainer", "vllm", "python")},
    # python3 on the node: the log redactor (`python3 -u -c ...`) is `cat`; the relay writes its port and
    # waits to be stopped; anything else ends at once.
    "python3": r'''
if [ "$1" = "-u" ]; then exec cat; fi
dir=""
while [ $# -gt 0 ]; do [ "$1" = "--job-dir" ] && dir="$2"; shift; done
if [ -n "$dir" ]; then echo 40000 > "$dir/relay.port"; exec /bin/sleep 20; fi
exit 0
''',
    # The script's waits (for the relay's port, for the engine) take no time here.
    "sleep": "exit 0\n",
}


@dataclass
class Sandbox:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def canary(self) -> Path:
        return self.root / "CANARY"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def make(self) -> Sandbox:
        for path in (self.home, self.bin, self.state / "jobs", self.models):
            path.mkdir(parents=True, exist_ok=True)
        for name, body in _STUBS.items():
            stub = self.bin / name
            stub.write_text("#!/bin/bash\n" + _LOG + textwrap.dedent(body))
            stub.chmod(0o755)
        (self.models / "Qwen3-8B").mkdir(exist_ok=True)
        (self.models / "Qwen3-8B" / "config.json").write_text(
            '{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, '
            '"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 36}')
        (self.models / "Qwen3-8B" / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 16)
        for engine in ("vllm", "sglang"):
            (self.root / f"{engine}.sif").write_text("an image\n")
        self.reset()
        return self

    def reset(self, *, run_scripts: bool = False) -> None:
        """A fresh cluster: no jobs, no logs, no job directories (the stubs and models stay)."""
        shutil.rmtree(self.state, ignore_errors=True)
        (self.state / "jobs").mkdir(parents=True)
        (self.state / "next_id").write_text("1000\n")
        if run_scripts:
            (self.state / "run_scripts").touch()
        shutil.rmtree(self.home / ".hpcllm", ignore_errors=True)

    def environment(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": "fuzz", "LOGNAME": "fuzz", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "FUZZ_STATE": str(self.state)}

    def calls(self) -> list[list[str]]:
        """Every stub call since the reset: [name, arg, ...]."""
        path = self.state / "argv.log"
        if not path.exists():
            return []
        fields = path.read_bytes().decode("utf-8", "surrogateescape").split("\0")
        calls, i = [], 0
        while i < len(fields) - 1:
            count = int(fields[i])
            calls.append(fields[i + 1: i + 2 + count - 1])
            i += 1 + count
        return calls

    def violations(self) -> str:
        path = self.state / "violations.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def script_runs(self) -> list[int]:
        path = self.state / "script_runs"
        return [int(line) for line in path.read_text().split()] if path.exists() else []


class SandboxFiles(LocalFiles):
    """LocalFiles (the files of a login node Jupyter runs on), with `~/` meaning the sandbox's home (as
    SFTP's paths start there): errors are LocalFiles' own."""

    def __init__(self, home: Path) -> None:
        self._home = home

    def _path(self, path: str) -> str:
        return str(self._home / path[2:]) if path.startswith("~/") else (str(self._home) if path == "~" else path)

    def list(self, path: str) -> list[FileInfo]:
        return super().list(self._path(path))

    def read(self, path: str, limit: int = 4_000_000) -> bytes:
        return super().read(self._path(path), limit)


class ShellTransport(LocalTransport):
    """The project's LocalTransport (commands run under bash, as on a login node), run in the sandbox: its
    HOME, its PATH with the stubs first, nothing else of this machine's environment."""

    def __init__(self, profile: Profile, sandbox: Sandbox) -> None:
        super().__init__(profile)
        self.sandbox = sandbox
        self.description = "shell sandbox"
        self.commands: list[str] = []

    def run(self, command: str, *, stdin: str | None = None, timeout: float | None = None,
            check: bool = True) -> CommandResult:
        self.commands.append(command)
        timeout = min(timeout or 60, 60)
        try:
            done = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True,
                                  encoding="utf-8", errors="surrogateescape", timeout=timeout,
                                  cwd=self.sandbox.home, env=self.sandbox.environment())
        except subprocess.TimeoutExpired:
            raise CommandTimeout(command, timeout) from None
        return check_result(CommandResult(command, done.returncode, done.stdout, done.stderr), check)

    def files(self) -> SandboxFiles:
        return SandboxFiles(self.sandbox.home)


def bash_available() -> bool:
    return shutil.which("bash") is not None and os.name == "posix"


class ShellWalltime:
    """The sandbox cluster's clock and sleep (as fuzzkit.Walltime for the fake): a sleep moves the clock on
    at once, and after `limit` seconds every job in the sandbox's queue has reached its time limit."""

    def __init__(self, sandbox: Sandbox, limit: float = 3.0) -> None:
        self.sandbox = sandbox
        self.limit = limit
        self.now = self.started = 1000.0

    def reset(self) -> None:
        self.started = self.now

    def clock(self) -> float:
        return self.now

    def __call__(self, seconds: float) -> None:
        self.now += max(float(seconds), 0.01)
        if self.now - self.started >= self.limit:
            for job in (self.sandbox.state / "jobs").glob("*"):
                job.write_text(job.read_text().replace("|RUNNING|", "|TIMEOUT|").replace("|PENDING|", "|TIMEOUT|"))
