"""Talk to OCI registries: authentication, transport and the distribution API."""
