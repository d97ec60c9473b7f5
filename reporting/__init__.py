"""Statistics, charts and HTML pages shared by the node (daily summaries, audits) and training (evaluate)."""
