"""Data from elsewhere: the paper's L2M replay buffers (`l2m`), Minari datasets both ways (`minari_io`).

Every importer writes this package's own format through `writer` (one task at a time, atomically,
`metadata.json` last, the source recorded); see `data/README.md`. Minari is an optional extra.
"""
