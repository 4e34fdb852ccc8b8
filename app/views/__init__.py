"""The studio's views: the 3D skeleton, the 2D keypoints over the camera image, the IMU plots.

Each view builds its plot items once and is updated with ``setData`` on preallocated arrays;
none of them knows about the pipeline (they are fed numpy arrays by the main window).
"""
