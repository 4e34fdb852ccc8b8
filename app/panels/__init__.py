"""The studio's side panels: devices, inference status, recording, takes, log.

Panels hold no pipeline logic of their own: they show what they are given and report the
user's actions through signals or through the small objects they are handed.
"""
