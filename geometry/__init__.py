"""Pure numpy geometry: frames, transforms, segments, distance fields, sampling kernels."""
