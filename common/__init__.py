"""arena_kd.common — the ground layer every other layer imports and which imports none of them.

Modules: ``keys`` (class order, column names, swap permutation), ``config`` (the root schema + YAML loading;
its sections in ``config_model`` and ``config_stages``),
``errors`` (UserError, one line per problem), ``io`` (atomic writes, keyed Parquet + sidecar, hashes, pkg:// paths),
``metrics`` (softmax, log loss, bootstrap intervals), ``profiling`` (stage timing and memory).
"""
