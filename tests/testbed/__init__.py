"""The integration test bed: sample images and real registries to pull from.

`samples` builds the images, `registry.start_registry` starts a registry of
one kind, and `serve` runs one from the command line for demos.
"""
