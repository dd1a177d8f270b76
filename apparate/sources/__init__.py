"""Sources of an image's content: the origin registry and its mirrors."""
