"""Operator documentation: the man pages render cleanly and match the CLI; the contrib
examples (keepalived, IAM, cron/systemd, Prometheus, TOML) are valid and match the code.

Nothing here contacts AWS or the metadata service. The keepalived checks need root and
``ip`` (a scratch network namespace holds veth interfaces named as in each example);
they are skipped otherwise, as are the mandoc/groff/keepalived checks when the tool is
not installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Set, Tuple

import click
import pytest

from aws_vrrp_notify.__main__ import parse_fast
from aws_vrrp_notify.cli import cli
from aws_vrrp_notify.config import parse as parse_config

REPO = pathlib.Path(__file__).resolve().parent.parent
MAN8 = REPO / "man" / "aws-vrrp-notify.8"
MAN5 = REPO / "man" / "aws-vrrp-notify.toml.5"
CONTRIB = REPO / "contrib"
PROG = "aws-vrrp-notify"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def _which(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


# =========================================================================== roff reading

_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_SPECIALS = {r"\-": "-", r"\(dq": '"', r"\(em": "--", r"\(en": "-", r"\(bu": "*", r"\(lq": '"',
             r"\(rq": '"', r"\(mu": "x", r"\(ha": "^", r"\&": "", r"\e": "\\", r"\ ": " ", r"\%": ""}


def plain(text: str) -> str:
    """roff text -> plain text (font escapes dropped, special characters replaced)."""
    text = _FONT.sub("", text)
    for escape, value in _SPECIALS.items():
        text = text.replace(escape, value)
    return text


def macro_args(rest: str) -> List[str]:
    """Split a macro line's arguments: blanks separate, double quotes group ("" is a quote)."""
    args, i, n = [], 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest[i] == '"':
            i += 1
            buf = []
            while i < n:
                if rest[i] == '"':
                    if i + 1 < n and rest[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(rest[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and rest[j] not in " \t":
                j += 1
            args.append(rest[i:j])
            i = j
    return args


_INLINE_BOLD = re.compile(r"\\fB(.*?)(?=\\f[RPI]|\\f\[|$)")
_ALTERNATING = {"BR": 0, "BI": 0, "RB": 1, "IB": 1}


def bold_fragments(line: str) -> List[str]:
    """The bold text of one roff source line (.B, the alternating macros, inline \\fB)."""
    out: List[str] = []
    if line.startswith("."):
        name, _, rest = line[1:].partition(" ")
        args = macro_args(rest)
        if name == "B":
            out.append(" ".join(args))
        elif name in _ALTERNATING:
            out.extend(a for i, a in enumerate(args) if i % 2 == _ALTERNATING[name])
        for arg in args:
            out.extend(_INLINE_BOLD.findall(arg))
    else:
        out.extend(_INLINE_BOLD.findall(line))
    return [plain(f) for f in out]


@dataclass
class Part:
    """A section (.SH) or subsection (.SS) of a page: its title and source lines."""

    title: str
    lines: List[str] = field(default_factory=list)
    subsections: Dict[str, "Part"] = field(default_factory=dict)

    def bold(self) -> List[str]:
        return [frag for line in self.lines for frag in bold_fragments(line)]

    def text(self) -> str:
        """The plain text: font macros rendered, other requests and macros dropped."""
        out = []
        for line in self.lines:
            if line.startswith("."):
                name, _, rest = line[1:].partition(" ")
                if name in ("B", "I", "SM", "SB", "SS"):
                    out.append(" ".join(macro_args(rest)))
                elif name in ("BR", "RB", "BI", "IB", "IR", "RI"):
                    out.append("".join(macro_args(rest)))
            else:
                out.append(line)
        return plain("\n".join(out))


def read_page(path: pathlib.Path) -> Dict[str, Part]:
    sections: Dict[str, Part] = {}
    current: Optional[Part] = None
    sub: Optional[Part] = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith('.\\"'):
            continue
        if line.startswith(".SH"):
            title = plain(" ".join(macro_args(line[3:])))
            current = sections.setdefault(title, Part(title))
            sub = None
            continue
        if line.startswith(".SS") and current is not None:
            title = plain(" ".join(macro_args(line[3:])))
            sub = current.subsections.setdefault(title, Part(title))
            current.lines.append(line)
            continue
        if current is not None:
            current.lines.append(line)
            if sub is not None:
                sub.lines.append(line)
    return sections


_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def options_in(fragments: List[str]) -> Set[str]:
    return {m for frag in fragments for m in _OPTION.findall(frag)}


def words_in(fragments: List[str]) -> Set[str]:
    return {w for frag in fragments for w in re.split(r"[\s|{}\[\],;.()]+", frag) if w}


# =========================================================================== the CLI, via click


@dataclass
class CommandInfo:
    name: str
    options: Dict[str, Tuple[str, ...]]  # param name -> option strings
    arguments: List[click.Argument]
    help_opts: Tuple[str, ...]


def cli_commands() -> Dict[str, CommandInfo]:
    root_ctx = click.Context(cli, info_name=PROG, **cli.context_settings)
    out = {}
    for name in cli.list_commands(root_ctx):
        cmd = cli.get_command(root_ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        ctx = click.Context(cmd, info_name=name, parent=root_ctx, **cmd.context_settings)
        options = {p.name: tuple(p.opts) + tuple(p.secondary_opts) for p in cmd.params
                   if isinstance(p, click.Option)}
        arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
        out[name] = CommandInfo(name, options, arguments, tuple(ctx.help_option_names))
    return out


def cli_global_options() -> Dict[str, Tuple[str, ...]]:
    ctx = click.Context(cli, info_name=PROG, **cli.context_settings)
    options = {p.name: tuple(p.opts) + tuple(p.secondary_opts) for p in cli.params
               if isinstance(p, click.Option)}
    options["help"] = tuple(ctx.help_option_names)
    return options


def known_option(token: str, names: Set[str]) -> bool:
    """``token`` is an option of the CLI; ``-vv`` counts when ``-v`` is one."""
    if token in names:
        return True
    if re.fullmatch(r"-[A-Za-z]{2,}", token):
        return all(f"-{c}" in names for c in token[1:])
    return False


def all_option_names() -> Set[str]:
    names = {o for opts in cli_global_options().values() for o in opts}
    for info in cli_commands().values():
        names |= {o for opts in info.options.values() for o in opts}
        names |= set(info.help_opts)
    return names


def choice_values() -> Set[str]:
    return {c for info in cli_commands().values() for a in info.arguments
            if isinstance(a.type, click.Choice) for c in a.type.choices}


# =========================================================================== (a) rendering


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_mandoc_lint_clean(page):
    mandoc = _which("mandoc")
    if not mandoc:
        pytest.skip("mandoc is not installed (apt-get install mandoc)")
    result = subprocess.run([mandoc, "-T", "lint", "-W", "warning", str(page)],
                            capture_output=True, text=True)
    assert (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr
    assert result.returncode == 0


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_groff_renders_without_warnings(page):
    groff = _which("groff")
    if not groff:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    result = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)],
                            capture_output=True, text=True)
    assert result.stderr.strip() == "" and result.returncode == 0, result.stderr


def test_pages_have_the_expected_sections():
    page8 = read_page(MAN8)
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ORDERING AND SPLIT BRAIN",
                  "RETRY AND DEADLINE POLICY", "NOT ON AWS", "EXIT STATUS", "ENVIRONMENT", "FILES",
                  "LOGGING", "EXAMPLES", "SEE ALSO"):
        assert title in page8, f"aws-vrrp-notify.8 has no {title} section"
    page5 = read_page(MAN5)
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "SEE ALSO"):
        assert title in page5, f"aws-vrrp-notify.toml.5 has no {title} section"
    see_also8 = page8["SEE ALSO"].text()
    assert "aws-vrrp-notify.toml(5)" in see_also8 and "keepalived.conf(5)" in see_also8


