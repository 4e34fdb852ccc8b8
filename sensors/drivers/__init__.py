"""Drivers for real sensors; each module holds one device class (imported on demand)."""
