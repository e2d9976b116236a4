"""Step 4: evaluation of stated confidence (calibration metrics and plots)."""
