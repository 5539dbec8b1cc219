"""Text classification data from CSV or JSONL files."""
