"""Transaction data: file I/O, schema mapping, validation and the synthetic generator."""
