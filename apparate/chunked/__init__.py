"""The chunked layer format: writer, reader and the byte layout they share."""
