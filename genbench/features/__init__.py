"""Feature extractors that need no download: small classifiers the suite trains on each dataset."""
