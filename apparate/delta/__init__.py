"""Delta pulls: rebuild chunked layers from local frames and fetched ranges."""