def test_environment_variables_are_documented():
    env = read_page(MAN8)["ENVIRONMENT"].text()
    code = "\n".join(p.read_text() for p in (REPO / "aws_vrrp_notify").glob("*.py"))
    used = set(re.findall(r"""["'](AWS_[A-Z0-9_]+)["']""", code))
    used |= {"AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_ROUTE_53"}  # honoured by botocore
    missing = sorted(v for v in used if v not in env)
    assert not missing, f"environment variables read by the code but not in ENVIRONMENT: {missing}"


# =========================================================================== (b) CLI <-> page


def test_every_cli_command_and_option_is_documented():
    page = read_page(MAN8)
    synopsis = page["SYNOPSIS"]
    commands = page["COMMANDS"]
    syn_bold = synopsis.bold()
    syn_words, syn_opts = words_in(syn_bold), options_in(syn_bold)
    problems = []
    options_section = options_in(page["OPTIONS"].bold())
    for name, opts in cli_global_options().items():
        for opt in opts:
            if opt not in options_section:
                problems.append(f"global option {opt} is not a bold term of OPTIONS")
        if not set(opts) & syn_opts:
            problems.append(f"global option {'/'.join(opts)} is not in the SYNOPSIS")
    for name, info in cli_commands().items():
        if name not in syn_words:
            problems.append(f"command {name} is not in the SYNOPSIS")
        sub = commands.subsections.get(name)
        if sub is None:
            problems.append(f"command {name} has no '.SS {name}' under COMMANDS")
            continue
        sub_opts, sub_bold, sub_text = options_in(sub.bold()), words_in(sub.bold()), sub.text()
        for pname, opts in info.options.items():
            for opt in opts:
                if opt not in sub_opts:
                    problems.append(f"{name}: option {opt} is not a bold term of its subsection")
            if not set(opts) & syn_opts:
                problems.append(f"{name}: option {'/'.join(opts)} is not in the SYNOPSIS")
        for arg in info.arguments:
            if isinstance(arg.type, click.Choice):
                for choice in arg.type.choices:
                    if choice not in sub_bold:
                        problems.append(f"{name}: value {choice} of {arg.human_readable_name} is not "
                                        "bold in its subsection")
            elif arg.human_readable_name not in sub_text:
                problems.append(f"{name}: argument {arg.human_readable_name} is not in its subsection")
    assert not problems, "\n".join(problems)


