"""Live multimedia streaming (Q.4100 §9.3): ffmpeg segments broadcast on a CoreTree, live
viewers serving HLS from their own peer, recorders on a SubMesh serving the whole recording."""
