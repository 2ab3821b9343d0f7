//! Placeholder: the namespace runtime driver (being written).
