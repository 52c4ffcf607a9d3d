"""One short module per HF model family: config flags and (where it differs) the weight-name table."""
