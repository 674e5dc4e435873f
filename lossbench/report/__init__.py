"""Reports: everything here is computed from the tidy run table only."""
