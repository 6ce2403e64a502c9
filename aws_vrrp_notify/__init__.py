"""aws-vrrp-notify: make keepalived (VRRP) pairs work on AWS."""

__version__ = "0.1.0"

# Exit statuses of transitions (aws-vrrp-notify(8), EXIT STATUS).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
