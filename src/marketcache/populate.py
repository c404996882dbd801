"""populate: select → detect gaps → fetch → validate → write, for each symbol × timeframe."""
