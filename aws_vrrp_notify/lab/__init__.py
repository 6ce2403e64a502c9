"""Simulated AWS for tests and the demo lab (installed with the ``[lab]`` extra).

The runtime tool never imports this package.

* :mod:`.moto_fixes` - patches making moto 5.2.5 closer to real EC2
* :mod:`.imds`       - fake IMDSv2 backed live by in-process moto
* :mod:`.credentials` - instance-profile credentials the fake IMDS serves (rotated)
* :mod:`.consistency` - EC2's eventual consistency: writes accepted now, landed in moto later
* :mod:`.ec2_writes` - what EC2 checks and answers at once for a lagged write
* :mod:`.stale_reads` - describe calls answered now and then with an earlier answer
* :mod:`.throttle`   - EC2's request throttling (token buckets per action class)
* :mod:`.ec2_xml`    - EC2 query-protocol answers written by the lab
* :mod:`.netns`      - network namespace / veth helpers
* :mod:`.cloud`      - :class:`~.cloud.Cloud`: moto + IMDS servers + the lab topology, with
                       the lag, stale reads and throttling above
* :mod:`.routers`    - the two-router namespace layout built on a Cloud
* :mod:`.keepalived` - :class:`~.keepalived.Lab`: real keepalived in both routers, running the
                       installed tool from its notify lines; faults, observation, timing
* :mod:`.every_action` - :class:`~.every_action.EveryActionLab`: the demo's group, every action type
* :mod:`.multi_az`   - :class:`~.multi_az.MultiAzLab`: a pair across two Availability Zones
* ``python -m aws_vrrp_notify.lab demo|up [--lag ...]`` - the lab from one command (:mod:`.__main__`)

docs/lab.md describes the model of EC2 the lab implements.
"""
