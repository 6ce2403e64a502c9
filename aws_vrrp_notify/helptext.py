"""The top-level --help text, printed without importing click (keepalived's 60 ms budget
also covers --help). tests/test_cli.py checks it is exactly what click renders."""

HELP = """\
Usage: aws-vrrp-notify [OPTIONS] COMMAND [ARGS]...

  Make keepalived (VRRP) pairs work on AWS: on MASTER, move the virtual IP, VPC routes
  and Elastic IPs to this instance's ENIs. See aws-vrrp-notify(8).

Options:
  -c, --config PATH  Configuration file  [default: /etc/aws-vrrp-notify/config.toml]
                     [env var: AWS_VRRP_NOTIFY_CONFIG]
  --state-dir PATH   Lock and state files  [default: /run/aws-vrrp-notify]  [env var:
                     AWS_VRRP_NOTIFY_STATE_DIR]
  --cache-dir PATH   Cache kept across reboots (trimmed botocore model)  [default:
                     /var/cache/aws-vrrp-notify]  [env var: AWS_VRRP_NOTIFY_CACHE_DIR]
  -v, --verbose      More logging (repeatable).
  --version          Show the version and exit.
  -h, --help         Show this message and exit.

Commands:
  backup    keepalived notify_backup: record the transition (no AWS write).
  check     Drift report for cron: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
  fault     keepalived notify_fault: record the transition (no AWS write).
  fifo      Long-running reader of keepalived's notify FIFO.
  health    For keepalived's vrrp_script: could this instance be MASTER now?
  master    keepalived notify_master: apply GROUP's actions.
  notify    keepalived generic notify script: TYPE NAME STATE [PRIORITY].
  status    Instance, network ports and ENIs, groups in sync.
  stop      keepalived notify_stop: record the transition (no AWS write).
  validate  Check the configuration file (and IAM permissions).
"""