def test_every_documented_command_and_option_exists():
    page = read_page(MAN8)
    commands = cli_commands()
    options = all_option_names()
    globals_ = {o for opts in cli_global_options().values() for o in opts}
    problems = []
    # SYNOPSIS: every bold word is the program, a command, an option or a choice value.
    allowed_words = {PROG} | set(commands) | choice_values()
    for frag in page["SYNOPSIS"].bold():
        for token in re.split(r"[\s|{}\[\]]+", frag):
            if not token or token in ("...",):
                continue
            if token.startswith("-"):
                if not known_option(token.rstrip("."), options):
                    problems.append(f"SYNOPSIS: {token} is not an option of the CLI")
            elif token not in allowed_words:
                problems.append(f"SYNOPSIS: {token} is neither a command nor a value of the CLI")
    # COMMANDS: every subsection is a command; its bold options are that command's (or global).
    for title, sub in page["COMMANDS"].subsections.items():
        name = title.split()[0]
        if name not in commands:
            problems.append(f"COMMANDS documents '{name}', which the CLI does not have")
            continue
        info = commands[name]
        own = {o for opts in info.options.values() for o in opts} | set(info.help_opts) | globals_
        for token in options_in(sub.bold()):
            if not known_option(token, own):
                problems.append(f"COMMANDS/{name}: {token} is not an option of {name}")
    # Anywhere in the page: a bold option is an option of the CLI.
    for title, section in page.items():
        for token in options_in(section.bold()):
            if not known_option(token, options):
                problems.append(f"{title}: bold option {token} is not an option of the CLI")
    assert not problems, "\n".join(problems)


