"""Token ids to text: incremental detokenization for streams, and stop-string matching."""
