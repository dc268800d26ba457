"""The container's side: the processes that run inside the new namespaces.

Two processes, each in its own module, with typed messages between them and
the runtime (``aiocontain.messages``):

- ``forkserver``: the fork server process (its runtime-side handle is
  ``aiocontain.forkserver``); holds the user namespace the runtime mapped once,
  clones each container's PID 1 into its new namespaces, writes their id maps,
  reaps PID 1 and reports its status; kills the containers and removes their
  cgroups (``cgroup``) once the runtime is gone.
- ``init``: PID 1 of the container; sets its namespaces up (the hostname, ``lo``
  and the persistent tap0 for slirp4netns, ``netdev``), hands its release pipe
  and report socket up to the runtime, builds the root filesystem (``mounts``)
  once its id maps are written, then waits for the release and execs the
  command, or with ``--init`` catatonit, which stays PID 1 and reaps.

``join`` is not a fork of the fork server: the helper that ``exec`` starts to
join a running container.

Stdlib-only and import-light: this is on the start-up hot path.
"""
