"""Where an image's content comes from: the origin registry and its mirrors."""
