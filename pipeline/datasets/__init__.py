"""Dataset preparation: official source formats -> validated Parquet shards + manifest.json.

One module per source format (`cifar`, `imagenet`, `mnist`, `images`, `builtin`) turns input
files into a `base.SourcePlan`; `prepare` streams it through `shards.ShardWriter`; `manifest`
records and re-verifies the result. Reading prepared data for training lives in `pipeline.data`.
"""
