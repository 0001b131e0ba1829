//! Operating-point selection (being written).
