//! Layer unpacking.
