"""Simulated AWS for tests and the demo lab (installed with the ``[lab]`` extra).

The runtime tool never imports this package.

* :mod:`.moto_fixes` - patches making moto 5.2.5 closer to real EC2
* :mod:`.imds`       - fake IMDSv2 backed live by in-process moto
* :mod:`.netns`      - network namespace / veth helpers
* :mod:`.cloud`      - :class:`~.cloud.Cloud`: moto + IMDS servers + the lab topology
* :mod:`.routers`    - the two-router namespace layout built on a Cloud
* :mod:`.keepalived` - :class:`~.keepalived.Lab`: real keepalived in both routers, running the
                       installed tool from its notify lines; faults, observation, timing
* ``python -m aws_vrrp_notify.lab demo|up`` - the lab from one command (:mod:`.__main__`)
"""
