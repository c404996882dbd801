"""Storage: the backend protocol, the year-file codecs, the file, object (s3://) and
PostgreSQL backends, the naming layout, metadata and locks."""
