"""BVH motion files: reading with forward kinematics (``reader``) and writing (``writer``)."""
