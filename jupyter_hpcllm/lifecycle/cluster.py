"""The lifecycle core every face calls: a ``Cluster`` (one profile, one transport) that plans, launches,
attaches to, lists, shows and cancels model servers.

    cluster = Cluster("ebi")                      # or Cluster(profile, transport=FakeTransport())
    handle = cluster.launch("gpt-oss-120b", gpus=4)   # returns at once; handle.progress, handle.cancel()
    server = handle.result()                      # the Server once its OpenAI API answers

The transport is passed in (or made from the profile); nothing here is global (``lifecycle.shared`` keeps
the conveniences over one shared ``Cluster`` per profile).
"""

from __future__ import annotations

import contextlib
import secrets
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ..config.options import LaunchOptions
from ..config.profiles import Profile, load_profile
from ..discovery.drafts import find_draft
from ..discovery.imageprobe import image_info, profile_images
from ..discovery.models import ModelSummary, list_models, model_facts, summarize
from ..edge.slurm import (
    RENEWAL_CLAIMED,
    SUBMIT_INCOMPLETE,
    SUBMIT_UNFINISHED,
    JobRow,
    JobState,
    Probe,
    cancel_command,
    check_job_id,
    commit_renewal_command,
    extend_command,
    job_script_command,
    key_command,
    log_command,
    parse_probe,
    parse_queue,
    parse_submission,
    probe_command,
    queue_command,
    recorded_successor_command,
    renewal_command,
    submit_command,
    successor_command,
)
from ..edge.transport import CommandResult, Forward, Prompt, Transport, connect, run_idempotent
from ..errors import (
    CommandTimeout,
    ConnectionLost,
    JobNotFound,
    LaunchCancelled,
    RemoteCommandError,
    ServerNotReady,
    SubmitError,
    TransportError,
)
from ..planning.images import ImageInfo
from ..planning.jobrecord import engine_record
from ..planning.plan import LaunchPlan, plan_launch
from .handle import LaunchHandle
from .progress import Progress, ProgressCallback, Stage
from .renewal import RenewalControl
from .server import Server, ServerInfo, describe_idle
from .waiting import Endpoint, api_answers, relay_answers, wait_for_server
from .walltime import default_wait, slurm_seconds

__all__ = ["Cluster"]


def _options(model: str | LaunchOptions, options: dict[str, Any]) -> LaunchOptions:
    if isinstance(model, LaunchOptions):
        return LaunchOptions.from_mapping({**model.as_dict(), **options}) if options else model
    return LaunchOptions.from_mapping({"model": model, **options})


# Seconds the old job still serves after a renewal moved its renewer: requests in flight finish, and the
# job's other holders (other notebooks, `hpcllm forward`, the renewer's own), who look for a successor every
# FOLLOW_EVERY seconds (`Server.follow_renewals`), move to it.
RENEW_GRACE_SECONDS = 45.0


