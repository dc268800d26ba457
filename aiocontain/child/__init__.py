"""The container's side: the processes that run inside the new namespaces.

Three processes, each in its own module, with typed messages between them
(``aiocontain.messages``):

- ``forkserver``: the fork server process (its runtime-side handle is
  ``aiocontain.forkserver``); holds the user namespace the runtime mapped once,
  forks each intermediate and writes its container's id maps.
- ``intermediate``: forked by the fork server; unshares the namespaces (and creates
  the persistent tap0 for slirp4netns, ``netdev``), forks the init, hands the
  init's release pipe and report socket up to the runtime, and reports the init's exit
  status. It stays outside the new PID namespace, which is what lets it fork the
  namespace's PID 1.
- ``init``: PID 1 of the container; once its id maps are written builds the
  root filesystem (``mounts``), then waits for the release and execs the
  command, or with ``--init`` catatonit, which stays PID 1 and reaps.

Stdlib-only and import-light: this is on the start-up hot path.
"""
