"""aws-vrrp-notify: make keepalived (VRRP) pairs work on AWS."""

__version__ = "0.1.0"

# Exit statuses of transitions (SPEC "Exit status of transitions").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
