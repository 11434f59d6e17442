"""`persona track VIDEO --out motion.npz`: a monocular video (or one photo) of a person -> an
SMPL-X motion in the project's motion format (persona/data/motions.py), which
`persona animate --motion motion.npz` plays on any avatar (docs/REAL_DATA.md, "Driving an avatar
with your own video").

Layout, input to output:
- video.py: frames with their timestamps (PTS); the fps and dropped frames (PTS gaps) follow;
- detect.py: per frame, BlazePose's 2D and 3D landmarks (data_prep/light_pose.py) of one person,
  followed from frame to frame; frames without a usable person are flagged, never zero-filled;
- fit.py: one batched fit of the body over all frames (2D reprojection, 3D landmark directions,
  temporal smoothness, joint limits), missing frames interpolated;
- output.py: the camera-frame fit -> a body-frame motion npz (atomic) with what was reported;
- overlay.py: the fitted body drawn over the input (an mp4 and a contact sheet);
- cli.py: the command.
"""
