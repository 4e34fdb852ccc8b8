"""Sensor layer: device drivers, sample buffers and time synchronisation. No Qt here."""
