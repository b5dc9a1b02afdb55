"""Runners: processes that host engines, on this machine or on machines that join.

This package holds what the control plane knows about them: what each CPU
can run safely (``cpu``), the deployments placed on runners by memory
(``placement``, ``deployments``), routing across replicas (``routing``), join
tokens (``tokens``) and the registry of joined runners (``registry``).
The local runner lives in ``supervisor`` (the child process ``enclave serve``
starts and restarts), ``server`` (the runner side) and ``protocol`` (the wire
format that :mod:`enclave.providers.runner_client` speaks).
"""
