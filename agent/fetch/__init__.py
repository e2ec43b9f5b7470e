"""Getting a revision onto the host whole and safely: fetchers (local path, S3, Git) and safe extraction."""
