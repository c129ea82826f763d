"""SSH to the login node with the system ``ssh``: one ControlMaster per transport, shared by every command,
file read and tunnel. For what paramiko cannot do: FIDO keys, GSSAPI/Kerberos, an MFA code typed once.

The modules, each readable alone:

- ``transport``: ``OpenSSHTransport`` itself: the master's lifecycle (a keeper connection that notices
  its death), commands (``ssh -S PATH ... HOST COMMAND``), channels, forwards, files, ``fresh``, ``close``.
- ``master``: starting a master (``ssh -M -N -f``), ssh's complaints as errors with advice, stopping it.
- ``askpass``: what ssh asks while it logs in, passed to the face's prompt (SSH_ASKPASS) or the terminal.
- ``options``: the profile as ssh options, what ``ssh -G`` makes of them, the control sockets' directory
  (checked to be ours and private before any path in it is used).
- ``mux``: the master's multiplexing protocol (OpenSSH's PROTOCOL.mux), spoken here as ``ssh -W`` does,
  so the master relays a socket of ours itself: no ``ssh`` process per connection, no byte copied in Python.
  Every control connection first checks that the master runs as our own user.
- ``forward``: a local port whose every connection is handed to the master in use at the time.
- ``files``: ``find``/``head`` over commands (GNU findutils and coreutils on the cluster).

Windows' ssh has no ControlMaster: there this backend refuses to start (paramiko is the way in).
Nothing here is imported by ``import jupyter_hpcllm`` (only ``transport.connect()`` imports it), and no
module does anything POSIX-only at import: that runs only past the constructor's check.
"""

from .transport import OpenSSHTransport

__all__ = ["OpenSSHTransport"]
