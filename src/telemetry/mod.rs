//! Live device telemetry (placeholder; being written).