class Cluster:
    """One cluster, as a profile describes it, reached through one transport."""

    def __init__(self, profile: Profile | str | None = None, *, transport: Transport | None = None,
                 ready_check: Callable[[str, str], bool] = api_answers,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None,
                 prompt: Prompt | None = None) -> None:
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        # `prompt` answers what the login node asks (a password, a one-time code); the faces pass one.
        self.transport = transport if transport is not None else connect(self.profile, prompt=prompt)
        self._ready_check = ready_check
        # Attaching only to watch (no lease) checks readiness without using the server (see relay_answers).
        self._watch_check = relay_answers if ready_check is api_answers else ready_check
        self._clock = clock
        self._servers: weakref.WeakSet[Server] = weakref.WeakSet()  # closed with the cluster
        self._injected_sleep = sleep  # tests pass one; launches then use it instead of their cancel event
        self._sleep = sleep or time.sleep

    def __repr__(self) -> str:
        return f"<Cluster {self.profile.name} via {self.transport.description}>"

    def connect(self) -> Cluster:
        """Open the connection now, asking in this thread whatever the login node asks (a password, a
        one-time code): a face calls it before a launch, whose work runs in a thread of its own."""
        self.transport.connect()
        return self

    def close(self) -> None:
        """Close every Server made here (their forwards and leases) and the connection."""
        for server in list(self._servers):
            server.close()
        self.transport.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning -------------------------------------------------------------------------------------

    def plan(self, model: str | LaunchOptions, *, offline: bool = False, refresh: bool = False,
             **options: Any) -> LaunchPlan:
        """The job `launch` would submit. The model's facts (config, template, card, size) are read from the
        cluster (cached), and the engine images asked what they hold (cached per image), to choose the
        engine, parsers and GPUs; `offline` plans from the name alone, connecting to nothing (what `hpcllm
        script` prints)."""
        chosen = _options(model, options)
        # Options that are wrong whatever the model (GPU counts, types) are refused before connecting.
        draft = plan_launch(self.profile, chosen)
        if offline:
            return draft
        # Cached per way in (user and host, or the fake): a fake cluster's facts never plan a real job.
        scope = self.transport.description
        files = self.transport.files()
        facts = model_facts(self.profile, files, chosen.model, refresh=refresh, scope=scope)
        asked = chosen.engine if chosen.engine not in (None, "auto") else None
        images = profile_images(self.profile, self.transport, (asked,) if asked else None)
        found = find_draft(self.profile, files, facts, chosen.speculative, scope=scope) if chosen.speculative else None
        return plan_launch(self.profile, chosen, facts=facts, images=images, draft=found)

    def job_script(self, model: str | LaunchOptions, **options: Any) -> str:
        """The sbatch script for these options, without connecting."""
        return self.plan(model, offline=True, **options).script

    def models(self) -> list[ModelSummary]:
        """Every model under the profile's model root: facts, family, parsers, suggested allocation."""
        return [summarize(self.profile, facts) for facts in list_models(self.profile, self.transport.files(),
                                                                     scope=self.transport.description)]

    def image(self, engine: str | None = None, *, refresh: bool = False) -> ImageInfo:
        """What the engine's image holds: version, parser names, architectures (cached per image)."""
        engine = engine if engine not in (None, "auto") else self.profile.default_engine
        return image_info(self.profile, self.transport, engine, refresh=refresh)

    def parsers(self, engine: str | None = None, *, refresh: bool = False) -> dict[str, tuple[str, ...]]:
        """The tool-call and reasoning parser names the engine's image registers (cached per image)."""
        info = self.image(engine, refresh=refresh)
        return {"tool": info.tool_parsers or (), "reasoning": info.reasoning_parsers or ()}

    # -- launching ------------------------------------------------------------------------------------

    def launch(self, model: str | LaunchOptions, *, on_progress: ProgressCallback | None = None,
               **options: Any) -> LaunchHandle:
        """Start (or reuse) a server; returns at once with a handle to watch, cancel or wait on."""
        handle = LaunchHandle(self, _options(model, options), clock=self._clock,
                              sleep=self._injected_sleep)
        if on_progress is not None:
            handle.add_callback(on_progress)
        return handle.start()

    def up(self, model: str | LaunchOptions, *, on_progress: ProgressCallback | None = None,
           **options: Any) -> Server:
        """`launch(...).result()`; an interrupt (Ctrl-C) cancels the launch and the job it submitted."""
        handle = self.launch(model, on_progress=on_progress, **options)
        try:
            return handle.result()
        except BaseException:
            handle.stop()  # the scancel is sent before up() returns
            raise

    def attach(self, job_id: str, *, on_progress: ProgressCallback | None = None,
               timeout: float | None = 3600.0, local_port: int = 0, hold: bool = True) -> Server:
        """Connect to a job started earlier (by this or another session); waits (by default up to an hour)
        if it is still starting. `local_port` fixes the local end of the forward (0: any free port). Without
        `hold` the Server keeps no lease and the attach itself sends no request to the engine: watching a job
        (its metrics) never keeps it from ending itself when idle."""
        return self.wait(self._job_id(job_id), report=on_progress or (lambda _: None), timeout=timeout,
                         submitted=False, sleep=self._sleep, local_port=local_port, hold=hold,
                         ready_check=None if hold else self._watch_check)

    def open_forward(self, server: Server, local_port: int = 0) -> Forward:
        """Another local address for a server (e.g. on a port of your choosing); close it when done."""
        return self.transport.forward(server.node, server.port, local_port=local_port)

    def find_twin(self, plan: LaunchPlan) -> JobRow | None:
        """A pending or running job of the same plan (its name carries a digest of the script)."""
        twins = parse_queue(self._read(queue_command(plan.job_name)).stdout)
        # Not one on its way out (COMPLETING: cancelled or ended, its engine stopping): it would fail the wait.
        twins = [row for row in twins if row.state is not JobState.COMPLETING]
        return twins[0] if twins else None

    def submit(self, plan: LaunchPlan) -> str:
        """sbatch the plan's script (fed on stdin, kept in the submission's 0700 claim); the job id.

        The command submits at most once per token (see ``submit_command``): if the connection dies under
        it, or it times out, the same command runs once more on a new connection and answers with the job
        the first run made, if it made one. Never a second job for a lost answer."""
        return self._submit(plan.script, plan.spec.comment)[0]

    def submit_or_reuse(self, plan: LaunchPlan) -> tuple[str, bool]:
        """(job id, reused): a pending or running job of the same plan if there is one, else a new one. The
        look and the sbatch happen under one lock on the login node, so launches of the same plan from
        several notebooks or machines at the same moment end with one job."""
        return self._submit(plan.script, plan.spec.comment, unique_name=plan.job_name)

    def _submit(self, script: str, comment: str, *, unique_name: str | None = None,
                key_from: str | None = None) -> tuple[str, bool]:
        token = secrets.token_hex(6)
        command = submit_command(token, f"{comment};submission={token}", len(script.encode()),
                                 unique_name=unique_name, key_from=key_from)
        try:
            try:
                result = self.transport.run(command, stdin=script)
            except (ConnectionLost, CommandTimeout) as lost:
                # sbatch may have run. Whatever stops the retry (no connection yet, a refused login, the
                # same drop again), the job may exist: the error must say how to find it.
                try:
                    result = self.transport.run(command, stdin=script)
                except RemoteCommandError:
                    raise
                except TransportError as error:
                    raise _submission_unknown(error, token) from lost
        except RemoteCommandError as error:
            if error.exit_status == SUBMIT_UNFINISHED:
                raise _submission_unknown(error, token) from None
            if error.exit_status == SUBMIT_INCOMPLETE:
                raise SubmitError("the job script did not arrive whole on the login node, so nothing was "
                                  "submitted", "Check the connection and launch again.") from None
            lines = (error.stderr.strip() or error.stdout.strip()).splitlines()
            message = "; ".join(line.removeprefix("sbatch: error: ").strip() for line in lines if line.strip())
            raise SubmitError(
                message.rstrip(".") + ".",
                "Check the GPU type, count, time, memory and partition against what the cluster allows "
                "(`sinfo -o '%P %G %l'` on the login node); `hpcllm script` shows what was submitted.",
            ) from None
        return parse_submission(result.stdout)

    def wait(self, job_id: str, *, report: ProgressCallback, timeout: float | None, submitted: bool,
             sleep: Callable[[float], None], started: float | None = None, local_port: int = 0,
             hold: bool = True, ready_check: Callable[[str, str], bool] | None = None) -> Server:
        """Wait until the job's server answers; the Server, with a forward to it open (and, with `hold`, a
        lease that keeps the job from ending itself as idle while the Server lives)."""
        ready = wait_for_server(
            job_id, observe=self._observe, connect=lambda endpoint: self._connect(job_id, endpoint, local_port),
            answers=ready_check or self._ready_check, report=report,
            timeout=timeout, submitted=submitted, clock=self._clock, sleep=sleep, started=started)
        endpoint = ready.endpoint
        server = Server(self, job_id, model=endpoint.model, engine=endpoint.engine, node=endpoint.node,
                        port=endpoint.port, api_key=ready.api_key, forward=ready.forward,
                        seconds_left=slurm_seconds(ready.time_left), hold=hold)
        self._servers.add(server)
        return server

    def _observe(self, job_id: str, queue: bool) -> Probe:
        return self._probe(job_id, queue=queue, log_bytes=8000)

    def _connect(self, job_id: str, endpoint: Endpoint, local_port: int = 0) -> tuple[Forward, str]:
        """A forward to this run of the engine, and this run's key (a requeued job makes a new one)."""
        forward = self.transport.forward(endpoint.node, endpoint.port, local_port=local_port)
        try:
            key = self._read(key_command(job_id)).stdout.strip()
        except BaseException:
            forward.close()
            raise
        return forward, key

    # -- outliving the walltime ------------------------------------------------------------------------

    def renew(self, server: Server, *, on_progress: ProgressCallback | None = None, timeout: float | None = None,
              grace: float | None = None, control: RenewalControl | None = None) -> Server:
        """Before the job's time limit ends: start a successor job with the same plan and key, and once it
        answers, commit (the job's other holders, who look every FOLLOW_EVERY seconds, move to it), move the
        server's forward to it (the local URL, the key and every client made from them keep working) and
        cancel the old job after `grace` seconds (default RENEW_GRACE_SECONDS) for them and for requests in
        flight. If the successor fails, or `control` is stopped before the commit, the successor is cancelled,
        nobody moves and the old job keeps serving. One successor per job: a second renewer (another notebook
        holding the same job) follows the first one's successor instead."""
        grace = RENEW_GRACE_SECONDS if grace is None else grace
        control = control or RenewalControl()
        pause = control.pausing(self._sleep, real=self._injected_sleep is None)
        old = server.job_id  # the job the caller means: if a follow moves the server first, that is the renewal
        tell = on_progress or (lambda _: None)
        report = _until_moved(tell)  # (for the waits: READY is told once the server moved)
        started = self._clock()
        row = self._probe(old).row  # (before the claim: nothing to leak if the login node is away)
        wait_for = timeout if timeout is not None else default_wait(row.time_left if row else None)
        with server.moving:  # (this server's follower waits meanwhile)
            if server.job_id != old:
                return server  # moved to a successor meanwhile: renewed already
            claimed = self._claim_renewal(old, pause)
            if claimed is not None:  # another renewer's successor: follow it, the other renewer ends the old job
                return self.follow(server, claimed, on_progress=on_progress, timeout=wait_for, sleep=pause)
            new, unknown = "", False
            try:
                script = self._read(job_script_command(old), check=False).stdout
                if not script.startswith("#!") or row is None or not row.state.is_active:
                    raise JobNotFound(old, "It has no copy of its script to start a successor from: it ended, or an "
                                           "older jupyter-hpcllm started it. Start a new server with `hpcllm up`.")
                comment = ";".join(p for p in row.comment.split(";") if p and not p.startswith("submission="))
                pause(0)  # (stopped before submitting: nothing to undo but the claim)
                new, _ = self._submit(script, comment or "hpcllm", key_from=old)
                self._read(renewal_command(old, new))
                report(Progress(Stage.SUBMITTED, new, f"Submitted job {new}, the successor of job {old}.", 0.0))
                successor = self.wait(new, report=report, submitted=True, sleep=pause, started=started,
                                      timeout=wait_for, hold=False)
                successor.close()  # its own forward: the server's moves to the successor instead
                if successor.api_key != server.api_key:
                    raise SubmitError(f"the successor job {new} did not take over the API key of job {old}",
                                      "It was cancelled; the old job keeps serving. Start a new server with "
                                      "`hpcllm up`.")
                if server.closed or not control.commit():
                    raise LaunchCancelled(f"The renewal of job {old} was given up before its successor {new} "
                                          "took over; the old job keeps serving.")
                if not self._commit_renewal(old, new):  # from now on the holders move
                    unknown = True
                    raise ConnectionLost(
                        f"The login node stopped answering while job {new} took over from job {old}, so whether "
                        "it did is unknown. Both jobs keep running (each ends itself when idle): `hpcllm list` "
                        f"shows them; stop the one your clients do not use, and remove ~/.hpcllm/jobs/{old}/renewal "
                        "on the cluster.")
            except BaseException:
                if not unknown:  # (then neither job may be cancelled: holders may have moved)
                    if new:
                        self.cancel_quietly(new, fresh=True)  # never a successor left running for nobody
                    self._quietly(renewal_command(old, ""))
                raise
            server.retarget(new, successor.node, successor.port, successor.seconds_left)
        tell(Progress(Stage.READY, new, f"Job {new} now serves {server.base_url}; job {old} stops in "
                                        f"{grace:g} s.", self._clock() - started, node=successor.node))
        try:
            self._sleep(grace)  # the other holders move, requests still running on the old job finish
        finally:
            self.cancel_quietly(old)
        return server

    def _commit_renewal(self, old: str, new: str) -> bool:
        """Write the commit mark; False if whether it was written is unknown (its answer lost, and the mark
        unreadable). A lost answer is no failure until the mark is known to be missing: holders may have
        read it and moved."""
        try:
            self._read(commit_renewal_command(old, new))
            return True
        except RemoteCommandError:
            raise  # the claim is gone: no mark was written, nobody moved
        except TransportError:
            try:
                written = self._read(successor_command(old), check=False, timeout=30).stdout.strip()
            except TransportError:
                return False
            if written != new:
                raise
            return True  # the mark was written; only its answer was lost

    def follow(self, server: Server, successor: str, *, on_progress: ProgressCallback | None = None,
               timeout: float | None = None, sleep: Callable[[float], None] | None = None) -> Server:
        """Move `server` to the successor another renewer started for its job, once the renewal is committed
        and the successor answers with the same key. Never claims a renewal nor submits: the renewer stops the
        old job, or, giving up, cancels the successor and drops the claim, which ends this wait (the server
        stays where it is). Gives up after `timeout` seconds (default an hour), when the successor ends, or
        when the server is closed."""
        old = server.job_id
        tell = on_progress or (lambda _: None)
        report = _until_moved(tell)
        base = sleep or self._sleep
        deadline = self._clock() + (3600.0 if timeout is None else timeout)

        def pause(seconds: float) -> None:
            if server.closed:
                raise LaunchCancelled(f"The server of job {old} was closed while it waited for job {successor}.")
            if self._clock() > deadline:
                raise ServerNotReady(f"The renewal of job {old} to job {successor} did not take over in time.")
            base(seconds)

        with server.moving:
            if server.job_id != old:
                return server  # moved meanwhile
            report(Progress(Stage.REUSED, successor, f"Job {old} is being renewed, as job {successor}.", 0.0))
            started = self._clock()
            moved = self.wait(check_job_id(successor), report=report, submitted=False, sleep=pause,
                              started=started, timeout=max(0.0, deadline - started), hold=False)
            moved.close()  # its own forward: the server's moves instead
            if moved.api_key != server.api_key:
                raise SubmitError(f"job {successor} did not take over the API key of job {old}",
                                  f"The server stays on job {old}.")
            while self.successor(old) != successor:  # not committed yet: the renewer may still give it up
                recorded = self._read(recorded_successor_command(old), check=False, timeout=30).stdout.strip()
                row = self._probe(successor).row
                if recorded != successor or row is None or not row.state.is_active:
                    raise LaunchCancelled(f"The renewal of job {old} was given up; the server stays on it.")
                pause(2.0)
            server.retarget(successor, moved.node, moved.port, moved.seconds_left)
            tell(Progress(Stage.READY, successor, f"Job {successor} took over from job {old}.",
                          self._clock() - started, node=moved.node))
        return server

    def successor(self, job_id: str) -> str | None:
        """The job another renewer started to take over from this one (None: no renewal under way)."""
        said = self._read(successor_command(job_id), check=False, timeout=30).stdout.strip()
        return check_job_id(said) if said else None

    def _claim_renewal(self, job_id: str, pause: Callable[[float], None]) -> str | None:
        """None if this renewer claimed the job's renewal; else the successor another one started."""
        token = secrets.token_hex(16)  # (a lost answer, asked again, is this renewer's own claim)
        for _ in range(30):
            said = self._read(renewal_command(job_id, token=token)).stdout.strip()
            if said == RENEWAL_CLAIMED:
                return None
            if said:
                return check_job_id(said)
            pause(1.0)  # claimed, its successor not submitted yet
        raise SubmitError(f"another renewal of job {job_id} started but recorded no successor",
                          f"Run `hpcllm list`; if no successor is there, remove ~/.hpcllm/jobs/{job_id}/renewal "
                          "on the cluster and renew again.")

    def _quietly(self, command: str) -> None:
        """Run a clean-up command, whatever goes wrong (it must not hide the error being raised)."""
        with contextlib.suppress(Exception):
            self._read(command, check=False, timeout=30)

    def extend(self, job_id: str, minutes: int) -> str:
        """Ask Slurm to raise the job's time limit; its new time left. Most clusters let only administrators
        do this: then a clear error says so, and that `renew` is the way."""
        job_id = self._job_id(job_id)
        result = self._read(extend_command(job_id, minutes), check=False)
        if result.exit_status != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise SubmitError(
                f"Slurm refused to raise the time limit of job {job_id}" + (f" ({said[-1]})" if said else ""),
                "On this cluster only administrators can raise a job's time limit. `hpcllm renew "
                f"{job_id}` starts a successor with the same plan and key and moves your address to it.")
        row = self._probe(job_id).row
        return row.time_left if row else ""

    # -- looking and stopping -------------------------------------------------------------------------

    def list(self) -> list[ServerInfo]:
        """This user's jupyter-hpcllm jobs on the cluster, pending or running."""
        return [ServerInfo.from_row(row) for row in parse_queue(self._read(queue_command()).stdout)
                if row.is_ours]

    def status(self, job_id: str) -> ServerInfo:
        """One job as the queue shows it (a job that ended shows how, while Slurm remembers it); JobNotFound
        when Slurm does not know it."""
        probe = self._probe(job_id)
        row = probe.row
        if row is None:  # Slurm forgot it (ended a while ago), or it never was
            raise JobNotFound(job_id)
        running = row.state is JobState.RUNNING
        port = (probe.server or {}).get("port") if running else None
        info = ServerInfo.from_row(row, port=int(str(port)) if str(port).isdigit() else None)
        return replace(info, idle=describe_idle(probe.activity, probe.now) if running else None,
                       ended_idle=probe.idle_exit is not None and not running)

    def engine_record(self, job_id: str) -> dict[str, Any]:
        """How the job runs its engine, from its script: the image, the engine's arguments, the parsers
        ({} when the job has no script of ours to read)."""
        result = self._read(job_script_command(self._job_id(job_id)), check=False)
        return engine_record(result.stdout) if result.exit_status == 0 else {}

    def logs(self, job_id: str, lines: int = 100) -> str:
        """The last lines of the engine log (the API key is redacted on the node)."""
        result = self._read(log_command(self._job_id(job_id), lines=lines), check=False)
        if result.exit_status != 0:
            raise JobNotFound(job_id, "It has no engine log on the cluster: it may not have started yet "
                                      "(`hpcllm status`), or the id is wrong.")
        return result.stdout

    def follow_logs(self, job_id: str, poll: float = 1.0) -> Iterator[str]:
        """Yield new log text as it arrives, until the job ends."""
        job_id = self._job_id(job_id)
        offset = 0
        quiet_checks = 0
        while True:
            chunk = self._read(log_command(job_id, from_byte=offset), check=False).stdout
            if chunk:
                offset += len(chunk.encode())
                quiet_checks = 0
                yield chunk
            else:
                quiet_checks += 1
                # Check the queue only now and then: a quiet log is the common case.
                if quiet_checks % 5 == 0 and not self._probe(job_id).state.is_active:
                    return
            self._sleep(poll)

    def cancel(self, job_id: str, *, wait: float = 15.0) -> JobState:
        """Cancel a job and wait (up to `wait` s) until it holds no allocation; its last state."""
        self._read(cancel_command(self._job_id(job_id)))
        return self.wait_gone(job_id, wait)

    def cancel_quietly(self, job_id: str, *, fresh: bool = False) -> bool:
        """Cancel without raising (a launch that failed or was interrupted); True if scancel ran.

        With `fresh` (the connection may be what failed), or when the first try fails, scancel goes over a
        new connection of its own: a dead one must not keep the GPUs held until the walltime ends."""
        if not fresh:
            try:
                return self._read(cancel_command(job_id), check=False, timeout=30).exit_status == 0
            except TransportError:
                pass
            except Exception:  # whatever broke, the caller says how to free the job by hand
                return False
        try:
            other = self.transport.fresh()
        except Exception:
            return False
        try:
            return run_idempotent(other, cancel_command(job_id), check=False, timeout=30).exit_status == 0
        except Exception:
            return False
        finally:
            if other is not self.transport:
                other.close()

    def wait_gone(self, job_id: str, wait: float) -> JobState:
        """Poll until the job no longer holds an allocation (or `wait` seconds pass); its last state."""
        deadline = self._clock() + wait
        while True:
            state = self._probe(job_id).state
            if not state.is_active or self._clock() > deadline:
                return state
            self._sleep(0.25)

    def _probe(self, job_id: str, *, queue: bool = True, log_bytes: int = 0) -> Probe:
        # A new boundary each time: no line the engine logs can pose as one of the job's files.
        boundary = secrets.token_hex(8)
        command = probe_command(self._job_id(job_id), boundary, queue=queue, log_bytes=log_bytes)
        return parse_probe(self._read(command).stdout, boundary)

    def _read(self, command: str, *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Every command but sbatch goes through here: each is safe to repeat once on a new connection."""
        return run_idempotent(self.transport, command, check=check, timeout=timeout)

    @staticmethod
    def _job_id(job_id: str) -> str:
        return check_job_id(job_id)


def _submission_unknown(error: Exception, token: str) -> SubmitError:
    """sbatch may have run, but its answer never came back, twice."""
    return SubmitError(
        f"the answer to sbatch was lost ({error}), so the job may or may not exist",
        f"`hpcllm list` shows it if it does (its comment ends with submission={token}); stop it with "
        "`hpcllm down JOB`, or launch again.")


def _until_moved(report: ProgressCallback) -> ProgressCallback:
    """A successor answering is not yet a renewal done (the move comes after the commit): the wait's
    READY is told as loading, so READY means moved, for every face."""

    def tell(progress: Progress) -> None:
        if progress.stage is Stage.READY:
            progress = replace(progress, stage=Stage.LOADING,
                               message=f"Job {progress.job_id} answers; it takes over …")
        report(progress)

    return tell
