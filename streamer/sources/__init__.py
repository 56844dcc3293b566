"""Where audio comes from: microphones (PortAudio devices, their timeline and clock) and recordings (files
read through the package's one decoder), as sources the runner opens in their own threads."""
