"""Storage: file layout, csv.gz encoding, metadata and locks."""
