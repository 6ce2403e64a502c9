"""The click command line: help, usage errors, and the commands people type.

Heavy modules are imported inside the commands, never at import time.
"""

from __future__ import annotations

from typing import Optional

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "terminal_width": 88, "max_content_width": 88}


class Options:
    def __init__(self, config: Optional[str], state_dir: Optional[str], cache_dir: Optional[str], verbose: int):
        self.config = config
        self.state_dir = state_dir
        self.cache_dir = cache_dir
        self.verbose = verbose


@click.group(context_settings=CONTEXT)
@click.option("-c", "--config", metavar="PATH", envvar="AWS_VRRP_NOTIFY_CONFIG", show_envvar=True,
              help="Configuration file  [default: /etc/aws-vrrp-notify/config.toml]")
@click.option("--state-dir", metavar="PATH", envvar="AWS_VRRP_NOTIFY_STATE_DIR", show_envvar=True,
              help="Lock and state files  [default: /run/aws-vrrp-notify]")
@click.option("--cache-dir", metavar="PATH", envvar="AWS_VRRP_NOTIFY_CACHE_DIR", show_envvar=True,
              help="Cache kept across reboots (trimmed botocore model)  [default: /var/cache/aws-vrrp-notify]")
@click.option("-v", "--verbose", count=True, help="More logging (repeatable).")
@click.version_option(__version__, "--version", prog_name="aws-vrrp-notify")
@click.pass_context
def cli(ctx: click.Context, config: Optional[str], state_dir: Optional[str], cache_dir: Optional[str],
        verbose: int) -> None:
    """Make keepalived (VRRP) pairs work on AWS: on MASTER, move the virtual IP, VPC routes
    and Elastic IPs to this instance's ENIs. See aws-vrrp-notify(8)."""
    ctx.obj = Options(config, state_dir, cache_dir, verbose)


def _transition(ctx: click.Context, state: str, group: str, via_notify: bool = False) -> None:
    from .commands import transition

    opts: Options = ctx.obj
    ctx.exit(transition(opts.config, opts.state_dir, opts.verbose, state, group, via_notify, opts.cache_dir))


def _transition_command(state: str, summary: str) -> None:
    """master/backup/fault/stop GROUP: the per-state keepalived notify scripts."""

    @cli.command(name=state.lower(), context_settings=CONTEXT, help=summary)
    @click.argument("group")
    @click.pass_context
    def command(ctx: click.Context, group: str) -> None:
        _transition(ctx, state, group)


_transition_command("MASTER", "keepalived notify_master: apply GROUP's actions.")
for _state in ("BACKUP", "FAULT", "STOP"):
    _transition_command(_state, f"keepalived notify_{_state.lower()}: record the transition (no AWS write).")


class Priority(click.ParamType):
    """keepalived's priority: ASCII digits only, as the fast path in __main__.py accepts them."""

    name = "priority"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int) or (value.isascii() and value.isdigit()):
            return int(value)
        self.fail(f"{value!r} is not a non-negative integer", param, ctx)


# "-5" is an (invalid) PRIORITY, not an unknown option
@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("type_", metavar="TYPE", type=click.Choice(["INSTANCE", "GROUP"]))
@click.argument("name")
@click.argument("state", type=click.Choice(["MASTER", "BACKUP", "FAULT", "STOP"]))
@click.argument("priority", type=Priority(), required=False)
@click.pass_context
def notify(ctx: click.Context, type_: str, name: str, state: str, priority: Optional[int]) -> None:
    """keepalived generic notify script: TYPE NAME STATE [PRIORITY].

    NAME is the vrrp_instance or sync group; a NAME that is not configured is ignored."""
    _transition(ctx, state, name, via_notify=True)