def test_check_metrics_in_the_page_are_the_ones_written():
    from aws_vrrp_notify.report import prometheus_text

    written = set(re.findall(r"^# TYPE (\S+) ", prometheus_text([], 0, None, 0.0), re.M))
    documented = set(re.findall(r"aws_vrrp_notify_[a-z_]+", read_page(MAN8)["COMMANDS"].text()))
    assert written == documented


# =========================================================================== config keys <-> page


def _tp_tags(part: Part) -> List[str]:
    """The first bold word of each .TP tag of a (sub)section."""
    tags, lines = [], part.lines
    for i, line in enumerate(lines[:-1]):
        if line.startswith(".TP"):
            bold = bold_fragments(lines[i + 1])
            if bold and bold[0].split():
                tags.append(bold[0].split()[0].rstrip(","))
    return tags


def test_every_configuration_key_is_documented():
    from aws_vrrp_notify.actions import ACTION_TYPES
    from aws_vrrp_notify.config import AWS_FIELDS

    page = read_page(MAN5)
    problems = []
    aws_section = page["THE [aws] TABLE"]
    aws_keys = {f.key for f in AWS_FIELDS}
    documented = set(_tp_tags(aws_section))
    problems += [f"[aws] key {k} has no .TP entry" for k in sorted(aws_keys - documented)]
    problems += [f"[aws] documents {k}, which the code does not have" for k in sorted(documented - aws_keys)]
    groups = page["GROUPS"]
    common = set(_tp_tags(groups.subsections["Keys of every action"]))
    for type_name, cls in ACTION_TYPES.items():
        title = f"[[groups.NAME.{type_name}]]"
        sub = groups.subsections.get(title)
        if sub is None:
            problems.append(f"action type {type_name} has no '.SS {title}'")
            continue
        keys = {f.key for f in cls.FIELDS}
        tags = set(_tp_tags(sub)) - {"interface"}  # "interface, vrf: As above."
        problems += [f"{type_name}: key {k} is not documented" for k in sorted(keys - tags - common)]
        problems += [f"{type_name}: documents {k}, which it does not have" for k in sorted(tags - keys)]
    for title in groups.subsections:
        if title.startswith("[[") and title[len("[[groups.NAME."):-2] not in ACTION_TYPES:
            problems.append(f"GROUPS documents {title}, which is not an action type")
    assert not problems, "\n".join(problems)


# =========================================================================== TOML examples


def _roff_examples(part: Part) -> Iterator[str]:
    block: Optional[List[str]] = None
    for line in part.lines:
        if line.startswith(".EX"):
            block = []
        elif line.startswith(".EE"):
            if block is not None:
                yield plain("\n".join(block))
            block = None
        elif block is not None:
            block.append(line)


def test_toml_page_examples_are_valid_configurations():
    examples = [e for e in _roff_examples(read_page(MAN5)["EXAMPLES"]) if "[groups." in e
                or "groups." in e]
    assert len(examples) >= 3
    for text in examples:
        config = parse_config(_toml().loads(text), "man page example")
        assert config.groups


@pytest.mark.parametrize("path", sorted(CONTRIB.rglob("*.toml")), ids=lambda p: p.name)
def test_contrib_toml_files_are_valid_configurations(path):
    config = parse_config(_toml().loads(path.read_text()), str(path))
    assert config.groups


# =========================================================================== (c) keepalived

KEEPALIVED_CONFS = sorted((CONTRIB / "keepalived").glob("*.conf"))


def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"[#!].*$", "", line) for line in text.splitlines())


def _interfaces(text: str) -> Set[str]:
    body = _strip_comments(text)
    return set(re.findall(r"\binterface\s+([\w.-]+)", body)) | set(re.findall(r"\bdev\s+([\w.-]+)", body))


