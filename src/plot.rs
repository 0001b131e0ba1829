//! SVG charts for benchmarks (placeholder; being written).
