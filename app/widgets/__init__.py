"""Small Qt widgets used by more than one window or wizard."""
