"""Drawing a field: cameras and rays, samples along them, volume rendering, shading and lights, the
background, and the fixed views of a validation grid. Depends on fields/ and nothing above it."""
