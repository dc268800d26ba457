"""The container's side: the processes that run inside the new namespaces.

Two processes, each in its own module, with typed messages between them
(``aiocontain.messages``):

- ``intermediate``: started by the runtime; unshares the namespaces, forks the
  init, relays messages and reports the init's exit status. It stays outside the
  new PID namespace, which is what lets it fork the namespace's PID 1.
- ``init``: PID 1 of the container; waits for the release, builds the root
  filesystem (``rootfs``) and execs the command, or with ``--init`` stays PID 1
  and reaps.

Stdlib-only and import-light: this is on the start-up hot path.
"""
