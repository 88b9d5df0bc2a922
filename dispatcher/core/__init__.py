"""What every layer uses: settings, errors, metrics, backoff, private files."""
