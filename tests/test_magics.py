"""The magics without a cluster, in a real InteractiveShell: parsing, help, errors that fail the cell
(one paragraph, no traceback), and a whole launch driven through the shipped FakeTransport."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCLLM_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "c.toml").write_text("")
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_hpcllm")
    yield ip
    InteractiveShell.clear_instance()


def _error_of(shell, source):
    """Run a cell as a notebook would; the error it failed with (None if it did not fail)."""
    result = shell.run_cell(source)
    return result.error_in_exec or result.error_before_exec


@pytest.mark.parametrize(("cell", "message"), [
    ("%hpcllm up", "the following arguments are required: model"),
    ("%hpcllm up gpt-oss-120b --gpus 9 --profile ebi", "a100 allows 1–4 GPUs"),
    ("%hpcllm up gpt-oss-120b --gpus zero --profile ebi", "--gpus takes a whole number, not 'zero'"),
    ("%hpcllm up gpt-oss-120b --time 99:99 --profile ebi", "--time: '99:99' is not a Slurm time limit"),
    ("%hpcllm up x --profile nope", "Unknown profile 'nope'"),
    ("%hpcllm up 'unclosed", "Check the quotes"),
    ("%hpcllm status", "No server is attached"),
    ("%hpcllm down 12 -- --x", "takes no engine arguments"),
    ("%%llm\nhello", "%%llm has no server yet"),
    ("%%llm --format yaml\nhello", "invalid choice: 'yaml'"),
])
def test_a_failed_magic_fails_its_cell_in_one_paragraph(shell, capsys, cell, message):
    error = _error_of(shell, cell)
    assert isinstance(error, UsageError), error
    assert message in str(error)
    assert len(str(error).strip().splitlines()) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_run_all_stops_at_a_failed_magic(shell):
    """A later cell that uses `client` never runs with a NameError: the failing cell stops "Run All"."""
    assert _error_of(shell, "%hpcllm up gpt-oss-120b --gpus 9 --profile ebi") is not None
    assert "client" not in shell.user_ns


def test_help_teaches(shell, capsys):
    shell.run_line_magic("hpcllm", "--help")
    out = capsys.readouterr().out
    assert "%hpcllm up MODEL" in out and "%hpcllm use URL" in out
    shell.run_line_magic("hpcllm", "up --help")
    out = capsys.readouterr().out
    assert "--background" in out and "--no-reuse" in out and "--replicas" in out
    magic = shell.find_line_magic("hpcllm")
    assert "status | list | logs" in magic.__doc__
    assert "{name} inserts a variable" in shell.find_cell_magic("llm").__doc__


def test_script_in_a_notebook(shell, capsys):
    shell.run_line_magic("hpcllm", "script gpt-oss-120b --gpus 4 --profile ebi --engine sglang")
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:a100:4" in out and "--tool-call-parser gpt-oss" in out


@pytest.fixture
def fake(shell, monkeypatch):
    """Every profile reaches the same FakeTransport: the whole lifecycle, no SSH."""
    from jupyter_hpcllm.edge.fake import FakeTransport
    from jupyter_hpcllm.lifecycle import Cluster
    from jupyter_hpcllm.lifecycle import shared as module

    transport = FakeTransport()
    clusters = {}

    def cluster_for(profile=None, prompt=None):
        from jupyter_hpcllm.config.profiles import load_profile

        resolved = load_profile(profile) if not hasattr(profile, "host") else profile
        if resolved.name not in clusters:
            clusters[resolved.name] = Cluster(resolved, transport=transport, sleep=lambda _: None)
        return clusters[resolved.name]

    monkeypatch.setattr("jupyter_hpcllm.notebook.magics.cluster_for", cluster_for)
    monkeypatch.setattr(module, "cluster_for", cluster_for)
    yield transport
    transport.close()


def test_up_chat_status_down_through_the_fake_transport(shell, capsys, fake):
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    out = capsys.readouterr().out
    assert "Submitted job" in out and "Ready: `client` talks to Qwen3-8B" in out
    assert [m.id for m in shell.user_ns["client"].models.list()] == ["Qwen3-8B"]
    shell.run_cell_magic("llm", "--no-stream", "hello fake")
    assert "hello fake" in capsys.readouterr().out
    shell.run_line_magic("hpcllm", "status")
    out = capsys.readouterr().out
    assert "RUNNING" in out
    # The engine's live numbers, through the relay (vLLM: the token rate from two readings).
    assert "requests        0 running, 0 waiting" in out and "KV cache        25 % used" in out
    assert "generation      0 tokens/s" in out
    shell.run_line_magic("hpcllm", "list")
    assert "Qwen3-8B" in capsys.readouterr().out
    shell.run_line_magic("hpcllm", "down")
    assert "cancelled" in capsys.readouterr().out
    assert any(command.startswith("scancel") for command in fake.commands)


def test_renew_and_the_walltime_warning_in_the_notebook(shell, capsys, fake):
    import time

    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    client = shell.user_ns["client"]
    magics = shell.magics_manager.registry["HpcllmMagics"]
    magics.server._ends_at = time.time() + 5 * 60  # as if five minutes were left
    capsys.readouterr()
    shell.run_line_magic("hpcllm", "status")
    out = capsys.readouterr().out
    assert "reaches its time limit in 5 min" in out and "hpcllm renew 1000" in out
    shell.run_cell_magic("llm", "--no-stream", "again")
    assert "time limit" not in capsys.readouterr().out  # once per job, not at every cell
    error = _error_of(shell, "%hpcllm renew --extend 30")
    assert error is not None and "only administrators can raise" in str(error)
    shell.run_line_magic("hpcllm", "renew")
    out = capsys.readouterr().out
    assert "Job 1001 took over from job 1000" in out and magics.server.job_id == "1001"
    answer = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "moved"}])
    assert answer.choices[0].message.content == "Echo: moved"  # the `client` made before the renew
    shell.run_line_magic("hpcllm", "down")


def test_the_notebook_follows_a_renewal_made_elsewhere_and_tells_the_status_bar(shell, capsys, fake, monkeypatch):
    """The lab sidebar's Renew (another renewer) starts a successor: the notebook's `client` moves to it,
    and a successor that failed before does not stop it from following the next one. `attached()` is what
    the JupyterLab status bar asks the kernel."""
    import json
    import threading
    import time

    from jupyter_hpcllm.edge.fake import Outcome
    from jupyter_hpcllm.errors import HpcllmError
    from jupyter_hpcllm.notebook.session import attached

    monkeypatch.setattr("jupyter_hpcllm.lifecycle.server.FOLLOW_EVERY", 0.05)
    assert attached() is None
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi")
    client, magics = shell.user_ns["client"], shell.magics_manager.registry["HpcllmMagics"]
    server = magics.server
    said = json.loads(repr(attached()))
    assert said["job_id"] == server.job_id == "1000" and said["model"] == "Qwen3-8B" and said["profile"] == "ebi"
    assert 0 < said["seconds_left"] <= 4 * 3600
    assert server._following  # started by adopt
    followers = [t.name for t in threading.enumerate()].count("hpcllm-follow-1000")
    server.follow_renewals()  # asked again (another face adopts it): still one follower
    assert [t.name for t in threading.enumerate()].count("hpcllm-follow-1000") == followers

    elsewhere = server.cluster.attach("1000", hold=False)  # another renewer: the sidebar
    fake.outcome = Outcome(exit_code=1, log="torch.OutOfMemoryError: CUDA out of memory.")
    with pytest.raises(HpcllmError):
        server.cluster.renew(elsewhere, grace=0.5)  # its successor 1001 fails and is cancelled
    assert fake.jobs["1001"].state.startswith(("FAILED", "CANCELLED")) and server.job_id == "1000"
    fake.outcome = Outcome()
    server.cluster.renew(elsewhere, grace=0.5)  # the next one serves
    elsewhere.close()
    deadline = time.monotonic() + 10
    while server.job_id == "1000" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.job_id == "1002" and json.loads(repr(attached()))["job_id"] == "1002"
    answer = client.chat.completions.create(model="Qwen3-8B", messages=[{"role": "user", "content": "moved"}])
    assert answer.choices[0].message.content == "Echo: moved"  # through the successor: the old job ended
    assert fake.jobs["1000"].state.startswith("CANCELLED")
    shell.run_line_magic("hpcllm", "down")
    assert attached() is None


def test_background_up_keeps_its_handle_and_down_cancels_it(shell, capsys, fake):
    from jupyter_hpcllm.edge.fake import Outcome

    fake.outcome = Outcome(starts=False)  # it stays in the queue
    shell.run_line_magic("hpcllm", "up Qwen3-8B --profile ebi --background")
    magics = shell.magics_manager.registry["HpcllmMagics"]
    handle = magics.launching
    assert handle is not None and "in the background" in capsys.readouterr().out
    for _ in range(200):
        if handle.submitted:
            break
        handle.join(0.05)
    assert handle.submitted
    shell.run_line_magic("hpcllm", "down")
    assert f"job {handle.job_id} was cancelled" in capsys.readouterr().out
    assert handle.cancelled() and magics.server is None
    assert f"scancel {handle.job_id}" in fake.commands


def test_the_login_nodes_questions_are_asked_in_the_cell_never_from_a_background_thread(monkeypatch):
    import getpass
    import threading

    from jupyter_hpcllm.errors import AuthenticationError
    from jupyter_hpcllm.notebook import session

    asked: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda text: asked.append(text) or "123456")
    assert session.ask("Verification code: ", False) == "123456" and asked == ["Verification code: "]
    failures: list[BaseException] = []

    def in_background() -> None:
        try:
            session.ask("Verification code: ", False)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=in_background)
    thread.start()
    thread.join(5)
    assert isinstance(failures[0], AuthenticationError) and asked == ["Verification code: "]
    assert "%hpcllm status" in str(failures[0])
