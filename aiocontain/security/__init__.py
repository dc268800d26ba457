"""The runtime's side of a container's hardening: what to keep and hide, decided before anything starts."""
