"""Audio input: reading clips (soundfile), mono mixdown, resampling, pad/trim; dataset readers; demo data."""
