"""Output parity of shadow versions: routers report windows, the API merges them."""