def _run(argv: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


def test_there_are_keepalived_examples():
    names = {p.name for p in KEEPALIVED_CONFS}
    assert len(names) >= 4, names
    text = "\n".join(_strip_comments(p.read_text()) for p in KEEPALIVED_CONFS)
    for needle in ("notify_master", "notify_backup", "notify_fault", "notify_stop", "vrrp_sync_group",
                   "notify_fifo_script", "notify \""):
        assert needle in text, f"no keepalived example uses {needle}"


@pytest.mark.parametrize("conf", KEEPALIVED_CONFS, ids=lambda p: p.name)
def test_keepalived_example_is_safe_for_aws(conf):
    body = _strip_comments(conf.read_text())
    assert re.search(r"^\s*enable_script_security\s*$", body, re.M)
    assert re.search(r"^\s*script_user\s+root\s*$", body, re.M)
    instances = len(re.findall(r"^\s*vrrp_instance\s", body, re.M))
    assert instances and len(re.findall(r"^\s*unicast_peer\s*\{", body, re.M)) == instances, \
        "every vrrp_instance must use unicast peers (no multicast in a VPC)"


def _example_commands(conf: pathlib.Path) -> Iterator[Tuple[str, List[str]]]:
    body = _strip_comments(conf.read_text())
    for keyword, command in re.findall(r"^\s*(notify\w*)\s+\"([^\"]+)\"", body, re.M):
        argv = command.split()
        if os.path.basename(argv[0]) == PROG:
            yield keyword, argv[1:]


def _configured_groups() -> Set[str]:
    names: Set[str] = set()
    for path in (CONTRIB / "keepalived").glob("*.toml"):
        names |= set(parse_config(_toml().loads(path.read_text()), str(path)).groups)
    return names


@pytest.mark.parametrize("conf", KEEPALIVED_CONFS, ids=lambda p: p.name)
def test_keepalived_example_commands_are_valid(conf):
    groups = _configured_groups()
    found = False
    for keyword, args in _example_commands(conf):
        found = True
        if keyword == "notify":
            # keepalived appends TYPE NAME STATE PRIORITY
            for tail in (["INSTANCE", "VI_1", "MASTER", "150"], ["GROUP", "G_ROUTER", "BACKUP", "0"]):
                assert parse_fast(args + tail) is not None, f"{keyword}: {args + tail}"
        elif keyword == "notify_fifo_script":
            # keepalived appends the FIFO's path
            fifo_path = re.search(r"^\s*notify_fifo\s+(\S+)", _strip_comments(conf.read_text()), re.M)
            assert fifo_path, "notify_fifo_script without notify_fifo"
            assert args == ["fifo"], args
            _check_cli_args(args + [fifo_path.group(1)])
        else:
            call = parse_fast(args)
            assert call is not None, f"{keyword}: {args} is not a transition command"
            assert call.group in groups, f"{keyword}: group {call.group} is in no contrib TOML file"
            assert f"notify_{args[0]}" == keyword, f"{keyword} runs {args[0]}"
    assert found, f"{conf.name} never runs {PROG}"


def _with_runnable_scripts(conf: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """keepalived -t disables a vrrp_script whose program does not exist (a notify script is
    only looked at when it runs): where the tool is not installed at the example's path,
    check a copy whose vrrp_scripts run /bin/true instead."""
    text = conf.read_text()
    scripts = re.findall(r'^\s*script\s+"(\S+)', _strip_comments(text), re.M)
    missing = {path for path in scripts if not os.path.exists(path)}
    if not missing:
        return conf
    for path in missing:
        text = re.sub(rf'^(\s*script\s+"){re.escape(path)}', r"\1/bin/true", text, flags=re.M)
    copy = tmp_path / conf.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("conf", KEEPALIVED_CONFS, ids=lambda p: p.name)
def test_keepalived_accepts_example(conf, tmp_path):
    keepalived = _which("keepalived")
    if not keepalived:
        pytest.skip("keepalived is not installed")
    conf = _with_runnable_scripts(conf, tmp_path)
    argv = [keepalived, "-t", "-f", str(conf), "-p", str(tmp_path / "k.pid"), "-r", str(tmp_path / "v.pid"),
            "-c", str(tmp_path / "c.pid"), "-b", str(tmp_path / "b.pid")]
    ip = _which("ip")
    if os.geteuid() != 0 or not ip:
        # Without a scratch namespace the interfaces of the example may be missing.
        result = _run(argv)
        output = result.stdout + result.stderr
        if result.returncode and ("doesn't exist" in output or "Non-existent interface" in output):
            pytest.skip("the example's interfaces do not exist here; a netns needs root and ip")
    else:
        ns = f"avn-doc-{uuid.uuid4().hex[:8]}"
        _run([ip, "netns", "add", ns]).check_returncode()
        try:
            for i, ifname in enumerate(sorted(_interfaces(conf.read_text()))):
                _run([ip, "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name",
                      f"avnpeer{i}"]).check_returncode()
            result = _run([ip, "netns", "exec", ns] + argv)
        finally:
            _run([ip, "netns", "del", ns])
        output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"WARNING|Unknown keyword|error", output, re.I), output


# =========================================================================== (d) IAM


SERVICES = ("ec2", "route53")  # the services the action types call (actions.services() and reads)


def operations_called(service: str) -> Set[str]:
    """API names of ``service`` of every botocore operation name (snake_case literal) in the code."""
    from botocore import xform_name
    from botocore.session import get_session

    model = get_session().get_service_model(service)
    by_snake = {xform_name(op): op for op in model.operation_names}
    found = set()
    for path in (REPO / "aws_vrrp_notify").rglob("*.py"):
        if "lab" in path.relative_to(REPO / "aws_vrrp_notify").parts:  # the test harness
            continue
        for literal in re.findall(r"""["']([a-z][a-z0-9]*(?:_[a-z0-9]+)+)["']""", path.read_text()):
            if literal in by_snake:
                found.add(by_snake[literal])
    return found


def _policy_actions(policy: dict) -> Set[str]:
    actions = set()
    for statement in policy["Statement"]:
        value = statement.get("Action", [])
        actions |= {value} if isinstance(value, str) else set(value)
    return actions


IAM_FILES = sorted((CONTRIB / "iam").glob("*.json"))


def declared_operations(cls=None, service: str = "ec2") -> Set[str]:
    """What the action types declare (OPERATIONS) plus the calls of the reads they need, of
    ``service``; for one class, or for all of them."""
    return {op for svc, op in declared_actions(cls) if svc == service}


def declared_actions(cls=None) -> Set[Tuple[str, str]]:
    """(service, API name) of everything the action types (one class, or all) call."""
    from aws_vrrp_notify.actions import ACTION_TYPES
    from aws_vrrp_notify.ec2 import READ_OPERATIONS, read_service

    classes = [cls] if cls else list(ACTION_TYPES.values())
    ops = set()
    for c in classes:
        ops |= {(c.SERVICE, op) for op in c.OPERATIONS}
        probe = c.__new__(c)  # the read kinds may depend on values: ask with every key unset
        for f in c.FIELDS:
            object.__setattr__(probe, f.attr, f.default)
        for phase in ("resolve_reads", "observe_reads"):
            try:
                ops |= {(read_service(k), READ_OPERATIONS[k]) for k in getattr(probe, phase)()}
            except (AttributeError, TypeError):
                pass
    if cls is None:
        ops |= {(read_service(k), op) for k, op in READ_OPERATIONS.items()}
    return ops


def per_type_policies():
    from aws_vrrp_notify.actions import ACTION_TYPES

    return {f"{name}.json": cls for name, cls in ACTION_TYPES.items()}


@pytest.mark.parametrize("service", SERVICES)
def test_code_calls_exactly_the_declared_operations(service):
    """Every EC2 or Route 53 call in the code is declared by an action type (or is a read),
    and the trimmed botocore model holds exactly the declared ones."""
    from aws_vrrp_notify.actions import services
    from aws_vrrp_notify.botomodel import OPERATIONS

    called = operations_called(service)
    assert called <= declared_operations(service=service), sorted(called - declared_operations(service=service))
    assert set(OPERATIONS[service]) == declared_operations(service=service)
    assert set(services()) <= set(SERVICES)


@pytest.mark.parametrize("path", IAM_FILES, ids=lambda p: p.name)
def test_iam_policy_parses(path):
    policy = json.loads(path.read_text())
    assert policy["Version"] == "2012-10-17"
    assert isinstance(policy["Statement"], list) and policy["Statement"]
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert statement.get("Action")
        actions = {statement["Action"]} if isinstance(statement["Action"], str) else set(statement["Action"])
        if any(a.startswith("ec2:Describe") for a in actions):
            # Describe* has no resource-level permissions: "*" and no condition, or it never matches.
            assert statement.get("Resource") == "*" and "Condition" not in statement, statement
        if any(a.startswith("route53:") for a in actions):
            # Route 53 record calls act on a hosted zone: scoped to the zone, never "*"
            assert statement["Resource"].startswith("arn:aws:route53:::hostedzone/Z"), statement


def test_combined_policy_grants_exactly_what_the_code_calls():
    policy = json.loads((CONTRIB / "iam" / "aws-vrrp-notify-policy.json").read_text())
    granted = _policy_actions(policy)
    needed = {f"{service}:{op}" for service, op in declared_actions()}
    assert needed <= granted, f"missing from the combined policy: {sorted(needed - granted)}"
    assert granted <= needed, f"granted but never called (least privilege): {sorted(granted - needed)}"


def test_restricted_policy_grants_the_same_actions():
    combined = _policy_actions(json.loads((CONTRIB / "iam" / "aws-vrrp-notify-policy.json").read_text()))
    restricted = _policy_actions(json.loads(
        (CONTRIB / "iam" / "aws-vrrp-notify-policy-restricted.json").read_text()))
    assert restricted == combined


@pytest.mark.parametrize("name", sorted(per_type_policies()))
def test_per_action_policy(name):
    """contrib/iam has a policy per action type, granting what the type declares."""
    granted = _policy_actions(json.loads((CONTRIB / "iam" / name).read_text()))
    assert {f"{service}:{op}" for service, op in declared_actions(per_type_policies()[name])} <= granted
    # validate --permissions reads the ENIs for every configuration
    assert "ec2:DescribeNetworkInterfaces" in granted
    assert all(a.split(":")[0] in SERVICES for a in granted)


# =========================================================================== cron, systemd, Prometheus


def _check_cli_args(args: List[str]) -> None:
    """Parse (without running) ``COMMAND [ARGS]`` of aws-vrrp-notify with the click CLI."""
    ctx = click.Context(cli, info_name=PROG, **cli.context_settings)
    command = cli.get_command(ctx, args[0])
    assert command is not None, f"unknown command {args[0]}"
    command.make_context(args[0], list(args[1:]), parent=ctx)


PROM_PATH = "/var/lib/prometheus/node-exporter/aws_vrrp_notify.prom"


def test_cron_line():
    text = (CONTRIB / "cron" / "aws-vrrp-notify").read_text()
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#") and "=" not in l.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split()
    assert fields[:5] == ["*"] * 5 and fields[5] == "root" and os.path.basename(fields[6]) == PROG
    args = [f for f in fields[7:] if not f.startswith(">") and f != "2>&1"]
    assert args == ["check", "--prometheus", PROM_PATH]
    _check_cli_args(args)


def test_systemd_units():
    service = (CONTRIB / "systemd" / "aws-vrrp-notify-check.service").read_text()
    timer = (CONTRIB / "systemd" / "aws-vrrp-notify-check.timer").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.M).group(1).split()
    assert os.path.basename(exec_start[0]) == PROG
    assert exec_start[1:] == ["check", "--prometheus", PROM_PATH]
    _check_cli_args(exec_start[1:])
    assert re.search(r"^Type=oneshot$", service, re.M)
    assert re.search(r"^OnCalendar=minutely$", timer, re.M)
    analyze = _which("systemd-analyze")
    if analyze:
        result = _run([analyze, "verify", "--man=no", str(CONTRIB / "systemd" / "aws-vrrp-notify-check.service"),
                       str(CONTRIB / "systemd" / "aws-vrrp-notify-check.timer")])
        # the only acceptable complaint: the executable is not installed on this machine
        problems = [l for l in (result.stdout + result.stderr).splitlines()
                    if l.strip() and "is not executable" not in l]
        assert not problems, problems


