"""OpenSSH's %-tokens and ${VAR} in ssh_config values, and the names allowed into them.

``expand`` replaces %-tokens as ssh does (``%%`` is a percent sign; an unknown token is an error);
``expand_path`` also ``~`` and ``${VAR}``. ``shell_command`` expands a ProxyCommand, which runs through
``/bin/sh -c``: each value is quoted for where it lands (bare, in '…' or in "…"), so no host or user
name can change the command's shell structure. ``check_host`` and ``check_user`` refuse the names
OpenSSH 9.6+ refuses from the command line (CVE-2023-51385): shell metacharacters, whitespace, control
characters and a leading ``-``.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket

from ..errors import ConfigError

__all__ = ["check_host", "check_user", "expand", "expand_path", "local_tokens", "shell_command"]

# OpenSSH's valid_hostname and valid_ruser (misc.c): the characters each refuses.
_HOST_REFUSED = "'`\"$\\;&<>|(){},"
_USER_REFUSED = "'`\";&<>|(){}"


def local_tokens() -> dict[str, str]:
    local = socket.gethostname()
    return {
        "d": os.path.expanduser("~"),
        "i": str(os.getuid()) if hasattr(os, "getuid") else "",
        "L": local.split(".")[0],
        "l": local,
        "u": getpass.getuser(),
    }


def _value(value: str, token: str, tokens: dict[str, str], key: str) -> str:
    if token not in tokens:
        raise ConfigError(
            f"{key} {value!r} in your ssh config uses %{token}, which is not available for {key}.",
            "See TOKENS in `man ssh_config`; write %% for a percent sign.",
        )
    return tokens[token]


def expand(value: str, tokens: dict[str, str], key: str) -> str:
    """OpenSSH's %-tokens (``%%`` is a percent sign); an unknown one is an error, as in ssh."""
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else _value(value, m.group(1), tokens, key), value)


def expand_path(value: str, tokens: dict[str, str], key: str) -> str:
    """A file name as OpenSSH expands it: ``~``, then %-tokens and ${VAR}."""

    def env(match: re.Match[str]) -> str:
        if match.group(1) not in os.environ:
            raise ConfigError(f"{key} {value!r} in your ssh config uses ${{{match.group(1)}}}, which is not set.")
        return os.environ[match.group(1)]

    return re.sub(r"\$\{(\w+)\}", env, expand(os.path.expanduser(value), tokens, key))


def shell_command(value: str, tokens: dict[str, str], key: str) -> str:
    """``value``, a command for ``/bin/sh -c``, with its %-tokens replaced by values quoted for where
    they land; a value that is plain (letters, digits, ``@%+=:,./-_``) is left as it is, as by ssh."""
    out: list[str] = []
    quote = ""  # the quote the scan is in: "", "'" or '"'
    at = 0
    while at < len(value):
        char, following = value[at], value[at + 1:at + 2]
        if char == "%" and following:
            at += 2
            if following == "%":
                out.append("%")
                continue
            text = _value(value, following, tokens, key)
            quoted = _quoted(text, quote)
            if quoted != text and out and out[-1] == "\\":
                raise ConfigError(
                    f"{key} {value!r} in your ssh config puts %{following} after a backslash, and its value "
                    f"{text!r} needs quoting there.", f"Remove the backslash before %{following}.")
            out.append(quoted)
            continue
        if char == "\\" and quote != "'" and following and following != "%":
            out.append(char + following)  # an escaped character: no quote starts or ends here
            at += 2
            continue
        if quote == "" and char in "'\"":
            quote = char
        elif char == quote:
            quote = ""
        out.append(char)
        at += 1
    return "".join(out)


def _quoted(text: str, quote: str) -> str:
    if quote == "'":
        return text.replace("'", "'\\''")  # end the quote, an escaped ', quote again
    if quote == '"':
        return re.sub(r'([$`"\\])', r"\\\1", text)
    return shlex.quote(text)


def check_host(host: str, where: str) -> None:
    """Refuse a host name OpenSSH refuses (valid_hostname): ``where`` says where it came from."""
    _check(host, "host", where, _HOST_REFUSED, "%h", "Write the login node's host name or an ssh config alias there.")


def check_user(user: str, where: str) -> None:
    """Refuse a user name OpenSSH refuses (valid_ruser): ``where`` says where it came from."""
    _check(user, "user", where, _USER_REFUSED, "%r", "Write your login name on the cluster there.")


def _check(name: str, kind: str, where: str, refused: str, token: str, hint: str) -> None:
    why = _refused(name, refused, kind)
    if why:
        raise ConfigError(
            f"The {kind} name {name!r} ({where}) {why}: OpenSSH refuses such {kind} names, since ssh_config "
            f"commands get them through {token} (CVE-2023-51385).", hint)


def _refused(name: str, refused: str, kind: str) -> str:
    """Why OpenSSH would refuse ``name``; "" if it would not."""
    if name.startswith("-"):
        return "starts with '-'"
    for index, char in enumerate(name):
        if ord(char) < 32 or ord(char) == 127:
            return "contains a control character"
        if char in refused:
            return f"contains the shell metacharacter {char!r}"
        if kind == "user":
            if char.isspace() and name[index + 1:index + 2] == "-":
                return "has a '-' after whitespace"
            if char == "\\" and index == len(name) - 1:
                return "ends with a backslash"
        elif char.isspace():
            return "contains whitespace"
    return ""
