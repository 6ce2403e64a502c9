"""Read what validate --environment needs from a keepalived configuration: script security,
the unicast peers, and the vrrp_scripts that run ``aws-vrrp-notify health``.

keepalived's syntax: one keyword and its arguments per line, ``{ ... }`` blocks (braces may
share a line with their keyword), comments from a ``#`` or ``!`` token to the end of the
line, double-quoted arguments, and ``include GLOB`` anywhere (relative to the including
file's directory), which is followed here too. Nothing else of the file is interpreted.
"""

from __future__ import annotations

import glob
import os
from typing import List, NamedTuple, Optional, Set, Tuple

DEFAULT_PATH = "/etc/keepalived/keepalived.conf"
MAX_INCLUDE_DEPTH = 8
MAX_FILE_SIZE = 1 << 20
PROGRAM = "aws-vrrp-notify"


class KeepalivedConfError(Exception):
    """The file (or an included one) cannot be read."""


class Statement(NamedTuple):
    keyword: str
    args: Tuple[str, ...]
    children: Tuple["Statement", ...]


class KeepalivedConf(NamedTuple):
    path: str
    files: Tuple[str, ...]              # the file and every file it includes, in reading order
    script_security: bool               # global_defs: enable_script_security
    script_user: Optional[str]          # global_defs: script_user USER [GROUP]
    unicast_peers: Tuple[str, ...]      # every vrrp_instance's unicast_peer addresses
    health_scripts: Tuple[str, ...]     # vrrp_script names whose script runs the tool's health
    tracked_scripts: Tuple[str, ...]    # names in the vrrp_instances' track_script blocks


def split_line(line: str) -> List[str]:
    """The tokens of one line: blanks separate, double quotes group, ``#``/``!`` start a comment."""
    tokens: List[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] in "#!":
            break
        if line[i] == '"':
            end = line.find('"', i + 1)
            end = n if end < 0 else end
            tokens.append(line[i + 1:end])
            i = end + 1
            continue
        if line[i] in "{}":
            tokens.append(line[i])
            i += 1
            continue
        j = i
        while j < n and not line[j].isspace() and line[j] not in '{}"':
            j += 1
        tokens.append(line[i:j])
        i = j
    return tokens


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise KeepalivedConfError(f"{path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise KeepalivedConfError(f"{path}: larger than 1 MiB")
    return raw.decode("utf-8", "replace")


def _lines(path: str, depth: int, seen: List[str]) -> List[List[str]]:
    """The token lines of ``path`` with its includes spliced in where they stand."""
    if depth > MAX_INCLUDE_DEPTH:
        raise KeepalivedConfError(f"{path}: includes nested more than {MAX_INCLUDE_DEPTH} deep")
    seen.append(path)
    out: List[List[str]] = []
    for line in _read_text(path).splitlines():
        tokens = split_line(line)
        if tokens[:1] == ["include"] and len(tokens) >= 2:
            pattern = os.path.join(os.path.dirname(path), tokens[1])
            for included in sorted(glob.glob(pattern)):
                if included not in seen:
                    out.extend(_lines(included, depth + 1, seen))
        elif tokens:
            out.append(tokens)
    return out


def parse_statements(lines: List[List[str]]) -> Tuple[Statement, ...]:
    """Token lines -> a tree of statements (an unbalanced brace is tolerated, as keepalived does)."""
    stack: List[List[Statement]] = [[]]
    pending: List[Tuple[str, Tuple[str, ...]]] = []  # statements whose block is open
    for tokens in lines:
        words: List[str] = []
        for token in tokens + ["\n"]:
            if token in ("{", "}", "\n") and words:
                stack[-1].append(Statement(words[0], tuple(words[1:]), ()))
                words = []
            if token == "{":
                head = stack[-1].pop() if stack[-1] else Statement("", (), ())
                pending.append((head.keyword, head.args))
                stack.append([])
            elif token == "}" and len(stack) > 1:
                children = tuple(stack.pop())
                keyword, args = pending.pop()
                stack[-1].append(Statement(keyword, args, children))
            elif token not in ("{", "}", "\n"):
                words.append(token)
    while len(stack) > 1:
        children = tuple(stack.pop())
        keyword, args = pending.pop()
        stack[-1].append(Statement(keyword, args, children))
    return tuple(stack[0])


def _blocks(statements: Tuple[Statement, ...], keyword: str) -> List[Statement]:
    return [s for s in statements if s.keyword == keyword]


def _runs_health(command: str) -> bool:
    words = command.split()
    return bool(words) and os.path.basename(words[0]) == PROGRAM and "health" in words[1:]


def read_keepalived_conf(path: str) -> KeepalivedConf:
    """The facts above from ``path``; KeepalivedConfError when it cannot be read."""
    files: List[str] = []
    tree = parse_statements(_lines(path, 0, files))
    security, user = False, None
    for block in _blocks(tree, "global_defs"):
        for s in block.children:
            if s.keyword == "enable_script_security":
                security = True
            elif s.keyword == "script_user" and s.args:
                user = s.args[0]
    peers: List[str] = []
    tracked: Set[str] = set()
    for instance in _blocks(tree, "vrrp_instance"):
        for block in _blocks(instance.children, "unicast_peer"):
            peers.extend(s.keyword for s in block.children)
        for block in _blocks(instance.children, "track_script"):
            tracked.update(s.keyword for s in block.children)
    health = [s.args[0] for s in _blocks(tree, "vrrp_script") if s.args
              and any(c.keyword == "script" and c.args and _runs_health(" ".join(c.args)) for c in s.children)]
    return KeepalivedConf(path, tuple(files), security, user, tuple(dict.fromkeys(peers)), tuple(health),
                          tuple(sorted(tracked)))