def test_prometheus_rules_use_the_metrics_written():
    yaml = pytest.importorskip("yaml")
    from aws_vrrp_notify.report import prometheus_text

    rules = yaml.safe_load((CONTRIB / "prometheus" / "aws-vrrp-notify.rules.yml").read_text())
    written = set(re.findall(r"^# TYPE (\S+) ", prometheus_text([], 0, None, 0.0), re.M))
    used: Set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
            used |= set(re.findall(r"aws_vrrp_notify_[a-z_]+", rule["expr"]))
    assert used <= written, f"rules use metrics that check never writes: {sorted(used - written)}"
    assert {"aws_vrrp_notify_group_status", "aws_vrrp_notify_check_error",
            "aws_vrrp_notify_check_timestamp_seconds", "aws_vrrp_notify_group_in_sync",
            "aws_vrrp_notify_health_ready"} <= used


def test_completion_recipe_works():
    """contrib/completion/README.md: click's bash_source and bash_complete for this program."""
    readme = (CONTRIB / "completion" / "README.md").read_text()
    assert "_AWS_VRRP_NOTIFY_COMPLETE=bash_source aws-vrrp-notify" in readme
    env = dict(os.environ, _AWS_VRRP_NOTIFY_COMPLETE="bash_source")
    main = [sys.executable, "-m", "aws_vrrp_notify"]
    # prog_name is fixed by the entry point, so `python -m` answers as aws-vrrp-notify does
    source = _run(main, env=env, cwd=REPO)
    assert source.returncode == 0 and "complete -o nosort -F _aws_vrrp_notify_completion aws-vrrp-notify" \
        in source.stdout, source.stdout + source.stderr
    env.update(_AWS_VRRP_NOTIFY_COMPLETE="bash_complete", COMP_WORDS="aws-vrrp-notify status ", COMP_CWORD="2")
    answer = _run(main, env=env, cwd=REPO)
    assert answer.stdout.split() == ["plain,instance", "plain,network-port", "plain,ha-notification"]


def test_status_text_sends_readers_to_check_and_json():
    """The status texts keep their documented shapes; the documentation says what they do not show."""
    status = " ".join(read_page(MAN8)["COMMANDS"].subsections["status"].text().split())
    readme = " ".join((REPO / "README.md").read_text().split())
    for text in (status, readme):
        assert "headed aws" in text.replace("`", "")
        assert "looks exactly like a healthy BACKUP" in text
        assert "check" in text and "status --json" in text.replace("`", "")
    assert "Without any such interface, the text output is empty." in status


def test_trust_rules_are_documented():
    options = " ".join(read_page(MAN8)["OPTIONS"].text().split())
    assert "not writable by group or others" in options and "symbolic link" in options
    description = " ".join(read_page(MAN5)["DESCRIPTION"].text().split())
    assert "a symbolic link is not followed" in description and "without being opened" in description
    deadline = " ".join(read_page(MAN5)["THE [aws] TABLE"].text().split())
    assert "at least 1 and at most 3600" in deadline and "connection timeout is 1 second" in deadline