@cli.command(context_settings=CONTEXT, short_help="Long-running reader of keepalived's notify FIFO.")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def fifo(ctx: click.Context, path: Optional[str]) -> None:
    """Long-running reader of keepalived's notify FIFO (notify_fifo_script): applies events in
    order, coalescing each group's burst to its last state. Without PATH, reads standard input."""
    from .commands import fifo as run

    opts: Options = ctx.obj
    ctx.exit(run(opts.config, opts.state_dir, opts.verbose, path, opts.cache_dir))


@cli.command(context_settings=CONTEXT, short_help="Check the configuration file (and IAM permissions).")
@click.option("--permissions", is_flag=True,
              help="Also resolve every interface and VRF and prove the IAM permissions of every action.")
@click.option("--environment", is_flag=True,
              help="Check this instance the way a failover needs it: PASS/WARN/FAIL per check, exit 0/1/2.")
@click.option("--json", "as_json", is_flag=True, help="With --environment: one JSON object instead of text.")
@click.option("--keepalived-conf", metavar="PATH", envvar="AWS_VRRP_NOTIFY_KEEPALIVED_CONF", show_envvar=True,
              help="With --environment: keepalived's configuration  [default: /etc/keepalived/keepalived.conf]")
@click.pass_context
def validate(ctx: click.Context, permissions: bool, environment: bool, as_json: bool,
             keepalived_conf: Optional[str]) -> None:
    """Check the configuration file (no AWS, IMDS or netlink unless --permissions or --environment)."""
    from .commands import load_config, report_config_error
    from .config import ConfigError

    opts: Options = ctx.obj
    if environment:
        if as_json and permissions:
            raise click.UsageError("--json goes with --environment alone, not with --permissions")
        from .environment import run

        ctx.exit(run(opts, as_json, keepalived_conf, permissions))
    if as_json:
        raise click.UsageError("--json goes with --environment")
    try:
        cfg = load_config(opts.config)
    except ConfigError as exc:
        ctx.exit(report_config_error(exc))
    if permissions:
        from .permissions import check_permissions

        ctx.exit(check_permissions(cfg, opts))
    actions = sum(len(g.actions) for g in cfg.groups.values())
    click.echo(f"{cfg.path}: OK ({len(cfg.groups)} group(s), {actions} action(s))")


@cli.command(context_settings=CONTEXT, short_help="For keepalived's vrrp_script: could this instance be MASTER now?")
@click.argument("groups", metavar="[GROUP]...", nargs=-1)
@click.option("--max-age", metavar="SECONDS", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Reuse a good EC2 answer up to this old (a failure is never reused).")
@click.pass_context
def health(ctx: click.Context, groups: tuple, max_age: float) -> None:
    """For keepalived's vrrp_script: exit 0 when a MASTER transition of the groups (all by
    default) could succeed now, else 1 with one line saying why. Answers within 2 s."""
    from .health import run

    opts: Options = ctx.obj
    ctx.exit(run(opts.config, opts.state_dir, opts.cache_dir, opts.verbose, groups, max_age))


@cli.command(context_settings=CONTEXT, short_help="Instance, network ports and ENIs, groups in sync.")
@click.argument("section", required=False, type=click.Choice(["instance", "network-port", "ha-notification"]))
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_context
def status(ctx: click.Context, section: Optional[str], as_json: bool) -> None:
    """Operational data: the instance, its network ports and ENIs, and the groups in sync."""
    from .commands import status as run

    opts: Options = ctx.obj
    ctx.exit(run(opts.config, opts.state_dir, opts.verbose, section, as_json, opts.cache_dir))


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.option("--prometheus", metavar="FILE", help="Also write the facts atomically in Prometheus text format.")
@click.option("--repair", is_flag=True, help="Re-apply the actions of groups recorded MASTER that drifted.")
@click.pass_context
def check(ctx: click.Context, as_json: bool, prometheus: Optional[str], repair: bool) -> None:
    """Drift report for cron: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    from .commands import check as run

    opts: Options = ctx.obj
    ctx.exit(run(opts.config, opts.state_dir, opts.verbose, as_json, prometheus, repair, opts.cache_dir))
